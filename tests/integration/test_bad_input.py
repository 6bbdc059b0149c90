"""Bad input never crashes a stage: every malformed, mistyped, oversized, unknown, unreadable or
foreign input tried here, through the real local runtime (`baton dev`: local API Gateway ->
authorizer -> api -> SQS -> extract/infer -> model simulator), answers a clear 4xx or ends its job
`failed` with a clear `error.type`.

`CASES` is one table of inputs and exactly what each gets; the README section "Bad input: what each
gets" reports it. A case whose current answer is not clear is marked `xfail(strict=True)` with the
reason, never loosened.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pypdf
import pytest

from baton.intake import upload_job_id

from .conftest import LocalStack, Tenant, wait_for_terminal

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}
ARTICLE = "Queues decouple the API from slow model calls. Workers pull jobs at their own pace."
PROMPT = {"input": {"prompt": ARTICLE}}
MAX_PROMPT_CHARS = 200_000  # BATON_MAX_PROMPT_CHARS' default
API_GATEWAY_MAX_BODY = 10 * 1024 * 1024
MAX_DOCUMENT_BYTES = 25 * 1024 * 1024  # BATON_MAX_DOCUMENT_BYTES' default


@dataclass
class Ctx:
    stack: LocalStack
    api: httpx.Client
    tenant: Tenant
    foreign_job_id: str  # a real job of another tenant

    @property
    def bucket(self) -> str:
        return str(self.stack.state["bucket"])

    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None) -> str:
        answer = self.stack.aws("s3").put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, Metadata=metadata or {}
        )
        return str(answer["ETag"])


# What a case does: an HTTP answer, or (for an upload) the id of the job the upload becomes.
Send = Callable[[Ctx], httpx.Response | str]


@dataclass(frozen=True)
class Refused:
    """Answered at once with this status and error body."""

    status: int
    type: str
    field: str | None = None


@dataclass(frozen=True)
class Accepted:
    """202, with this Preference-Applied."""

    preference_applied: str


@dataclass(frozen=True)
class Ends:
    """Accepted, then the job ends with this status and error.type."""

    status: str
    type: str
    within_s: float = 60


# -- how cases send ------------------------------------------------------------------------------
def post(body: Any = None, *, content: bytes | None = None, headers: dict[str, str] | None = None) -> Send:
    def send(ctx: Ctx) -> httpx.Response:
        if content is not None:
            return ctx.api.post("/v1/jobs", content=content, headers=headers or JSON)
        return ctx.api.post("/v1/jobs", json=body, headers=headers)

    return send


def post_with(make_body: Callable[[Ctx], Any]) -> Send:
    return lambda ctx: ctx.api.post("/v1/jobs", json=make_body(ctx))


def get(path: str, **params: str) -> Send:
    return lambda ctx: ctx.api.get(path, params=params)


def on_foreign_job(method: str, **params: str) -> Send:
    return lambda ctx: ctx.api.request(method, f"/v1/jobs/{ctx.foreign_job_id}", params=params)


def without_key(api_key: str | None) -> Send:
    def send(ctx: Ctx) -> httpx.Response:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        with httpx.Client(base_url=ctx.stack.api_url, headers=headers, timeout=40) as client:
            return client.post("/v1/jobs", json=PROMPT)

    return send


def document(name: str, data: bytes, content_type: str) -> Send:
    """Put a document under documents/<tenant>/ and submit a job on it."""

    def send(ctx: Ctx) -> httpx.Response:
        document_id = f"{uuid.uuid4().hex}-{name}"
        ctx.put(f"documents/{ctx.tenant.name}/{document_id}", data, content_type)
        body = {"input": {"prompt": "Summarize the document."}, "document": {"id": document_id}}
        return ctx.api.post("/v1/jobs", json=body)

    return send


def upload(name: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None) -> Send:
    """Upload under uploads/<tenant>/: the object becomes a job on its own."""

    def send(ctx: Ctx) -> str:
        key = f"uploads/{ctx.tenant.name}/{uuid.uuid4().hex}-{name}"
        etag = ctx.put(key, data, content_type, metadata)
        return upload_job_id(ctx.bucket, key, etag)

    return send


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


def blank_pdf() -> bytes:
    """A valid PDF whose only page has no text (what a scan without OCR looks like)."""
    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=200, height=200)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


LATIN_1 = "Café crème brûlée à la française, où l'été dure. ".encode("latin-1") * 20
OFFICE_ZIP = b"PK\x03\x04" + bytes(200)
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"


def case(name: str, send: Send, expected: Refused | Accepted | Ends, *marks: pytest.MarkDecorator) -> Any:
    return pytest.param(send, expected, id=name, marks=marks)


CASES = [
    # -- the body is not a JSON object ---------------------------------------------------------
    case("malformed JSON", post(content=b'{"input": '), Refused(400, "invalid_json", "body")),
    case("empty body", post(content=b""), Refused(422, "validation_error", "body")),
    case("body is a JSON array", post(content=b"[]"), Refused(422, "validation_error", "body")),
    case("body is a JSON string", post(content=b'"hello"'), Refused(422, "validation_error", "body")),
    case("body is a JSON number", post(content=b"5"), Refused(422, "validation_error", "body")),
    case("body is null", post(content=b"null"), Refused(422, "validation_error", "body")),
    case(
        "body is not UTF-8",
        post(content='{"input": {"prompt": "café"}}'.encode("latin-1")),
        Refused(400, "invalid_json", "body"),
    ),
    case(
        "JSON nested 100000 deep",
        post(content=b'{"input": {"prompt": "x"}, "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        Refused(400, "invalid_json", "body"),
    ),
    case(
        "response_format nested 100 deep",
        post({**PROMPT, "parameters": {"response_format": {"type": "text", "x": nested(100)}}}),
        Refused(422, "validation_error", "body"),
    ),
    # -- not JSON at all -----------------------------------------------------------------------
    case(
        "Content-Type text/plain",
        post(content=json.dumps(PROMPT).encode(), headers={"Content-Type": "text/plain"}),
        Refused(415, "unsupported_media_type", "Content-Type"),
    ),
    case(
        "form body (curl -d without -H Content-Type)",
        post(
            content=json.dumps(PROMPT).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        Refused(415, "unsupported_media_type", "Content-Type"),
    ),
    case(
        "Content-Type application/xml",
        post(content=b"<job><prompt>hi</prompt></job>", headers={"Content-Type": "application/xml"}),
        Refused(415, "unsupported_media_type", "Content-Type"),
    ),
    # -- wrong types ---------------------------------------------------------------------------
    case("input.prompt 5", post({"input": {"prompt": 5}}), Refused(422, "validation_error", "input.prompt")),
    case("input a string", post({"input": "hello"}), Refused(422, "validation_error", "input")),
    case(
        "input.messages a string",
        post({"input": {"messages": "hello"}}),
        Refused(422, "validation_error", "input.messages"),
    ),
    case(
        "message content 5",
        post({"input": {"messages": [{"role": "user", "content": 5}]}}),
        Refused(422, "validation_error", "input.messages.0.content"),
    ),
    case(
        "message role wizard",
        post({"input": {"messages": [{"role": "wizard", "content": "hi"}]}}),
        Refused(422, "validation_error", "input.messages.0.role"),
    ),
    case(
        "parameters.temperature hot",
        post({**PROMPT, "parameters": {"temperature": "hot"}}),
        Refused(422, "validation_error", "parameters.temperature"),
    ),
    case(
        "parameters.temperature 5",
        post({**PROMPT, "parameters": {"temperature": 5}}),
        Refused(422, "validation_error", "parameters.temperature"),
    ),
    case(
        "parameters.max_tokens true",
        post({**PROMPT, "parameters": {"max_tokens": True}}),
        Refused(422, "validation_error", "parameters.max_tokens"),
    ),
    case(
        "parameters.max_tokens 1.5",
        post({**PROMPT, "parameters": {"max_tokens": 1.5}}),
        Refused(422, "validation_error", "parameters.max_tokens"),
    ),
    case(
        "parameters.tools a string",
        post({**PROMPT, "parameters": {"tools": "calculator"}}),
        Refused(422, "validation_error", "parameters.tools"),
    ),
    case(
        "parameters.tools [5]",
        post({**PROMPT, "parameters": {"tools": [5]}}),
        Refused(422, "validation_error", "parameters.tools.0"),
    ),
    case(
        "unknown built-in tool",
        post({**PROMPT, "parameters": {"tools": ["teleport"]}}),
        Refused(422, "validation_error", "parameters.tools"),
    ),
    case(
        "response_format type yaml",
        post({**PROMPT, "parameters": {"response_format": {"type": "yaml"}}}),
        Refused(422, "validation_error", "parameters.response_format"),
    ),
    case(
        "metadata value 1",
        post({**PROMPT, "metadata": {"k": 1}}),
        Refused(422, "validation_error", "metadata.k"),
    ),
    case(
        "metadata a list", post({**PROMPT, "metadata": ["a"]}), Refused(422, "validation_error", "metadata")
    ),
    case(
        "document a string",
        post({**PROMPT, "document": "a.pdf"}),
        Refused(422, "validation_error", "document"),
    ),
    case(
        "webhook.url not a URL",
        post({**PROMPT, "webhook": {"url": "not a url"}}),
        Refused(422, "validation_error", "webhook.url"),
    ),
    case(
        "webhook bearer auth without token",
        post({**PROMPT, "webhook": {"url": "https://example.com/h", "auth": {"type": "bearer"}}}),
        Refused(422, "validation_error", "webhook.auth"),
    ),
    case("unknown field", post({**PROMPT, "colour": "red"}), Refused(422, "validation_error", "colour")),
    # -- empty or missing ----------------------------------------------------------------------
    case("input {}", post({"input": {}}), Refused(422, "validation_error", "input")),
    case(
        "prompt and messages",
        post({"input": {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}}),
        Refused(422, "validation_error", "input"),
    ),
    case("empty prompt", post({"input": {"prompt": ""}}), Refused(422, "validation_error", "input.prompt")),
    case("empty model", post({**PROMPT, "model": ""}), Refused(422, "validation_error", "model")),
    # -- oversized -----------------------------------------------------------------------------
    case(
        "prompt over BATON_MAX_PROMPT_CHARS",
        post({"input": {"prompt": "a" * (MAX_PROMPT_CHARS + 1)}}),
        Refused(422, "invalid_request", "input"),
    ),
    case(
        "messages over BATON_MAX_PROMPT_CHARS",
        post({"input": {"messages": [{"role": "user", "content": "a" * (MAX_PROMPT_CHARS + 1)}]}}),
        Refused(422, "invalid_request", "input"),
    ),
    case(
        "non-ASCII prompt within the chars, over the job item",
        post({"input": {"prompt": "€" * (MAX_PROMPT_CHARS - 1)}}),
        Refused(422, "invalid_request", "input"),
    ),
    case(
        "body over API Gateway's 10 MB",
        post(content=b'{"input": {"prompt": "' + b"a" * API_GATEWAY_MAX_BODY + b'"}}'),
        Refused(413, "bad_request"),
    ),
    case(
        "17 metadata pairs",
        post({**PROMPT, "metadata": {f"k{i}": "v" for i in range(17)}}),
        Refused(422, "validation_error", "metadata"),
    ),
    case(
        "metadata key of 65 chars",
        post({**PROMPT, "metadata": {"k" * 65: "v"}}),
        Refused(422, "validation_error", f"metadata.{'k' * 65}.[key]"),
    ),
    case(
        "metadata value of 513 chars",
        post({**PROMPT, "metadata": {"k": "v" * 513}}),
        Refused(422, "validation_error", "metadata.k"),
    ),
    # -- documents that are not the tenant's ---------------------------------------------------
    case(
        "s3_uri in another bucket",
        post({**PROMPT, "document": {"s3_uri": "s3://someone-elses-bucket/documents/acme/a.txt"}}),
        Refused(422, "invalid_request", "document.s3_uri"),
    ),
    case(
        "s3_uri under another tenant",
        post_with(
            lambda ctx: {**PROMPT, "document": {"s3_uri": f"s3://{ctx.bucket}/documents/globex/a.txt"}}
        ),
        Refused(422, "invalid_request", "document.s3_uri"),
    ),
    case(
        "s3_uri outside uploads/ and documents/",
        post_with(
            lambda ctx: {
                **PROMPT,
                "document": {"s3_uri": f"s3://{ctx.bucket}/extracted/{ctx.tenant.name}/x.txt"},
            }
        ),
        Refused(422, "invalid_request", "document.s3_uri"),
    ),
    case(
        "document.id that does not exist",
        post({**PROMPT, "document": {"id": "nothing-here.pdf"}}),
        Refused(422, "invalid_request", "document.id"),
    ),
    case(
        "document.id ../globex/a.txt",
        post({**PROMPT, "document": {"id": "../globex/a.txt"}}),
        Refused(422, "invalid_request", "document.id"),
    ),
    # -- headers -------------------------------------------------------------------------------
    case(
        "Idempotency-Key of 300 chars",
        post(PROMPT, headers={"Idempotency-Key": "k" * 300}),
        Refused(422, "invalid_request", "Idempotency-Key"),
    ),
    case(
        "Idempotency-Key with spaces",
        post(PROMPT, headers={"Idempotency-Key": "order 42"}),
        Refused(422, "invalid_request", "Idempotency-Key"),
    ),
    case("Prefer wait=abc", post(PROMPT, headers={"Prefer": "wait=abc"}), Accepted("respond-async")),
    case("no API key", without_key(None), Refused(401, "unauthorized")),
    case("unknown API key", without_key("bk_not-a-key"), Refused(401, "unauthorized")),
    # -- job ids -------------------------------------------------------------------------------
    case("GET another tenant's job", on_foreign_job("GET"), Refused(404, "not_found")),
    case("GET ?wait=2 another tenant's job", on_foreign_job("GET", wait="2"), Refused(404, "not_found")),
    case("DELETE another tenant's job", on_foreign_job("DELETE"), Refused(404, "not_found")),
    case("GET unknown id", get(f"/v1/jobs/job_{'0' * 32}"), Refused(404, "not_found")),
    case(
        "DELETE unknown id",
        lambda ctx: ctx.api.delete(f"/v1/jobs/job_{'0' * 32}"),
        Refused(404, "not_found"),
    ),
    case("GET id of 3000 chars", get(f"/v1/jobs/{'j' * 3000}"), Refused(404, "not_found")),
    case(
        "GET ?wait=-1", get(f"/v1/jobs/job_{'0' * 32}", wait="-1"), Refused(422, "validation_error", "wait")
    ),
    case(
        "GET ?wait=abc", get(f"/v1/jobs/job_{'0' * 32}", wait="abc"), Refused(422, "validation_error", "wait")
    ),
    case("unknown route", get("/v1/nope"), Refused(403, "bad_request")),
    # -- accepted, then the job fails with a clear reason --------------------------------------
    case("unknown model", post({**PROMPT, "model": "gpt-nope"}), Ends("failed", "invalid_model")),
    case(
        "empty .txt document", document("empty.txt", b"", "text/plain"), Ends("failed", "unreadable_document")
    ),
    case(
        "corrupt PDF document",
        document("corrupt.pdf", b"%PDF-1.7\n" + bytes(range(256)) * 20, "application/pdf"),
        Ends("failed", "unreadable_document"),
    ),
    case(
        "PDF without text",
        document("scan.pdf", blank_pdf(), "application/pdf"),
        Ends("failed", "unreadable_document"),
    ),
    case(
        ".zip document",
        document("archive.zip", OFFICE_ZIP, "application/zip"),
        Ends("failed", "unsupported_document"),
    ),
    case(
        "corrupt .docx document",
        document("letter.docx", OFFICE_ZIP, DOCX),
        Ends("failed", "unreadable_document"),
    ),
    case(
        ".pptx document",
        document("slides.pptx", OFFICE_ZIP, PPTX),
        Ends("failed", "unsupported_document"),
    ),
    case(
        "latin-1 .txt document",
        document("latin.txt", LATIN_1, "text/plain"),
        Ends("failed", "unreadable_document"),
    ),
    case(
        "binary .txt document",
        document("binary.txt", b"\x00\x01\x02\x03" * 256, "text/plain"),
        Ends("failed", "unreadable_document"),
    ),
    case(
        "document over BATON_MAX_DOCUMENT_BYTES",
        document("huge.txt", b"a" * (MAX_DOCUMENT_BYTES + 1), "text/plain"),
        Ends("failed", "document_too_large"),
    ),
    case("empty upload", upload("empty.txt", b"", "text/plain"), Ends("failed", "unreadable_document")),
    case(
        "corrupt PDF upload",
        upload("corrupt.pdf", b"%PDF-1.4 garbage" * 10, "application/pdf"),
        Ends("failed", "unreadable_document"),
    ),
    case(
        "upload with unknown model",
        upload("note.txt", ARTICLE.encode(), "text/plain", {"model": "gpt-nope"}),
        Ends("failed", "invalid_model"),
    ),
    case(
        "upload with webhook-url not a URL",
        upload("note.txt", ARTICLE.encode(), "text/plain", {"webhook-url": "not a url"}),
        Ends("failed", "invalid_request", within_s=20),
    ),
    case(
        "upload with empty prompt",
        upload("note.txt", ARTICLE.encode(), "text/plain", {"prompt": ""}),
        Ends("failed", "invalid_request", within_s=20),
    ),
]


@pytest.fixture(scope="module")
def foreign_job_id(local_stack: LocalStack, other_tenant: Tenant) -> str:
    with local_stack.client(other_tenant) as other:
        answer = other.post("/v1/jobs", json=PROMPT)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


@pytest.fixture
def ctx(local_stack: LocalStack, api: httpx.Client, tenant: Tenant, foreign_job_id: str) -> Iterator[Ctx]:
    yield Ctx(stack=local_stack, api=api, tenant=tenant, foreign_job_id=foreign_job_id)


def assert_clear_error(answer: httpx.Response, expected: Refused) -> None:
    assert answer.headers["Content-Type"].startswith("application/json"), answer.text[:300]
    error = answer.json()["error"]
    seen = (answer.status_code, error["type"], error.get("field"))
    assert seen == (expected.status, expected.type, expected.field), error
    assert set(error) <= {"type", "message", "field"}
    assert error["message"] and len(error["message"]) < 600
    assert "Traceback" not in error["message"] and "internal" not in error["type"]


@pytest.mark.parametrize(("send", "expected"), CASES)
def test_bad_input_gets_a_clear_answer(ctx: Ctx, send: Send, expected: Refused | Accepted | Ends) -> None:
    answer = send(ctx)
    if isinstance(expected, Refused):
        assert isinstance(answer, httpx.Response)
        assert_clear_error(answer, expected)
        return
    if isinstance(expected, Accepted):
        assert isinstance(answer, httpx.Response)
        assert answer.status_code == 202, answer.text
        assert answer.headers["Preference-Applied"] == expected.preference_applied
        return
    if isinstance(answer, httpx.Response):
        assert answer.status_code == 202, answer.text
        job_id = str(answer.json()["id"])
    else:
        job_id = answer
    job = wait_for_terminal(ctx.api, job_id, timeout_s=expected.within_s)
    assert (job["status"], job.get("error", {}).get("type")) == (expected.status, expected.type), job
    assert job["error"]["message"] and job["error"]["retryable"] is False
    assert "result" not in job


def test_a_foreign_delete_leaves_the_job_alone(
    local_stack: LocalStack, api: httpx.Client, other_tenant: Tenant
) -> None:
    job_id = api.post("/v1/jobs", json={"input": {"prompt": f"[sim:slow=1500] {ARTICLE}"}}).json()["id"]
    with local_stack.client(other_tenant) as other:
        assert other.delete(f"/v1/jobs/{job_id}").status_code == 404
    assert wait_for_terminal(api, job_id)["status"] == "completed"
