"""Unit-test fixtures: the template's own data plane inside moto, and the real handlers loaded on it.

`aws` provisions template.yaml (translated by the SAM translator, then created with
CloudFormation inside moto's in-process `mock_aws`), so the tables, queues, bucket, bus and rules
the handlers meet are exactly the ones the template declares: a mock cannot drift from the
infrastructure. The handler modules (`functions/<name>/app.py`) are imported as module `app`, as
Lambda does, a fresh module per load (one "instance" of the function), after the function's
environment is set, because they read settings at import.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import os
import sys
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

# Powertools' Tracer imports the X-Ray SDK even when tracing is disabled, and the SDK's recorder
# opens a UDP socket (never used) at import. Importing it here, at collection, creates that one
# recorder before pytest-socket blocks sockets for the tests themselves.
import aws_xray_sdk.core  # noqa: F401
import boto3
import botocore.client
import botocore.loaders
import botocore.session
import moto.cloudformation.models
import pytest
from aws_lambda_powertools import Metrics
from moto import mock_aws

import baton.aws
import baton.settings
from baton_dev.runtime.lambda_context import LocalLambdaContext
from baton_dev.runtime.provision import ProvisionedStack, provision
from baton_dev.runtime.template import AppTemplate
from tests.unit.iam_check import Call, Names, Roles

REPO = Path(__file__).resolve().parents[2]
EVENTS = REPO / "events"
REGION = "us-east-1"
STACK_NAME = "baton-unit"
TENANT = "acme"

# Function environment variables that must never leak in from the developer's shell.
_FOREIGN_PREFIXES = ("BATON_", "OPENAI_", "POWERTOOLS_", "AWS_ENDPOINT_URL")
_FOREIGN_NAMES = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_CONFIG_FILE")


def load_event(name: str) -> dict[str, Any]:
    """A fresh copy of one of the sample events under events/."""
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def pytest_configure(config: pytest.Config) -> None:
    # Every handler flushes metrics; Powertools warns when an invocation recorded none.
    config.addinivalue_line("filterwarnings", "ignore:No application metrics to publish:UserWarning")


@pytest.fixture(autouse=True)
def hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No Baton, OpenAI, Powertools or endpoint settings from outside; dummy AWS credentials."""
    for name in list(os.environ):
        if name.startswith(_FOREIGN_PREFIXES) or name in _FOREIGN_NAMES:
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    _clear_caches()
    yield
    _clear_caches()


def _clear_caches() -> None:
    baton.settings.get_settings.cache_clear()
    baton.aws.client.cache_clear()
    # Metrics instances share one metric set, and with POWERTOOLS_METRICS_DISABLED a handler's
    # flush leaves it as it was (only an enabled flush clears it): values piled up across tests
    # until one metric held 100 and Powertools serialized it in the middle of a later test.
    Metrics._metrics.clear()
    Metrics._metadata.clear()


@pytest.fixture(scope="session", autouse=True)
def fast_moto() -> Iterator[None]:
    """Speed-ups that change no behaviour, so that every test can afford a fresh stack:

    - moto resets boto3's default session on every start and Baton creates a session per client,
      and each new botocore session re-reads the service models from disk (~0.1 s per client):
      share one data loader (its models are read-only) across sessions;
    - moto parses a CloudFormation body with the pure-Python YAML loader even when it is JSON
      (the translated template is): try JSON first, as YAML is a superset of it.
    """
    loader = functools.cache(botocore.loaders.create_loader)

    def parse_template(template: str) -> dict[str, Any]:
        try:
            parsed: dict[str, Any] = json.loads(template)
        except ValueError:
            return yaml_parse_template(template)
        return parsed

    yaml_parse_template = moto.cloudformation.models.Stack.parse_template
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.session, "create_loader", loader)
        patch.setattr(moto.cloudformation.models.Stack, "parse_template", staticmethod(parse_template))
        yield


