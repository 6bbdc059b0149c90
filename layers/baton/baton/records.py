"""The job as stored in DynamoDB, and the public view of it that GET, events and webhooks share."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from baton.clock import iso_from_ms
from baton.models import JobStatus, Step
from baton.prices import JobPath, ModelPrice, aws_cost


def job_key(tenant_id: str, job_id: str) -> dict[str, str]:
    return {"pk": f"TENANT#{tenant_id}", "sk": f"JOB#{job_id}"}


def response_key(response_id: str) -> dict[str, str]:
    """The item pointing from a provider response id to its job (see JobStore.attach_response)."""
    return {"pk": f"RESPONSE#{response_id}", "sk": "RESPONSE"}


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def plus(self, other: Usage) -> Usage:
        """Usage across every inference hop of a job."""
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


class Timings(BaseModel):
    queued_ms: int | None = None
    extract_ms: int | None = None
    infer_ms: int | None = None
    notify_ms: int | None = None
    total_ms: int | None = None


class JobResult(BaseModel):
    text: str | None = None
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    # Large results live in S3: the item keeps the key, GET hands out a short-lived URL.
    result_key: str | None = None
    result_bytes: int | None = None


class JobError(BaseModel):
    type: str
    message: str
    retryable: bool = False


class DocumentInfo(BaseModel):
    """What the job read: `chunks` > 1 when it was answered by map-reduce, `truncated` when cut."""

    id: str | None = None
    chars: int
    chunks: int = 1
    truncated: bool = False


class ProviderCall(BaseModel):
    """The model call of the job's current step at the provider. In background mode it is a
    response id, stored before anything else can fail, so a retry finds the response instead
    of paying for another; `cancelled` says the provider was told to stop generating."""

    mode: str  # "background" | "sync"
    step: str  # "<version>:<depth>": the step this call answers
    response_id: str | None = None
    status: str | None = None
    cancelled: bool = False

    def view(self) -> dict[str, Any]:
        return {"mode": self.mode, "response_id": self.response_id, "cancelled": self.cancelled}


class JobRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    job_id: str
    tenant_id: str
    status: JobStatus = JobStatus.PENDING
    current_step: Step | None = None
    progress: int = 0
    version: int = 1
    depth: int = 0
    model: str
    created_ms: int
    updated_ms: int
    expires_at: int
    deadline_ms: int
    metadata: dict[str, str] = Field(default_factory=dict)
    # The validated request body, minus the webhook (stored apart: it carries credentials).
    request: dict[str, Any] = Field(default_factory=dict)
    webhook: dict[str, Any] | None = None
    document_key: str | None = None
    text_key: str | None = None
    document: DocumentInfo | None = None
    # Map-reduce of a long document: how many chunks each level has (level 0: the text's chunks,
    # level n: groups of level n-1's answers). Empty when the document fit one call.
    chunk_levels: list[int] = Field(default_factory=list)
    source: str = "api"
    step_started_ms: dict[str, int] = Field(default_factory=dict)
    usage: Usage = Field(default_factory=Usage)
    timings: Timings = Field(default_factory=Timings)
    result: JobResult | None = None
    error: JobError | None = None
    idempotency_key: str | None = None
    # Set once the first stage command is queued, for uploads only (an S3 event can be delivered
    # more than once): a replay re-queues only without it.
    handed_off: bool = False
    provider_call: ProviderCall | None = None
    # The step (version:depth) whose response id is stored: the attach write is conditioned on it.
    provider_step: str | None = None
    # The job this one re-runs (POST /v1/jobs/{id}/rerun).
    rerun_of: str | None = None
    # Limits a reviewer approved (they replace the request's and the deployment's defaults).
    approved_max_depth: int | None = None
    approved_max_total_tokens: int | None = None
    # Where a job stopped for review continues when approved: the tool step (its calls are in the
    # stored conversation), or nowhere (the answer stands: approval completes it).
    resume_step: Step | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    @property
    def is_settled(self) -> bool:
        return self.status.is_settled

    # DynamoDB mapping. Nested free-form maps travel as JSON strings: no float/Decimal surprises.
    JSON_FIELDS: ClassVar[tuple[str, ...]] = (
        "request",
        "webhook",
        "usage",
        "timings",
        "result",
        "error",
        "step_started_ms",
        "metadata",
        "document",
        "chunk_levels",
        "provider_call",
    )

    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = job_key(self.tenant_id, self.job_id)
        data = self.model_dump(mode="json", exclude_none=True)
        for name, value in data.items():
            item[name] = json.dumps(value, separators=(",", ":")) if name in self.JSON_FIELDS else value
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> JobRecord:
        data: dict[str, Any] = {}
        for name, value in item.items():
            if name in ("pk", "sk"):
                continue
            if name in cls.JSON_FIELDS and isinstance(value, str):
                data[name] = json.loads(value)
            elif isinstance(value, Decimal):
                data[name] = int(value)
            else:
                data[name] = value
        return cls.model_validate(data)

    def cost(self, model_prices: Mapping[str, ModelPrice]) -> CostView:
        """What the job cost so far: the model's tokens at the table's price (null for a model
        with no price), and the list price of the AWS requests its path made."""
        price = model_prices.get(self.model)
        model_usd = (
            None if price is None else price.cost(self.usage.prompt_tokens, self.usage.completion_tokens)
        )
        stage_ms = sum(
            ms or 0 for ms in (self.timings.extract_ms, self.timings.infer_ms, self.timings.notify_ms)
        )
        path = JobPath(
            has_document=self.document_key is not None,
            infer_hops=self.depth + 1 if self.usage.total_tokens else 0,
            tool_hops=self.depth,
            has_webhook=self.webhook is not None and self.status.is_settled,
            stage_ms=stage_ms,
        )
        return CostView(model_usd=_usd(model_usd), aws_usd=_usd(aws_cost(path)))

    def view(
        self,
        result_url: Callable[[str], str] | None = None,
        model_prices: Mapping[str, ModelPrice] | None = None,
    ) -> JobView:
        """The job as `GET /v1/jobs/{id}` returns it (also the body of terminal events/webhooks)."""
        result = None
        if self.result is not None:
            result = ResultView(
                text=self.result.text,
                finish_reason=self.result.finish_reason,
                tool_calls=self.result.tool_calls or None,
                result_url=(
                    result_url(self.result.result_key)
                    if self.result.result_key and result_url is not None
                    else None
                ),
            )
        return JobView(
            id=self.job_id,
            status=self.status,
            current_step=self.current_step,
            progress=self.progress,
            created_at=iso_from_ms(self.created_ms),
            updated_at=iso_from_ms(self.updated_ms),
            metadata=self.metadata,
            model=self.model,
            version=self.version,
            depth=self.depth,
            usage=self.usage,
            cost=self.cost(model_prices or {}),
            timings=self.timings,
            document=self.document,
            rerun_of=self.rerun_of,
            result=result,
            error=self.error,
            provider_call=(
                ProviderCallView.model_validate(self.provider_call.view()) if self.provider_call else None
            ),
        )

    @property
    def step_key(self) -> str:
        return f"{self.version}:{self.depth}"

    def public_view(
        self,
        result_url: Callable[[str], str] | None = None,
        model_prices: Mapping[str, ModelPrice] | None = None,
    ) -> dict[str, Any]:
        """`view()` as plain JSON data, for events and webhooks."""
        data: dict[str, Any] = self.view(result_url, model_prices).model_dump(mode="json")
        return data


# -- the public job (GET /v1/jobs/{id}, list pages, terminal events, webhooks) -------------------
def _usd(amount: float | None) -> float | None:
    # Micro-dollar precision: enough for one job, and no float noise in the JSON.
    return None if amount is None else round(amount, 9)


def _absent(value: Any) -> bool:
    """Optional parts are left out rather than sent as null (clients test `"result" in job`)."""
    return value is None


class ResultView(BaseModel):
    """What the model answered; a large result is cut to a preview and linked by `result_url`."""

    text: str | None
    finish_reason: str | None
    tool_calls: list[dict[str, Any]] | None = Field(None, exclude_if=_absent)
    result_url: str | None = Field(
        None, exclude_if=_absent, description="short-lived URL of the whole result (large results)"
    )


class ProviderCallView(BaseModel):
    """The provider's side of the current model call (background mode: its response id)."""

    mode: str
    response_id: str | None
    cancelled: bool


