"""HTTP behaviour of the jobs API: 202 + Location, Prefer (RFC 7240), Idempotency-Key, long-poll,
listing. Bodies are the pydantic models the OpenAPI document is generated from."""

from __future__ import annotations

import re
from typing import Any

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent
from aws_lambda_powertools.utilities.idempotency import BasePersistenceLayer, idempotent_function
from aws_lambda_powertools.utilities.idempotency.config import IdempotencyConfig
from pydantic import BaseModel

from baton.clock import iso_from_ms
from baton.deliveries import WebhookService
from baton.errors import InvalidRequestError, JobNotFoundError, UnauthorizedError
from baton.idempotency import idempotency_prefix
from baton.intake import JobIntake
from baton.models import (
    CreateJobRequest,
    DeliveryList,
    DeliveryView,
    JobAccepted,
    JobStatus,
    RerunRequest,
    ReviewRequest,
    RotatedWebhookSecret,
)
from baton.records import JobList, JobRecord, JobView
from baton.tenants import TenantStore
from baton.webhook_auth import forwarded_value

IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")
# Every job id Baton makes (new, keyed and upload ids) has this shape. Anything else is unknown
# without asking DynamoDB, which refuses keys over 1024 bytes with a ValidationException (a 500).
JOB_ID_PATTERN = re.compile(r"job_[0-9a-f]{32}")
WAIT_PATTERN = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def known_job_id(job_id: str) -> str:
    if not JOB_ID_PATTERN.fullmatch(job_id):
        raise JobNotFoundError(f"job {job_id[:64]} not found")
    return job_id


def tenant_of(event: APIGatewayProxyEvent) -> str:
    tenant_id = event.request_context.authorizer.get("tenant_id")
    if not tenant_id:
        raise UnauthorizedError("missing or invalid API key")
    return str(tenant_id)


def requested_wait(prefer: str | None) -> float | None:
    """`Prefer: wait=N` -> N seconds; None when absent (or `respond-async`)."""
    if not prefer:
        return None
    match = WAIT_PATTERN.search(prefer)
    return float(match.group(1)) if match else None


def base_path(event: APIGatewayProxyEvent) -> str:
    """The stage prefix API Gateway adds on execute-api URLs (e.g. "/dev"); empty locally."""
    full = str(event.request_context.get("path") or event.path)
    return full[: -len(event.path)] if full.endswith(event.path) else ""


def poll_url(event: APIGatewayProxyEvent, location: str) -> str:
    host = event.headers.get("host") or event.headers.get("Host")
    proto = event.headers.get("x-forwarded-proto") or event.headers.get("X-Forwarded-Proto") or "https"
    return f"{proto}://{host}{location}" if host else location


def json_response[Body: BaseModel](
    status: int, body: Body, headers: dict[str, str] | None = None
) -> Response[Body]:
    """The route's declared model is the body; Powertools validates and serialises it."""
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body=body, headers=headers
    )


