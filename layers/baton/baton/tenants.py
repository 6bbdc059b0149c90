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


def key_id_of(tenant_id: str, key_hash: str) -> str:
    """A key's public name: its tenant and the start of its hash (tenants never contain "_")."""
    return f"{tenant_id}_{key_hash[:16]}"


def _key_listing_key(key_id: str) -> dict[str, str]:
    tenant_id = key_id.rsplit("_", 1)[0]
    return {"pk": f"TENANT#{tenant_id}", "sk": f"APIKEY#{key_id}"}


KEY_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9\-]{0,62}_[0-9a-f]{16}$")


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    tenant: str
    created_ms: int
    revoked_ms: int | None


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
        key_hash = hash_api_key(api_key)
        created = now_ms()
        ddb.put_item(
            TableName=self.table_name,
            Item=to_dynamo({**_key_item_key(key_hash), "tenant_id": tenant_id, "created_ms": created}),
            ConditionExpression="attribute_not_exists(pk)",
        )
        self._list_key(tenant_id, key_hash, created)
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

    # -- listing and revoking keys (baton keys list / revoke) -----------------------------------
    def _list_key(self, tenant_id: str, key_hash: str, created_ms: int) -> None:
        """The tenant's own record of the key (its id and hash, never the key), for list/revoke."""
        key_id = key_id_of(tenant_id, key_hash)
        client("dynamodb").put_item(
            TableName=self.table_name,
            Item=to_dynamo(
                {**_key_listing_key(key_id), "key_id": key_id, "key_hash": key_hash, "created_ms": created_ms}
            ),
        )

    def list_keys(self, tenant_id: str) -> list[KeyInfo]:
        """Every key issued to the tenant (revoked ones say when), oldest first."""
        ddb = client("dynamodb")
        keys: list[KeyInfo] = []
        query: dict[str, object] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": to_dynamo({":pk": f"TENANT#{tenant_id}", ":prefix": "APIKEY#"}),
        }
        while True:
            answer = ddb.query(**query)
            for item in answer.get("Items", []):
                listed = from_dynamo(item)
                revoked = listed.get("revoked_ms")
                keys.append(
                    KeyInfo(
                        key_id=str(listed["key_id"]),
                        tenant=tenant_id,
                        created_ms=int(listed["created_ms"]),
                        revoked_ms=int(revoked) if revoked is not None else None,
                    )
                )
            if "LastEvaluatedKey" not in answer:
                return sorted(keys, key=lambda key: key.created_ms)
            query["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

    def revoke_key(self, key_id: str) -> KeyInfo:
        """Delete the key's lookup item, so the authorizer no longer finds a tenant for it (answers
        cached by API Gateway expire within the authorizer's TTL); the listing keeps when."""
        if not KEY_ID_PATTERN.match(key_id):
            raise LookupError(f"no key {key_id!r}")
        ddb = client("dynamodb")
        answer = ddb.get_item(
            TableName=self.table_name, Key=to_dynamo(_key_listing_key(key_id)), ConsistentRead=True
        )
        if "Item" not in answer:
            raise LookupError(f"no key {key_id!r}")
        listed = from_dynamo(answer["Item"])
        revoked = int(listed.get("revoked_ms") or now_ms())
        ddb.transact_write_items(
            TransactItems=[
                {
                    "Delete": {
                        "TableName": self.table_name,
                        "Key": to_dynamo(_key_item_key(str(listed["key_hash"]))),
                    }
                },
                {
                    "Update": {
                        "TableName": self.table_name,
                        "Key": to_dynamo(_key_listing_key(key_id)),
                        "UpdateExpression": "SET revoked_ms = :revoked",
                        "ExpressionAttributeValues": to_dynamo({":revoked": revoked}),
                    }
                },
            ]
        )
        return KeyInfo(
            key_id=key_id,
            tenant=key_id.rsplit("_", 1)[0],
            created_ms=int(listed["created_ms"]),
            revoked_ms=revoked,
        )
