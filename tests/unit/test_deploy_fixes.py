"""What only AWS used to reveal: an empty model endpoint, a backoff AWS refuses, a gateway response
that is not JSON. Each test fails on the behaviour issue 7 found."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from botocore.exceptions import ClientError

import baton.retries
from baton.errors import ModelError
from baton.llm import endpoint_problem
from baton.retries import RetryPolicy, queue_url_of
from baton.settings import Settings
from baton.store import JobStore
from baton_dev.runtime.api_gateway import authorizer_refusal, render_gateway_template
from baton_dev.runtime.template import AppTemplate
from baton_dev.target import TargetError, stack_region

if TYPE_CHECKING:
    from conftest import AwsStack, LoadedFunction


def accept(aws: AwsStack, api: LoadedFunction) -> str:
    event = aws.api_event(
        "api-create-job.json", body={"input": {"prompt": "Hello"}}, drop_headers=("Idempotency-Key",)
    )
    response = api(event)
    assert response["statusCode"] == 202, response["body"]
    return str(json.loads(response["body"])["id"])


# -- the model endpoint ---------------------------------------------------------------------------
def test_empty_llm_endpoint_leaves_openai_base_url_unset(app_template: AppTemplate) -> None:
    """The openai client reads OPENAI_BASE_URL itself: "" would be its base URL. Unset instead."""
    for spec in app_template.functions.values():
        assert "OPENAI_BASE_URL" not in spec.environment, spec.logical_id
        assert "OPENAI_API_KEY_SECRET_ARN" not in spec.environment, spec.logical_id
        assert all(value != "" for value in spec.environment.values()), spec.logical_id


def test_a_set_llm_endpoint_reaches_every_function(app_template: AppTemplate) -> None:
    configured = AppTemplate.load(
        app_template.path, parameters={"LlmEndpoint": "https://llm.example.com/v1"}, region="us-east-1"
    )
    for spec in configured.functions.values():
        assert spec.environment["OPENAI_BASE_URL"] == "https://llm.example.com/v1"


@pytest.mark.parametrize(
    ("environment", "problem"),
    [
        ({"OPENAI_BASE_URL": ""}, "not an http(s) URL"),
        ({"OPENAI_BASE_URL": "api.openai.com/v1"}, "not an http(s) URL"),
        ({}, "no model endpoint configured"),
        ({"OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"}, None),
        (
            {"OPENAI_API_KEY_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:k-AbCdEf"},
            None,
        ),
        ({"OPENAI_API_KEY": "sk-test"}, None),
    ],
)
def test_endpoint_problem(
    environment: dict[str, str], problem: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    found = endpoint_problem(Settings())
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_no_endpoint_on_aws_fails_the_job_once_with_a_clear_error(
    aws: AwsStack, api: LoadedFunction, infer: LoadedFunction, caplog: pytest.LogCaptureFixture
) -> None:
    """The template's defaults (no LlmEndpoint, no key): the real baton.llm path, no fake model.
    The job fails at once as model_not_configured, not retried as model_unavailable."""
    assert "OPENAI_BASE_URL" not in infer.environment
    job_id = accept(aws, api)
    assert infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}
    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.status.value == "failed"
    assert record.error is not None
    assert (record.error.type, record.error.retryable) == ("model_not_configured", False)
    assert "LlmApiKeySecretArn" in record.error.message
    said = [
        log.getMessage() for log in caplog.records if log.__dict__.get("error_type") == "model_not_configured"
    ]
    assert said == ["job failed"]  # once, and never "SQS will redeliver"
    assert not [log for log in caplog.records if "redeliver" in log.getMessage()]


# -- the SQS-native backoff -----------------------------------------------------------------------
def test_queue_url_is_derived_from_the_arn_without_an_aws_call(aws: AwsStack) -> None:
    for queue in ("InferQueue", "IngestQueue", "NotifyQueue"):
        url = queue_url_of(aws.queue_arn(queue))
        assert url.rsplit("/", 2)[-2:] == aws.queue_url(queue).rsplit("/", 2)[-2:]
        assert url.startswith(boto3.client("sqs").meta.endpoint_url)


def test_backoff_makes_a_failed_record_visible_again_after_its_delay(
    aws: AwsStack, api: LoadedFunction, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The visibility really changes (the queue's own timeout is 720 s): without the backoff the
    message would stay hidden for 12 minutes."""

    def unavailable(*_: Any, **__: Any) -> Any:
        raise ModelError("the model endpoint failed (503)", retryable=True, type_="model_unavailable")

    monkeypatch.setattr(baton.llm, "complete", unavailable)
    accept(aws, api)
    infer = aws.load("InferFunction", BATON_RETRY_BASE_SECONDS="0.001", BATON_RETRY_CAP_SECONDS="1")
    [message] = aws.receive("InferQueue")
    with pytest.raises(Exception, match="All records failed"):
        infer(aws.sqs_event("InferQueue", [message]))
    deadline = time.monotonic() + 10
    while not (again := aws.receive("InferQueue")):
        assert time.monotonic() < deadline, "the failed record never became visible again"
        time.sleep(0.2)
    assert [item["MessageId"] for item in again] == [message["MessageId"]]


