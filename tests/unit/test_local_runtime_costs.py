"""What the local runtime's pollers and moto server cost while nothing happens.

Pollers long-poll for 20 s as Lambda's do (1 s polls were about 40 empty receives a second: a
third of a core of moto on an idle stack), so a stop can cut a poll off: a message such a poll
brings in after the stop is made visible again at once rather than hidden for its visibility
timeout. What moto recomputed for every request (the list of its packages, read from disk; a
response class's method names, by reflection) is computed once, and its access lines are not logged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from baton_dev.runtime import sqs_source
from baton_dev.runtime.sqs_source import SqsEventSource
from baton_dev.runtime.template import SqsSourceSpec

ROOT = Path(__file__).resolve().parents[2]


class RecordingFunction:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def invoke(self, event: dict[str, Any]) -> Any:
        self.events.append(event)
        raise AssertionError("a stopped poller must not invoke its function")


def test_pollers_long_poll_as_lambda_does() -> None:
    assert sqs_source.LONG_POLL_SECONDS == 20


@pytest.fixture
def sqs() -> Any:
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


def test_a_message_a_poll_brings_in_after_the_stop_is_visible_again_at_once(
    sqs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqs.create_queue(QueueName="commands", Attributes={"VisibilityTimeout": "300"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody='{"job_id": "job_1"}')
    spec = SqsSourceSpec(
        logical_id="InferFunctionCommands",
        function="InferFunction",
        queue="InferQueue",
        batch_size=10,
        batching_window_s=0,
        max_concurrency=2,
        report_batch_item_failures=True,
    )
    function = RecordingFunction()
    source = SqsEventSource(
        spec,
        function,  # type: ignore[arg-type]
        queue_url=url,
        queue_arn="arn:aws:sqs:us-east-1:123456789012:commands",
        region="us-east-1",
    )
    receive = source._receive_batch

    def poll_that_outlives_the_stop() -> list[dict[str, Any]]:
        batch = receive()
        source.signal_stop()  # the runtime stopped while this poll waited
        return batch

    monkeypatch.setattr(source, "_receive_batch", poll_that_outlives_the_stop)
    source._poll_loop()  # one poll, then the loop sees the stop

    assert function.events == []
    again = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", [])
    assert [message["Body"] for message in again] == ['{"job_id": "job_1"}']


PROBE = r"""
import inspect, json, logging, os
import boto3
from moto import mock_aws
import baton_dev.runtime.moto_server  # noqa: F401  (the patches under test)
from moto import backends
from moto.core import responses
from moto.dynamodb.responses import DynamoHandler

first = list(backends.list_of_moto_modules())
methods = list(responses.method_names_from_class(DynamoHandler))
def not_again(*args, **kwargs):
    raise AssertionError("computed again")
listdir, getmembers = os.listdir, inspect.getmembers
os.listdir = inspect.getmembers = not_again
second = list(backends.list_of_moto_modules())
methods_again = list(responses.method_names_from_class(DynamoHandler))
os.listdir, inspect.getmembers = listdir, getmembers
with mock_aws():  # a request still finds its action
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    ddb.create_table(
        TableName="t", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.put_item(TableName="t", Item={"pk": {"S": "a"}})
    item = ddb.get_item(TableName="t", Key={"pk": {"S": "a"}})["Item"]
werkzeug = logging.getLogger("werkzeug")
print(json.dumps({
    "first": first, "second": second, "methods": methods, "methods_again": methods_again,
    "item": item,
    "access_lines": werkzeug.isEnabledFor(logging.INFO), "errors": werkzeug.isEnabledFor(logging.ERROR),
}))
"""


def test_moto_computes_what_never_changes_once_and_logs_no_access_lines() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    probe = json.loads(out.strip().splitlines()[-1])
    assert {"dynamodb", "sqs", "s3", "events"} <= set(probe["first"])
    assert probe["second"] == probe["first"]
    assert {"get_item", "put_item", "transact_write_items"} <= set(probe["methods"])
    assert probe["methods_again"] == probe["methods"]
    assert probe["item"] == {"pk": {"S": "a"}}
    assert probe["access_lines"] is False
    assert probe["errors"] is True
