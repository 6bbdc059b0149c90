"""Public and internal data shapes: the API body, the stage commands and the lifecycle events."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from baton.tools import TOOLS


class JobStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    NEEDS_REVIEW = "needs_review"

    @property
    def is_terminal(self) -> bool:
        """Terminal states never change again (the contract's `completed | failed | cancelled`)."""
        return self in TERMINAL_STATUSES

    @property
    def is_settled(self) -> bool:
        """No stage works on the job: it is terminal, or it waits for a person (needs_review)."""
        return self in SETTLED_STATUSES


# The one set of terminal statuses; clients and tools import it rather than keep their own.
TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
SETTLED_STATUSES = TERMINAL_STATUSES | {JobStatus.NEEDS_REVIEW}
# A batch's statuses after which nothing more happens to it (OpenAI's batch statuses).
BATCH_TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


class Step(StrEnum):
    EXTRACT = "extract"
    INFER = "infer"
    TOOL = "tool"
    NOTIFY = "notify"


# Lifecycle event detail-types, as the contract names them.
class EventType(StrEnum):
    ACCEPTED = "Job Accepted"
    STEP_COMPLETED = "Job Step Completed"
    COMPLETED = "Job Completed"
    FAILED = "Job Failed"
    CANCELLED = "Job Cancelled"
    NEEDS_REVIEW = "Job Needs Review"


# The event a settled job announces (needs_review too: a person must hear of it).
TERMINAL_EVENT_FOR_STATUS = {
    JobStatus.COMPLETED: EventType.COMPLETED,
    JobStatus.FAILED: EventType.FAILED,
    JobStatus.CANCELLED: EventType.CANCELLED,
    JobStatus.NEEDS_REVIEW: EventType.NEEDS_REVIEW,
}

EVENT_SOURCE = "baton.jobs"

_STRICT = ConfigDict(extra="forbid", str_strip_whitespace=False)


class ChatMessage(BaseModel):
    """An OpenAI chat message; content may be text or a list of content parts."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class JobInput(BaseModel):
    model_config = _STRICT

    prompt: str | None = Field(None, min_length=1)
    messages: list[ChatMessage] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> JobInput:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of input.prompt or input.messages")
        return self

    def text_length(self) -> int:
        if self.prompt is not None:
            return len(self.prompt)
        total = 0
        for message in self.messages or []:
            if isinstance(message.content, str):
                total += len(message.content)
            elif isinstance(message.content, list):
                total += sum(len(str(part.get("text", ""))) for part in message.content)
        return total


class DocumentRef(BaseModel):
    model_config = _STRICT

    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._\-/]{1,512}$")] | None = None
    s3_uri: Annotated[str, StringConstraints(pattern=r"^s3://[^/]+/.+$", max_length=1100)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DocumentRef:
        if (self.id is None) == (self.s3_uri is None):
            raise ValueError("give exactly one of document.id or document.s3_uri")
        return self


class JobParameters(BaseModel):
    model_config = _STRICT

    # Numbers are strict: `true` or "5" is a wrong type (422), not silently 1 or 5.
    temperature: float | None = Field(None, ge=0, le=2, strict=True)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000, strict=True)
    response_format: dict[str, Any] | None = None
    # OpenAI tool definitions, or names of Baton's built-ins ("calculator", ...). Calls to the
    # built-ins run inside Baton (agent loop); calls to other tools end the job for the client.
    tools: list[dict[str, Any] | str] | None = Field(None, max_length=64)
    max_depth: int | None = Field(None, ge=1, le=15, strict=True)
    max_total_tokens: int | None = Field(None, ge=1, strict=True)
    timeout_seconds: int | None = Field(None, ge=1, le=86_400, strict=True)
    # A document longer than the model's context: split and combine (default), cut, or refuse.
    long_document: Literal["map_reduce", "truncate", "fail"] | None = None

    @field_validator("tools")
    @classmethod
    def _known_builtins(cls, value: list[dict[str, Any] | str] | None) -> list[dict[str, Any] | str] | None:
        for tool in value or []:
            if isinstance(tool, str) and tool not in TOOLS:
                raise ValueError(f"unknown built-in tool {tool!r}; built-ins: {', '.join(TOOLS)}")
        return value

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type") not in {"text", "json_object", "json_schema"}:
            raise ValueError("response_format.type must be text, json_object or json_schema")
        return value


HeaderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9\-]{1,64}$")]
Secret = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
# Headers Baton sets itself: an auth header may not replace them.
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "webhook-id", "webhook-timestamp", "webhook-signature"}
)


class WebhookAuth(BaseModel):
    """Credentials Baton adds when calling the receiver (besides the signature). Stored encrypted;
    never returned by any GET."""

    model_config = _STRICT

    type: Literal["basic", "bearer", "header", "query", "oauth2", "on_behalf"]
    username: Secret | None = None
    password: Annotated[str, StringConstraints(max_length=4096)] | None = None
    token: Secret | None = None
    name: HeaderName | None = None
    value: Annotated[str, StringConstraints(max_length=4096)] | None = None
    token_url: AnyHttpUrl | None = None
    client_id: Secret | None = None
    client_secret: Secret | None = None
    scope: Annotated[str, StringConstraints(max_length=1024)] | None = None
    audience: Annotated[str, StringConstraints(max_length=1024)] | None = None
    header: HeaderName | None = None

    @model_validator(mode="after")
    def _complete(self) -> WebhookAuth:
        needs = {
            "basic": ("username", "password"),
            "bearer": ("token",),
            "header": ("name", "value"),
            "query": ("name", "value"),
            "oauth2": ("token_url", "client_id", "client_secret"),
            "on_behalf": ("header",),
        }[self.type]
        missing = [name for name in needs if getattr(self, name) is None]
        if missing:
            raise ValueError(f"{self.type} auth needs {' and '.join(missing)}")
        if self.type == "header" and str(self.name).lower() in RESERVED_HEADERS:
            raise ValueError(f"header auth may not set {self.name}")
        if self.type == "on_behalf" and str(self.header).lower() in RESERVED_HEADERS | {"authorization"}:
            # Authorization carries the tenant's Baton API key: never forwarded.
            raise ValueError(f"on_behalf may not forward {self.header}")
        if self.token_url is not None and (self.token_url.username or self.token_url.password):
            raise ValueError("credentials inside token_url are not allowed")
        return self


class WebhookSpec(BaseModel):
    model_config = _STRICT

    url: AnyHttpUrl
    auth: WebhookAuth | None = None

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        # httpx would turn user:pass@ into Basic credentials, silently replacing webhook.auth.
        if value.username or value.password:
            raise ValueError("credentials inside the URL are not allowed; use webhook.auth")
        return value


MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


# Free-form parts of a body (response_format, tool definitions, message extras) may nest, but
# not without bound: pydantic refuses to serialise past ~250 levels (a 500), and no real JSON
# schema or tool definition comes near this.
MAX_NESTING_DEPTH = 64


def _nesting_depth(value: Any, limit: int) -> int:
    """How deep `value` nests (a scalar is 0), counting no further than `limit` + 1."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list) and item:
            if depth + 1 > limit:
                return depth + 1
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        deepest = max(deepest, depth + isinstance(item, dict | list))
    return deepest


class CreateJobRequest(BaseModel):
    """Body of POST /v1/jobs."""

    model_config = _STRICT

    input: JobInput
    document: DocumentRef | None = None
    model: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    parameters: JobParameters = Field(default_factory=JobParameters)
    webhook: WebhookSpec | None = None
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, max_length=16)

    @model_validator(mode="before")
    @classmethod
    def _bounded_nesting(cls, data: Any) -> Any:
        if _nesting_depth(data, MAX_NESTING_DEPTH) > MAX_NESTING_DEPTH:
            raise ValueError(f"the body nests deeper than {MAX_NESTING_DEPTH} levels")
        return data


