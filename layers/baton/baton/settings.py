"""Configuration: every environment variable Baton reads, parsed once into one validated model."""

from __future__ import annotations

import re
from functools import cached_property, lru_cache
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from baton.prices import ModelPrice, parse_model_prices

DEFAULT_WEBHOOK_SCHEDULE = "5s,5m,30m,2h,5h,10h,10h"
DEFAULT_POLL_SCHEDULE = "2s,5s,10s,30s,1m,2m,5m,10m,15m"
MAX_SQS_DELAY_SECONDS = 900
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_schedule(text: str) -> list[float]:
    """ "5s,5m,2h" -> [5, 300, 7200]; a bare number is seconds. Empty means no retries."""
    delays = []
    for part in text.split(","):
        if not part.strip():
            continue
        match = _DURATION.match(part)
        if match is None:
            raise ValueError(f"schedule entry {part.strip()!r} is not a duration like 5s, 5m, 2h or 1d")
        delays.append(float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"])
    if len(delays) > 50:
        raise ValueError("a webhook schedule has at most 50 retries")
    return delays


class Settings(BaseSettings):
    """Values come from the function's environment (template.yaml Globals on AWS and locally)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    stage: str = Field("dev", alias="BATON_STAGE")
    jobs_table: str = Field("baton-jobs", alias="JOBS_TABLE")
    idempotency_table: str = Field("baton-idempotency", alias="IDEMPOTENCY_TABLE")
    bucket: str = Field("baton-data", alias="BUCKET_NAME")
    event_bus: str = Field("baton", alias="EVENT_BUS_NAME")
    extract_queue_url: str = Field("", alias="EXTRACT_QUEUE_URL")
    infer_queue_url: str = Field("", alias="INFER_QUEUE_URL")
    tool_queue_url: str = Field("", alias="TOOL_QUEUE_URL")
    webhook_queue_url: str = Field("", alias="WEBHOOK_QUEUE_URL")
    # KMS key that seals webhook.auth credentials at rest (template: WebhookAuthKey).
    webhook_auth_key_id: str = Field("", alias="WEBHOOK_AUTH_KEY_ID")
    batch_queue_url: str = Field("", alias="BATCH_QUEUE_URL")

    # The model endpoint follows the openai client's own variables.
    model: str = Field("baton-local", alias="BATON_MODEL", min_length=1)
    openai_base_url: str | None = Field(None, alias="OPENAI_BASE_URL")
    openai_api_key: str | None = Field(None, alias="OPENAI_API_KEY")
    # On AWS the key lives in Secrets Manager; the function reads it once (cached by Powertools).
    openai_api_key_secret_arn: str | None = Field(None, alias="OPENAI_API_KEY_SECRET_ARN")
    model_timeout_seconds: float = Field(120.0, alias="BATON_MODEL_TIMEOUT_SECONDS", gt=0)
    # The provider limiter (baton.limiter): its DynamoDB table ("" for none), the provider's limits
    # per (endpoint, model) (0: learned from its x-ratelimit-* headers), one tenant's calls in flight.
    limiter_table: str = Field("", alias="LIMITER_TABLE")
    provider_requests_per_minute: int = Field(0, alias="BATON_PROVIDER_RPM", ge=0)
    provider_tokens_per_minute: int = Field(0, alias="BATON_PROVIDER_TPM", ge=0)
    tenant_max_in_flight: int = Field(0, alias="BATON_TENANT_MAX_IN_FLIGHT", ge=0)

    # InferenceMode: "sync" waits on /chat/completions; "background" creates a background response
    # (Responses API), stores its id and returns; a delayed poll or the provider's webhook resumes.
    inference_mode: Literal["sync", "background"] = Field("sync", alias="BATON_INFERENCE_MODE")
    # Delays between polls of a background response (the last repeats; SQS delays cap at 900 s).
    background_poll_schedule: str = Field(DEFAULT_POLL_SCHEDULE, alias="BATON_BACKGROUND_POLL_SCHEDULE")
    # Secrets Manager secret holding the provider's webhook secret (whsec_...): POST
    # /v1/provider-webhooks/openai verifies with it; "" refuses every provider webhook.
    provider_webhook_secret_arn: str = Field("", alias="PROVIDER_WEBHOOK_SECRET_ARN")
    max_depth: int = Field(8, alias="BATON_MAX_DEPTH", ge=1, le=15)
    max_total_tokens: int = Field(200_000, alias="BATON_MAX_TOTAL_TOKENS", ge=1)
    # What a reviewer's approval may raise a job's limits to (never past 15 hops: Lambda stops
    # recursive chains at 16), and how long a job waits for review (0: RetentionDays).
    review_max_depth: int = Field(15, alias="BATON_REVIEW_MAX_DEPTH", ge=1, le=15)
    review_max_total_tokens: int = Field(1_000_000, alias="BATON_REVIEW_MAX_TOTAL_TOKENS", ge=1)
    review_expiry_seconds: int = Field(0, alias="BATON_REVIEW_EXPIRY_SECONDS", ge=0)
    # USD per million input/output tokens per model ("model=in/out,..."); a job whose model has no
    # price shows cost.model_usd null.
    model_prices_table: str = Field("baton-local=0/0", alias="BATON_MODEL_PRICES")

    @field_validator("model_prices_table")
    @classmethod
    def _prices_parse(cls, value: str) -> str:
        parse_model_prices(value)
        return value

    @cached_property
    def model_prices(self) -> dict[str, ModelPrice]:
        return parse_model_prices(self.model_prices_table)

    # Retryable failures (429, 5xx, timeouts, throttling) back off with full jitter, SQS-natively.
    max_attempts: int = Field(5, alias="BATON_MAX_ATTEMPTS", ge=1, le=50)
    # The queues' redrive policy (MaxReceiveCount): how many deliveries a dead letter had.
    max_receive_count: int = Field(7, alias="BATON_MAX_RECEIVE_COUNT", ge=1)
    retry_base_seconds: float = Field(2.0, alias="BATON_RETRY_BASE_SECONDS", gt=0)
    retry_cap_seconds: float = Field(300.0, alias="BATON_RETRY_CAP_SECONDS", gt=0, le=43_200)
    retention_days: int = Field(7, alias="BATON_RETENTION_DAYS", ge=1)
    default_timeout_seconds: int = Field(900, alias="BATON_DEFAULT_TIMEOUT_SECONDS", ge=1)
    # Prefer: wait=N and GET ?wait=N are capped below API Gateway's 29 s integration timeout.
    max_wait_seconds: float = Field(25.0, alias="BATON_MAX_WAIT_SECONDS", ge=0, le=28)
    # Results larger than this go to S3; the job item keeps a pointer (DynamoDB items cap at 400 KB).
    inline_result_max_bytes: int = Field(32_768, alias="BATON_INLINE_RESULT_MAX_BYTES", ge=1024)
    max_prompt_chars: int = Field(200_000, alias="BATON_MAX_PROMPT_CHARS", ge=1)
    max_document_bytes: int = Field(25 * 1024 * 1024, alias="BATON_MAX_DOCUMENT_BYTES", ge=1)
    # How long a presigned upload URL (POST /v1/documents) stays valid.
    upload_url_expiry_seconds: int = Field(900, alias="BATON_UPLOAD_URL_EXPIRY_SECONDS", ge=60, le=604_800)
    # The model's context window in tokens (ModelContextTokens): longer documents are split (map-reduce),
    # cut (truncate) or refused (fail), as the job's parameters.long_document says.
    model_context_tokens: int = Field(32_768, alias="MODEL_CONTEXT_TOKENS", ge=1024)
    webhook_timeout_seconds: float = Field(15.0, alias="BATON_WEBHOOK_TIMEOUT_SECONDS", gt=0)
    result_url_expiry_seconds: int = Field(3600, alias="BATON_RESULT_URL_EXPIRY_SECONDS", ge=60)
    retry_after_seconds: int = Field(2, alias="BATON_RETRY_AFTER_SECONDS", ge=1)
    # Webhooks (template parameters WebhookRetrySchedule, WebhookAllowPrivateNetworks).
    webhook_retry_schedule: str = Field(DEFAULT_WEBHOOK_SCHEDULE, alias="WEBHOOK_RETRY_SCHEDULE")
    webhook_allow_private_networks: bool = Field(False, alias="WEBHOOK_ALLOW_PRIVATE_NETWORKS")
    # CorsAllowOrigin: "" (no CORS headers), "*" or one origin.
    cors_allow_origin: str = Field("", alias="BATON_CORS_ALLOW_ORIGIN")

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _valid_schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value

    @field_validator("background_poll_schedule")
    @classmethod
    def _valid_poll_schedule(cls, value: str) -> str:
        delays = parse_schedule(value)
        if not delays or any(delay > MAX_SQS_DELAY_SECONDS for delay in delays):
            raise ValueError(
                f"a poll schedule needs at least one delay, each at most {MAX_SQS_DELAY_SECONDS} s"
            )
        return value

    def poll_delay(self, poll: int) -> float:
        """Seconds before poll number `poll` (1 = the first) of a background response."""
        delays = parse_schedule(self.background_poll_schedule)
        return delays[min(poll, len(delays)) - 1]

    @property
    def webhook_retry_delays(self) -> list[float]:
        """Seconds to wait before each retry of a failed delivery (after the first attempt)."""
        return parse_schedule(self.webhook_retry_schedule)

    @property
    def review_window_ms(self) -> int:
        return (self.review_expiry_seconds or self.retention_days * 86_400) * 1000


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Parsed once per process (once per Lambda cold start)."""
    return Settings()
