"""The Lambda REQUEST authorizer (functions/authorizer) with events/authorizer-request.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from baton.tenants import TenantStore

if TYPE_CHECKING:
    from conftest import AwsStack, LoadedFunction

EVENT = Path(__file__).resolve().parents[2] / "events" / "authorizer-request.json"


def authorizer_event(headers: dict[str, str] | None) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(EVENT.read_text())
    event["headers"] = {k: v for k, v in event["headers"].items() if k.lower() != "authorization"}
    event["multiValueHeaders"] = {k: [v] for k, v in event["headers"].items()}
    for name, value in (headers or {}).items():
        event["headers"][name] = value
        event["multiValueHeaders"][name] = [value]
    return event


@pytest.fixture
def api_key(aws: AwsStack) -> str:
    return TenantStore(aws.jobs_table).create_api_key("acme").api_key


@pytest.mark.parametrize(("header", "scheme"), [("Authorization", "Bearer"), ("authorization", "bearer")])
def test_valid_key_is_allowed_with_its_tenant(
    authorizer: LoadedFunction, api_key: str, header: str, scheme: str
) -> None:
    answer = authorizer(authorizer_event({header: f"{scheme} {api_key}"}))
    assert answer["principalId"] == "acme"
    assert answer["context"] == {"tenant_id": "acme"}
    statements = answer["policyDocument"]["Statement"]
    assert [statement["Effect"] for statement in statements] == ["Allow"]
    assert statements[0]["Action"] == "execute-api:Invoke"
    # The answer is cached per key for every route: it must cover the whole API stage.
    assert statements[0]["Resource"] == ["arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/dev/*/*"]


def test_bad_or_missing_key_is_unauthorized(authorizer: LoadedFunction, api_key: str) -> None:
    # API Gateway answers 401 only when the authorizer fails with exactly "Unauthorized".
    cases: list[dict[str, str] | None] = [
        None,
        {"Authorization": "Bearer bk_not-a-real-key"},
        {"Authorization": f"Bearer {api_key}x"},
        {"Authorization": "Bearer "},
        {"Authorization": api_key},
        {"Authorization": "Basic YWNtZTpzZWNyZXQ="},
        {"X-Api-Key": api_key},
    ]
    for headers in cases:
        with pytest.raises(Exception, match=r"^Unauthorized$"):
            authorizer(authorizer_event(headers))