class CostView(BaseModel):
    """What the job cost in US dollars; null when it cannot be known (e.g. a model with no price)."""

    model_usd: float | None = Field(
        None, description="tokens priced with the ModelPrices table; null for a model it does not list"
    )
    aws_usd: float | None = Field(
        None, description="list price (us-east-1) of the AWS requests the job's path made (baton/prices.py)"
    )


class JobView(BaseModel):
    """A job as clients see it. `result` or `error` appear once the job has one; `rerun_of` only
    on re-runs. Webhook credentials are never part of it."""

    id: str
    status: JobStatus
    current_step: Step | None
    progress: int = Field(ge=0, le=100)
    created_at: str
    updated_at: str
    metadata: dict[str, str]
    model: str
    version: int
    depth: int
    usage: Usage
    cost: CostView
    timings: Timings
    document: DocumentInfo | None = Field(None, exclude_if=_absent, description="the document the job reads")
    rerun_of: str | None = Field(None, exclude_if=_absent, description="the job this one re-runs")
    result: ResultView | None = Field(None, exclude_if=_absent)
    error: JobError | None = Field(None, exclude_if=_absent)
    provider_call: ProviderCallView | None = Field(
        None, exclude_if=_absent, description="the model call at the provider (InferenceMode=background)"
    )


class JobList(BaseModel):
    """A page of `GET /v1/jobs`, newest first; `next_cursor` fetches the next page (null: no more)."""

    data: list[JobView]
    next_cursor: str | None
