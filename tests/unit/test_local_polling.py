"""What the local runtime's pollers and moto server cost while nothing happens.

Pollers long-poll for 20 s as Lambda's do (1 s polls were about 40 empty receives a second: a
third of a core of moto on an idle stack), so a stop can cut a poll off: a message such a poll
brings in after the stop is made visible again at once rather than hidden for its visibility
timeout. moto's list of its own packages, read from disk to route every request, is read once.
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
import json, os
import baton_dev.runtime.moto_server  # noqa: F401  (the patch under test)
from moto import backends
first = list(backends.list_of_moto_modules())
def no_disk(*args, **kwargs):
    raise AssertionError("listed moto's packages again")
os.listdir = no_disk
second = list(backends.list_of_moto_modules())
print(json.dumps({"first": first, "second": second}))
"""


def test_moto_lists_its_service_packages_once() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    listed = json.loads(out.strip().splitlines()[-1])
    assert {"dynamodb", "sqs", "s3", "events"} <= set(listed["first"])
    assert listed["second"] == listed["first"]
