"""A small synchronous client for Baton's jobs API (`/v1/jobs`), as the contract describes it,
plus the one bucket operation a client needs: uploading a document to reference by `document.id`."""

from __future__ import annotations

import logging
import mimetypes
import re
import uuid
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import httpx

from baton.models import BATCH_TERMINAL_STATUSES as BATCH_STATUSES_DONE
from baton.models import SETTLED_STATUSES

if TYPE_CHECKING:
    from baton_dev.target import Target

logger = logging.getLogger("baton.client")

__all__ = [
    "BATCH_TERMINAL_STATUSES",
    "TERMINAL_STATUSES",
    "BatonApiError",
    "BatonClient",
    "BatonClientError",
    "BatonConnectionError",
    "document_id_for",
    "s3_client",
    "upload_document",
]

# What a client waits for: a terminal status, or needs_review (waiting for a person). From the
# domain's one set, so the CLI, bench and chaos cannot disagree with the API.
TERMINAL_STATUSES: Final = frozenset(status.value for status in SETTLED_STATUSES)
BATCH_TERMINAL_STATUSES: Final = frozenset(BATCH_STATUSES_DONE)


class BatonClientError(Exception):
    """Anything that went wrong talking to the API."""


class BatonConnectionError(BatonClientError):
    """The API could not be reached (refused, timed out, broken connection)."""

    def __init__(self, url: str, cause: str) -> None:
        super().__init__(f"cannot reach the Baton API at {url}: {cause}")
        self.url = url
        self.cause = cause


class BatonApiError(BatonClientError):
    """A non-2xx answer, parsed from the contract's `{"error": {"type", "message", "field"?}}` body."""

    def __init__(self, status: int, error_type: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status} {error_type}: {message}" + (f" ({field})" if field else ""))
        self.status = status
        self.error_type = error_type
        self.message = message
        self.field = field

    @classmethod
    def from_response(cls, response: httpx.Response) -> BatonApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            field = error.get("field")
            return cls(
                response.status_code,
                str(error.get("type") or "error"),
                str(error.get("message") or response.reason_phrase),
                str(field) if field else None,
            )
        # Not the contract's shape (a proxy, a gateway default answer): keep what there is.
        text = response.text.strip()[:200] or response.reason_phrase
        return cls(response.status_code, "http_error", text)


