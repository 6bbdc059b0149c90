"""POST /v1/provider-webhooks/openai: the provider says a background response finished.

Verified per Standard Webhooks with the provider's webhook secret (Secrets Manager), by the
official openai client's own `webhooks.unwrap`. The event carries only the response id: the
job it belongs to is looked up and its infer step woken at once (the delayed poll that would
have found the answer later then finds the job advanced). Anything unverifiable changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parameters import get_secret

from baton.errors import JobNotFoundError
from baton.settings import Settings

if TYPE_CHECKING:
    import openai

    from baton.lifecycle import StageQueues
    from baton.store import JobStore

logger = Logger(child=True)

# The events that mean "the response is done, read it" (OpenAI's names).
FINISHED_EVENTS = frozenset(
    {"response.completed", "response.failed", "response.cancelled", "response.incomplete"}
)


class WebhookRejected(Exception):
    """The request is not a verifiable provider webhook (400, nothing changed)."""


@cache
def _verifier() -> openai.OpenAI:
    import openai

    # Only webhooks.unwrap is used: no request ever goes out with this key.
    return openai.OpenAI(api_key="unused-for-verification", max_retries=0)


class ProviderWebhooks:
    def __init__(self, settings: Settings, store: JobStore, queues: StageQueues) -> None:
        self.settings = settings
        self.store = store
        self.queues = queues

    def _secret(self) -> str:
        if not self.settings.provider_webhook_secret_arn:
            raise WebhookRejected("provider webhooks are not configured (ProviderWebhookSecretArn is empty)")
        return str(get_secret(self.settings.provider_webhook_secret_arn, max_age=300))

    def receive(self, body: str, headers: Mapping[str, str]) -> dict[str, Any]:
        import openai

        secret = self._secret()
        try:
            event = _verifier().webhooks.unwrap(body, dict(headers), secret=secret)
        except openai.InvalidWebhookSignatureError as error:
            raise WebhookRejected(f"signature not verified: {error}") from None
        except (ValueError, TypeError, KeyError) as error:  # a missing header, a body that is not JSON
            raise WebhookRejected(f"not a Standard Webhooks request: {error}") from None
        event_type = str(getattr(event, "type", ""))
        response_id = getattr(getattr(event, "data", None), "id", None)
        if event_type not in FINISHED_EVENTS or not isinstance(response_id, str):
            return {"outcome": "ignored", "type": event_type}
        owner = self.store.job_of_response(response_id)
        if owner is None:
            logger.info(
                "provider webhook for a response Baton does not know", extra={"response_id": response_id}
            )
            return {"outcome": "unknown_response"}
        tenant_id, job_id = owner
        try:
            record = self.store.get(tenant_id, job_id)
        except JobNotFoundError:
            return {"outcome": "unknown_response"}
        call = record.provider_call
        if record.is_terminal or call is None or call.response_id != response_id:
            return {"outcome": "job_advanced"}
        self.queues.wake(record, f"webhook:{getattr(event, 'id', '')}")
        logger.info("provider webhook woke the job", extra={"job_id": job_id, "response_id": response_id})
        return {"outcome": "woken", "job_id": job_id}
