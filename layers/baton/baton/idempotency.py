"""Powertools idempotency, configured once: where records live and what makes two calls the same."""

from __future__ import annotations

from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer, IdempotencyConfig

from baton.settings import Settings

# A stage acts once per (job, step, version, depth), whatever SQS message carried the command:
# a redelivered or duplicated message finds the stored outcome instead of calling the model again.
# (A long document's chunk commands add their chunk and level: one model call per chunk. In
# background mode each poll of a response, and each wake-up by a webhook event or a cancel, is
# its own step: one GET each, the create once.)
STAGE_KEY = (
    "[job_id, step, to_string(version), to_string(depth), to_string(chunk), to_string(level),"
    " to_string(poll), to_string(wake)]"
)
# notify: one successful delivery per terminal event (the webhook-id); a failed delivery raises,
# which removes the record, so SQS retries it.
NOTIFICATION_KEY = "[job_id, status]"
# POST /v1/jobs with an Idempotency-Key: scoped to the tenant; the body must match the first one.
SUBMISSION_KEY = "[tenant_id, idempotency_key]"
SUBMISSION_PAYLOAD = "body"


def idempotency_prefix(step: str) -> str:
    """Records are keyed by step, not by Powertools' default (function name + module + function),
    which changes with a renamed function or module, and which a process running several functions
    (the local runtime) could read while another function's environment is applied."""
    return f"baton.{step}"


def persistence_layer(settings: Settings) -> DynamoDBPersistenceLayer:
    return DynamoDBPersistenceLayer(table_name=settings.idempotency_table)


def stage_config(settings: Settings) -> IdempotencyConfig:
    return IdempotencyConfig(
        event_key_jmespath=STAGE_KEY,
        raise_on_no_idempotency_key=True,
        expires_after_seconds=settings.retention_days * 86_400,
    )


def submission_config(settings: Settings) -> IdempotencyConfig:
    return IdempotencyConfig(
        event_key_jmespath=SUBMISSION_KEY,
        payload_validation_jmespath=SUBMISSION_PAYLOAD,
        raise_on_no_idempotency_key=True,
        expires_after_seconds=settings.retention_days * 86_400,
    )


def notification_config(settings: Settings) -> IdempotencyConfig:
    return IdempotencyConfig(
        event_key_jmespath=NOTIFICATION_KEY,
        raise_on_no_idempotency_key=True,
        expires_after_seconds=settings.retention_days * 86_400,
    )
