"""Dead letters over the real local stack (`baton dev`): the dead-letter function consumes the job
steps' DLQs, so a new poison job fails as `dead_lettered` however many dead letters came before.

Issue 8's failure, reproduced: the old sweeper peeked at most 100 messages per DLQ and left them
there; with more than 100 retained dead letters it never saw a new one, and the poison job waited
out its 15-minute deadline to fail as `timeout`.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from baton.models import StageCommand, Step
from tests.integration.conftest import MAX_RECEIVE_COUNT, LocalStack, Tenant, wait_for_terminal
from tests.integration.test_dlq import baton_dlq, dlq_json

pytestmark = pytest.mark.integration

OLD_DEAD_LETTERS = 150


def queued(stack: LocalStack, logical_id: str) -> int:
    attributes = stack.aws("sqs").get_queue_attributes(
        QueueUrl=stack.state["queues"][logical_id],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


def archived(stack: LocalStack, stage: str) -> dict[str, dict[str, object]]:
    s3 = stack.aws("s3")
    bucket = stack.state["bucket"]
    letters = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"dead-letters/{stage}/"):
        for item in page.get("Contents", []):
            letter = json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
            letters[str(letter["message_id"])] = letter
    return letters


def archived_count(stack: LocalStack, stage: str) -> int:
    pages = (
        stack.aws("s3")
        .get_paginator("list_objects_v2")
        .paginate(Bucket=stack.state["bucket"], Prefix=f"dead-letters/{stage}/")
    )
    return sum(len(page.get("Contents", [])) for page in pages)


def archived_letter(stack: LocalStack, archive_id: str, timeout_s: float = 60) -> dict[str, object]:
    s3 = stack.aws("s3")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            body = s3.get_object(Bucket=stack.state["bucket"], Key=f"dead-letters/{archive_id}.json")["Body"]
            return dict(json.loads(body.read()))
        except s3.exceptions.NoSuchKey:
            assert time.monotonic() < deadline, f"dead letter {archive_id} never archived"
            time.sleep(0.5)


# 150 messages through moto's SQS and S3, a poison job's four crashes, three CLI runs: above the
# suite's 300 s default on a busy 2-core machine.
@pytest.mark.timeout(600)
def test_a_poison_job_behind_more_than_a_hundred_dead_letters_fails_as_dead_lettered(
    local_stack: LocalStack, tenant: Tenant, api: httpx.Client
) -> None:
    sqs = local_stack.aws("sqs")
    dlq = local_stack.state["queues"]["InferDeadLetterQueue"]
    run = uuid.uuid4().hex[:8]
    old_jobs = {f"job_old{run}{index}" for index in range(OLD_DEAD_LETTERS)}
    ordered = sorted(old_jobs)
    for start in range(0, OLD_DEAD_LETTERS, 10):
        sqs.send_message_batch(
            QueueUrl=dlq,
            Entries=[
                {
                    "Id": str(index),
                    "MessageBody": StageCommand(
                        job_id=job_id, tenant_id=tenant.name, step=Step.INFER, version=1, depth=0
                    ).model_dump_json(),
                }
                for index, job_id in enumerate(ordered[start : start + 10])
            ],
        )

    answer = api.post("/v1/jobs", json={"input": {"prompt": f"[sim:malformed] poison {run}"}})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    job = wait_for_terminal(api, job_id, timeout_s=120)

    assert (job["status"], job["error"]["type"]) == ("failed", "dead_lettered")
    assert f"the infer step failed {MAX_RECEIVE_COUNT} times" in job["error"]["message"]
    # Archived by the same invocation, right after it failed the job, under the id the error names.
    archive_id = job["error"]["message"].rsplit("dead letter ", 1)[1]
    ours = archived_letter(local_stack, archive_id)
    assert (ours["job_id"], ours["id"]) == (job_id, archive_id)
    assert ours["outcome"] == "job_failed"
    # The old ones were consumed too, each archived once (they name no job that exists).
    deadline = time.monotonic() + 60
    while archived_count(local_stack, "infer") < OLD_DEAD_LETTERS + 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    letters = archived(local_stack, "infer")
    old = [letter for letter in letters.values() if letter["job_id"] in old_jobs]
    assert sorted(str(letter["job_id"]) for letter in old) == ordered
    assert {letter["outcome"] for letter in old} == {"job_not_found"}
    deadline = time.monotonic() + 30
    while queued(local_stack, "InferDeadLetterQueue") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert queued(local_stack, "InferDeadLetterQueue") == 0

    # The operator's view: listed, shown by the id the job's error names, and not redriven (the job
    # is finished; the refusal names the re-run).
    # Listed newest first by the archive's LastModified (one-second resolution): the old letters may be
    # archived in the same second as ours or after it, so ask for all of them.
    listed = dlq_json(local_stack, "list", "infer", "--limit", "1000")
    assert ours["id"] in {letter["id"] for letter in listed}
    shown = dlq_json(local_stack, "show", str(ours["id"]))
    assert (shown["job_id"], shown["outcome"], shown["attempts"]) == (job_id, "job_failed", MAX_RECEIVE_COUNT)
    refused = baton_dlq(local_stack, "redrive", str(ours["id"]), check=False)
    assert refused.returncode == 1
    assert f"POST /v1/jobs/{job_id}/rerun" in " ".join(refused.stderr.split())
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "failed"  # unchanged
