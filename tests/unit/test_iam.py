"""Each function's role allows what its code does, and the check that says so can fail.

Every unit test that invokes a handler already checks its recorded AWS calls against the role
(the `aws` fixture, tests/unit/iam_check.py); these tests pin the checker and the statements
issue 7 found missing (the retry backoff's ChangeMessageVisibility, kms:Decrypt for a CMK secret).
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

import pytest

import baton.llm
from baton.errors import ModelError
from baton_dev.runtime.template import AppTemplate
from tests.unit.conftest import aws_names, recorded_calls
from tests.unit.iam_check import Call, Request, Roles, requests_of

if TYPE_CHECKING:
    from tests.unit.conftest import AwsStack, LoadedFunction

STAGE_QUEUES = {
    "IngestFunction": "IngestQueue",
    "ExtractFunction": "ExtractQueue",
    "InferFunction": "InferQueue",
    "ToolFunction": "ToolQueue",
    "NotifyFunction": "NotifyQueue",
}
SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:baton/openai-AbC123"
KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def backoff(aws: AwsStack, function: str, queue: str) -> Call:
    return Call(
        function, "sqs", "ChangeMessageVisibility", {"QueueUrl": aws.queue_url(queue), "ReceiptHandle": "r"}
    )


def without_statement(cloudformation: dict[str, Any], role: str, action: str) -> dict[str, Any]:
    broken = copy.deepcopy(cloudformation)
    policies = broken["Resources"][role]["Properties"]["Policies"]
    for policy in policies:
        if "PolicyDocument" not in policy:
            continue  # an Fn::If (e.g. the secret's policy when a secret is configured)
        statements = policy["PolicyDocument"]["Statement"]
        policy["PolicyDocument"]["Statement"] = [s for s in statements if action not in json.dumps(s)]
    assert broken != cloudformation, f"{role} has no {action} statement to remove"
    return broken


@pytest.mark.parametrize(("function", "queue"), sorted(STAGE_QUEUES.items()))
def test_each_stage_may_back_off_on_its_own_queue_only(aws: AwsStack, function: str, queue: str) -> None:
    roles = Roles(aws.app, aws_names(aws.stack))
    assert roles.denied([backoff(aws, function, queue)]) == []
    other = next(q for f, q in STAGE_QUEUES.items() if f != function)
    assert roles.denied([backoff(aws, function, other)]) != []


def test_the_check_fails_when_a_statement_is_removed(aws: AwsStack) -> None:
    """Drop InferFunction's ChangeMessageVisibility statement from the translated template: the
    backoff call is reported, with the action and the queue's ARN."""
    broken = without_statement(aws.app.cloudformation, "InferFunctionRole", "sqs:ChangeMessageVisibility")
    roles = Roles(aws.app, aws_names(aws.stack), broken)
    assert roles.denied([backoff(aws, "InferFunction", "InferQueue")]) == [
        Request(
            "InferFunction",
            "sqs:ChangeMessageVisibility",
            aws.stack.queue_arns["InferQueue"],
            "ChangeMessageVisibility",
        )
    ]


def test_a_real_retry_is_recorded_and_allowed(
    aws: AwsStack, api: LoadedFunction, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calls are recorded from the code, not listed: a retryable model failure makes the infer
    handler call ChangeMessageVisibility, and its role allows exactly that queue."""

    def unavailable(*_: Any, **__: Any) -> Any:
        raise ModelError("the model endpoint failed (503)", retryable=True, type_="model_unavailable")

    monkeypatch.setattr(baton.llm, "complete", unavailable)
    response = api(
        aws.api_event(
            "api-create-job.json", body={"input": {"prompt": "Hi"}}, drop_headers=("Idempotency-Key",)
        )
    )
    assert response["statusCode"] == 202
    infer = aws.load("InferFunction")
    with recorded_calls() as calls, pytest.raises(Exception, match="All records failed"):
        infer(aws.take_event("InferQueue"))
    actions = {(call.function, call.service, call.operation) for call in calls}
    assert ("InferFunction", "sqs", "ChangeMessageVisibility") in actions
    assert ("InferFunction", "sqs", "GetQueueUrl") not in actions  # derived from the ARN instead
    assert Roles(aws.app, aws_names(aws.stack)).denied(calls) == []


def test_a_secret_with_a_customer_key_gets_kms_decrypt(aws: AwsStack) -> None:
    app = AppTemplate.load(
        aws.app.path,
        parameters={"LlmApiKeySecretArn": SECRET, "LlmApiKeySecretKmsKeyArn": KEY},
        region="us-east-1",
    )
    roles = Roles(app, aws_names(aws.stack))
    secret = Call("InferFunction", "secretsmanager", "GetSecretValue", {"SecretId": SECRET})
    assert roles.denied([secret]) == []
    assert roles.allows(Request("InferFunction", "kms:Decrypt", KEY, "GetSecretValue"))
    assert not roles.allows(Request("ApiFunction", "kms:Decrypt", KEY, "GetSecretValue"))
    # Without the key parameter there is no kms statement at all, and no secret access.
    plain = Roles(aws.app, aws_names(aws.stack))
    assert not plain.allows(Request("InferFunction", "kms:Decrypt", KEY, "GetSecretValue"))
    assert plain.denied([secret]) != []


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            Call(
                "F",
                "dynamodb",
                "TransactWriteItems",
                {"TransactItems": [{"Put": {"TableName": "t"}}, {"ConditionCheck": {"TableName": "u"}}]},
            ),
            [("dynamodb:PutItem", "table/t"), ("dynamodb:ConditionCheckItem", "table/u")],
        ),
        (
            Call("F", "dynamodb", "Query", {"TableName": "t", "IndexName": "i"}),
            [("dynamodb:Query", "table/t/index/i")],
        ),
        (Call("F", "s3", "HeadObject", {"Bucket": "b", "Key": "k"}), [("s3:GetObject", "arn:aws:s3:::b/k")]),
        (Call("F", "s3", "ListObjectsV2", {"Bucket": "b"}), [("s3:ListBucket", "arn:aws:s3:::b")]),
        (
            Call("F", "sqs", "SendMessageBatch", {"QueueUrl": "https://h/1/q", "Entries": []}),
            [("sqs:SendMessage", ":q")],
        ),
        (
            Call("F", "events", "PutEvents", {"Entries": [{"EventBusName": "bus"}]}),
            [("events:PutEvents", "event-bus/bus")],
        ),
    ],
)
def test_calls_map_to_the_iam_actions_aws_checks(
    call: Call, expected: list[tuple[str, str]], aws: AwsStack
) -> None:
    found = requests_of(call, aws_names(aws.stack))
    assert [request.action for request in found] == [action for action, _ in expected]
    assert all(
        request.resource.endswith(suffix) for request, (_, suffix) in zip(found, expected, strict=True)
    )
