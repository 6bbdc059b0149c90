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
# Without an explicit signature version botocore presigns S3 URLs with SigV2 in regions that still
# list it (us-east-1), and S3 refuses SigV2 on buckets created since June 2020: result_url would 403.
_S3_CONFIG = _CONFIG.merge(Config(signature_version="s3v4"))

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


@cache
def client(service: str) -> Any:
    config = _S3_CONFIG if service == "s3" else _CONFIG
    return boto3.session.Session().client(service, config=config)  # type: ignore[call-overload]


def to_dynamo(item: dict[str, Any]) -> dict[str, Any]:
    return {key: _serializer.serialize(value) for key, value in item.items()}


def from_dynamo(item: dict[str, Any]) -> dict[str, Any]:
    return {key: _deserializer.deserialize(value) for key, value in item.items()}
