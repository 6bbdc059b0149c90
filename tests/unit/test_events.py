"""events/*.json are real-shaped: each validates against the Powertools parser model of its source
and, for the SQS ones, against the record model the function parses its batch with."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import (
    ApiGatewayAuthorizerRequest,
    APIGatewayProxyEventModel,
    SqsModel,
)
from pydantic import BaseModel

from baton.models import CreateJobRequest, JobStatus, LifecycleDetail, StageCommand, Step
from baton.parsing import LifecycleEventRecord, StageCommandRecord, UploadEventRecord

EVENTS = Path(__file__).resolve().parents[2] / "events"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def test_every_sample_event_is_covered() -> None:
    covered = {
        "api-create-job.json",
        "api-get-job.json",
        "api-cancel-job.json",
        "authorizer-request.json",
        "sqs-extract-command.json",
        "sqs-infer-command.json",
        "sqs-notify-terminal-event.json",
        "sqs-ingest-s3-upload.json",
    }
    assert {path.name for path in EVENTS.glob("*.json")} == covered


@pytest.mark.parametrize(
    ("name", "method", "resource"),
    [
        ("api-create-job.json", "POST", "/v1/jobs"),
        ("api-get-job.json", "GET", "/v1/jobs/{job_id}"),
        ("api-cancel-job.json", "DELETE", "/v1/jobs/{job_id}"),
    ],
)
def test_api_events_are_rest_proxy_events(name: str, method: str, resource: str) -> None:
    raw = load(name)
    event = parse(event=raw, model=APIGatewayProxyEventModel)
    assert event.httpMethod == method
    assert event.resource == resource
    assert event.requestContext.httpMethod == method
    assert event.requestContext.resourcePath == resource
    assert event.requestContext.path == f"/{event.requestContext.stage}{event.path}"
    # What the REQUEST authorizer put in its context, as API Gateway hands it to the integration.
    assert raw["requestContext"]["authorizer"]["tenant_id"] == "acme"
    assert {key: [value] for key, value in event.headers.items()} == event.multiValueHeaders
    if "{job_id}" in resource:
        assert event.pathParameters is not None
        assert event.path == f"/v1/jobs/{event.pathParameters['job_id']}"


def test_create_job_event_body_is_a_valid_request() -> None:
    event = parse(event=load("api-create-job.json"), model=APIGatewayProxyEventModel)
    assert event.headers["Content-Type"] == "application/json"
    assert isinstance(event.body, str)
    request = CreateJobRequest.model_validate_json(event.body)
    assert request.input.prompt


def test_authorizer_event_is_a_request_authorizer_event() -> None:
    event = parse(event=load("authorizer-request.json"), model=ApiGatewayAuthorizerRequest)
    assert event.type == "REQUEST"
    assert event.methodArn.startswith("arn:aws:execute-api:us-east-1:")
    assert event.headers["Authorization"].startswith("Bearer ")
    assert event.requestContext.authorizer is None  # it is the authorizer that decides


@pytest.mark.parametrize(
    ("name", "record_model"),
    [
        ("sqs-extract-command.json", StageCommandRecord),
        ("sqs-infer-command.json", StageCommandRecord),
        ("sqs-notify-terminal-event.json", LifecycleEventRecord),
        ("sqs-ingest-s3-upload.json", UploadEventRecord),
    ],
)
def test_sqs_events_parse_with_the_functions_record_models(name: str, record_model: type[BaseModel]) -> None:
    raw = load(name)
    envelope = parse(event=raw, model=SqsModel)
    assert len(envelope.Records) == 1
    for record in raw["Records"]:
        assert record["md5OfBody"] == hashlib.md5(record["body"].encode()).hexdigest()  # noqa: S324
        assert record["eventSourceARN"].startswith("arn:aws:sqs:us-east-1:")
        record_model.model_validate(record)


@pytest.mark.parametrize(
    ("name", "step"), [("sqs-extract-command.json", Step.EXTRACT), ("sqs-infer-command.json", Step.INFER)]
)
def test_command_events_carry_their_stage(name: str, step: Step) -> None:
    record = StageCommandRecord.model_validate(load(name)["Records"][0])
    command = record.body
    assert isinstance(command, StageCommand)
    assert command.step is step
    assert (command.version, command.depth) == (1, 0)
    assert record.messageAttributes["step"].stringValue == step.value
    assert record.messageAttributes["job_id"].stringValue == command.job_id


def test_notify_event_is_a_terminal_baton_event() -> None:
    record = LifecycleEventRecord.model_validate(load("sqs-notify-terminal-event.json")["Records"][0])
    event = record.body
    assert event.source == "baton.jobs"
    assert event.detail_type == "Job Completed"
    detail = event.detail
    assert isinstance(detail, LifecycleDetail)
    assert detail.status is JobStatus.COMPLETED
    assert detail.job is not None
    assert detail.job["id"] == detail.job_id
    assert detail.job["status"] == "completed"
    assert set(detail.job) >= {"id", "status", "progress", "usage", "timings", "result", "metadata"}


def test_ingest_event_is_an_s3_object_created_upload() -> None:
    record = UploadEventRecord.model_validate(load("sqs-ingest-s3-upload.json")["Records"][0])
    event = record.body
    assert (event.source, event.detail_type) == ("aws.s3", "Object Created")
    assert event.detail.object.key == "uploads/acme/report.pdf"
    assert event.detail.object.etag
    assert event.resources == [f"arn:aws:s3:::{event.detail.bucket.name}"]
