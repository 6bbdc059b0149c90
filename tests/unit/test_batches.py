"""Batches (POST/GET/DELETE /v1/batches and the batch stage) on the template's data plane."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from standardwebhooks import Webhook

from baton.batches import line_job_id
from baton.errors import ModelError

from .test_documents import call, route_event
from .test_infer_handler import FakeModel, model  # noqa: F401 (the fixture)
from .test_notify_handler import HOOK, Receiver, receiver, secret  # noqa: F401 (fixtures)

if TYPE_CHECKING:
    from conftest import AwsStack, LoadedFunction


def batch_event(
    aws: AwsStack, method: str, *, body: Any = None, batch_id: str | None = None
) -> dict[str, Any]:
    return route_event(aws, method, "batches", "batch_id", item_id=batch_id, body=body)


def line(custom_id: str, prompt: str = "Summarize: queues decouple work.") -> dict[str, Any]:
    return {"custom_id": custom_id, "input": {"prompt": prompt}}


def drain(aws: AwsStack, batch: LoadedFunction, infer: LoadedFunction) -> None:
    """Run the batch and infer stages until neither has anything queued."""
    while True:
        ran = False
        for queue, function in (("BatchQueue", batch), ("InferQueue", infer)):
            messages = aws.receive(queue)
            if messages:
                assert function(aws.sqs_event(queue, messages)) == {"batchItemFailures": []}
                ran = True
        if not ran:
            return


def refuse_poison(aws: AwsStack) -> None:
    """The model refuses (permanently) a prompt containing [poison], answers the others."""
    import baton.llm

    def answer(settings: Any, **request: Any) -> Any:
        if "[poison]" in request["messages"][0]["content"]:
            raise ModelError("refused", retryable=False, type_="model_rejected_request")
        return FakeModel()(settings, **request)

    aws.monkeypatch.setattr(baton.llm, "complete", answer)


def read_jsonl(aws: AwsStack, key: str) -> list[dict[str, Any]]:
    data = boto3.client("s3").get_object(Bucket=aws.bucket, Key=key)["Body"].read().decode()
    return [json.loads(raw) for raw in data.splitlines() if raw]


def test_a_batch_runs_every_line_as_a_job_and_accounts_for_each_once(
    aws: AwsStack,
    api: LoadedFunction,
    infer: LoadedFunction,
    model: FakeModel,  # noqa: F811
) -> None:
    batch = aws.load("BatchFunction")
    body = {
        "requests": [line("a"), line("b", "[poison]"), line("c")],
        "metadata": {"project": "q3"},
    }
    status, created = call(api, batch_event(aws, "POST", body=body))
    assert status == 202, created
    assert created["status"] == "in_progress"
    assert created["request_counts"] == {"total": 3, "completed": 0, "failed": 0, "cancelled": 0}
    batch_id = created["id"]
    refuse_poison(aws)
    drain(aws, batch, infer)

    status, finished = call(api, batch_event(aws, "GET", batch_id=batch_id))
    assert finished["status"] == "completed", finished
    assert finished["request_counts"] == {"total": 3, "completed": 2, "failed": 1, "cancelled": 0}
    assert finished["completed_at"] and finished["output_url"] and finished["errors_url"]
    prefix = f"batches/acme/{batch_id}"
    output = read_jsonl(aws, f"{prefix}/output.jsonl")
    errors = read_jsonl(aws, f"{prefix}/errors.jsonl")
    assert [entry["custom_id"] for entry in output] == ["a", "c"]
    assert [entry["custom_id"] for entry in errors] == ["b"]
    assert output[0]["status"] == "completed" and output[0]["result"]["text"]
    assert errors[0]["error"]["type"] == "model_rejected_request"
    # Each line's job carries the batch's metadata plus custom_id and batch_id.
    job = json.loads(api(aws.api_event("api-get-job.json", job_id=output[0]["job_id"]))["body"])
    assert job["metadata"] == {"project": "q3", "custom_id": "a", "batch_id": batch_id}

    status, page = call(api, batch_event(aws, "GET"))
    assert status == 200 and [b["id"] for b in page["data"]] == [batch_id]
    # A line has no webhook of its own: its terminal event skips the notify stage (the batch's
    # counts it); an ordinary job's still goes there, even with a hand-written metadata.batch_id.
    assert aws.queued("NotifyQueue") == 0
    response = api(
        aws.api_event(
            "api-create-job.json",
            body={"input": {"prompt": "hi"}, "metadata": {"batch_id": batch_id, "custom_id": "a"}},
            drop_headers=("Idempotency-Key",),
        )
    )
    assert response["statusCode"] == 202, response["body"]
    assert infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}
    [notified] = aws.receive("NotifyQueue")
    assert json.loads(notified["Body"])["detail"]["job_id"] == json.loads(response["body"])["id"]


def test_validation_names_the_line(aws: AwsStack, api: LoadedFunction) -> None:
    status, body = call(api, batch_event(aws, "POST", body={"requests": [line("a"), line("a")]}))
    assert (
        status == 422 and body["error"]["field"] == "line 2" and "repeats line 1" in body["error"]["message"]
    )
    boto3.client("s3").put_object(
        Bucket=aws.bucket,
        Key="documents/acme/lines.jsonl",
        Body=(json.dumps(line("x")) + "\n{not json\n").encode(),
    )
    status, body = call(api, batch_event(aws, "POST", body={"input_document_id": "lines.jsonl"}))
    assert status == 422 and body["error"]["field"] == "line 2"
    status, body = call(api, batch_event(aws, "POST", body={"requests": [{"custom_id": "z", "input": {}}]}))
    assert status == 422 and body["error"]["field"].startswith("requests.0.input")


def test_a_cancelled_batch_stops(
    aws: AwsStack,
    api: LoadedFunction,
    infer: LoadedFunction,
    model: FakeModel,  # noqa: F811
) -> None:
    batch = aws.load("BatchFunction")
    _, created = call(api, batch_event(aws, "POST", body={"requests": [line(str(i)) for i in range(5)]}))
    status, cancelling = call(api, batch_event(aws, "DELETE", batch_id=created["id"]))
    assert status == 200 and cancelling["status"] == "cancelling"
    drain(aws, batch, infer)
    _, ended = call(api, batch_event(aws, "GET", batch_id=created["id"]))
    assert ended["status"] == "cancelled"
    assert ended["request_counts"] == {"total": 5, "completed": 0, "failed": 0, "cancelled": 5}
    assert model.calls == []
    errors = read_jsonl(aws, f"batches/acme/{created['id']}/errors.jsonl")
    assert sorted(entry["custom_id"] for entry in errors) == ["0", "1", "2", "3", "4"]
    status, _ = call(api, batch_event(aws, "DELETE", batch_id=created["id"]))
    assert status == 409


def test_a_finished_batch_is_delivered_as_a_webhook_through_the_delivery_log(
    aws: AwsStack,
    api: LoadedFunction,
    infer: LoadedFunction,
    model: FakeModel,  # noqa: F811
    receiver: Receiver,  # noqa: F811
    secret: str,  # noqa: F811
) -> None:
    batch, deliver = aws.load("BatchFunction"), aws.load("DeliverFunction")
    webhook = {"url": HOOK, "auth": {"type": "bearer", "token": "s3cret-token"}}
    body = {"requests": [line("a"), line("b")], "webhook": webhook}
    _, created = call(api, batch_event(aws, "POST", body=body))
    batch_id = created["id"]
    drain(aws, batch, infer)
    assert receiver.deliveries == []  # the batch stage only records and queues the delivery
    assert deliver(aws.take_event("WebhookDeliveryQueue")) == {"batchItemFailures": []}

    [delivery] = receiver.deliveries
    assert delivery["url"] == HOOK
    assert delivery["headers"]["authorization"] == "Bearer s3cret-token"
    assert delivery["headers"]["webhook-id"] == f"msg_{batch_id}_completed"
    payload = Webhook(secret).verify(delivery["body"], delivery["headers"])
    assert payload["type"] == "batch.completed"
    assert payload["data"]["id"] == batch_id
    assert payload["data"]["request_counts"] == {"total": 2, "completed": 2, "failed": 0, "cancelled": 0}
    assert payload["timestamp"] == payload["data"]["completed_at"]

    status, logged = call(api, batch_event(aws, "GET", batch_id=f"{batch_id}/deliveries"))
    assert status == 200, logged
    [entry] = logged["data"]
    assert (entry["webhook_id"], entry["type"], entry["status"]) == (
        f"msg_{batch_id}_completed",
        "batch.completed",
        "delivered",
    )
    assert [attempt["status_code"] for attempt in entry["attempts"]] == [204]
    # Links are signed per attempt, never stored with the event (a late retry must still work).
    items = boto3.client("dynamodb").scan(TableName=aws.jobs_table)["Items"]
    [stored] = [item for item in items if item["pk"]["S"].startswith(f"DELIVERY#acme#{batch_id}")]
    assert json.loads(stored["data"]["S"])["output_url"] is None
    assert f"batches/acme/{batch_id}/output.jsonl" in payload["data"]["output_url"]
    assert f"batches/acme/{batch_id}/errors.jsonl" in payload["data"]["errors_url"]

    # Redelivered on request: a new series, the same webhook-id, links signed again.
    redeliver = f"{batch_id}/deliveries/msg_{batch_id}_completed/redeliver"
    status, restarted = call(api, batch_event(aws, "POST", batch_id=redeliver))
    assert status == 202 and restarted["status"] == "pending", restarted
    assert deliver(aws.take_event("WebhookDeliveryQueue")) == {"batchItemFailures": []}
    again = receiver.deliveries[-1]
    assert len(receiver.deliveries) == 2 and again["headers"]["webhook-id"] == f"msg_{batch_id}_completed"
    assert "output.jsonl" in Webhook(secret).verify(again["body"], again["headers"])["data"]["output_url"]
    for unknown in (f"{batch_id}/deliveries/msg_{batch_id}_nope/redeliver", "batch_x/deliveries/m/redeliver"):
        status, _ = call(api, batch_event(aws, "POST", batch_id=unknown))
        assert status == 404
    # The receiver's token is sealed at rest, never in the batch or its delivery in plain text.
    mine = [item for item in items if batch_id in json.dumps(item)]
    assert any("auth_sealed" in item for item in mine)
    assert "s3cret-token" not in json.dumps(mine)


def test_a_batch_webhook_to_a_private_address_literal_is_refused(aws: AwsStack, api: LoadedFunction) -> None:
    body = {"requests": [line("a")], "webhook": {"url": "http://169.254.169.254/hook"}}
    status, answer = call(api, batch_event(aws, "POST", body=body))
    assert status == 422 and answer["error"]["field"] == "webhook.url", answer


def test_a_batch_whose_slice_cannot_run_fails_and_still_accounts_for_every_line(
    aws: AwsStack,
    api: LoadedFunction,
    infer: LoadedFunction,
    model: FakeModel,  # noqa: F811
) -> None:
    """`completed` means every line ran (whatever each one's outcome); `failed` means the batch
    itself could not run them all: here the second slice fails permanently."""
    import baton.batches
    from baton.errors import InvalidRequestError

    aws.monkeypatch.setattr(baton.batches, "SLICE", 2)
    line_record = baton.batches.BatchService._line_record

    def record_or_refuse(self: Any, tenant_id: str, batch: Any, request: Any) -> Any:
        if request.custom_id == "c":
            raise InvalidRequestError("the stored line is unreadable", field="line 3")
        return line_record(self, tenant_id, batch, request)

    aws.monkeypatch.setattr(baton.batches.BatchService, "_line_record", record_or_refuse)
    batch = aws.load("BatchFunction")
    _, created = call(api, batch_event(aws, "POST", body={"requests": [line(c) for c in "abcde"]}))
    drain(aws, batch, infer)

    _, ended = call(api, batch_event(aws, "GET", batch_id=created["id"]))
    assert ended["status"] == "failed", ended
    assert ended["request_counts"] == {"total": 5, "completed": 2, "failed": 3, "cancelled": 0}
    assert ended["output_url"] and ended["errors_url"]
    prefix = f"batches/acme/{created['id']}"
    assert [entry["custom_id"] for entry in read_jsonl(aws, f"{prefix}/output.jsonl")] == ["a", "b"]
    errors = read_jsonl(aws, f"{prefix}/errors.jsonl")
    assert [entry["custom_id"] for entry in errors] == ["c", "d", "e"]
    assert {entry["error"]["type"] for entry in errors} == {"batch_failed"}
    assert "invalid_request" in errors[0]["error"]["message"] or "slice" in errors[0]["error"]["message"]
    assert len(model.calls) == 2


def move_to_dlq(aws: AwsStack, message: dict[str, Any]) -> None:
    """What SQS's redrive does to a message that crashed its worker MaxReceiveCount times."""
    sqs = boto3.client("sqs")
    sqs.send_message(QueueUrl=aws.queue_url("BatchDeadLetterQueue"), MessageBody=message["Body"])
    sqs.delete_message(QueueUrl=aws.queue_url("BatchQueue"), ReceiptHandle=message["ReceiptHandle"])


def run_dead_letters(aws: AwsStack, dead_letters: LoadedFunction) -> list[dict[str, Any]]:
    """The dead-letter function over the batch DLQ, as its event source runs it; the messages."""
    messages = aws.receive("BatchDeadLetterQueue")
    assert messages
    assert dead_letters(aws.sqs_event("BatchDeadLetterQueue", messages)) == {"batchItemFailures": []}
    sqs = boto3.client("sqs")
    for message in messages:
        sqs.delete_message(
            QueueUrl=aws.queue_url("BatchDeadLetterQueue"), ReceiptHandle=message["ReceiptHandle"]
        )
    return messages


def custom_ids_once(aws: AwsStack, batch_id: str) -> tuple[list[str], list[dict[str, Any]]]:
    prefix = f"batches/acme/{batch_id}"
    output = read_jsonl(aws, f"{prefix}/output.jsonl")
    errors = read_jsonl(aws, f"{prefix}/errors.jsonl")
    every = [entry["custom_id"] for entry in output + errors]
    assert len(every) == len(set(every)), every
    return [entry["custom_id"] for entry in output], errors


def test_a_slice_that_crashes_its_worker_fails_the_batch_through_the_dlq_every_line_once(
    aws: AwsStack,
    api: LoadedFunction,
    infer: LoadedFunction,
    model: FakeModel,  # noqa: F811
    receiver: Receiver,  # noqa: F811
    secret: str,  # noqa: F811
    bus_events: Any,
) -> None:
    """The second slice's command crashed its worker MaxReceiveCount times and SQS moved it to the
    batch DLQ: the dead-letter function fails the batch (archiving the message), lines already
    jobs keep their job's outcome, the others go to errors as batch_failed, the batch ends
    `failed` with its event and webhook; a copy of the same dead letter changes nothing."""
    import baton.batches
    from baton.deadletters import ARCHIVE_PREFIX, ArchivedDeadLetter
    from baton.store import JobStore
    from baton_dev.dlq import DlqError, redrive_letter

    aws.monkeypatch.setattr(baton.batches, "SLICE", 2)
    batch, dead_letters, deliver = (
        aws.load("BatchFunction"),
        aws.load("DeadLetterFunction"),
        aws.load("DeliverFunction"),
    )
    body = {"requests": [line(c) for c in "abcde"], "webhook": {"url": HOOK}}
    _, created = call(api, batch_event(aws, "POST", body=body))
    batch_id = created["id"]
    assert batch(aws.take_event("BatchQueue")) == {"batchItemFailures": []}  # slice 0: a, b
    [second] = aws.receive("BatchQueue")
    assert json.loads(second["Body"]) == {
        "kind": "slice",
        "tenant_id": "acme",
        "batch_id": batch_id,
        "start": 2,
    }
    move_to_dlq(aws, second)

    [letter_message] = run_dead_letters(aws, dead_letters)
    assert aws.queued("BatchDeadLetterQueue") == 0  # consumed, not peeked
    drain(aws, batch, infer)

    _, ended = call(api, batch_event(aws, "GET", batch_id=batch_id))
    assert ended["status"] == "failed", ended
    assert ended["request_counts"] == {"total": 5, "completed": 2, "failed": 3, "cancelled": 0}
    output, errors = custom_ids_once(aws, batch_id)
    assert output == ["a", "b"]
    assert [entry["custom_id"] for entry in errors] == ["c", "d", "e"]
    assert {entry["error"]["type"] for entry in errors} == {"batch_failed"}
    # A line that never started is a job ended without running, written with its count: a late
    # copy of its slice's command cannot make it run after it was counted.
    assert [entry["job_id"] for entry in errors] == [line_job_id("acme", batch_id, c) for c in "cde"]
    job = json.loads(api(aws.api_event("api-get-job.json", job_id=errors[0]["job_id"]))["body"])
    assert (job["status"], job["error"]["type"]) == ("failed", "batch_failed")
    assert len(model.calls) == 2

    # The copy for operators, as a job step's dead letter is kept (baton dlq list / show).
    s3 = boto3.client("s3")
    [key] = [
        item["Key"]
        for item in s3.list_objects_v2(Bucket=aws.bucket, Prefix=f"{ARCHIVE_PREFIX}/batch/").get(
            "Contents", []
        )
    ]
    letter = ArchivedDeadLetter.model_validate_json(s3.get_object(Bucket=aws.bucket, Key=key)["Body"].read())
    assert (letter.stage, letter.batch_id, letter.tenant_id, letter.outcome) == (
        "batch",
        batch_id,
        "acme",
        "batch_failing",
    )
    assert letter.body == second["Body"] and letter.message_id == letter_message["MessageId"]
    assert f"dead letter {letter.id}" in errors[0]["error"]["message"]
    with pytest.raises(DlqError, match="is a batch message"):
        redrive_letter(letter, jobs=JobStore(aws.jobs_table), sqs=boto3.client("sqs"), queues={})

    # The terminal event once, and the webhook through its delivery record.
    finished = [e for e in bus_events.drain() if e["detail-type"] == "Batch Completed"]
    assert [e["detail"]["status"] for e in finished] == ["failed"]
    assert deliver(aws.take_event("WebhookDeliveryQueue")) == {"batchItemFailures": []}
    [delivery] = receiver.deliveries
    assert delivery["headers"]["webhook-id"] == f"msg_{batch_id}_failed"
    payload = Webhook(secret).verify(delivery["body"], delivery["headers"])
    assert payload["type"] == "batch.failed"
    assert payload["data"]["request_counts"] == ended["request_counts"]

    # At-least-once: the same dead letter again is archived once and changes nothing.
    boto3.client("sqs").send_message(
        QueueUrl=aws.queue_url("BatchDeadLetterQueue"), MessageBody=second["Body"]
    )
    run_dead_letters(aws, dead_letters)
    drain(aws, batch, infer)
    _, again = call(api, batch_event(aws, "GET", batch_id=batch_id))
    assert (again["status"], again["request_counts"]) == ("failed", ended["request_counts"])
    assert aws.receive("WebhookDeliveryQueue") == []  # no second webhook


def test_a_line_whose_count_crashes_its_worker_is_counted_once_from_its_job(
    aws: AwsStack,
    api: LoadedFunction,
    infer: LoadedFunction,
    model: FakeModel,  # noqa: F811
) -> None:
    """A line's terminal event that dead-lettered (its count kept crashing): the batch fails
    (it could not count its lines itself), and the fail chain counts that line from its job."""
    batch, dead_letters = aws.load("BatchFunction"), aws.load("DeadLetterFunction")
    _, created = call(api, batch_event(aws, "POST", body={"requests": [line(c) for c in "xyz"]}))
    batch_id = created["id"]
    assert batch(aws.take_event("BatchQueue")) == {"batchItemFailures": []}
    assert infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}
    events = aws.receive("BatchQueue")
    assert len(events) == 3
    [lost] = [e for e in events if json.loads(e["Body"])["detail"]["metadata"]["custom_id"] == "y"]
    move_to_dlq(aws, lost)
    rest = [e for e in events if e is not lost]
    assert batch(aws.sqs_event("BatchQueue", rest)) == {"batchItemFailures": []}
    _, waiting = call(api, batch_event(aws, "GET", batch_id=batch_id))
    assert (waiting["status"], waiting["request_counts"]["completed"]) == ("in_progress", 2)

    run_dead_letters(aws, dead_letters)
    drain(aws, batch, infer)
    _, ended = call(api, batch_event(aws, "GET", batch_id=batch_id))
    assert ended["status"] == "failed", ended
    assert ended["request_counts"] == {"total": 3, "completed": 3, "failed": 0, "cancelled": 0}
    output, errors = custom_ids_once(aws, batch_id)
    assert sorted(output) == ["x", "y", "z"] and errors == []


