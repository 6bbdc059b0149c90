"""baton.models: what POST /v1/jobs accepts (anything else is a 422 naming the field), and the
internal messages between stages."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from baton.models import (
    CreateJobRequest,
    JobStatus,
    LifecycleDetail,
    StageCommand,
    Step,
    UploadMetadata,
    WebhookAuth,
)

PROMPT = {"input": {"prompt": "Summarize the report."}}


def errors_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(dotted field, error type) of each validation error of a request body."""
    with pytest.raises(ValidationError) as raised:
        CreateJobRequest.model_validate(body)
    return [(".".join(str(part) for part in error["loc"]), error["type"]) for error in raised.value.errors()]


def fields_of(body: dict[str, Any]) -> set[str]:
    return {field for field, _ in errors_of(body)}


def test_minimal_prompt_body_gets_defaults() -> None:
    request = CreateJobRequest.model_validate(PROMPT)
    assert request.input.prompt == "Summarize the report."
    assert request.input.messages is None
    assert request.model is None and request.webhook is None and request.document is None
    assert request.metadata == {}
    assert request.parameters.temperature is None


def test_full_body_is_accepted() -> None:
    request = CreateJobRequest.model_validate(
        {
            "input": {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
                ]
            },
            "document": {"id": "report.pdf"},
            "model": "gpt-4.1-mini",
            "parameters": {
                "temperature": 0,
                "max_tokens": 512,
                "response_format": {"type": "json_object"},
                "tools": [{"type": "function", "function": {"name": "calc"}}],
                "max_depth": 15,
                "max_total_tokens": 10_000,
                "timeout_seconds": 600,
            },
            "webhook": {"url": "https://hooks.example.com/baton", "auth": {"type": "bearer", "token": "t"}},
            "metadata": {"customer": "acme-42"},
        }
    )
    assert request.input.text_length() == len("Be brief.") + len("Hello")
    assert request.webhook is not None and request.webhook.auth is not None
    assert (request.webhook.auth.type, request.webhook.auth.token) == ("bearer", "t")


def test_input_is_required() -> None:
    assert fields_of({}) == {"input"}


@pytest.mark.parametrize(
    "job_input",
    [
        {"prompt": "a", "messages": [{"role": "user", "content": "b"}]},
        {},
    ],
    ids=["both", "neither"],
)
def test_exactly_one_of_prompt_or_messages(job_input: dict[str, Any]) -> None:
    assert fields_of({"input": job_input}) == {"input"}


def test_empty_prompt_and_empty_messages_are_rejected() -> None:
    assert fields_of({"input": {"prompt": ""}}) == {"input.prompt"}
    assert fields_of({"input": {"messages": []}}) == {"input.messages"}


def test_message_role_must_be_a_chat_role() -> None:
    assert "input.messages.0.role" in fields_of({"input": {"messages": [{"role": "robot", "content": "x"}]}})


def test_metadata_up_to_sixteen_pairs() -> None:
    sixteen = {f"k{i}": "v" for i in range(16)}
    assert CreateJobRequest.model_validate({**PROMPT, "metadata": sixteen}).metadata == sixteen
    assert fields_of({**PROMPT, "metadata": {f"k{i}": "v" for i in range(17)}}) == {"metadata"}


def test_metadata_values_are_strings_of_bounded_length() -> None:
    assert fields_of({**PROMPT, "metadata": {"n": 1}}) == {"metadata.n"}
    assert fields_of({**PROMPT, "metadata": {"long": "x" * 513}}) == {"metadata.long"}
    long_key = "k" * 65
    assert fields_of({**PROMPT, "metadata": {long_key: "v"}}) == {f"metadata.{long_key}.[key]"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**PROMPT, "priority": "high"}, "priority"),
        ({"input": {"prompt": "a", "system": "b"}}, "input.system"),
        ({**PROMPT, "parameters": {"top_k": 3}}, "parameters.top_k"),
        ({**PROMPT, "webhook": {"url": "https://example.com", "secret": "x"}}, "webhook.secret"),
        ({**PROMPT, "document": {"id": "a", "bucket": "b"}}, "document.bucket"),
    ],
)
def test_unknown_fields_are_rejected(body: dict[str, Any], field: str) -> None:
    assert (field, "extra_forbidden") in errors_of(body)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/hook", "file:///etc/passwd", "example.com/hook", "javascript:alert(1)"]
)
def test_webhook_url_must_be_http_or_https(url: str) -> None:
    assert fields_of({**PROMPT, "webhook": {"url": url}}) == {"webhook.url"}


