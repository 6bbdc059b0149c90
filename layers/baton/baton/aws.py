"""boto3 clients, created once per process and shared (clients are thread-safe, resources are not).

Endpoints follow boto3's own configuration: AWS_ENDPOINT_URL points them at moto or LocalStack.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32)

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


@cache
def client(service: str) -> Any:
    return boto3.session.Session().client(service, config=_CONFIG)  # type: ignore[call-overload]


def to_dynamo(item: dict[str, Any]) -> dict[str, Any]:
    return {key: _serializer.serialize(value) for key, value in item.items()}


def from_dynamo(item: dict[str, Any]) -> dict[str, Any]:
    return {key: _deserializer.deserialize(value) for key, value in item.items()}
