"""How the API describes itself: the OpenAPI document's title, security and where it is served.

The paths and schemas come from the routes in functions/api/app.py (Powertools generates them from
the same pydantic models that validate requests); `make openapi` writes the document to
docs/openapi.json and a unit test fails when that file drifts from the code.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer

OPENAPI_PATH = "/v1/openapi.json"
SWAGGER_PATH = "/docs"
# The version of this document's contract (the /v1 API), not of the code that serves it.
API_VERSION = "1.0"
SECURITY_SCHEME = "apiKey"

DESCRIPTION = (
    "Asynchronous LLM jobs: submit a job (202 Accepted), then poll it, long-poll it "
    "(`?wait=N`, `Prefer: wait=N`) or receive a signed webhook (Standard Webhooks). "
    "Every request carries `Authorization: Bearer <api key>` except this document. "
    'Errors are `{"error": {"type", "message", "field"?}}`.'
)


def openapi_info() -> dict[str, Any]:
    """Keyword arguments for Powertools' get_openapi_json_schema / enable_swagger."""
    return {
        "title": "Baton jobs API",
        "version": API_VERSION,
        "description": DESCRIPTION,
        "security_schemes": {
            SECURITY_SCHEME: HTTPBearer(description="an API key from `baton keys create` (bk_...)")
        },
        "security": [{SECURITY_SCHEME: []}],
    }
