"""The local runtime runs every function and event source that template.yaml declares."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from baton.intake import upload_job_id
from baton_dev.runtime.template import AppTemplate
from baton_dev.samples import sample_report_pdf
from baton_dev.webhook_receiver import WebhookReceiver

from .conftest import ROOT, LocalStack, Tenant, wait_for_terminal

pytestmark = pytest.mark.integration


def test_every_function_and_event_source_in_the_template_runs(
    local_stack: LocalStack, tenant: Tenant
) -> None:
    template = AppTemplate.load(ROOT / "template.yaml")
    assert set(local_stack.state["functions"]) == set(template.functions)
    assert set(local_stack.state["event_sources"]) == {source.logical_id for source in template.sqs_sources}
    assert set(local_stack.state["schedules"]) == {schedule.logical_id for schedule in template.schedules}

    # One upload with a webhook walks every stage: S3 -> EventBridge -> ingest -> extract -> infer
    # -> bus -> notify; reading it back over HTTP exercises the authorizer and the API function.
    receiver = WebhookReceiver(tenant.webhook_secret)
    try:
        key = f"uploads/{tenant.name}/{uuid.uuid4().hex}.pdf"
        put = local_stack.aws("s3").put_object(
            Bucket=local_stack.state["bucket"],
            Key=key,
            Body=sample_report_pdf(),
            Metadata={"prompt": "Summarize.", "webhook-url": receiver.url},
        )
        with local_stack.client(tenant) as api:
            job = wait_for_terminal(api, upload_job_id(local_stack.state["bucket"], key, put["ETag"]))
            # A job whose model calls a built-in tool adds the tool stage.
            agent = api.post(
                "/v1/jobs",
                json={"input": {"prompt": "What is 6 * 7?"}, "parameters": {"tools": ["calculator"]}},
            )
            assert wait_for_terminal(api, agent.json()["id"])["status"] == "completed"
            # A batch's lines become jobs through the batch queue and its function.
            line = {"custom_id": "a", "input": {"prompt": "Hi."}}
            batch = api.post("/v1/batches", json={"requests": [line]})
            assert batch.status_code == 202, batch.text
        assert job["status"] == "completed"
        receiver.wait_for(1, timeout=30)
        assert receiver.events[0].verified
    finally:
        receiver.stop()

    # The provider's webhook (background inference only) runs on any request: an unsigned one is refused.
    refused = httpx.post(f"{local_stack.api_url}/v1/provider-webhooks/openai", json={"type": "x"}, timeout=40)
    assert refused.status_code == 400, refused.text

    # Dead-letter queues fed by nothing above: one stray letter each (no job to fail: archived as such),
    # so the dead-letter function's event source on every one of them is seen consuming.
    sqs = local_stack.aws("sqs")
    for source in template.sqs_sources:
        if source.function == "DeadLetterFunction":
            queue_url = local_stack.state["queues"][source.queue]
            sqs.send_message(QueueUrl=queue_url, MessageBody='{"stray": true}')

    deadline = time.monotonic() + 30
    stats = local_stack.stats()
    while time.monotonic() < deadline and not all(
        source["records_ok"] > 0 for source in stats["event_sources"].values()
    ):
        time.sleep(0.2)
        stats = local_stack.stats()
    for name in template.functions:
        assert stats["functions"][name]["invocations"] > 0, f"{name} never ran: {stats}"
    for source in template.sqs_sources:
        assert stats["event_sources"][source.logical_id]["records_ok"] > 0, f"{source.logical_id}: {stats}"
    for schedule in template.schedules:
        assert stats["schedules"][schedule.logical_id]["runs"] > 0, f"{schedule.logical_id}: {stats}"


def test_tests_run_on_the_templates_python() -> None:
    import sys

    assert _template_runtimes() == {f"python{sys.version_info.major}.{sys.version_info.minor}"}


def _template_runtimes() -> set[str]:
    template = AppTemplate.load(ROOT / "template.yaml")
    return {
        str(resource["Properties"]["Runtime"])
        for resource in template.cloudformation["Resources"].values()
        if resource["Type"] == "AWS::Lambda::Function"
    }