class StageCommand(BaseModel):
    """What one stage asks the next to do; travels on SQS. Small: content stays in S3."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    tenant_id: str
    step: Step
    version: int = Field(ge=1)
    depth: int = Field(ge=0)
    # A long document's map-reduce: `chunk` is the part this infer command answers, at `level`
    # 0 (document text) or above (groups of the level below's answers). None: the job's own call.
    chunk: int | None = Field(None, ge=0)
    level: int = Field(0, ge=0)
    # infer: the provider slot this command reserved before it was delayed to it (epoch ms).
    not_before_ms: int | None = None
    # infer, background mode: resume the step's stored provider response (poll n of its schedule,
    # or woken by the provider's webhook event / a cancel), instead of creating one.
    poll: int | None = Field(None, ge=0)
    wake: str | None = Field(None, max_length=200)


class LifecycleDetail(BaseModel):
    """`detail` of every event on the bus; terminal events also carry the public job."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    tenant_id: str
    status: JobStatus
    version: int
    depth: int
    metadata: dict[str, str] = Field(default_factory=dict)
    step: Step | None = None
    job: dict[str, Any] | None = None


class UploadMetadata(BaseModel):
    """Object metadata (x-amz-meta-*) of an upload under uploads/<tenant>/ that becomes a job."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field("Summarize this document.", min_length=1, max_length=8192)
    model: str | None = None
    webhook_url: AnyHttpUrl | None = Field(None, alias="webhook-url")


# -- documents -----------------------------------------------------------------------------------


class CreateDocumentRequest(BaseModel):
    """Body of POST /v1/documents."""

    model_config = _STRICT

    filename: str = Field(min_length=1, max_length=255)
    content_type: (
        Annotated[
            str,
            StringConstraints(
                pattern=r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(;[ -~]*)?$", max_length=255
            ),
        ]
        | None
    ) = None


class UploadSlot(BaseModel):
    method: Literal["PUT"]
    url: str
    headers: dict[str, str]


class DocumentUpload(BaseModel):
    """201 answer of POST /v1/documents: PUT the bytes to upload.url with exactly upload.headers."""

    id: str
    upload: UploadSlot
    expires_at: str


class DocumentView(BaseModel):
    """GET /v1/documents/{id}."""

    id: str
    filename: str
    content_type: str
    size: int | None
    status: Literal["awaiting_upload", "uploaded"]


# -- webhook deliveries and secret rotation (responses) ---------------------------------------
class DeliveryAttemptView(BaseModel):
    at: str
    status_code: int | None
    error: str | None
    duration_ms: int


class DeliveryView(BaseModel):
    """One webhook delivery of a job: `pending` (an attempt is due), `delivered`, `failed` (410 Gone
    or a blocked address: no retry can help) or `exhausted` (every scheduled attempt failed)."""

    webhook_id: str
    type: str
    status: Literal["pending", "delivered", "failed", "exhausted"]
    attempts: list[DeliveryAttemptView]
    next_attempt_at: str | None


class DeliveryList(BaseModel):
    data: list[DeliveryView]


class RotatedWebhookSecret(BaseModel):
    webhook_secret: str
    previous_valid_until: str


# -- batches -------------------------------------------------------------------------------------


class BatchLine(BaseModel):
    """One request of a batch (a JSONL line or an element of `requests`)."""

    model_config = _STRICT

    custom_id: str = Field(min_length=1, max_length=256)
    input: JobInput
    model: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    parameters: JobParameters | None = None
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, max_length=14)


class CreateBatchRequest(BaseModel):
    """Body of POST /v1/batches: a JSONL document, or inline requests (at most 1,000)."""

    model_config = _STRICT

    input_document_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._\-]{1,512}$")] | None = None
    requests: list[BatchLine] | None = Field(None, min_length=1, max_length=1000)
    model: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    parameters: JobParameters | None = None
    webhook: WebhookSpec | None = None
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, max_length=14)

    @model_validator(mode="after")
    def _exactly_one(self) -> CreateBatchRequest:
        if (self.input_document_id is None) == (self.requests is None):
            raise ValueError("give exactly one of input_document_id or requests")
        return self


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int
    cancelled: int


class BatchView(BaseModel):
    """GET /v1/batches/{id}."""

    id: str
    status: Literal["validating", "in_progress", "completed", "failed", "cancelling", "cancelled"]
    request_counts: RequestCounts
    created_at: str
    completed_at: str | None
    output_url: str | None
    errors_url: str | None


class BatchList(BaseModel):
    """GET /v1/batches: the tenant's batches, newest first."""

    data: list[BatchView]
    next_cursor: str | None