def test_the_fan_out_makes_few_aws_requests_per_line(
    aws: AwsStack,
    api: LoadedFunction,
    infer: LoadedFunction,
    model: FakeModel,  # noqa: F811
) -> None:
    """A slice of lines: one conditional write per job, its commands and Job Accepted events ten
    per request, one hand-off mark per slice (not per line). Then each line's count. (50 lines:
    the unit-test process keeps more than 100 values of one metric in a module whose namespace
    was read before the functions' environment was set, and Powertools' auto-flush then fails.)"""
    from tests.unit.conftest import recorded_calls

    batch = aws.load("BatchFunction")
    lines = 50
    _, created = call(api, batch_event(aws, "POST", body={"requests": [line(str(i)) for i in range(lines)]}))
    with recorded_calls() as calls:
        assert batch(aws.take_event("BatchQueue")) == {"batchItemFailures": []}
    fan_out = [f"{c.service}:{c.operation}" for c in calls if c.function == "BatchFunction"]
    assert fan_out.count("dynamodb:PutItem") == lines
    assert fan_out.count("sqs:SendMessageBatch") == lines // 10
    assert fan_out.count("events:PutEvents") == lines // 10
    assert "sqs:SendMessage" not in fan_out  # a single slice: no next one
    assert len(fan_out) / lines <= 1.3, sorted(fan_out)

    def run_batches_of_ten(queue: str, function: LoadedFunction) -> None:
        """As the event source does (BatchSize 10)."""
        messages = aws.receive(queue)
        for start in range(0, len(messages), 10):
            event = aws.sqs_event(queue, messages[start : start + 10])
            assert function(event) == {"batchItemFailures": []}

    def finished() -> bool:
        return bool(call(api, batch_event(aws, "GET", batch_id=created["id"]))[1]["status"] == "completed")

    # Until every line is counted: the limiter may defer a call (a delayed copy of its command).
    deadline = time.monotonic() + 60
    with recorded_calls() as calls:
        while not finished():
            assert time.monotonic() < deadline, "the batch did not finish"
            run_batches_of_ten("InferQueue", infer)
            run_batches_of_ten("BatchQueue", batch)
            time.sleep(0.1)
    counting = [f"{c.service}:{c.operation}" for c in calls if c.function == "BatchFunction"]
    _, ended = call(api, batch_event(aws, "GET", batch_id=created["id"]))
    assert ended["request_counts"]["completed"] == lines
    # An invocation's lines are counted in one transaction, which also says whether they were the
    # last: only the last count is redone without that condition, and only then is the batch
    # read (to finish it).
    assert counting.count("dynamodb:TransactWriteItems") <= lines // 10 + 6, sorted(counting)
    assert counting.count("dynamodb:GetItem") == 1