@pytest.fixture(scope="session")
def app_template() -> AppTemplate:
    """template.yaml translated once per session (SAM translation is the slow part)."""
    return AppTemplate.load(REPO / "template.yaml", region=REGION)


@dataclass
class LoadedFunction:
    """A function's handler module, invoked as Lambda would: in the function's own environment
    (Powertools idempotency keys include AWS_LAMBDA_FUNCTION_NAME) with a context counting down."""

    logical_id: str
    module: ModuleType
    timeout_s: int
    memory_mb: int
    environment: dict[str, str]

    def __call__(self, event: dict[str, Any]) -> Any:
        saved = {name: os.environ.get(name) for name in self.environment}
        os.environ.update(self.environment)
        _invoking.append(self.logical_id)  # AWS calls from now on are this function's (IAM check)
        try:
            return self.module.lambda_handler(event, self.context())
        finally:
            _invoking.pop()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def context(self) -> LocalLambdaContext:
        return LocalLambdaContext(
            function_name=self.logical_id, memory_limit_in_mb=self.memory_mb, timeout_s=self.timeout_s
        )


@dataclass
class AwsStack:
    """The provisioned data plane plus helpers to drive handlers the way their event sources do."""

    app: AppTemplate
    stack: ProvisionedStack
    env: dict[str, str]
    monkeypatch: pytest.MonkeyPatch

    # -- resources ------------------------------------------------------------------------------
    @property
    def bucket(self) -> str:
        return self.env["BUCKET_NAME"]

    @property
    def jobs_table(self) -> str:
        return self.env["JOBS_TABLE"]

    @property
    def idempotency_table(self) -> str:
        return self.env["IDEMPOTENCY_TABLE"]

    @property
    def limiter_table(self) -> str:
        return self.stack.physical_ids["LimiterTable"]

    @property
    def event_bus(self) -> str:
        return self.env["EVENT_BUS_NAME"]

    def queue_url(self, logical_id: str) -> str:
        return self.stack.queue_urls[logical_id]

    def queue_arn(self, logical_id: str) -> str:
        return self.stack.queue_arns[logical_id]

    # -- handlers -------------------------------------------------------------------------------
    def load(self, logical_id: str, **overrides: str) -> LoadedFunction:
        """Import functions/<name>/app.py afresh, as module `app` like Lambda does (a cold start),
        with the function's environment: every call gives an independent instance."""
        spec = self.app.functions[logical_id]
        environment = {
            **self.app.function_environment(logical_id, self.stack.resolved),
            "AWS_LAMBDA_FUNCTION_NAME": logical_id,
            **overrides,
        }
        for name, value in environment.items():
            self.monkeypatch.setenv(name, value)
        baton.settings.get_settings.cache_clear()
        module_spec = importlib.util.spec_from_file_location("app", spec.module_file)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        previous = sys.modules.get("app")
        sys.modules["app"] = module
        try:
            module_spec.loader.exec_module(module)
        finally:
            if previous is None:
                sys.modules.pop("app", None)
            else:
                sys.modules["app"] = previous
        return LoadedFunction(logical_id, module, spec.timeout, spec.memory_mb, environment)

    # -- API Gateway events ---------------------------------------------------------------------
    def api_event(
        self,
        name: str,
        *,
        body: Any = None,
        raw_body: str | None = None,
        job_id: str | None = None,
        tenant: str = TENANT,
        headers: dict[str, str] | None = None,
        drop_headers: tuple[str, ...] = (),
        query: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One of events/api-*.json adapted to a test: body, job id, tenant, extra or dropped headers."""
        event = load_event(name)
        if body is not None:
            event["body"] = json.dumps(body)
        if raw_body is not None:
            event["body"] = raw_body
        if job_id is not None:
            path = f"/v1/jobs/{job_id}"
            event["path"] = path
            event["pathParameters"] = {"job_id": job_id}
            event["requestContext"]["path"] = f"/{event['requestContext']['stage']}{path}"
        event["requestContext"]["authorizer"] = {"principalId": tenant, "tenant_id": tenant}
        for header in drop_headers:
            event["headers"].pop(header, None)
            event["multiValueHeaders"].pop(header, None)
        for header, value in (headers or {}).items():
            event["headers"][header] = value
            event["multiValueHeaders"][header] = [value]
        if query is not None:
            event["queryStringParameters"] = query
            event["multiValueQueryStringParameters"] = {key: [value] for key, value in query.items()}
        return event

    # -- SQS, as Lambda's event source mapping sees it ------------------------------------------
    def receive(self, logical_id: str, *, max_messages: int = 10) -> list[dict[str, Any]]:
        """Take (receive) every visible message of a template queue."""
        with the_harness():  # Lambda's poller, not the function, even when called from a handler's wait
            return self._receive(logical_id, max_messages)

    def _receive(self, logical_id: str, max_messages: int) -> list[dict[str, Any]]:
        sqs = boto3.client("sqs")
        messages: list[dict[str, Any]] = []
        while True:
            answer: Any = sqs.receive_message(
                QueueUrl=self.queue_url(logical_id),
                MaxNumberOfMessages=max_messages,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            batch = answer.get("Messages", [])
            if not batch:
                return messages
            messages.extend(batch)

    def queued(self, logical_id: str) -> int:
        """Visible plus in-flight messages of a template queue."""
        attributes = boto3.client("sqs").get_queue_attributes(
            QueueUrl=self.queue_url(logical_id),
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    def sqs_event(self, logical_id: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """An SQS Lambda event carrying received messages, shaped like events/sqs-*.json."""
        return {"Records": [self._record(logical_id, message) for message in messages]}

    @staticmethod
    def sqs_record(body: str, *, message_id: str | None = None) -> dict[str, Any]:
        return sqs_record(body, message_id=message_id)

    def take_event(self, logical_id: str) -> dict[str, Any]:
        """Receive what is queued and wrap it as the function's event (at least one message)."""
        messages = self.receive(logical_id)
        assert messages, f"nothing queued on {logical_id}"
        return self.sqs_event(logical_id, messages)

    def _record(self, logical_id: str, message: dict[str, Any]) -> dict[str, Any]:
        record = sqs_record(message["Body"], message_id=message["MessageId"])
        record["receiptHandle"] = message["ReceiptHandle"]
        record["eventSourceARN"] = self.queue_arn(logical_id)
        record["attributes"].update({key: str(value) for key, value in message["Attributes"].items()})
        record["messageAttributes"] = {
            name: {
                "stringValue": value.get("StringValue"),
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": value["DataType"],
            }
            for name, value in message.get("MessageAttributes", {}).items()
        }
        return record


def sqs_record(body: str, *, message_id: str | None = None) -> dict[str, Any]:
    """One SQS Lambda record with the given body, from the envelope of events/sqs-infer-command.json."""
    record: dict[str, Any] = copy.deepcopy(load_event("sqs-infer-command.json")["Records"][0])
    record["messageId"] = message_id or str(uuid.uuid4())
    record["body"] = body
    record["md5OfBody"] = hashlib.md5(body.encode()).hexdigest()  # noqa: S324 - SQS's own checksum
    record["messageAttributes"] = {}
    return record


# The function whose handler is running, innermost last ("" while the test harness acts meanwhile).
_invoking: list[str] = []


@contextlib.contextmanager
def the_harness() -> Iterator[None]:
    """AWS calls made here are the test's (or Lambda's event source's), not the running handler's."""
    _invoking.append("")
    try:
        yield
    finally:
        _invoking.pop()


@contextlib.contextmanager
def recorded_calls() -> Iterator[list[Call]]:
    """Every botocore API call made while a handler runs, attributed to its function."""
    original = botocore.client.BaseClient._make_api_call  # type: ignore[attr-defined]
    calls: list[Call] = []

    def recording(client: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        if _invoking and _invoking[-1]:
            service = client.meta.service_model.service_name
            calls.append(Call(_invoking[-1], service, operation_name, copy.deepcopy(api_params)))
        return original(client, operation_name, api_params)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
        yield calls


def aws_names(stack: ProvisionedStack) -> Names:
    account = next(iter(stack.queue_arns.values())).split(":")[4]
    return Names(REGION, account, dict(stack.physical_ids), dict(stack.queue_arns))


@pytest.fixture
def aws(app_template: AppTemplate, monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsStack]:
    """template.yaml's data plane in a fresh moto account, and the functions' shared environment.

    After the test, every AWS call a handler made must be allowed by its function's role in the
    translated template (tests/unit/iam_check.py): a call without its IAM statement fails here."""
    with mock_aws():
        with warnings.catch_warnings():
            # moto's CloudFormation skips QueuePolicy and Alarm (no data-plane effect locally).
            warnings.simplefilter("ignore")
            provisioned = provision(app_template, stack_name=STACK_NAME, execution_roles=False)
        environments = [
            app_template.function_environment(logical_id, provisioned.resolved)
            for logical_id in app_template.functions
        ]
        shared = {
            name: value
            for name, value in environments[0].items()
            if all(other.get(name) == value for other in environments[1:])
        }
        for name, value in shared.items():
            monkeypatch.setenv(name, value)
        _clear_caches()
        stack = AwsStack(app=app_template, stack=provisioned, env=shared, monkeypatch=monkeypatch)
        with recorded_calls() as calls:
            try:
                yield stack
            finally:
                _clear_caches()
        denied = Roles(app_template, aws_names(provisioned)).denied(calls)
        assert denied == [], "calls the function's role in template.yaml does not allow"


@dataclass
class EventTap:
    """Every lifecycle event put on Baton's bus, through a rule and a queue added for the test."""

    queue_url: str

    def drain(self) -> list[dict[str, Any]]:
        sqs = boto3.client("sqs")
        events: list[dict[str, Any]] = []
        while True:
            batch = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not batch:
                return events
            events.extend(json.loads(message["Body"]) for message in batch)

    def detail_types(self) -> list[str]:
        return [str(event["detail-type"]) for event in self.drain()]


@pytest.fixture
def bus_events(aws: AwsStack) -> EventTap:
    sqs = boto3.client("sqs")
    queue_url = sqs.create_queue(QueueName="unit-test-bus-tap")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events = boto3.client("events")
    events.put_rule(
        Name="unit-test-bus-tap",
        EventBusName=aws.event_bus,
        EventPattern=json.dumps({"source": ["baton.jobs"]}),
    )
    events.put_targets(
        Rule="unit-test-bus-tap", EventBusName=aws.event_bus, Targets=[{"Id": "tap", "Arn": queue_arn}]
    )
    return EventTap(queue_url)


# -- the functions, loaded on the provisioned stack ------------------------------------------------
@pytest.fixture
def api(aws: AwsStack) -> LoadedFunction:
    return aws.load("ApiFunction")


@pytest.fixture
def authorizer(aws: AwsStack) -> LoadedFunction:
    return aws.load("AuthorizerFunction")


@pytest.fixture
def extract(aws: AwsStack) -> LoadedFunction:
    return aws.load("ExtractFunction")


@pytest.fixture
def infer(aws: AwsStack) -> LoadedFunction:
    # With the template's default (limits learned from the provider's headers) the first calls go
    # out one probe at a time; these tests are about the stage, so the limit is known and high
    # (the limiter still reserves and settles every call). tests/unit/test_limiter.py: the rest.
    return aws.load("InferFunction", BATON_PROVIDER_RPM="60000")


@pytest.fixture
def notify(aws: AwsStack) -> LoadedFunction:
    return aws.load("NotifyFunction")


@pytest.fixture
def ingest(aws: AwsStack) -> LoadedFunction:
    return aws.load("IngestFunction")
