"""sweeper (every minute): fail jobs past their deadline, a bounded number per run."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from baton.settings import get_settings
from baton.wiring import job_sweeper

logger = Logger()
tracer = Tracer()
metrics = Metrics()
sweeper = job_sweeper(get_settings())


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
@event_parser(model=EventBridgeModel)
def lambda_handler(event: EventBridgeModel, context: LambdaContext) -> dict[str, Any]:
    return sweeper.sweep(context.get_remaining_time_in_millis)