def test_a_fail_slice_that_crashes_its_worker_is_settled_by_the_dead_letter_function(
    aws: AwsStack,
    api: LoadedFunction,
    infer: LoadedFunction,
    model: FakeModel,  # noqa: F811
) -> None:
    """The fail chain's own command dead-letters too: the dead-letter function queues it again,
    forced (settled without waiting for a slice still starting), for the batch function to run:
    the dead-letter function's short timeout never holds a slice's settling or the batch's files.
    The chain goes on from there and ends."""
    import baton.batches
    from tests.unit.conftest import recorded_calls

    aws.monkeypatch.setattr(baton.batches, "SLICE", 2)
    batch, dead_letters = aws.load("BatchFunction"), aws.load("DeadLetterFunction")
    _, created = call(api, batch_event(aws, "POST", body={"requests": [line(c) for c in "abc"]}))
    batch_id = created["id"]
    assert batch(aws.take_event("BatchQueue")) == {"batchItemFailures": []}  # slice 0: a, b
    [second] = aws.receive("BatchQueue")
    move_to_dlq(aws, second)
    run_dead_letters(aws, dead_letters)
    [fail] = aws.receive("BatchQueue")
    assert json.loads(fail["Body"])["kind"] == "fail"
    move_to_dlq(aws, fail)
    with recorded_calls() as calls:
        run_dead_letters(aws, dead_letters)
    by_dead_letters = {f"{c.service}:{c.operation}" for c in calls if c.function == "DeadLetterFunction"}
    assert not by_dead_letters & {"dynamodb:TransactWriteItems", "dynamodb:BatchGetItem", "s3:GetObject"}
    [forced] = aws.receive("BatchQueue")
    assert json.loads(forced["Body"]) == {
        "kind": "fail",
        "tenant_id": "acme",
        "batch_id": batch_id,
        "start": 0,
        "force": True,
    }
    assert batch(aws.sqs_event("BatchQueue", [forced])) == {"batchItemFailures": []}
    [following] = aws.receive("BatchQueue")
    assert json.loads(following["Body"]) == {
        "kind": "fail",
        "tenant_id": "acme",
        "batch_id": batch_id,
        "start": 2,
    }
    boto3.client("sqs").change_message_visibility(
        QueueUrl=aws.queue_url("BatchQueue"), ReceiptHandle=following["ReceiptHandle"], VisibilityTimeout=0
    )
    drain(aws, batch, infer)
    _, ended = call(api, batch_event(aws, "GET", batch_id=batch_id))
    assert ended["status"] == "failed", ended
    assert ended["request_counts"] == {"total": 3, "completed": 2, "failed": 1, "cancelled": 0}
    output, errors = custom_ids_once(aws, batch_id)
    assert output == ["a", "b"] and [(e["custom_id"], e["error"]["type"]) for e in errors] == [
        ("c", "batch_failed")
    ]


