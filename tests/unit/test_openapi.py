"""The OpenAPI document: generated from the routes and models, served without a key, and the copy
in docs/openapi.json kept in step with the code (`make openapi` rewrites it)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from baton_dev.openapi import DOCUMENT, document

if TYPE_CHECKING:
    from conftest import AwsStack, LoadedFunction


def unauthenticated_get(aws: AwsStack, path: str) -> dict[str, Any]:
    """A GET on a route with `Auth: Authorizer: NONE`: no authorizer context reaches the API."""
    event = aws.api_event("api-get-job.json")
    event["path"] = event["resource"] = path
    event["requestContext"]["path"] = f"/{event['requestContext']['stage']}{path}"
    event["requestContext"]["resourcePath"] = path
    event["pathParameters"] = None
    event["requestContext"]["authorizer"] = None
    for name in ("Authorization",):
        event["headers"].pop(name, None)
        event["multiValueHeaders"].pop(name, None)
    return event


def test_the_document_in_the_repo_matches_the_code(api: LoadedFunction) -> None:
    generated = document(api.module)
    assert DOCUMENT.exists(), "docs/openapi.json is missing: run `make openapi`"
    assert json.loads(DOCUMENT.read_text()) == json.loads(generated), (
        "docs/openapi.json differs from the routes and models in the code: run `make openapi`"
    )


def test_the_document_is_served_without_a_key(aws: AwsStack, api: LoadedFunction) -> None:
    response = api(unauthenticated_get(aws, "/v1/openapi.json"))
    assert response["statusCode"] == 200, response["body"]
    served = json.loads(response["body"])
    assert served == json.loads(DOCUMENT.read_text())
    assert served["openapi"].startswith("3.1")


def test_routes_declare_headers_answers_and_models(api: LoadedFunction) -> None:
    spec = json.loads(document(api.module))
    schemas = spec["components"]["schemas"]
    submit = spec["paths"]["/v1/jobs"]["post"]
    headers = {parameter["name"].lower() for parameter in submit["parameters"] if parameter["in"] == "header"}
    assert headers == {"idempotency-key", "prefer"}
    answers = submit["responses"]
    assert answers["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobAccepted")
    assert answers["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobView")
    for status in ("400", "401", "409", "415", "422"):
        assert answers[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert set(schemas["JobAccepted"]["required"]) == {"id", "status", "created_at", "poll_url", "delivery"}
    job = schemas["JobView"]
    assert {"id", "status", "version", "usage", "cost", "timings"} <= set(job["required"])
    assert {"result", "error", "rerun_of"} <= set(job["properties"]) - set(job["required"])
    listing = spec["paths"]["/v1/jobs"]["get"]
    limit = next(parameter for parameter in listing["parameters"] if parameter["name"] == "limit")
    bounds = (limit["schema"]["minimum"], limit["schema"]["maximum"], limit["schema"]["default"])
    assert bounds == (1, 100, 20)
    assert listing["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobList")
    # Every operation needs the API key, except the document itself (not listed in it).
    assert spec["security"] == [{"apiKey": []}]
    assert spec["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert "/v1/openapi.json" not in spec["paths"] and "/docs" not in spec["paths"]


def test_swagger_ui_is_served(aws: AwsStack, api: LoadedFunction) -> None:
    response = api(unauthenticated_get(aws, "/docs"))
    assert response["statusCode"] == 200
    assert "swagger" in response["body"].lower()
    assert '"/v1/jobs"' in response["body"]
