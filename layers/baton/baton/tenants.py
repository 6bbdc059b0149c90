"""Tenants and their API keys. Keys are stored as SHA-256 hashes only; the plain key is shown once."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from baton.aws import client, from_dynamo, to_dynamo
from baton.clock import now_ms

API_KEY_PREFIX = "bk_"
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9\-]{0,62}$")


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def _key_item_key(key_hash: str) -> dict[str, str]:
    return {"pk": f"APIKEY#{key_hash}", "sk": "APIKEY"}


def _tenant_item_key(tenant_id: str) -> dict[str, str]:
    return {"pk": f"TENANT#{tenant_id}", "sk": "PROFILE"}


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class RotatedSecret:
    webhook_secret: str
    previous_valid_until_ms: int


@dataclass(frozen=True)
class IssuedKey:
    tenant: str
    api_key: str
    webhook_secret: str


class TenantStore:
    def __init__(self, table_name: str) -> None:
        self.table_name = table_name

    def create_api_key(self, tenant_id: str) -> IssuedKey:
        """Issue a new API key for the tenant, creating the tenant (and its webhook secret) once."""
        if not TENANT_PATTERN.match(tenant_id):
            raise ValueError("tenant must be 1-63 lowercase letters, digits or dashes")
        ddb = client("dynamodb")
        secret = new_webhook_secret()
        try:
            ddb.put_item(
                TableName=self.table_name,
                Item=to_dynamo(
                    {
                        **_tenant_item_key(tenant_id),
                        "tenant_id": tenant_id,
                        "webhook_secret": secret,
                        "created_ms": now_ms(),
                    }
                ),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            secret = self.webhook_secret(tenant_id)
        api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        ddb.put_item(
            TableName=self.table_name,
            Item=to_dynamo(
                {**_key_item_key(hash_api_key(api_key)), "tenant_id": tenant_id, "created_ms": now_ms()}
            ),
            ConditionExpression="attribute_not_exists(pk)",
        )
        return IssuedKey(tenant=tenant_id, api_key=api_key, webhook_secret=secret)

    def tenant_for_key(self, api_key: str) -> str | None:
        if not api_key.startswith(API_KEY_PREFIX):
            return None
        answer = client("dynamodb").get_item(
            TableName=self.table_name, Key=to_dynamo(_key_item_key(hash_api_key(api_key)))
        )
        item = answer.get("Item")
        return str(from_dynamo(item)["tenant_id"]) if item else None

    def webhook_secret(self, tenant_id: str) -> str:
        answer = client("dynamodb").get_item(
            TableName=self.table_name, Key=to_dynamo(_tenant_item_key(tenant_id)), ConsistentRead=True
        )
        item = answer.get("Item")
        if not item:
            raise LookupError(f"tenant {tenant_id} does not exist")
        return str(from_dynamo(item)["webhook_secret"])

    def signing_secrets(self, tenant_id: str, *, now: int | None = None) -> list[str]:
        """The secrets that sign a delivery now: the current one, and the previous one until its
        `previous_valid_until` (a rotation), so receivers switch without downtime."""
        item = self._profile(tenant_id)
        secrets = [str(item["webhook_secret"])]
        previous, until = item.get("previous_webhook_secret"), int(item.get("previous_valid_until_ms", 0))
        if previous and until > (now or now_ms()):
            secrets.append(str(previous))
        return secrets

    def rotate_webhook_secret(self, tenant_id: str, *, overlap_seconds: int) -> RotatedSecret:
        """A new secret; the current one keeps signing (beside it) for `overlap_seconds`."""
        current = self._profile(tenant_id)
        secret = new_webhook_secret()
        until = now_ms() + overlap_seconds * 1000
        client("dynamodb").update_item(
            TableName=self.table_name,
            Key=to_dynamo(_tenant_item_key(tenant_id)),
            UpdateExpression=(
                "SET webhook_secret = :new, previous_webhook_secret = :old, previous_valid_until_ms = :until"
            ),
            # Two rotations racing: the second fails instead of dropping the first one's secret.
            ConditionExpression="webhook_secret = :old",
            ExpressionAttributeValues=to_dynamo(
                {":new": secret, ":old": current["webhook_secret"], ":until": until}
            ),
        )
        return RotatedSecret(webhook_secret=secret, previous_valid_until_ms=until)

    def _profile(self, tenant_id: str) -> dict[str, Any]:
        answer = client("dynamodb").get_item(
            TableName=self.table_name, Key=to_dynamo(_tenant_item_key(tenant_id)), ConsistentRead=True
        )
        item = answer.get("Item")
        if not item:
            raise LookupError(f"tenant {tenant_id} does not exist")
        return from_dynamo(item)

    def exists(self, tenant_id: str) -> bool:
        answer = client("dynamodb").get_item(
            TableName=self.table_name, Key=to_dynamo(_tenant_item_key(tenant_id))
        )
        return "Item" in answer