def test_a_late_copy_of_a_dead_slice_cannot_run_lines_already_counted_batch_failed(
    aws: AwsStack,
    api: LoadedFunction,
    infer: LoadedFunction,
    model: FakeModel,  # noqa: F811
) -> None:
    """SQS delivers the second slice's command twice. One copy dead-letters (the batch fails, its
    fail chain counts the slice's lines `batch_failed`) while the other is in flight: it claimed
    the slice before the batch failed and makes the lines' jobs only after they were counted.
    Those jobs are refused (each line's job was written ended with its count): no line is
    counted failed and run too; every line once."""
    import baton.batches

    aws.monkeypatch.setattr(baton.batches, "SLICE", 2)
    batch, late, dead_letters = (
        aws.load("BatchFunction"),
        aws.load("BatchFunction"),
        aws.load("DeadLetterFunction"),
    )
    _, created = call(api, batch_event(aws, "POST", body={"requests": [line(c) for c in "abcde"]}))
    batch_id = created["id"]
    assert batch(aws.take_event("BatchQueue")) == {"batchItemFailures": []}  # slice 0: a, b
    [second] = aws.receive("BatchQueue")
    boto3.client("sqs").send_message(QueueUrl=aws.queue_url("BatchQueue"), MessageBody=second["Body"])
    [copy] = aws.receive("BatchQueue")
    move_to_dlq(aws, second)

    start_slice = baton.batches.BatchService._start_slice
    interleaved: list[int] = []

    def fail_meanwhile(self: Any, tenant_id: str, item: Any, index: int, offsets: Any) -> int:
        """The in-flight copy has claimed the slice; before it makes the jobs, the dead letter
        is handled and the whole fail chain runs."""
        if index == 1 and not interleaved:
            interleaved.append(index)
            run_dead_letters(aws, dead_letters)
            while messages := aws.receive("BatchQueue"):
                assert all(json.loads(m["Body"])["kind"] == "fail" for m in messages)
                assert batch(aws.sqs_event("BatchQueue", messages)) == {"batchItemFailures": []}
            _, failing = call(api, batch_event(aws, "GET", batch_id=batch_id))
            assert failing["request_counts"]["failed"] == 3, failing  # c, d, e: batch_failed
        return int(start_slice(self, tenant_id, item, index, offsets))

    aws.monkeypatch.setattr(baton.batches.BatchService, "_start_slice", fail_meanwhile)
    assert late(aws.sqs_event("BatchQueue", [copy])) == {"batchItemFailures": []}
    assert interleaved == [1]
    drain(aws, batch, infer)

    _, ended = call(api, batch_event(aws, "GET", batch_id=batch_id))
    assert ended["status"] == "failed", ended
    assert ended["request_counts"] == {"total": 5, "completed": 2, "failed": 3, "cancelled": 0}
    output, errors = custom_ids_once(aws, batch_id)
    assert output == ["a", "b"]
    assert [(e["custom_id"], e["error"]["type"]) for e in errors] == [
        ("c", "batch_failed"),
        ("d", "batch_failed"),
        ("e", "batch_failed"),
    ]
    assert len(model.calls) == 2  # c and d never ran
    for custom_id in "cd":
        job_id = line_job_id("acme", batch_id, custom_id)
        job = json.loads(api(aws.api_event("api-get-job.json", job_id=job_id))["body"])
        assert (job["status"], job["error"]["type"]) == ("failed", "batch_failed")


