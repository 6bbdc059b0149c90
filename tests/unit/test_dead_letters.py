"""Dead letters consumed once each (the dead-letter function) and the bounded, paginated overdue sweep,
on the template's own data plane in moto."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

import boto3
import pytest
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel

from baton.clock import now_ms
from baton.deadletters import ARCHIVE_PREFIX, ArchivedDeadLetter, archive_key
from baton.models import StageCommand, Step
from baton.records import JobRecord
from baton.settings import get_settings
from baton.store import OPEN_SHARDS, JobStore, open_shard
from baton.sweeper import Sweeper
from baton.wiring import job_failures, job_intake, job_sweeper, webhook_service
from baton_dev.dlq import DlqError, find_letter, list_archive, redrive_letter

if TYPE_CHECKING:
    from conftest import AwsStack, EventTap, LoadedFunction

TENANT = "acme"


def accept(api: LoadedFunction, aws: AwsStack) -> str:
    event = aws.api_event(
        "api-create-job.json", body={"input": {"prompt": "Summarize."}}, drop_headers=("Idempotency-Key",)
    )
    response = api(event)
    assert response["statusCode"] == 202, response["body"]
    return str(json.loads(response["body"])["id"])


def command(job_id: str, *, step: Step = Step.INFER, version: int = 1, depth: int = 0) -> StageCommand:
    return StageCommand(job_id=job_id, tenant_id=TENANT, step=step, version=version, depth=depth)


def dead_letter(aws: AwsStack, body: str, queue: str = "InferDeadLetterQueue") -> None:
    boto3.client("sqs").send_message(QueueUrl=aws.queue_url(queue), MessageBody=body)


def deliver_all(aws: AwsStack, handler: LoadedFunction, queue: str = "InferDeadLetterQueue") -> list[str]:
    """What the event source does: receive batches of 10, invoke, delete what did not fail."""
    sqs = boto3.client("sqs")
    failed: list[str] = []
    while messages := aws.receive(queue):
        for start in range(0, len(messages), 10):
            batch = messages[start : start + 10]
            answer = handler(aws.sqs_event(queue, batch))
            failures = {item["itemIdentifier"] for item in answer["batchItemFailures"]}
            failed.extend(failures)
            for message in batch:
                if message["MessageId"] not in failures:
                    sqs.delete_message(QueueUrl=aws.queue_url(queue), ReceiptHandle=message["ReceiptHandle"])
    return failed


def archived(aws: AwsStack) -> dict[str, ArchivedDeadLetter]:
    s3 = boto3.client("s3")
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=aws.bucket, Prefix=f"{ARCHIVE_PREFIX}/"):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=aws.bucket, Key=item["Key"])["Body"].read()
            letter = ArchivedDeadLetter.model_validate_json(body)
            assert item["Key"] == letter.key
            found[letter.message_id] = letter
    return found


def job(aws: AwsStack, job_id: str) -> JobRecord:
    return JobStore(aws.jobs_table).get(TENANT, job_id)


@pytest.fixture
def dead_letters(aws: AwsStack) -> LoadedFunction:
    return aws.load("DeadLetterFunction")


def test_a_dead_letter_fails_its_job_is_archived_and_leaves_the_dlq(
    aws: AwsStack, api: LoadedFunction, dead_letters: LoadedFunction, bus_events: EventTap
) -> None:
    job_id = accept(api, aws)
    bus_events.drain()
    dead_letter(aws, command(job_id).model_dump_json())

    assert deliver_all(aws, dead_letters) == []

    record = job(aws, job_id)
    assert record.status.value == "failed"
    assert record.error is not None and record.error.type == "dead_lettered"
    # MaxReceiveCount (7 by default) deliveries, as the redrive policy guarantees.
    assert "the infer step failed 7 times" in record.error.message
    [letter] = archived(aws).values()
    assert f"dead letter {letter.id}" in record.error.message
    assert letter.id.startswith("infer/") and letter.id.endswith(f"/{letter.message_id}")
    assert (letter.job_id, letter.tenant_id, letter.stage, letter.outcome) == (
        job_id,
        TENANT,
        "infer",
        "job_failed",
    )
    assert StageCommand.model_validate_json(letter.body) == command(job_id)
    assert letter.receive_count >= 1 and letter.attempts == 7
    assert aws.queued("InferDeadLetterQueue") == 0  # consumed, not peeked
    assert bus_events.detail_types().count("Job Failed") == 1


def test_a_copy_of_the_same_dead_letter_changes_nothing(
    aws: AwsStack, api: LoadedFunction, dead_letters: LoadedFunction, bus_events: EventTap
) -> None:
    """At-least-once delivery: the same message twice is archived once and fails its job once."""
    job_id = accept(api, aws)
    dead_letter(aws, command(job_id).model_dump_json())
    [message] = aws.receive("InferDeadLetterQueue")
    event = aws.sqs_event("InferDeadLetterQueue", [message])
    bus_events.drain()

    first = dead_letters.module.dead_letters.handle(SqsRecordModel(**event["Records"][0]))
    key = archive_key(first["archive_id"])
    written = boto3.client("s3").head_object(Bucket=aws.bucket, Key=key)["ETag"]
    second = dead_letters.module.dead_letters.handle(SqsRecordModel(**event["Records"][0]))

    assert first == {"outcome": "job_failed", "archive_id": first["archive_id"], "first_delivery": True}
    assert second == {**first, "first_delivery": False}
    assert boto3.client("s3").head_object(Bucket=aws.bucket, Key=key)["ETag"] == written
    assert bus_events.detail_types().count("Job Failed") == 1


def test_dead_letters_that_cannot_fail_a_job_are_archived_with_what_they_found(
    aws: AwsStack, api: LoadedFunction, dead_letters: LoadedFunction
) -> None:
    open_job = accept(api, aws)
    ended = accept(api, aws)
    job_intake(get_settings()).cancel(TENANT, ended)
    dead_letter(aws, command(open_job, version=2).model_dump_json())  # a newer version is running
    dead_letter(aws, command(open_job, step=Step.TOOL, depth=3).model_dump_json(), "ToolDeadLetterQueue")
    dead_letter(aws, command(ended).model_dump_json())
    dead_letter(aws, command("job_unknown").model_dump_json())
    dead_letter(aws, "not a command {")

    assert deliver_all(aws, dead_letters) == []
    assert deliver_all(aws, dead_letters, "ToolDeadLetterQueue") == []

    outcomes = sorted(
        (letter.stage, letter.job_id, letter.outcome.value) for letter in archived(aws).values()
    )
    assert outcomes == sorted(
        [
            ("infer", open_job, "stale_command"),
            ("tool", open_job, "stale_command"),
            ("infer", ended, "job_already_ended"),
            ("infer", "job_unknown", "job_not_found"),
            ("unrecognised", None, "unrecognised"),
        ]
    )
    assert job(aws, open_job).status.value == "pending"  # untouched
    assert job(aws, ended).status.value == "cancelled"  # a terminal state never changes


def test_a_new_dead_letter_behind_more_than_a_hundred_old_ones_still_fails_its_job(
    aws: AwsStack, api: LoadedFunction, dead_letters: LoadedFunction
) -> None:
    """Issue 8: the old sweeper peeked 100 messages and never saw the 101st."""
    sqs = boto3.client("sqs")
    url = aws.queue_url("InferDeadLetterQueue")
    for start in range(0, 120, 10):
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "MessageBody": command(f"job_old{start + i}").model_dump_json()}
                for i in range(10)
            ],
        )
    poison = accept(api, aws)
    dead_letter(aws, command(poison).model_dump_json())

    assert deliver_all(aws, dead_letters) == []

    assert job(aws, poison).error is not None
    assert job(aws, poison).error.type == "dead_lettered"  # type: ignore[union-attr]
    letters = archived(aws)
    assert len(letters) == 121
    assert aws.queued("InferDeadLetterQueue") == 0


# -- the overdue sweep ----------------------------------------------------------------------------


def open_job(aws: AwsStack, *, deadline_ms: int, expired: bool = False, job_id: str | None = None) -> str:
    now = now_ms()
    record = JobRecord(
        job_id=job_id or f"job_{uuid.uuid4().hex}",
        tenant_id=TENANT,
        model="m",
        created_ms=now,
        updated_ms=now,
        expires_at=(now // 1000 - 60) if expired else now // 1000 + 86_400,
        deadline_ms=deadline_ms,
        request={"input": {"prompt": "x"}},
    )
    assert JobStore(aws.jobs_table).create(record)
    return record.job_id


def ids_spread_over_shards(*, per_shard: int) -> list[str]:
    """Job ids with exactly `per_shard` in every open shard: random ids left a shard with fewer
    than two now and then (a 40-job test failed by chance about once in 25 runs)."""
    by_shard: dict[str, list[str]] = {f"open#{shard}": [] for shard in range(OPEN_SHARDS)}
    for n in range(100_000):
        job_id = f"job_{n:032x}"
        ids = by_shard[open_shard(job_id)]
        if len(ids) < per_shard:
            ids.append(job_id)
        if all(len(ids) == per_shard for ids in by_shard.values()):
            return [job_id for ids in by_shard.values() for job_id in ids]
    raise AssertionError("crc32 left a shard empty")


def test_overdue_jobs_are_found_across_pages_and_shards(aws: AwsStack) -> None:
    now = now_ms()
    overdue = {
        open_job(aws, deadline_ms=now - 1000 - i, job_id=job_id)
        for i, job_id in enumerate(ids_spread_over_shards(per_shard=5))
    }
    not_yet = {open_job(aws, deadline_ms=now + 60_000) for _ in range(5)}
    store = JobStore(aws.jobs_table)

    found = [job_id for _, job_id in store.overdue(now, limit=1000, page_size=2)]

    assert sorted(found) == sorted(overdue)  # every one, each once, none of the others
    assert not set(found) & not_yet
    assert len({open_shard(job_id) for job_id in overdue}) == OPEN_SHARDS  # the test spans them all
    # A bounded read takes one page per shard in turn: a few from each shard, not one shard's backlog.
    first = [job_id for _, job_id in store.overdue(now, limit=OPEN_SHARDS * 2, page_size=2)]
    assert len(first) == OPEN_SHARDS * 2
    assert {open_shard(job_id) for job_id in first} == {f"open#{shard}" for shard in range(OPEN_SHARDS)}


def test_bounded_sweeps_cover_every_overdue_job_and_skip_none(
    aws: AwsStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = now_ms()
    overdue = {open_job(aws, deadline_ms=now - 5000 - i) for i in range(30)}
    # Expired jobs (TTL has not removed them yet) sit first in their shards: they must not block.
    expired = {open_job(aws, deadline_ms=now - 10**9, expired=True) for _ in range(12)}
    monkeypatch.setattr("baton.store.OVERDUE_PAGE", 3)
    sweeper = Sweeper(job_failures(get_settings()), webhook_service(get_settings()), max_per_run=7)

    store = JobStore(aws.jobs_table)
    runs: list[int] = []
    while list(store.overdue(now_ms(), limit=1)):
        runs.append(sweeper.sweep()["overdue_failed"])
        assert len(runs) < 20, runs

    assert all(count <= 7 for count in runs)
    assert sum(runs) == len(overdue)
    assert len(runs) >= (len(overdue) + len(expired)) // 7  # bounded: it took several runs
    for job_id in overdue:
        record = job(aws, job_id)
        assert (record.status.value, record.error and record.error.type) == ("failed", "timeout")
    assert list(JobStore(aws.jobs_table).overdue(now_ms(), limit=1000)) == []  # the index is empty
    for job_id in expired:  # left as they were, only off the index
        item = boto3.client("dynamodb").get_item(
            TableName=aws.jobs_table, Key={"pk": {"S": f"TENANT#{TENANT}"}, "sk": {"S": f"JOB#{job_id}"}}
        )["Item"]
        assert item["status"]["S"] == "pending" and "open_shard" not in item


def test_a_sweep_stops_starting_work_when_the_invocation_runs_out_of_time(aws: AwsStack) -> None:
    now = now_ms()
    for i in range(5):
        open_job(aws, deadline_ms=now - 1000 - i)
    remaining = iter([60_000, 60_000, 5_000])

    result = job_sweeper(get_settings()).sweep(lambda: next(remaining, 0))

    assert result == {"overdue_failed": 2, "deliveries_resent": 0}


# -- `baton dlq` over the archive ------------------------------------------------------------------


def test_the_archive_is_listed_by_stage_found_by_id_and_a_failed_job_is_not_redriven(
    aws: AwsStack, api: LoadedFunction, dead_letters: LoadedFunction
) -> None:
    failed_job = accept(api, aws)
    waiting_job = accept(api, aws)
    dead_letter(aws, command(failed_job).model_dump_json())
    deliver_all(aws, dead_letters)
    dead_letter(aws, command("job_gone", step=Step.TOOL).model_dump_json(), "ToolDeadLetterQueue")
    deliver_all(aws, dead_letters, "ToolDeadLetterQueue")
    s3 = boto3.client("s3")

    listed = list_archive(s3, aws.bucket)
    assert sorted(str(letter.job_id) for letter in listed) == sorted(["job_gone", failed_job])
    assert [letter.job_id for letter in list_archive(s3, aws.bucket, stage="infer")] == [failed_job]
    assert len(list_archive(s3, aws.bucket, limit=1)) == 1
    letter = next(letter for letter in listed if letter.job_id == failed_job)
    gone = next(letter for letter in listed if letter.job_id == "job_gone")
    assert find_letter(s3, aws.bucket, letter.id) == letter
    assert find_letter(s3, aws.bucket, letter.message_id) == letter  # a bare message id is found too
    with pytest.raises(DlqError, match="no archived dead letter"):
        find_letter(s3, aws.bucket, "infer/2026-01-01/nope")

    store = JobStore(aws.jobs_table)
    sqs = boto3.client("sqs")
    # A job the dead letter failed is finished: the redrive names the re-run instead.
    with pytest.raises(DlqError, match=rf"failed \(dead_lettered\).*POST /v1/jobs/{failed_job}/rerun"):
        redrive_letter(letter, jobs=store, sqs=sqs, queues=aws.stack.queue_urls)
    with pytest.raises(DlqError, match="no longer exists"):
        redrive_letter(gone, jobs=store, sqs=sqs, queues=aws.stack.queue_urls)
    # A command whose job still waits at its version and depth goes back on its stage's queue.
    waiting = letter.model_copy(
        update={"job_id": waiting_job, "body": command(waiting_job).model_dump_json()}
    )
    aws.receive("InferQueue")  # what accept() queued
    assert redrive_letter(waiting, jobs=store, sqs=sqs, queues=aws.stack.queue_urls) == aws.queue_url(
        "InferQueue"
    )
    [message] = aws.receive("InferQueue")
    assert StageCommand.model_validate_json(message["Body"]) == command(waiting_job)
    stale = waiting.model_copy(update={"version": 2})
    with pytest.raises(DlqError, match="has moved on"):
        redrive_letter(stale, jobs=store, sqs=sqs, queues=aws.stack.queue_urls)
