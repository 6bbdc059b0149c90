"""Domain exceptions. `baton.http_errors` maps them to HTTP answers in one place."""

from __future__ import annotations


class BatonError(Exception):
    """Base class: `type` is the stable machine-readable name clients and job errors see."""

    type = "internal_error"
    retryable = False

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class JobNotFoundError(BatonError):
    type = "not_found"


class JobConflictError(BatonError):
    """The job is in a state that forbids the request (e.g. cancelling a terminal job)."""

    type = "conflict"


class InvalidRequestError(BatonError):
    type = "invalid_request"


class IdempotencyKeyReusedError(BatonError):
    """Same Idempotency-Key, different body."""

    type = "idempotency_key_reused"


class IdempotencyInFlightError(BatonError):
    """The first request with this Idempotency-Key is still being processed."""

    type = "idempotency_in_flight"


class UnauthorizedError(BatonError):
    type = "unauthorized"


class StaleWriteError(BatonError):
    """A conditional write lost: the job moved on (terminal, cancelled or superseded)."""

    type = "stale_write"


class DocumentError(BatonError):
    """A document cannot be turned into text: the job fails, retrying will not help."""

    type = "document_error"


class UnsupportedDocumentError(DocumentError):
    type = "unsupported_document"


class UnreadableDocumentError(DocumentError):
    type = "unreadable_document"


class DocumentTooLargeError(DocumentError):
    type = "document_too_large"


class DocumentTooLongError(DocumentError):
    """Longer than the model's context, and the job said `long_document: fail`."""

    type = "document_too_long"


class ModelError(BatonError):
    """The model endpoint refused or failed; `retryable` says whether trying again can help."""

    type = "model_error"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        type_: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        # The answer's headers (a 429's x-ratelimit-* teach the provider limiter).
        self.headers = headers or {}
        if type_:
            self.type = type_