def test_a_cancelled_batch_writes_its_unstarted_lines_as_cancelled_jobs(
    aws: AwsStack,
    api: LoadedFunction,
    infer: LoadedFunction,
    model: FakeModel,  # noqa: F811
) -> None:
    """The cancel chain settles a line that never started the same way: its job is written
    cancelled with its count, so a late slice command finds it and starts nothing."""
    import baton.batches

    aws.monkeypatch.setattr(baton.batches, "SLICE", 2)
    batch = aws.load("BatchFunction")
    _, created = call(api, batch_event(aws, "POST", body={"requests": [line(c) for c in "abc"]}))
    batch_id = created["id"]
    [first] = aws.receive("BatchQueue")
    call(api, batch_event(aws, "DELETE", batch_id=batch_id))
    drain(aws, batch, infer)  # the cancel chain: every line without a job
    boto3.client("sqs").send_message(QueueUrl=aws.queue_url("BatchQueue"), MessageBody=first["Body"])
    drain(aws, batch, infer)  # a late copy of the first slice's command
    _, ended = call(api, batch_event(aws, "GET", batch_id=batch_id))
    assert (ended["status"], ended["request_counts"]["cancelled"]) == ("cancelled", 3), ended
    assert model.calls == []
    job = json.loads(
        api(aws.api_event("api-get-job.json", job_id=line_job_id("acme", batch_id, "a")))["body"]
    )
    assert (job["status"], job["error"]["type"]) == ("cancelled", "cancelled")


