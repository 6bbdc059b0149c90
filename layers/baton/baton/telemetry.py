"""Job metrics as CloudWatch embedded metric format (EMF): Powertools writes one JSON log line per
metric and CloudWatch turns it into a metric in the `Baton` namespace (POWERTOOLS_METRICS_NAMESPACE).

Each metric carries only the dimensions its dashboard widget needs, so these are single metrics,
not the handler's shared metric set (whose dimensions would apply to every metric in it).
"""

from __future__ import annotations

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from baton.records import CostView, JobRecord


def _emit(name: str, unit: MetricUnit, value: float, dimensions: dict[str, str]) -> None:
    with single_metric(name=name, unit=unit, value=value) as metric:
        for dimension, dimension_value in dimensions.items():
            metric.add_dimension(name=dimension, value=dimension_value)


def job_settled(record: JobRecord, cost: CostView) -> None:
    """A job reached a terminal state (or needs_review): what it cost, used and took."""
    by_tenant_and_model = {"tenant": record.tenant_id, "model": record.model}
    if cost.model_usd is not None:
        _emit("JobModelCostUsd", MetricUnit.NoUnit, cost.model_usd, by_tenant_and_model)
    if cost.aws_usd is not None:
        _emit("JobAwsCostUsd", MetricUnit.NoUnit, cost.aws_usd, by_tenant_and_model)
    _emit("JobTokens", MetricUnit.Count, record.usage.total_tokens, by_tenant_and_model)
    timings = record.timings
    if timings.total_ms is not None:
        _emit("EndToEndLatency", MetricUnit.Milliseconds, timings.total_ms, {"status": record.status.value})
    if timings.queued_ms is not None:
        _emit("QueueWait", MetricUnit.Milliseconds, timings.queued_ms, {})
    for stage, duration in (("extract", timings.extract_ms), ("infer", timings.infer_ms)):
        if duration is not None:
            _emit("StageDuration", MetricUnit.Milliseconds, duration, {"stage": stage})


def model_call(model: str, duration_ms: float, outcome: str) -> None:
    """One call to the model endpoint: how long it took, by model and outcome (ok or the error)."""
    _emit("ModelLatency", MetricUnit.Milliseconds, duration_ms, {"model": model, "outcome": outcome})


def webhook_outcome(outcome: str) -> None:
    _emit("WebhookDeliveries", MetricUnit.Count, 1, {"outcome": outcome})
