"""Lambda REQUEST authorizer: Authorization: Bearer <api key> -> the key's tenant."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.data_classes import event_source
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerRequestEvent,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from baton.auth import authorize
from baton.settings import get_settings
from baton.tenants import TenantStore

logger = Logger()
tracer = Tracer()
metrics = Metrics()
tenants = TenantStore(get_settings().jobs_table)


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
@event_source(data_class=APIGatewayAuthorizerRequestEvent)
def lambda_handler(event: APIGatewayAuthorizerRequestEvent, context: LambdaContext) -> dict[str, Any]:
    return authorize(event, tenants)
