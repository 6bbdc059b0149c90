"""What AWS would refuse, the local runtime refuses too: a template value the code cannot use
(OPENAI_BASE_URL set to "") and a permission missing from a function's role.

One small template, run by the real local runtime (moto with IAM enforced, functions as
awslambdaric processes under their own assumed roles)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator

import pytest

from baton_dev.runtime.local import LocalRuntime, RuntimeOptions, free_port
from baton_dev.simulator import SimulatorConfig

from .conftest import ROOT

pytestmark = pytest.mark.integration

TEMPLATE = textwrap.dedent(
    f"""
    AWSTemplateFormatVersion: "2010-09-09"
    Transform: AWS::Serverless-2016-10-31
    Parameters:
      LlmEndpoint:
        Type: String
        Default: ""
    Conditions:
      HasLlmEndpoint: !Not [!Equals [!Ref LlmEndpoint, ""]]
    Globals:
      Function:
        Runtime: python3.13
        Timeout: 20
        CodeUri: code/
        Handler: app.handler
        Layers: [!Ref Layer]
        Environment:
          Variables:
            TABLE: !Ref Table
            QUEUE_URL: !Ref Queue
    Resources:
      Layer:
        Type: AWS::Serverless::LayerVersion
        Properties:
          ContentUri: {ROOT / "layers" / "baton"}
      Table:
        Type: AWS::DynamoDB::Table
        Properties:
          BillingMode: PAY_PER_REQUEST
          AttributeDefinitions: [{{AttributeName: pk, AttributeType: S}}]
          KeySchema: [{{AttributeName: pk, KeyType: HASH}}]
      Queue:
        Type: AWS::SQS::Queue
      # What template.yaml did before: an empty parameter becomes an empty variable.
      EmptyEndpointFunction:
        Type: AWS::Serverless::Function
        Properties:
          Environment:
            Variables:
              OPENAI_BASE_URL: !Ref LlmEndpoint
          Policies:
            - DynamoDBCrudPolicy: {{TableName: !Ref Table}}
            - SQSSendMessagePolicy: {{QueueName: !GetAtt Queue.QueueName}}
      # The same function with one statement removed (no SQSSendMessagePolicy), and the variable
      # left unset when the parameter is empty.
      NoSendFunction:
        Type: AWS::Serverless::Function
        Properties:
          Environment:
            Variables:
              OPENAI_BASE_URL: !If [HasLlmEndpoint, !Ref LlmEndpoint, !Ref AWS::NoValue]
          Policies:
            - DynamoDBCrudPolicy: {{TableName: !Ref Table}}
    """
)
HANDLER = textwrap.dedent(
    """
    import os

    import boto3
    import openai  # at init: a cold import on a busy machine is no part of an invocation's timeout


    def handler(event, context):
        action = event["action"]
        try:
            if action == "put":
                boto3.client("dynamodb").put_item(TableName=os.environ["TABLE"], Item={"pk": {"S": "x"}})
            elif action == "send":
                boto3.client("sqs").send_message(QueueUrl=os.environ["QUEUE_URL"], MessageBody="x")
            elif action == "model":
                openai.OpenAI(api_key="unused", max_retries=0).models.list()
            elif action == "environment":
                return {"OPENAI_BASE_URL": os.environ.get("OPENAI_BASE_URL", "<unset>")}
        except Exception as error:
            return {"error": f"{type(error).__name__}: {error} (cause: {error.__cause__})"}
        return {"ok": True}
    """
)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRuntime]:
    workdir = tmp_path_factory.mktemp("parameters-and-iam")
    (workdir / "code").mkdir()
    (workdir / "code" / "app.py").write_text(HANDLER)
    (workdir / "template.yaml").write_text(TEMPLATE)
    saved = dict(os.environ)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    os.environ.pop("OPENAI_BASE_URL", None)
    runtime = LocalRuntime(
        RuntimeOptions(
            template=workdir / "template.yaml",
            port=free_port(),
            state_dir=workdir / "state",
            stack_name="parameters-and-iam",
            # An explicit override wins over what `baton dev` derives (the simulator's URL).
            parameters={"LlmEndpoint": ""},
            simulator=SimulatorConfig(latency_ms=0),
        )
    )
    try:
        yield runtime.start()
    finally:
        runtime.stop()
        os.environ.clear()
        os.environ.update(saved)


def _call(runtime: LocalRuntime, function: str, action: str) -> dict[str, str]:
    outcome = runtime.functions[function].invoke({"action": action})
    assert outcome.ok, outcome.error
    return dict(outcome.result)


def test_an_empty_variable_reaches_the_code_as_on_aws_and_fails_the_same_way(runtime: LocalRuntime) -> None:
    assert runtime.parameters["LlmEndpoint"] == ""
    assert runtime.parameter_sources["LlmEndpoint"] == "--parameter-overrides"

    assert _call(runtime, "EmptyEndpointFunction", "environment") == {"OPENAI_BASE_URL": ""}
    answer = _call(runtime, "EmptyEndpointFunction", "model")
    assert "Request URL is missing an 'http://' or 'https://' protocol" in answer["error"]
    # `!If [..., !Ref AWS::NoValue]` leaves the variable unset, as CloudFormation does.
    assert _call(runtime, "NoSendFunction", "environment") == {"OPENAI_BASE_URL": "<unset>"}


def test_each_function_calls_aws_with_its_own_role_and_a_missing_statement_is_denied(
    runtime: LocalRuntime,
) -> None:
    assert runtime.iam_enforced
    assert _call(runtime, "EmptyEndpointFunction", "put") == {"ok": True}
    assert _call(runtime, "EmptyEndpointFunction", "send") == {"ok": True}

    assert _call(runtime, "NoSendFunction", "put") == {"ok": True}
    denied = _call(runtime, "NoSendFunction", "send")
    assert "AccessDenied" in denied["error"], denied
    assert "NoSendFunctionRole" in denied["error"]  # the caller is that function's assumed role
