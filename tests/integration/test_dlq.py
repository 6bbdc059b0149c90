"""`baton dlq queues/show/redrive` of a queue as a user runs them, against the real local stack.

Messages are put straight into the notify DLQ: terminal lifecycle events for jobs that do not
exist, which the notify consumer takes as "gone" and deletes once they are redriven, so nothing
comes back and no other test's jobs are touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from baton_dev.runtime.template import AppTemplate
from tests.integration.conftest import LocalStack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DLQ = "NotifyDeadLetterQueue"
SOURCE = "NotifyQueue"


def baton_dlq(stack: LocalStack, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    answer = subprocess.run(
        [str(Path(sys.executable).parent / "baton"), "dlq", *args, "--state-dir", str(stack.log_path.parent)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "COLUMNS": "160"},
    )
    if check:
        assert answer.returncode == 0, f"baton dlq {' '.join(args)}: {answer.returncode}\n{answer.stderr}"
    return answer


def dlq_json(stack: LocalStack, *args: str) -> Any:
    return json.loads(baton_dlq(stack, *args, "--json").stdout)


def depth(stack: LocalStack, logical_id: str) -> tuple[int, int]:
    attributes = stack.aws("sqs").get_queue_attributes(
        QueueUrl=stack.state["queues"][logical_id],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def terminal_event(job_id: str) -> str:
    """A "Job Completed" event as the bus delivers it to the notify queue, for a job that never was."""
    job = {"id": job_id, "status": "completed", "metadata": {}, "model": "baton-local", "depth": 0}
    return json.dumps(
        {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Job Completed",
            "source": "baton.jobs",
            "account": "123456789012",
            "time": "2026-11-22T01:30:02Z",
            "region": "us-east-1",
            "resources": [],
            "detail": {
                "job_id": job_id,
                "tenant_id": "dlq-test",
                "status": "completed",
                "version": 2,
                "depth": 0,
                "metadata": {},
                "step": None,
                "job": job,
            },
        }
    )


@pytest.fixture
def dead_letters(local_stack: LocalStack) -> Iterator[list[str]]:
    """Three dead letters on the notify DLQ (their job ids); whatever of them a test leaves there
    is removed afterwards, so every test starts from a DLQ without them."""
    sqs = local_stack.aws("sqs")
    url = local_stack.state["queues"][DLQ]
    job_ids = [f"job_dlqtest{uuid.uuid4().hex[:20]}" for _ in range(3)]
    for job_id in job_ids:
        sqs.send_message(
            QueueUrl=url,
            MessageBody=terminal_event(job_id),
            MessageAttributes={"origin": {"DataType": "String", "StringValue": "test_dlq"}},
        )
    yield job_ids
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30).get(
        "Messages", []
    ):
        ours = [message for message in batch if any(job_id in message["Body"] for job_id in job_ids)]
        others = [message for message in batch if message not in ours]
        for message in ours:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        for message in others:
            sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        if not ours:
            break


def test_list_shows_every_dlq_with_its_source_queue_and_depth(
    local_stack: LocalStack, dead_letters: list[str]
) -> None:
    listed = {row["dlq"]: row for row in dlq_json(local_stack, "queues")}

    expected = {name for name in local_stack.state["queues"] if name.endswith("DeadLetterQueue")}
    assert set(listed) == expected
    assert {f"{stage}DeadLetterQueue" for stage in ("Ingest", "Extract", "Infer", "Notify")} <= expected
    for name, row in listed.items():
        source = name.removesuffix("DeadLetterQueue") + "Queue"
        assert (row["source"], row["source_url"]) == (source, local_stack.state["queues"][source])
        assert row["url"] == local_stack.state["queues"][name]
        assert row["max_receive_count"] >= 1
    assert (listed[DLQ]["visible"], listed[DLQ]["in_flight"]) == depth(local_stack, DLQ)
    assert listed[DLQ]["visible"] >= len(dead_letters)

    table = baton_dlq(local_stack, "queues").stdout
    line = next(line for line in table.splitlines() if DLQ in line)
    assert line.split()[:3] == [DLQ, SOURCE, str(listed[DLQ]["visible"])], table


def test_show_prints_the_dead_letters_without_consuming_them(
    local_stack: LocalStack, dead_letters: list[str]
) -> None:
    before = depth(local_stack, DLQ)

    first = dlq_json(local_stack, "show", "notify", "--max", "50")

    assert first["dlq"] == DLQ
    ours = {m["job_id"]: m for m in first["messages"] if m["job_id"] in dead_letters}
    assert set(ours) == set(dead_letters)
    for message in ours.values():
        assert message["kind"] == "event"
        assert message["detail_type"] == "Job Completed"
        assert message["tenant_id"] == "dlq-test"
        assert message["message_attributes"] == {"origin": "test_dlq"}
        assert json.loads(message["body"])["detail"]["job_id"] == message["job_id"]
        assert message["sent_at"] and message["receive_count"] >= 1
    assert depth(local_stack, DLQ) == before  # nothing deleted, nothing left hidden

    # The same by logical id, as text: each show costs every message one receive (documented).
    text = baton_dlq(local_stack, "show", DLQ, "--max", "50").stdout
    for job_id in dead_letters:
        assert f"job {job_id}  tenant dlq-test" in text
        header = text.splitlines()[text.splitlines().index(f"  job {job_id}  tenant dlq-test  step -") - 1]
        assert int(header.split("receives ")[1].split()[0]) > ours[job_id]["receive_count"], header
    assert "…" in text  # bodies are truncated without --full
    full = baton_dlq(local_stack, "show", "notify", "--max", "50", "--full").stdout
    assert '"job_id": "' + dead_letters[0] + '"' in full
    assert depth(local_stack, DLQ) == before


def test_redrive_moves_every_dead_letter_back_by_receive_send_on_moto(
    local_stack: LocalStack, dead_letters: list[str]
) -> None:
    source = next(
        s.logical_id for s in AppTemplate.load(ROOT / "template.yaml").sqs_sources if s.queue == SOURCE
    )
    processed_before = local_stack.stats()["event_sources"][source]["records_ok"]
    waiting = sum(depth(local_stack, DLQ))

    result = dlq_json(local_stack, "redrive", "notify")

    # moto has no StartMessageMoveTask (HTTP 500): the fallback moved them, one by one, all of them.
    assert result["method"] == "receive-send"
    assert "StartMessageMoveTask not supported" in result["fallback_reason"]
    assert (result["dlq"], result["destination"]) == (DLQ, local_stack.state["queues"][SOURCE])
    assert (result["moved"], result["failed"]) == (waiting, 0)
    assert depth(local_stack, DLQ) == (0, 0)
    # Back on the notify queue, its consumer took them (events for unknown jobs: "gone", deleted).
    deadline = time.monotonic() + 30
    processed = processed_before
    while time.monotonic() < deadline and processed < processed_before + len(dead_letters):
        time.sleep(0.2)
        processed = local_stack.stats()["event_sources"][source]["records_ok"]
    assert processed >= processed_before + len(dead_letters)
    assert depth(local_stack, DLQ) == (0, 0)


def test_redrive_with_max_moves_only_that_many_and_says_how(
    local_stack: LocalStack, dead_letters: list[str]
) -> None:
    visible, _ = depth(local_stack, DLQ)

    answer = baton_dlq(local_stack, "redrive", "notify", "--max", "1")

    assert answer.stdout.startswith(f"moved 1 message(s) from {DLQ} to {SOURCE} by receive-send"), (
        answer.stdout
    )
    assert depth(local_stack, DLQ)[0] == visible - 1


def test_a_forced_move_task_fails_clearly_on_moto(local_stack: LocalStack, dead_letters: list[str]) -> None:
    before = depth(local_stack, DLQ)

    answer = baton_dlq(local_stack, "redrive", "notify", "--method", "move-task", check=False)

    assert answer.returncode == 1
    assert "StartMessageMoveTask not supported by the endpoint (HTTP 500)" in answer.stderr
    assert depth(local_stack, DLQ) == before


def test_an_unknown_queue_names_the_known_ones(local_stack: LocalStack) -> None:
    answer = baton_dlq(local_stack, "show", "NotifyQueue", check=False)

    assert answer.returncode == 1
    assert "no dead-letter queue 'NotifyQueue'" in answer.stderr
    assert "notify (NotifyDeadLetterQueue)" in answer.stderr