def test_a_count_that_meets_a_concurrent_write_is_retried_not_taken_for_counted_before(
    aws: AwsStack,
    api: LoadedFunction,
    infer: LoadedFunction,
    model: FakeModel,  # noqa: F811
) -> None:
    """DynamoDB cancels a transaction that meets a concurrent write on the batch item
    (TransactionConflict): nothing was written, so the line's event is retried and counted then,
    once (before, any cancellation of a one-line count read as `counted before`: the line was
    lost and the batch never finished)."""
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
    from botocore.exceptions import ClientError

    import baton.batches

    batch = aws.load("BatchFunction")
    _, created = call(api, batch_event(aws, "POST", body={"requests": [line("a")]}))
    assert batch(aws.take_event("BatchQueue")) == {"batchItemFailures": []}
    assert infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}
    [event] = aws.receive("BatchQueue")

    real = baton.batches.BatchService._ddb.fget  # type: ignore[attr-defined]
    conflicts: list[int] = []

    class Conflicting:
        def __init__(self, ddb: Any) -> None:
            self._ddb = ddb

        def __getattr__(self, name: str) -> Any:
            return getattr(self._ddb, name)

        def transact_write_items(self, **request: Any) -> Any:
            if not conflicts:
                conflicts.append(1)
                codes = ["None"] * (len(request["TransactItems"]) - 1) + ["TransactionConflict"]
                answer: Any = {
                    "Error": {"Code": "TransactionCanceledException", "Message": "conflict"},
                    "CancellationReasons": [{"Code": code} for code in codes],
                }
                raise ClientError(answer, "TransactWriteItems")
            return self._ddb.transact_write_items(**request)

    aws.monkeypatch.setattr(
        baton.batches.BatchService, "_ddb", property(lambda self: Conflicting(real(self)))
    )
    # The invocation fails (its one record did): the event source delivers the message again.
    with pytest.raises(BatchProcessingError, match="All records failed"):
        batch(aws.sqs_event("BatchQueue", [event]))
    assert conflicts == [1]
    _, waiting = call(api, batch_event(aws, "GET", batch_id=created["id"]))
    assert waiting["request_counts"]["completed"] == 0
    assert batch(aws.sqs_event("BatchQueue", [event])) == {"batchItemFailures": []}
    _, ended = call(api, batch_event(aws, "GET", batch_id=created["id"]))
    assert (ended["status"], ended["request_counts"]["completed"]) == ("completed", 1), ended