class JobsHttp:
    def __init__(
        self, service: JobIntake, persistence: BasePersistenceLayer, config: IdempotencyConfig
    ) -> None:
        self.service = service
        self.config = config
        self._accept_once = idempotent_function(
            data_keyword_argument="submission",
            persistence_store=persistence,
            config=config,
            key_prefix=idempotency_prefix("submission"),
        )(self._accept_submission)

    def create(
        self,
        event: APIGatewayProxyEvent,
        body: CreateJobRequest,
        *,
        idempotency_key: str | None,
        prefer: str | None,
    ) -> Response[JobView | JobAccepted]:
        tenant_id = tenant_of(event)
        if (
            body.webhook is not None
            and body.webhook.auth is not None
            and body.webhook.auth.type == "on_behalf"
        ):
            # Forwarded as received: the value is sealed with the rest of the credentials.
            auth = forwarded_value(body.webhook.auth, dict(event.headers))
            body = body.model_copy(update={"webhook": body.webhook.model_copy(update={"auth": auth})})
        submission = {
            "tenant_id": tenant_id,
            "body": body.model_dump(mode="json"),
            "idempotency_key": idempotency_key,
        }
        if idempotency_key is None:
            accepted = self._accept_submission(submission=submission)
        elif not IDEMPOTENCY_KEY_PATTERN.match(idempotency_key):
            raise InvalidRequestError(
                "Idempotency-Key must be 1-255 visible ASCII characters", field="Idempotency-Key"
            )
        else:
            accepted = self._accept_once(submission=submission)
        job_id = accepted["job_id"]
        location = f"{base_path(event)}/v1/jobs/{job_id}"
        headers = {"Location": location, "Retry-After": str(self.service.settings.retry_after_seconds)}
        status = JobStatus(accepted["status"])

        wait = requested_wait(prefer)
        if wait is not None:
            wait = min(wait, self.service.settings.max_wait_seconds)
            headers["Preference-Applied"] = f"wait={wait:g}"
            record = self.service.wait(tenant_id, job_id, wait, until_terminal=True)
            if record.is_settled:
                headers.pop("Retry-After")
                return json_response(200, self.service.view(record), headers)
            status = record.status
        else:
            headers["Preference-Applied"] = "respond-async"
            if idempotency_key is not None:
                # A replay answers with the job as it is now, not as the first answer saw it.
                status = self.service.get(tenant_id, job_id).status
        body_out = JobAccepted(
            id=job_id,
            status=status,
            created_at=accepted["created_at"],
            poll_url=poll_url(event, location),
            delivery=accepted["delivery"],
        )
        return json_response(202, body_out, headers)

    # -- review and re-run ---------------------------------------------------------------------
    def review(self, event: APIGatewayProxyEvent, job_id: str, decision: ReviewRequest) -> Response[JobView]:
        record = self.service.review(tenant_of(event), known_job_id(job_id), decision)
        return self._job_response(record)

    def rerun(
        self, event: APIGatewayProxyEvent, job_id: str, overrides: RerunRequest
    ) -> Response[JobAccepted]:
        record = self.service.rerun(tenant_of(event), known_job_id(job_id), overrides)
        location = f"{base_path(event)}/v1/jobs/{record.job_id}"
        headers = {"Location": location, "Retry-After": str(self.service.settings.retry_after_seconds)}
        body_out = JobAccepted(
            id=record.job_id,
            status=record.status,
            created_at=iso_from_ms(record.created_ms),
            poll_url=poll_url(event, location),
            delivery="webhook" if record.webhook else "polling",
        )
        return json_response(202, body_out, headers)

    def get(self, event: APIGatewayProxyEvent, job_id: str, wait: float | None) -> Response[JobView]:
        tenant_id = tenant_of(event)
        job_id = known_job_id(job_id)
        if wait is not None and wait > 0:
            record = self.service.wait(tenant_id, job_id, wait, until_terminal=False)
        else:
            record = self.service.get(tenant_id, job_id)
        return self._job_response(record)

    def cancel(self, event: APIGatewayProxyEvent, job_id: str) -> Response[JobView]:
        record = self.service.cancel(tenant_of(event), known_job_id(job_id))
        return self._job_response(record)

    def list_jobs(
        self, event: APIGatewayProxyEvent, *, status: JobStatus | None, limit: int, cursor: str | None
    ) -> Response[JobList]:
        page = self.service.list_jobs(tenant_of(event), status=status, limit=limit, cursor=cursor)
        return json_response(
            200, JobList(data=[self.service.view(record) for record in page.jobs], next_cursor=page.cursor)
        )

    def _job_response(self, record: JobRecord) -> Response[JobView]:
        headers = {} if record.is_settled else {"Retry-After": str(self.service.settings.retry_after_seconds)}
        return json_response(200, self.service.view(record), headers)

    def _accept_submission(self, submission: dict[str, Any]) -> dict[str, Any]:
        request = CreateJobRequest.model_validate(submission["body"])
        record = self.service.accept(
            submission["tenant_id"], request, idempotency_key=submission.get("idempotency_key")
        )
        return {
            "job_id": record.job_id,
            "status": record.status.value,
            "created_at": iso_from_ms(record.created_ms),
            "delivery": "webhook" if record.webhook else "polling",
        }


# -- webhook deliveries and secret rotation ------------------------------------------------------
# Deliveries of a job are read and restarted through the same tenant check as the job itself.
WEBHOOK_ID_PATTERN = re.compile(r"msg_job_[0-9a-f]{32}_[a-z_]{1,20}")
# How long the previous secret keeps signing (beside the new one) after a rotation.
SECRET_OVERLAP_SECONDS = 24 * 3600


class WebhooksHttp:
    def __init__(self, webhooks: WebhookService, tenants: TenantStore) -> None:
        self.webhooks = webhooks
        self.tenants = tenants

    def deliveries(self, event: APIGatewayProxyEvent, job_id: str) -> Response[DeliveryList]:
        found = self.webhooks.list(tenant_of(event), known_job_id(job_id))
        body = DeliveryList(data=[DeliveryView.model_validate(d.public_view()) for d in found])
        return json_response(200, body)

    def redeliver(self, event: APIGatewayProxyEvent, job_id: str, webhook_id: str) -> Response[DeliveryView]:
        if not WEBHOOK_ID_PATTERN.fullmatch(webhook_id):
            raise JobNotFoundError(f"delivery {webhook_id[:80]} not found")
        delivery = self.webhooks.redeliver(tenant_of(event), known_job_id(job_id), webhook_id)
        return json_response(202, DeliveryView.model_validate(delivery.public_view()))

    def rotate_secret(self, event: APIGatewayProxyEvent) -> Response[RotatedWebhookSecret]:
        rotated = self.tenants.rotate_webhook_secret(tenant_of(event), overlap_seconds=SECRET_OVERLAP_SECONDS)
        body = RotatedWebhookSecret(
            webhook_secret=rotated.webhook_secret,
            previous_valid_until=iso_from_ms(rotated.previous_valid_until_ms),
        )
        return json_response(200, body)
