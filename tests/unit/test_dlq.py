"""`baton dlq` core logic (baton_dev.dlq) on moto's in-process SQS, and on stubbed answers for the
AWS-only message move task."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from baton_dev.dlq import (
    DlqError,
    dead_letter_queues,
    describe_body,
    list_dead_letter_queues,
    move_task_unsupported,
    oldest_message_ages,
    peek,
    redrive,
    resolve_dead_letter_queue,
)
from baton_dev.target import resolve_target
from tests.unit.conftest import AwsStack

REGION = "us-east-1"
COMMAND = {"job_id": "job_1", "tenant_id": "acme", "step": "infer", "version": 3, "depth": 1}
EVENT = {
    "version": "0",
    "id": "e-1",
    "detail-type": "Job Completed",
    "source": "baton.jobs",
    "detail": {"job_id": "job_2", "tenant_id": "globex", "status": "completed", "version": 2, "depth": 0},
}


@pytest.fixture
def sqs() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("sqs", region_name=REGION)


@pytest.fixture
def queues(sqs: Any) -> dict[str, str]:
    """A DLQ and its source, wired with a redrive policy like the template's."""
    dlq = sqs.create_queue(QueueName="WorkDeadLetterQueue")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    source = sqs.create_queue(
        QueueName="WorkQueue",
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3})},
    )["QueueUrl"]
    return {"WorkQueue": source, "WorkDeadLetterQueue": dlq}


def depth(sqs: Any, url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def fill(sqs: Any, url: str, count: int, *, prefix: str = "m") -> list[str]:
    bodies = [json.dumps({**COMMAND, "job_id": f"{prefix}{index}"}) for index in range(count)]
    for body in bodies:
        sqs.send_message(
            QueueUrl=url,
            MessageBody=body,
            MessageAttributes={"origin": {"DataType": "String", "StringValue": "unit"}},
        )
    return bodies


def drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while batch := sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=60
    ).get("Messages", []):
        messages.extend(batch)
    return messages


def move_task_answers_like_moto_server(sqs: Any) -> list[str]:
    """moto's in-process mock raises NotImplementedError for StartMessageMoveTask; its server (what
    `baton dev` runs) answers an HTML 500 that botocore parses as code "500". Reproduce the latter."""
    calls: list[str] = []

    def answer(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        calls.append("StartMessageMoveTask")
        parsed = {
            "Error": {"Code": "500", "Message": "<!doctype html><title>500 Internal Server Error</title>"},
            "ResponseMetadata": {"HTTPStatusCode": 500},
        }
        return AWSResponse("http://moto", 500, HTTPHeaders(), None), parsed

    sqs.meta.events.register("before-call.sqs.StartMessageMoveTask", answer)
    return calls


def client_error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "StartMessageMoveTask")


# -- discovery ---------------------------------------------------------------------------------


def test_dead_letter_queues_pair_by_logical_id() -> None:
    found = dead_letter_queues(
        {
            "InferQueue": "https://q/infer",
            "NotifyDeadLetterQueue": "https://q/notify-dlq",
            "InferDeadLetterQueue": "https://q/infer-dlq",
            "OrphanDeadLetterQueue": "https://q/orphan-dlq",
            "NotifyQueue": "https://q/notify",
        }
    )
    assert [(q.logical_id, q.source_logical_id, q.source_url, q.stage) for q in found] == [
        ("InferDeadLetterQueue", "InferQueue", "https://q/infer", "infer"),
        ("NotifyDeadLetterQueue", "NotifyQueue", "https://q/notify", "notify"),
        ("OrphanDeadLetterQueue", None, None, "orphan"),
    ]


@pytest.mark.parametrize(
    "name",
    [
        "InferDeadLetterQueue",
        "inferdeadletterqueue",
        "infer",
        "INFER",
        "stack-InferDLQ-1",
        "https://q/stack-InferDLQ-1",
    ],
)
def test_a_dlq_is_named_by_logical_id_stage_queue_name_or_url(name: str) -> None:
    queues = {"InferQueue": "https://q/stack-Infer-1", "InferDeadLetterQueue": "https://q/stack-InferDLQ-1"}
    assert resolve_dead_letter_queue(queues, name).url == "https://q/stack-InferDLQ-1"


