"""The Lambda authorizer's logic: Bearer API key -> tenant, as an API Gateway policy."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerRequestEvent,
    APIGatewayAuthorizerResponse,
)

from baton.errors import UnauthorizedError
from baton.tenants import TenantStore


def bearer_token(headers: dict[str, str]) -> str | None:
    for name, value in headers.items():
        if name.lower() == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def authorize(event: APIGatewayAuthorizerRequestEvent, tenants: TenantStore) -> dict[str, Any]:
    """Allow every route for the key's tenant (the answer is cached per key), or raise.

    API Gateway turns the exact message "Unauthorized" into a 401 without calling the API.
    """
    token = bearer_token(dict(event.headers or {}))
    tenant_id = tenants.tenant_for_key(token) if token else None
    if tenant_id is None:
        raise UnauthorizedError("Unauthorized")
    arn = event.parsed_arn
    policy = APIGatewayAuthorizerResponse(
        principal_id=tenant_id,
        context={"tenant_id": tenant_id},
        region=arn.region,
        aws_account_id=arn.aws_account_id,
        api_id=arn.api_id,
        stage=arn.stage,
    )
    policy.allow_all_routes()
    return policy.asdict()