class BatonClient:
    """`submit`, `get` and `cancel` over one httpx connection pool (safe to share between threads)."""

    def __init__(
        self,
        api_url: str,
        api_key: str,
        timeout: float = 30.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "baton-cli/1"},
            timeout=timeout,
            transport=transport,
        )

    # -- API ----------------------------------------------------------------------------------------
    def submit(
        self,
        body: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        wait_seconds: float | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """POST /v1/jobs. Returns (202, the acceptance) or, with `wait_seconds` and a job that
        finished in time, (200, the finished job)."""
        headers: dict[str, str] = {}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        if wait_seconds is not None:
            headers["Prefer"] = f"wait={wait_seconds:g}"
        response = self._request(
            "POST", "/v1/jobs", json=body, headers=headers, extra_timeout=wait_seconds or 0.0
        )
        return response.status_code, _json_object(response)

    def get(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        """GET /v1/jobs/{id}; `wait` long-polls up to that many seconds for a change."""
        params = {"wait": f"{wait:g}"} if wait is not None else None
        response = self._request("GET", f"/v1/jobs/{job_id}", params=params, extra_timeout=wait or 0.0)
        return _json_object(response)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """DELETE /v1/jobs/{id}: 200 with the cancelled job; a terminal job raises a 409 error."""
        return _json_object(self._request("DELETE", f"/v1/jobs/{job_id}"))

    # -- documents ------------------------------------------------------------------------------------
    def upload(self, filename: str, data: bytes, content_type: str | None = None) -> str:
        """POST /v1/documents, then PUT the bytes to the presigned URL it answers (no AWS
        credentials needed). Returns the document id for `document.id` / `input_document_id`."""
        body: dict[str, Any] = {"filename": filename}
        if content_type:
            body["content_type"] = content_type
        created = _json_object(self._request("POST", "/v1/documents", json=body))
        upload = created["upload"]
        try:
            # Not through self._http: the presigned URL must not carry our API key to S3.
            response = httpx.request(
                upload["method"], upload["url"], content=data, headers=upload["headers"], timeout=self.timeout
            )
        except httpx.HTTPError as error:
            raise BatonConnectionError(
                upload["url"].split("?")[0], str(error) or type(error).__name__
            ) from error
        if not response.is_success:
            raise BatonApiError(response.status_code, "upload_failed", response.text.strip()[:300])
        logger.info("uploaded %s (%d bytes) as document %s", filename, len(data), created["id"])
        return str(created["id"])

    def submit_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/batches: 202 with the batch."""
        return _json_object(self._request("POST", "/v1/batches", json=body))

    def batch(self, batch_id: str) -> dict[str, Any]:
        """GET /v1/batches/{id}."""
        return _json_object(self._request("GET", f"/v1/batches/{batch_id}"))

    def document(self, document_id: str) -> dict[str, Any]:
        """GET /v1/documents/{id}."""
        return _json_object(self._request("GET", f"/v1/documents/{document_id}"))

    def rotate_webhook_secret(self) -> dict[str, Any]:
        """POST /v1/webhook-secret/rotate: {"webhook_secret", "previous_valid_until"}."""
        return _json_object(self._request("POST", "/v1/webhook-secret/rotate"))

    def list_jobs(
        self, *, status: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> dict[str, Any]:
        """GET /v1/jobs: one page, newest first, `{"data": [...], "next_cursor"}`."""
        params: dict[str, str | int] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        return _json_object(self._request("GET", "/v1/jobs", params=params))

    def review(self, job_id: str, decision: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/jobs/{id}/review: approve or reject a job in needs_review."""
        return _json_object(self._request("POST", f"/v1/jobs/{job_id}/review", json=decision))

    # -- plumbing -----------------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        extra_timeout: float = 0.0,
        **kwargs: Any,
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, timeout=self.timeout + extra_timeout, **kwargs)
        except httpx.HTTPError as error:
            raise BatonConnectionError(self.api_url, str(error) or type(error).__name__) from error
        logger.debug("%s %s -> %d", method, path, response.status_code)
        if not response.is_success:
            raise BatonApiError.from_response(response)
        return response

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BatonClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise BatonApiError(response.status_code, "invalid_response", "the API answered something not JSON")
    return body


# -- documents ----------------------------------------------------------------------------------------
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._\-]+")


def document_id_for(filename: str) -> str:
    """`<uuid>-<filename>`, with characters a document id may not hold replaced by `-`."""
    safe = _UNSAFE_ID_CHARS.sub("-", filename).strip("-") or "document"
    return f"{uuid.uuid4()}-{safe}"[:512]


def s3_client(target: Target | None, region: str | None = None) -> Any:
    """An S3 client for the target's endpoint (moto locally), or boto3's defaults without one."""
    import boto3

    if target is None:
        return boto3.client("s3", region_name=region)
    target.apply_aws_environment()
    return boto3.client("s3", endpoint_url=target.endpoint_url, region_name=target.region)


def upload_document(
    target: Target | None,
    *,
    bucket: str,
    tenant: str,
    filename: str,
    data: bytes,
    content_type: str | None = None,
    s3: Any = None,
) -> str:
    """Put `data` at documents/<tenant>/<uuid>-<filename>; returns the id for `document.id`."""
    document_id = document_id_for(filename)
    guessed = content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
    (s3 or s3_client(target)).put_object(
        Bucket=bucket, Key=f"documents/{tenant}/{document_id}", Body=data, ContentType=guessed
    )
    logger.info("uploaded %s (%d bytes) as document %s", filename, len(data), document_id)
    return document_id