def test_an_invocations_terminal_events_are_counted_in_one_transaction(
    aws: AwsStack,
    api: LoadedFunction,
    infer: LoadedFunction,
    model: FakeModel,  # noqa: F811
) -> None:
    """Ten lines' terminal events in one invocation (one twice, as SQS may deliver it): one
    transaction counts them all; the copy and a later redelivery count nothing more."""
    from tests.unit.conftest import recorded_calls

    batch = aws.load("BatchFunction")
    _, created = call(api, batch_event(aws, "POST", body={"requests": [line(str(i)) for i in range(11)]}))
    assert batch(aws.take_event("BatchQueue")) == {"batchItemFailures": []}
    # Until every line's terminal event is queued: the limiter may defer a call (a delayed copy).
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while len(events) < 11:
        assert time.monotonic() < deadline, f"{len(events)} of 11 terminal events"
        if messages := aws.receive("InferQueue"):
            assert infer(aws.sqs_event("InferQueue", messages)) == {"batchItemFailures": []}
        else:
            time.sleep(0.1)
        events += aws.receive("BatchQueue")
    assert len(events) == 11
    first_ten = events[:10]
    with recorded_calls() as calls:
        assert batch(aws.sqs_event("BatchQueue", [*first_ten, first_ten[0]])) == {"batchItemFailures": []}
    made = [f"{c.service}:{c.operation}" for c in calls if c.function == "BatchFunction"]
    assert made == ["dynamodb:TransactWriteItems"], made
    _, counting = call(api, batch_event(aws, "GET", batch_id=created["id"]))
    assert (counting["status"], counting["request_counts"]["completed"]) == ("in_progress", 10)

    # A redelivered event and the last line: counted once, and the batch ends.
    assert batch(aws.sqs_event("BatchQueue", [first_ten[3], events[10]])) == {"batchItemFailures": []}
    _, ended = call(api, batch_event(aws, "GET", batch_id=created["id"]))
    assert ended["status"] == "completed", ended
    assert ended["request_counts"] == {"total": 11, "completed": 11, "failed": 0, "cancelled": 0}
    output, errors = custom_ids_once(aws, created["id"])
    assert sorted(output, key=int) == [str(i) for i in range(11)] and errors == []


def test_a_large_batch_writes_its_files_in_parts_one_invocation_each(
    aws: AwsStack,
    api: LoadedFunction,
    infer: LoadedFunction,
    model: FakeModel,  # noqa: F811
) -> None:
    """A batch of more than WRITE_SLICES slices (here 5 slices of 2 lines, 2 slices per part)
    writes its files through the write chain: one part per command, the last joining them, in
    input order, by a multipart upload when large (here: parts of at least 16 bytes, moto's
    minimum lowered to match), then deleting the parts."""
    import moto.s3.models

    import baton.batches

    aws.monkeypatch.setattr(baton.batches, "SLICE", 2)
    aws.monkeypatch.setattr(baton.batches, "WRITE_SLICES", 2)
    aws.monkeypatch.setattr(baton.batches, "JOIN_PART_BYTES", 16)
    aws.monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 16)
    batch = aws.load("BatchFunction")
    requests = [line(str(i), "[poison]" if i == 6 else "Summarize: crates.") for i in range(9)]
    _, created = call(api, batch_event(aws, "POST", body={"requests": requests}))
    batch_id = created["id"]
    refuse_poison(aws)
    writes: list[dict[str, Any]] = []
    while True:
        ran = False
        for queue, function in (("BatchQueue", batch), ("InferQueue", infer)):
            messages = aws.receive(queue)
            writes += [
                json.loads(m["Body"]) for m in messages if json.loads(m["Body"]).get("kind") == "write"
            ]
            if messages:
                assert function(aws.sqs_event(queue, messages)) == {"batchItemFailures": []}
                ran = True
        if not ran:
            break
    assert [command["start"] for command in writes] == [0, 4, 8]

    _, ended = call(api, batch_event(aws, "GET", batch_id=batch_id))
    assert ended["status"] == "completed", ended
    assert ended["request_counts"] == {"total": 9, "completed": 8, "failed": 1, "cancelled": 0}
    output, errors = custom_ids_once(aws, batch_id)
    assert output == ["0", "1", "2", "3", "4", "5", "7", "8"]
    assert [entry["custom_id"] for entry in errors] == ["6"]
    s3 = boto3.client("s3")
    listed = s3.list_objects_v2(Bucket=aws.bucket, Prefix=f"batches/acme/{batch_id}/")
    assert sorted(item["Key"].rsplit("/", 1)[1] for item in listed["Contents"]) == [
        "errors.jsonl",
        "input.jsonl",
        "output.jsonl",
    ]
    head = s3.head_object(Bucket=aws.bucket, Key=f"batches/acme/{batch_id}/output.jsonl")
    assert head["ETag"].strip('"').endswith("-3")  # joined by a multipart upload of three parts


