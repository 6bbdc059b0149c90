"""Every exception the API can raise, mapped to the contract's error body in this one place."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyValidationError,
)

from baton.errors import (
    BatonError,
    IdempotencyInFlightError,
    IdempotencyKeyReusedError,
    InvalidRequestError,
    JobConflictError,
    JobNotFoundError,
    UnauthorizedError,
)
from baton.models import ErrorBody, ErrorDetail

logger = Logger(child=True)

STATUS_FOR_ERROR: dict[type[BatonError], int] = {
    JobNotFoundError: 404,
    JobConflictError: 409,
    IdempotencyInFlightError: 409,
    IdempotencyKeyReusedError: 422,
    InvalidRequestError: 422,
    UnauthorizedError: 401,
}


def error_response(status: int, error_type: str, message: str, field: str | None = None) -> Response[str]:
    body = ErrorBody(error=ErrorDetail(type=error_type, message=message, field=field or None))
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body=body.model_dump_json()
    )


def error_responses(*statuses: int) -> dict[int, OpenAPIResponse]:
    """The OpenAPI `responses` entries of the errors a route can answer, all with ErrorBody."""
    return {
        status: {
            "description": ERROR_DESCRIPTIONS[status],
            "content": {"application/json": {"model": ErrorBody}},
        }
        for status in statuses
    }


ERROR_DESCRIPTIONS = {
    400: "The body is not valid JSON",
    401: "Missing or invalid API key",
    404: "No such job for this tenant (unknown, expired or another tenant's)",
    409: "The job's state forbids this, or the first request with this Idempotency-Key is in flight",
    415: "The body is not JSON",
    422: "A field is invalid; `error.field` names it",
}


_MISSING = object()


def _field_of(location: tuple[Any, ...] | list[Any], body: Any = _MISSING) -> str:
    # Powertools reports ("body", "input", "prompt") or ("query", "wait"): clients want "input.prompt".
    parts = list(location)
    source = str(parts[0]) if parts else ""
    if source in {"body", "query", "header", "path"}:
        parts = parts[1:]
    if source == "body" and body is not _MISSING:
        parts = _without_union_tags(parts, body)
    return ".".join(str(part) for part in parts) or "body"


def _without_union_tags(parts: list[Any], body: Any) -> list[Any]:
    """pydantic names the union member that failed ("content.str", "tools.0.dict[str,any]"): an
    internal name, not a field. Walk the body along the location and drop the parts that cannot be
    keys of what is there."""
    kept: list[Any] = []
    node = body
    for part in parts:
        if node is _MISSING or part == "[key]":
            kept.append(part)
            node = _MISSING
        elif isinstance(node, dict):
            kept.append(part)
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and isinstance(part, int) and not isinstance(part, bool):
            kept.append(part)
            node = node[part] if -len(node) <= part < len(node) else _MISSING
        # else: a union member's tag under a value that has no fields; not part of the field name
    return kept


def _unsupported_media_type() -> Response[str]:
    return error_response(
        415,
        "unsupported_media_type",
        "send the body as JSON with Content-Type: application/json",
        "Content-Type",
    )


def register_error_handlers(app: APIGatewayRestResolver) -> None:
    @app.exception_handler(RequestValidationError)
    def _validation(error: RequestValidationError) -> Response[str]:
        content_type = (app.current_event.headers.get("content-type") or "").lower()
        if app.current_event.body and content_type and not content_type.startswith("application/json"):
            # Powertools parses form bodies as forms; a JSON API says plainly what it wants.
            return _unsupported_media_type()
        first = error.errors()[0] if error.errors() else {}
        if first.get("type") == "json_invalid":
            return error_response(400, "invalid_json", "the request body is not valid JSON", "body")
        try:
            body = app.current_event.json_body
        except Exception:  # no body to walk: field names stay as pydantic gives them
            body = _MISSING
        field = _field_of(first.get("loc", ()), body)
        message = str(first.get("msg", "invalid request"))
        return error_response(422, "validation_error", f"{field}: {message}", field)

    @app.exception_handler(RequestUnsupportedContentType)
    def _unsupported_content_type(_: RequestUnsupportedContentType) -> Response[str]:
        # Any other content type (text/plain, application/xml, ...): Powertools refuses to parse it.
        return _unsupported_media_type()

    @app.exception_handler(UnicodeDecodeError)
    def _not_utf8(error: UnicodeDecodeError) -> Response[str]:
        # Powertools decodes the body as UTF-8 before parsing it; JSON (RFC 8259) must be UTF-8.
        # Blame the body only if it really is the culprit.
        try:
            app.current_event.decoded_body  # noqa: B018 - decoding is the check
        except UnicodeDecodeError:
            return error_response(400, "invalid_json", "the request body is not valid UTF-8", "body")
        return _unexpected(error)

    @app.exception_handler(RecursionError)
    def _too_deep(error: RecursionError) -> Response[str]:
        # json.loads gives up on bodies nested about a thousand levels deep.
        try:
            json.loads(app.current_event.decoded_body or "null")
        except RecursionError:
            return error_response(400, "invalid_json", "the request body is nested too deeply", "body")
        except ValueError:
            pass
        return _unexpected(error)

    @app.exception_handler(IdempotencyValidationError)
    def _key_reused(_: IdempotencyValidationError) -> Response[str]:
        return error_response(
            422,
            IdempotencyKeyReusedError.type,
            "this Idempotency-Key was already used with a different body",
            "Idempotency-Key",
        )

    @app.exception_handler(IdempotencyAlreadyInProgressError)
    def _in_flight(_: IdempotencyAlreadyInProgressError) -> Response[str]:
        return error_response(
            409,
            IdempotencyInFlightError.type,
            "the first request with this Idempotency-Key is still in flight; retry shortly",
        )

    @app.exception_handler(BatonError)
    def _domain(error: BatonError) -> Response[str]:
        status = next((code for kind, code in STATUS_FOR_ERROR.items() if isinstance(error, kind)), 500)
        if status == 500:
            logger.exception("unmapped domain error")
            return error_response(500, "internal_error", "internal error")
        return error_response(status, error.type, error.message, error.field)

    @app.not_found
    def _not_found(_: NotFoundError) -> Response[str]:
        return error_response(404, "not_found", "no such route")

    @app.exception_handler(Exception)
    def _unexpected(_: BaseException) -> Response[str]:
        # Log the cause for operators; never show stack traces or internal names to clients.
        logger.exception("unhandled error")
        return error_response(500, "internal_error", "internal error")