def test_an_unknown_dlq_name_lists_the_known_ones() -> None:
    queues = {"InferQueue": "https://q/i", "InferDeadLetterQueue": "https://q/idlq"}
    with pytest.raises(
        DlqError, match=r"no dead-letter queue 'infer-queue'; known: infer \(InferDeadLetterQueue\)"
    ):
        resolve_dead_letter_queue(queues, "infer-queue")
    with pytest.raises(DlqError):
        resolve_dead_letter_queue(queues, "InferQueue")  # the source queue is not a DLQ


def test_list_finds_every_dlq_of_the_template_paired_as_its_redrive_policies_say(aws: AwsStack) -> None:
    sqs = boto3.client("sqs")
    fill(sqs, aws.queue_url("InferDeadLetterQueue"), 2)
    fill(sqs, aws.queue_url("NotifyDeadLetterQueue"), 1)
    sqs.receive_message(QueueUrl=aws.queue_url("NotifyDeadLetterQueue"), VisibilityTimeout=60)

    statuses = list_dead_letter_queues(sqs, aws.stack.queue_urls)

    found = {status.queue.logical_id: status for status in statuses}
    assert set(found) == {name for name in aws.stack.queue_urls if name.endswith("DeadLetterQueue")}
    assert set(found) >= {f"{stage}DeadLetterQueue" for stage in ("Ingest", "Extract", "Infer", "Notify")}
    for logical_id, status in found.items():
        # The pairing by name is the one the template wires: the source's redrive policy targets the DLQ.
        assert status.queue.source_url == aws.queue_url(logical_id.removesuffix("DeadLetterQueue") + "Queue")
        policy = json.loads(
            sqs.get_queue_attributes(QueueUrl=status.queue.source_url, AttributeNames=["RedrivePolicy"])[
                "Attributes"
            ]["RedrivePolicy"]
        )
        assert policy["deadLetterTargetArn"] == aws.queue_arn(logical_id)
        assert status.max_receive_count == int(policy["maxReceiveCount"])
        assert status.oldest_age_s is None
    assert {
        name: (status.visible, status.in_flight)
        for name, status in found.items()
        if status.visible or status.in_flight
    } == {
        "InferDeadLetterQueue": (2, 0),
        "NotifyDeadLetterQueue": (0, 1),
    }


def test_oldest_message_ages_come_from_cloudwatch() -> None:
    with mock_aws():
        cloudwatch = boto3.client("cloudwatch", region_name=REGION)
        now = datetime.now(UTC)
        for minutes_ago, age in ((6, 30.0), (2, 95.0)):
            cloudwatch.put_metric_data(
                Namespace="AWS/SQS",
                MetricData=[
                    {
                        "MetricName": "ApproximateAgeOfOldestMessage",
                        "Dimensions": [{"Name": "QueueName", "Value": "dlq-a"}],
                        "Value": age,
                        "Timestamp": now - timedelta(minutes=minutes_ago),
                    }
                ],
            )
        assert oldest_message_ages(cloudwatch, ["dlq-a", "dlq-b"], now=now) == {"dlq-a": 95.0}


# -- peek --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (json.dumps(COMMAND), {"kind": "command", "job_id": "job_1", "tenant_id": "acme", "step": "infer"}),
        (
            json.dumps(EVENT),
            {
                "kind": "event",
                "detail_type": "Job Completed",
                "job_id": "job_2",
                "tenant_id": "globex",
                "step": None,
            },
        ),
        (
            json.dumps(
                {"detail-type": "Object Created", "source": "aws.s3", "detail": {"bucket": {"name": "b"}}}
            ),
            {
                "kind": "event",
                "detail_type": "Object Created",
                "job_id": None,
                "tenant_id": None,
                "step": None,
            },
        ),
        (json.dumps({"job_id": "job_3", "step": "infer"}), {"kind": "json"}),
        ("[1, 2]", {"kind": "json"}),
        ("not json", {"kind": "text"}),
    ],
)
def test_describe_body_recognises_commands_and_events(body: str, expected: dict[str, Any]) -> None:
    assert describe_body(body) == expected


def test_peek_sees_past_the_first_batch_and_leaves_every_message(sqs: Any, queues: dict[str, str]) -> None:
    dlq = queues["WorkDeadLetterQueue"]
    bodies = fill(sqs, dlq, 14)

    first = peek(sqs, dlq, max_messages=50)

    assert sorted(message.body for message in first) == sorted(bodies)
    assert len({message.message_id for message in first}) == 14
    assert depth(sqs, dlq) == (14, 0)  # all visible again at once: nothing consumed, nothing hidden
    assert {message.receive_count for message in first} == {1}
    assert {message.kind for message in first} == {"command"}
    assert first[0].message_attributes == {"origin": "unit"}
    assert first[0].sent_at is not None and abs(datetime.now(UTC) - first[0].sent_at) < timedelta(minutes=1)

    second = peek(sqs, dlq, max_messages=5)

    assert len(second) == 5
    assert {message.receive_count for message in second} == {2}  # the documented cost of a peek
    assert depth(sqs, dlq) == (14, 0)