def test_a_refused_backoff_is_logged_as_an_error_with_a_metric(
    aws: AwsStack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def access_denied(record: SqsRecordModel, seconds: int) -> None:
        raise ClientError(
            {"Error": {"Code": "AccessDenied", "Message": "not authorized"}}, "ChangeMessageVisibility"
        )

    monkeypatch.setattr(baton.retries, "delay_redelivery", access_denied)
    record = SqsRecordModel.model_validate(
        aws.sqs_record('{"job": 1}') | {"eventSourceARN": aws.queue_arn("InferQueue")}
    )

    def work() -> dict[str, Any]:
        raise ModelError("the model endpoint failed (503)", retryable=True, type_="model_unavailable")

    baton.retries.metrics.clear_metrics()
    try:
        with pytest.raises(ModelError):
            RetryPolicy(max_attempts=5, base_seconds=1, cap_seconds=10).run(
                record, work, stage="infer", give_up=None
            )
        assert baton.retries.metrics.metric_set["RetryBackoffFailed"]["Value"] == [1.0]
    finally:
        baton.retries.metrics.clear_metrics()
    [refused] = [entry for entry in caplog.records if "could not set the retry backoff" in entry.getMessage()]
    assert refused.levelname == "ERROR"
    assert refused.__dict__["backoff_error"] == "AWS answered AccessDenied"
    assert refused.__dict__["stage"] == "infer"


# -- gateway responses ----------------------------------------------------------------------------
@pytest.mark.parametrize("response", ["UNAUTHORIZED", "ACCESS_DENIED", "DEFAULT_4XX", "DEFAULT_5XX"])
@pytest.mark.parametrize("message", ["Missing Authentication Token", 'Invalid "key"\\ value', "Forbidden"])
def test_every_gateway_response_renders_json_as_aws_does(
    app_template: AppTemplate, response: str, message: str
) -> None:
    template = app_template.gateway_responses[response]["responseTemplates"]["application/json"]
    body = json.loads(render_gateway_template(template, message))
    assert set(body) == {"error"}
    if "$context.error.messageString" in template:
        assert body["error"]["message"] == message


@pytest.mark.parametrize(
    ("authorizer_status", "answered", "error_type"),
    [(401, 401, "unauthorized"), (403, 403, "forbidden"), (500, 500, "internal_error")],
)
def test_a_failed_authorizer_answers_a_retryable_5xx_not_access_denied(
    app_template: AppTemplate, authorizer_status: int, answered: int, error_type: str
) -> None:
    """An authorizer that timed out under load was rendered as ACCESS_DENIED: a valid key got a
    final 403 "this API key may not do that" (chaos clients gave up on three jobs). API Gateway
    answers a failed authorizer with AUTHORIZER_CONFIGURATION_ERROR, a 500 (DEFAULT_5XX here)."""
    kind, status, message = authorizer_refusal(authorizer_status)
    response = (
        app_template.gateway_responses.get(kind)
        or app_template.gateway_responses["DEFAULT_4XX" if status < 500 else "DEFAULT_5XX"]
    )
    assert int(response.get("statusCode") or status) == answered
    template = response["responseTemplates"]["application/json"]
    assert json.loads(render_gateway_template(template, message))["error"]["type"] == error_type


def test_rendering_quotes_message_string_as_aws_does() -> None:
    """API Gateway's $context.error.messageString carries its own quotes: quoting it again in a
    template gives invalid JSON on AWS, and the local gateway must show the same."""
    assert (
        render_gateway_template('{"m": $context.error.messageString}', 'say "hi"') == '{"m": "say \\"hi\\""}'
    )
    with pytest.raises(json.JSONDecodeError):
        json.loads(
            render_gateway_template('{"m": "$context.error.messageString"}', "Missing Authentication Token")
        )


# -- the CLI finds a deployed stack's region ------------------------------------------------------
def test_stack_region_comes_from_aws_configuration_else_the_samconfig_profile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    samconfig = tmp_path / "samconfig.toml"
    samconfig.write_text(
        'version = 0.1\n[default.global.parameters]\nstack_name = "baton-dev"\n'
        '[default.deploy.parameters]\nregion = "eu-west-1"\n'
        '[prod.deploy.parameters]\nstack_name = "baton-prod"\nregion = "eu-central-1"\n'
    )
    assert stack_region("baton-dev", samconfig) == "eu-west-1"
    assert stack_region("baton-prod", samconfig) == "eu-central-1"
    with pytest.raises(TargetError, match="no AWS region for stack 'other'"):
        stack_region("other", samconfig)
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert stack_region("baton-prod", samconfig) == "ap-south-1"
    # The checkout's own samconfig.toml names both shipped profiles.
    monkeypatch.delenv("AWS_REGION")
    assert stack_region("baton-prod") == stack_region("baton-dev") == "us-east-1"