def test_a_join_whose_upload_fails_aborts_it_and_its_retry_writes_the_files(
    aws: AwsStack,
    api: LoadedFunction,
    infer: LoadedFunction,
    model: FakeModel,  # noqa: F811
) -> None:
    """The last write command's multipart upload fails at its second part: the upload is aborted
    (S3 bills an unfinished upload's parts), the command is reported failed, and its redelivery
    joins the files (in order, from the parts still there)."""
    import moto.s3.models
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
    from botocore.exceptions import EndpointConnectionError

    import baton.aws
    import baton.batches

    aws.monkeypatch.setattr(baton.batches, "SLICE", 2)
    aws.monkeypatch.setattr(baton.batches, "WRITE_SLICES", 2)
    aws.monkeypatch.setattr(baton.batches, "JOIN_PART_BYTES", 16)
    aws.monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 16)
    batch = aws.load("BatchFunction")
    _, created = call(api, batch_event(aws, "POST", body={"requests": [line(str(i)) for i in range(9)]}))
    batch_id = created["id"]
    failures = {"left": 1}

    def second_part_fails(params: dict[str, Any], **_: Any) -> None:
        if params["PartNumber"] == 2 and failures["left"]:
            failures["left"] -= 1
            raise EndpointConnectionError(endpoint_url="https://s3.example")

    baton.aws.client("s3").meta.events.register("provide-client-params.s3.UploadPart", second_part_fails)
    failed: list[dict[str, Any]] = []
    while True:
        ran = False
        for queue, function in (("BatchQueue", batch), ("InferQueue", infer)):
            messages = aws.receive(queue) or failed
            failed = []
            if messages:
                try:
                    answer = function(aws.sqs_event(queue, messages))
                    reported = {item["itemIdentifier"] for item in answer["batchItemFailures"]}
                except BatchProcessingError:  # every record failed: Lambda retries the batch
                    reported = {m["MessageId"] for m in messages}
                failed = [m for m in messages if m["MessageId"] in reported]
                assert all(json.loads(m["Body"]).get("kind") == "write" for m in failed), failed
                ran = True
        if not ran:
            break
    s3 = boto3.client("s3")
    assert failures["left"] == 0  # the failure happened, and the command was retried
    assert s3.list_multipart_uploads(Bucket=aws.bucket).get("Uploads", []) == []
    _, ended = call(api, batch_event(aws, "GET", batch_id=batch_id))
    assert ended["status"] == "completed", ended
    output, errors = custom_ids_once(aws, batch_id)
    assert output == [str(i) for i in range(9)] and errors == []
    head = s3.head_object(Bucket=aws.bucket, Key=f"batches/acme/{batch_id}/output.jsonl")
    assert head["ETag"].strip('"').endswith("-3")


def test_counts_are_grouped_to_fit_one_transaction_each() -> None:
    """A transaction holds 100 items: a marker per line, a never-started line's job too, and the
    count. A slice of 100 never-started lines takes three transactions; 150 counted lines, two."""
    from baton.batches import LineCount, _transaction_chunks
    from baton.records import JobRecord

    job = JobRecord(
        job_id="j", tenant_id="t", model="m", created_ms=0, updated_ms=0, expires_at=0, deadline_ms=0
    )
    never = [LineCount(str(i), "failed", job) for i in range(100)]
    assert [len(chunk) for chunk in _transaction_chunks(never)] == [49, 49, 2]
    counted = [LineCount(str(i), "completed") for i in range(150)]
    assert [len(chunk) for chunk in _transaction_chunks(counted)] == [99, 51]
    mixed = [LineCount("a", "completed"), *never[:50]]
    assert all(
        1 + sum(2 if line.never_started else 1 for line in chunk) <= 100
        for chunk in _transaction_chunks(mixed)
    )
    # Large requests: the 4 MB limit binds first (300 KB each: 9 lines per transaction).
    large = job.model_copy(update={"request": {"input": {"prompt": "x" * 300_000}}})
    heavy = [LineCount(str(i), "failed", large) for i in range(20)]
    assert [len(chunk) for chunk in _transaction_chunks(heavy)] == [9, 9, 2]