# -- redrive -----------------------------------------------------------------------------------


def test_redrive_falls_back_to_receive_send_when_move_tasks_are_not_implemented(
    sqs: Any, queues: dict[str, str]
) -> None:
    dlq, source = queues["WorkDeadLetterQueue"], queues["WorkQueue"]
    bodies = fill(sqs, dlq, 23)
    calls = move_task_answers_like_moto_server(sqs)

    result = redrive(sqs, dlq, source)

    assert calls == ["StartMessageMoveTask"]
    assert (result.moved, result.method, result.failed) == (23, "receive-send", 0)
    assert result.fallback_reason is not None and "HTTP 500" in result.fallback_reason
    assert depth(sqs, dlq) == (0, 0)
    moved = drain(sqs, source)
    assert sorted(message["Body"] for message in moved) == sorted(bodies)
    assert {message["MessageAttributes"]["origin"]["StringValue"] for message in moved} == {"unit"}


def test_redrive_with_a_limit_moves_only_that_many_without_a_move_task(
    sqs: Any, queues: dict[str, str]
) -> None:
    dlq, source = queues["WorkDeadLetterQueue"], queues["WorkQueue"]
    fill(sqs, dlq, 13)
    calls = move_task_answers_like_moto_server(sqs)

    result = redrive(sqs, dlq, source, max_messages=12)

    assert (result.moved, result.method, result.fallback_reason) == (12, "receive-send", None)
    assert calls == []
    assert depth(sqs, dlq) == (1, 0)
    assert depth(sqs, source) == (12, 0)


