"""Every exception the API can raise, mapped to the contract's error body in this one place."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
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
    error: dict[str, Any] = {"type": error_type, "message": message}
    if field:
        error["field"] = field
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body=json.dumps({"error": error})
    )


def _field_of(location: tuple[Any, ...] | list[Any]) -> str:
    # Powertools reports ("body", "input", "prompt") or ("query", "wait"): clients want "input.prompt".
    parts = [str(part) for part in location]
    if parts and parts[0] in {"body", "query", "header", "path"}:
        parts = parts[1:]
    return ".".join(parts) or "body"


def register_error_handlers(app: APIGatewayRestResolver) -> None:
    @app.exception_handler(RequestValidationError)
    def _validation(error: RequestValidationError) -> Response[str]:
        content_type = (app.current_event.headers.get("content-type") or "").lower()
        if app.current_event.body and content_type and not content_type.startswith("application/json"):
            # Powertools parses form bodies as forms; a JSON API says plainly what it wants.
            return error_response(
                415,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
                "Content-Type",
            )
        first = error.errors()[0] if error.errors() else {}
        field = _field_of(first.get("loc", ()))
        if first.get("type") == "json_invalid":
            return error_response(400, "invalid_json", "the request body is not valid JSON", "body")
        message = str(first.get("msg", "invalid request"))
        return error_response(422, "validation_error", f"{field}: {message}", field)

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
    def _unexpected(_: Exception) -> Response[str]:
        # Log the cause for operators; never show stack traces or internal names to clients.
        logger.exception("unhandled error")
        return error_response(500, "internal_error", "internal error")
