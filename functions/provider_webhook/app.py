"""POST /v1/provider-webhooks/openai: a model provider's signed webhook (no API key: the Standard
Webhooks signature is the authentication). Verification and the wake-up live in
baton.provider_webhooks; an unverifiable request answers 400 and changes nothing."""

import json

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from baton.http_errors import error_response
from baton.provider_webhooks import WebhookRejected
from baton.settings import get_settings
from baton.wiring import provider_webhooks

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = get_settings()
webhooks = provider_webhooks(settings)
app = APIGatewayRestResolver()


@app.post("/v1/provider-webhooks/openai")
@tracer.capture_method
def openai_webhook() -> Response[str]:
    event = app.current_event
    try:
        outcome = webhooks.receive(event.decoded_body or "", event.headers or {})
    except WebhookRejected as error:
        logger.warning("provider webhook rejected", extra={"reason": str(error)})
        return error_response(400, "invalid_webhook", str(error))
    return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=json.dumps(outcome))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, object], context: LambdaContext) -> dict[str, object]:
    return app.resolve(event, context)