class FailingSends:
    """The SQS client, except that SendMessageBatch reports entries whose body contains "poison"
    as failed (as SQS does per entry, e.g. on a throttled or invalid entry)."""

    def __init__(self, sqs: Any) -> None:
        self._sqs = sqs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    def send_message_batch(self, *, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        good = [entry for entry in Entries if "poison" not in entry["MessageBody"]]
        answer = self._sqs.send_message_batch(QueueUrl=QueueUrl, Entries=good) if good else {}
        failed = [
            {"Id": entry["Id"], "SenderFault": True, "Code": "InvalidMessageContents", "Message": "poison"}
            for entry in Entries
            if "poison" in entry["MessageBody"]
        ]
        return {"Successful": answer.get("Successful", []), "Failed": failed}


def test_redrive_deletes_only_what_was_sent(sqs: Any, queues: dict[str, str]) -> None:
    dlq, source = queues["WorkDeadLetterQueue"], queues["WorkQueue"]
    fill(sqs, dlq, 3, prefix="good")
    fill(sqs, dlq, 2, prefix="poison")

    result = redrive(cast(Any, FailingSends(sqs)), dlq, source, method="receive-send")

    assert (result.moved, result.failed) == (3, 2)
    assert depth(sqs, dlq) == (2, 0)  # the unsent ones are still there, and visible at once
    assert all("poison" in message["Body"] for message in drain(sqs, dlq))
    assert all("good" in message["Body"] for message in drain(sqs, source))


def test_a_failing_send_call_leaves_every_message_on_the_dlq(sqs: Any, queues: dict[str, str]) -> None:
    dlq = queues["WorkDeadLetterQueue"]
    fill(sqs, dlq, 4)
    gone = sqs.create_queue(QueueName="Gone")["QueueUrl"]
    sqs.delete_queue(QueueUrl=gone)

    with pytest.raises(ClientError):
        redrive(sqs, dlq, gone, method="receive-send")

    assert depth(sqs, dlq) == (4, 0)


def test_redrive_refuses_the_dlq_as_its_own_destination(sqs: Any, queues: dict[str, str]) -> None:
    dlq = queues["WorkDeadLetterQueue"]
    with pytest.raises(DlqError, match="itself"):
        redrive(sqs, dlq, dlq)


def test_redrive_uses_the_move_task_where_sqs_has_it() -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    dlq_url, dlq_arn = "https://sqs.us-east-1.amazonaws.com/1/dlq", "arn:aws:sqs:us-east-1:1:dlq"
    src_url, src_arn = "https://sqs.us-east-1.amazonaws.com/1/src", "arn:aws:sqs:us-east-1:1:src"
    task = {"TaskHandle": "h-1", "SourceArn": dlq_arn, "DestinationArn": src_arn}
    with Stubber(sqs) as stub:
        for url, arn in ((dlq_url, dlq_arn), (src_url, src_arn)):
            stub.add_response(
                "get_queue_attributes",
                {"Attributes": {"QueueArn": arn}},
                {"QueueUrl": url, "AttributeNames": ["QueueArn"]},
            )
        stub.add_response(
            "start_message_move_task",
            {"TaskHandle": "h-1"},
            {"SourceArn": dlq_arn, "DestinationArn": src_arn},
        )
        for status, moved in (("RUNNING", 3), ("COMPLETED", 7)):
            stub.add_response(
                "list_message_move_tasks",
                {
                    "Results": [
                        {
                            **task,
                            "Status": status,
                            "ApproximateNumberOfMessagesMoved": moved,
                            "ApproximateNumberOfMessagesToMove": 7,
                        }
                    ]
                },
                {"SourceArn": dlq_arn, "MaxResults": 10},
            )
        sleeps: list[float] = []

        result = redrive(sqs, dlq_url, src_url, sleep=sleeps.append)

        stub.assert_no_pending_responses()
    assert (result.moved, result.method, result.task_status, result.task_handle) == (
        7,
        "move-task",
        "COMPLETED",
        "h-1",
    )
    assert sleeps == [1.0]


@pytest.mark.parametrize(
    ("code", "status", "unsupported"),
    [
        ("500", 500, True),  # moto server: unhandled NotImplementedError
        ("NotImplemented", 501, True),
        ("UnsupportedOperation", 400, True),
        ("AWS.SimpleQueueService.UnsupportedOperation", 400, True),
        ("InvalidAction", 400, True),
        ("InternalError", 500, False),  # AWS's own failure of a supported call: not a reason to switch
        ("AccessDenied", 403, False),
        ("InvalidParameterValue", 400, False),
    ],
)
def test_only_a_missing_api_counts_as_unsupported(code: str, status: int, unsupported: bool) -> None:
    assert move_task_unsupported(client_error(code, status)) is unsupported


def test_a_real_move_task_error_is_raised_not_papered_over() -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    with Stubber(sqs) as stub:
        for arn in ("arn:aws:sqs:us-east-1:1:dlq", "arn:aws:sqs:us-east-1:1:src"):
            stub.add_response("get_queue_attributes", {"Attributes": {"QueueArn": arn}})
        stub.add_client_error("start_message_move_task", "AccessDenied", http_status_code=403)
        with pytest.raises(ClientError, match="AccessDenied"):
            redrive(sqs, "https://q/dlq", "https://q/src")


def test_a_deployed_stacks_queues_come_from_its_outputs() -> None:
    """`--stack NAME`: the DLQs and their sources are the stack outputs named `...QueueUrl`."""
    template = {
        "Resources": {
            "InferDeadLetterQueue": {"Type": "AWS::SQS::Queue"},
            "InferQueue": {"Type": "AWS::SQS::Queue"},
            "Table": {"Type": "AWS::DynamoDB::Table", "Properties": TABLE},
        },
        "Outputs": {
            "ApiUrl": {"Value": "https://api.example.com/v1"},
            "JobsTableName": {"Value": {"Ref": "Table"}},
            "InferQueueUrl": {"Value": {"Ref": "InferQueue"}},
            "InferDeadLetterQueueUrl": {"Value": {"Ref": "InferDeadLetterQueue"}},
        },
    }
    with mock_aws():
        boto3.client("cloudformation").create_stack(StackName="baton-prod", TemplateBody=json.dumps(template))
        sqs = boto3.client("sqs")
        urls = {
            logical_id: next(url for url in sqs.list_queues()["QueueUrls"] if f"-{logical_id}-" in url)
            for logical_id in ("InferQueue", "InferDeadLetterQueue")
        }

        target = resolve_target(stack="baton-prod")

    assert target.queues == urls
    assert [(q.logical_id, q.source_url) for q in dead_letter_queues(target.queues)] == [
        ("InferDeadLetterQueue", urls["InferQueue"])
    ]


TABLE = {
    "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
    "BillingMode": "PAY_PER_REQUEST",
}