# -- API responses (besides the job itself: baton.records.JobView) ------------------------------
class JobAccepted(BaseModel):
    """Body of `202 Accepted`: where to poll, and the job's status right now (a replayed
    Idempotency-Key or an expired `Prefer: wait` may find it already under way or finished)."""

    id: str
    status: JobStatus
    created_at: str
    poll_url: str
    delivery: Literal["webhook", "polling"]


class ErrorDetail(BaseModel):
    type: str = Field(description="stable machine-readable name, e.g. validation_error, not_found")
    message: str
    field: str | None = Field(
        None, exclude_if=lambda value: value is None, description="the offending field, when one is to blame"
    )


class ErrorBody(BaseModel):
    """Every 4xx/5xx body."""

    error: ErrorDetail


# -- review and re-run (POST /v1/jobs/{id}/review, /rerun) ----------------------------------------
class ReviewRequest(BaseModel):
    """Resolve a job a guard stopped: approve (continue, optionally with raised limits, up to the
    deployment's caps) or reject (it fails as `review_rejected`)."""

    model_config = _STRICT

    decision: Literal["approve", "reject"]
    max_depth: int | None = Field(
        None, ge=1, le=15, strict=True, description="approve: the new tool-hop limit (cap ReviewMaxDepth)"
    )
    max_total_tokens: int | None = Field(
        None, ge=1, strict=True, description="approve: the new token budget (cap ReviewMaxTotalTokens)"
    )
    reason: str | None = Field(None, max_length=1000, description="reject: why, kept in error.message")

    @model_validator(mode="after")
    def _fields_fit_the_decision(self) -> ReviewRequest:
        if self.decision == "reject" and (self.max_depth is not None or self.max_total_tokens is not None):
            raise ValueError("max_depth and max_total_tokens go with decision approve")
        if self.decision == "approve" and self.reason is not None:
            raise ValueError("reason goes with decision reject")
        return self


class RerunRequest(BaseModel):
    """Run a stored job again as a new job; what is given replaces the original's (parameters are
    merged key by key), the rest is the original's. Body of POST /v1/jobs/{id}/rerun."""

    model_config = _STRICT

    input: JobInput | None = None
    model: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    parameters: JobParameters | None = None
    webhook: WebhookSpec | None = None
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=16)
