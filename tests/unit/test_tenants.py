"""TenantStore: API keys are stored as hashes only; one webhook secret per tenant."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import boto3
import pytest

from baton.tenants import API_KEY_PREFIX, TenantStore, hash_api_key

if TYPE_CHECKING:
    from conftest import AwsStack


@pytest.fixture
def tenants(aws: AwsStack) -> TenantStore:
    return TenantStore(aws.jobs_table)


def table_dump(aws: AwsStack) -> str:
    items = boto3.client("dynamodb").scan(TableName=aws.jobs_table)["Items"]
    return json.dumps(items)


def test_issued_key_is_stored_hashed_only(aws: AwsStack, tenants: TenantStore) -> None:
    issued = tenants.create_api_key("acme")
    assert issued.tenant == "acme"
    assert issued.api_key.startswith(API_KEY_PREFIX)
    assert issued.webhook_secret.startswith("whsec_")
    dump = table_dump(aws)
    assert issued.api_key not in dump
    assert issued.api_key.removeprefix(API_KEY_PREFIX) not in dump
    assert hash_api_key(issued.api_key) in dump


def test_tenant_for_key(tenants: TenantStore) -> None:
    acme = tenants.create_api_key("acme")
    globex = tenants.create_api_key("globex")
    assert tenants.tenant_for_key(acme.api_key) == "acme"
    assert tenants.tenant_for_key(globex.api_key) == "globex"
    assert tenants.tenant_for_key(acme.api_key + "x") is None
    assert tenants.tenant_for_key(API_KEY_PREFIX + "never-issued") is None
    assert tenants.tenant_for_key(acme.api_key.removeprefix(API_KEY_PREFIX)) is None
    assert tenants.tenant_for_key("") is None


def test_second_key_reuses_the_tenant_secret(tenants: TenantStore) -> None:
    first = tenants.create_api_key("acme")
    second = tenants.create_api_key("acme")
    assert second.api_key != first.api_key
    assert second.webhook_secret == first.webhook_secret
    assert tenants.webhook_secret("acme") == first.webhook_secret
    assert tenants.tenant_for_key(first.api_key) == "acme"
    assert tenants.tenant_for_key(second.api_key) == "acme"


def test_tenants_have_their_own_secrets(tenants: TenantStore) -> None:
    assert tenants.create_api_key("acme").webhook_secret != tenants.create_api_key("globex").webhook_secret


def test_exists_and_unknown_tenant(tenants: TenantStore) -> None:
    assert not tenants.exists("acme")
    tenants.create_api_key("acme")
    assert tenants.exists("acme")
    with pytest.raises(LookupError):
        tenants.webhook_secret("globex")


@pytest.mark.parametrize("name", ["", "Acme", "acme corp", "-acme", "a" * 64, "acme/other"])
def test_invalid_tenant_names_are_refused(name: str) -> None:
    # Refused before any write: no table needed.
    with pytest.raises(ValueError):
        TenantStore("no-table").create_api_key(name)
