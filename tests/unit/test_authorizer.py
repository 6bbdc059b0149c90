"""The Lambda REQUEST authorizer (functions/authorizer) with events/authorizer-request.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from baton.tenants import TenantStore, hash_api_key, key_id_of

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


def test_keys_are_listed_by_id_and_a_revoked_key_is_unauthorized(
    aws: AwsStack, authorizer: LoadedFunction
) -> None:
    tenants = TenantStore(aws.jobs_table)
    kept, revoked = (tenants.create_api_key("acme").api_key for _ in range(2))
    tenants.create_api_key("globex")
    listed = tenants.list_keys("acme")
    assert len(listed) == 2 and all(key.revoked_ms is None for key in listed)
    assert all(key.key_id.startswith("acme_") for key in listed)
    assert not any(kept in key.key_id or revoked in key.key_id for key in listed)  # ids, never keys
    revoked_id = key_id_of("acme", hash_api_key(revoked))
    assert revoked_id in {key.key_id for key in listed}
    tenants.revoke_key(revoked_id)
    with pytest.raises(Exception, match=r"^Unauthorized$"):
        authorizer(authorizer_event({"Authorization": f"Bearer {revoked}"}))
    assert authorizer(authorizer_event({"Authorization": f"Bearer {kept}"}))["principalId"] == "acme"
    after = {key.key_id: key.revoked_ms for key in tenants.list_keys("acme")}
    assert after[revoked_id] is not None and sum(ms is None for ms in after.values()) == 1
    with pytest.raises(LookupError):
        tenants.revoke_key("acme_0000000000000000")
    with pytest.raises(LookupError):
        tenants.revoke_key("not a key id")