@pytest.mark.parametrize("url", ["https://hooks.example.com/baton", "http://127.0.0.1:8000/hook"])
def test_webhook_http_and_https_urls_are_accepted(url: str) -> None:
    request = CreateJobRequest.model_validate({**PROMPT, "webhook": {"url": url}})
    assert request.webhook is not None
    assert str(request.webhook.url).startswith(url)


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"temperature": 5}, "parameters.temperature"),
        ({"temperature": -0.1}, "parameters.temperature"),
        ({"max_tokens": 0}, "parameters.max_tokens"),
        ({"max_depth": 16}, "parameters.max_depth"),
        ({"max_depth": 0}, "parameters.max_depth"),
        ({"max_total_tokens": 0}, "parameters.max_total_tokens"),
        ({"timeout_seconds": 0}, "parameters.timeout_seconds"),
        ({"timeout_seconds": 86_401}, "parameters.timeout_seconds"),
        ({"response_format": {"type": "xml"}}, "parameters.response_format"),
        ({"tools": [{}] * 65}, "parameters.tools"),
    ],
)
def test_parameter_ranges(parameters: dict[str, Any], field: str) -> None:
    assert fields_of({**PROMPT, "parameters": parameters}) == {field}


@pytest.mark.parametrize("temperature", [0, 1.3, 2])
def test_temperature_bounds_are_inclusive(temperature: float) -> None:
    request = CreateJobRequest.model_validate({**PROMPT, "parameters": {"temperature": temperature}})
    assert request.parameters.temperature == temperature


@pytest.mark.parametrize(
    "document",
    [
        {"id": "a", "s3_uri": "s3://bucket/key"},
        {},
        {"id": "../../etc/passwd bad"},
        {"s3_uri": "https://bucket/key"},
    ],
)
def test_document_reference_is_one_valid_id_or_s3_uri(document: dict[str, Any]) -> None:
    assert {field.split(".")[0] for field in fields_of({**PROMPT, "document": document})} == {"document"}


@pytest.mark.parametrize(
    "auth",
    [{"type": "bearer"}, {"type": "header", "name": "X-Token"}, {"type": "basic", "token": "t"}],
)
def test_webhook_auth_must_be_complete(auth: dict[str, Any]) -> None:
    assert {
        f.split(".")[0] for f in fields_of({**PROMPT, "webhook": {"url": "https://x.io", "auth": auth}})
    } == {"webhook"}


def test_header_webhook_auth_may_not_replace_the_signature() -> None:
    WebhookAuth.model_validate({"type": "header", "name": "X-Api-Key", "value": "secret"})
    with pytest.raises(ValidationError, match="may not set"):
        WebhookAuth.model_validate({"type": "header", "name": "webhook-signature", "value": "v1,x"})
    with pytest.raises(ValidationError, match="may not forward"):
        WebhookAuth.model_validate({"type": "on_behalf", "header": "Authorization"})


def test_stage_command_round_trips_and_is_strict() -> None:
    command = StageCommand(job_id="job_1", tenant_id="acme", step=Step.INFER, version=1, depth=0)
    assert StageCommand.model_validate_json(command.model_dump_json()) == command
    with pytest.raises(ValidationError):
        StageCommand.model_validate({**command.model_dump(), "extra": 1})
    with pytest.raises(ValidationError):
        StageCommand.model_validate({**command.model_dump(), "version": 0})
    with pytest.raises(ValidationError):
        StageCommand.model_validate({**command.model_dump(), "step": "deploy"})


def test_terminal_statuses() -> None:
    # The contract's terminal states never change again; needs_review waits for a person.
    assert {status for status in JobStatus if status.is_terminal} == {
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
    }
    assert {status for status in JobStatus if status.is_settled} == {
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
        JobStatus.NEEDS_REVIEW,
    }


def test_lifecycle_detail_rejects_unknown_fields() -> None:
    detail = {"job_id": "j", "tenant_id": "t", "status": "completed", "version": 1, "depth": 0}
    assert LifecycleDetail.model_validate(detail).metadata == {}
    with pytest.raises(ValidationError):
        LifecycleDetail.model_validate({**detail, "secret": "x"})


def test_upload_metadata_defaults_and_aliases() -> None:
    assert UploadMetadata.model_validate({}).prompt == "Summarize this document."
    metadata = UploadMetadata.model_validate({"prompt": "Translate", "webhook-url": "https://x.io/h"})
    assert metadata.prompt == "Translate"
    assert str(metadata.webhook_url) == "https://x.io/h"
    with pytest.raises(ValidationError):
        UploadMetadata.model_validate({"webhook-url": "ftp://x.io/h"})
