"""Jobs API: routes only hand off to baton.api; errors are mapped in baton.http_errors.

Each route declares its parameters, headers and answers with the pydantic models that validate
them, so `GET /v1/openapi.json` (and `make openapi`, docs/openapi.json) is generated from the code.
"""

from typing import Annotated, Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import (
    APIGatewayRestResolver,
    CORSConfig,
    Response,
    content_types,
)
from aws_lambda_powertools.event_handler.openapi.params import Header, Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from baton.api import JobsHttp, WebhooksHttp, base_path, json_response, tenant_of
from baton.batches import BatchService
from baton.documents import DocumentService
from baton.http_errors import error_responses, register_error_handlers
from baton.idempotency import persistence_layer, submission_config
from baton.models import (
    BatchList,
    BatchView,
    CreateBatchRequest,
    CreateDocumentRequest,
    CreateJobRequest,
    DeliveryList,
    DeliveryView,
    JobAccepted,
    JobStatus,
    RerunRequest,
    ReviewRequest,
    RotatedWebhookSecret,
)
from baton.openapi import OPENAPI_PATH, SWAGGER_PATH, openapi_info
from baton.records import JobList, JobView
from baton.settings import get_settings
from baton.wiring import job_intake, webhook_service

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = get_settings()
idempotency = submission_config(settings)
intake = job_intake(settings)
deliveries = webhook_service(settings)
jobs = JobsHttp(intake, persistence_layer(settings), idempotency)
documents = DocumentService(settings)
webhooks = WebhooksHttp(deliveries, intake.tenants)
batches = BatchService(settings, intake, deliveries)

# Browsers read answers (errors included) only with the allowed origin on them; the preflight is
# API Gateway's (template.yaml JobsApi Cors), which this mirrors.
cors = (
    CORSConfig(
        allow_origin=settings.cors_allow_origin,
        allow_headers=["Idempotency-Key", "Prefer"],
        expose_headers=["Location", "Retry-After", "Preference-Applied"],
        max_age=600,
    )
    if settings.cors_allow_origin
    else None
)
app = APIGatewayRestResolver(enable_validation=True, cors=cors)
register_error_handlers(app)
app.enable_swagger(path=SWAGGER_PATH, **openapi_info())

JOB_ID_ERRORS = error_responses(401, 404)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Same key + same body within the retention window gives the same job; "
        "a different body is 422, the first request still in flight is 409.",
    ),
]
Prefer = Annotated[
    str | None,
    Header(
        description="`respond-async` (default) or `wait=N`: answer 200 with the finished job if it "
        "completes within N seconds (capped), else 202. `Preference-Applied` says what was honoured.",
    ),
]


# -- jobs -----------------------------------------------------------------------------------------
@app.post(
    "/v1/jobs",
    summary="Submit a job",
    responses={
        200: {
            "description": "`Prefer: wait=N` and the job finished in time",
            "content": {"application/json": {"model": JobView}},
        },
        202: {
            "description": "Accepted; poll `Location` (or wait for the webhook)",
            "content": {"application/json": {"model": JobAccepted}},
        },
        **error_responses(400, 401, 409, 415, 422),
    },
)
@tracer.capture_method
def create_job(
    body: CreateJobRequest, idempotency_key: IdempotencyKey = None, prefer: Prefer = None
) -> Response[JobView | JobAccepted]:
    return jobs.create(app.current_event, body, idempotency_key=idempotency_key, prefer=prefer)


@app.get(
    "/v1/jobs",
    summary="List the tenant's jobs, newest first",
    responses={
        200: {"description": "One page of jobs", "content": {"application/json": {"model": JobList}}},
        **error_responses(401, 422),
    },
)
@tracer.capture_method
def list_jobs(
    status: Annotated[JobStatus | None, Query(description="only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="jobs per page")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=512, description="`next_cursor` of the previous page")
    ] = None,
) -> Response[JobList]:
    return jobs.list_jobs(app.current_event, status=status, limit=limit, cursor=cursor)


@app.get(
    "/v1/jobs/<job_id>",
    summary="Get a job",
    responses={
        200: {"description": "The job", "content": {"application/json": {"model": JobView}}},
        **JOB_ID_ERRORS,
        **error_responses(422),
    },
)
@tracer.capture_method
def get_job(
    job_id: str,
    wait: Annotated[
        float | None, Query(ge=0, le=600, description="long-poll up to N seconds for a change")
    ] = None,
) -> Response[JobView]:
    return jobs.get(app.current_event, job_id, wait)


@app.delete(
    "/v1/jobs/<job_id>",
    summary="Cancel a job that is not terminal",
    responses={
        200: {"description": "The cancelled job", "content": {"application/json": {"model": JobView}}},
        **JOB_ID_ERRORS,
        **error_responses(409),
    },
)
@tracer.capture_method
def cancel_job(job_id: str) -> Response[JobView]:
    return jobs.cancel(app.current_event, job_id)


@app.post("/v1/documents")
@tracer.capture_method
def create_document(body: CreateDocumentRequest) -> Response[str]:
    upload = documents.create(tenant_of(app.current_event), body)
    return Response(201, content_types.APPLICATION_JSON, upload.model_dump_json())


@app.get("/v1/documents/<document_id>")
@tracer.capture_method
def get_document(document_id: str) -> Response[str]:
    view = documents.get(tenant_of(app.current_event), document_id)
    return Response(200, content_types.APPLICATION_JSON, view.model_dump_json())


# -- webhook deliveries and secret rotation -------------------------------------------------------
@app.get(
    "/v1/jobs/<job_id>/deliveries",
    summary="The job's webhook deliveries, with every attempt",
    responses={
        200: {"description": "Deliveries", "content": {"application/json": {"model": DeliveryList}}},
        **JOB_ID_ERRORS,
    },
)
@tracer.capture_method
def list_deliveries(job_id: str) -> Response[DeliveryList]:
    return webhooks.deliveries(app.current_event, job_id)


@app.post(
    "/v1/jobs/<job_id>/deliveries/<webhook_id>/redeliver",
    summary="Deliver a webhook again (a new schedule of attempts)",
    responses={
        202: {"description": "Queued again", "content": {"application/json": {"model": DeliveryView}}},
        **JOB_ID_ERRORS,
        **error_responses(409),
    },
)
@tracer.capture_method
def redeliver(job_id: str, webhook_id: str) -> Response[DeliveryView]:
    return webhooks.redeliver(app.current_event, job_id, webhook_id)


@app.post(
    "/v1/webhook-secret/rotate",
    summary="Rotate the tenant's webhook signing secret (the previous one keeps signing for 24 h)",
    responses={
        200: {
            "description": "The new secret",
            "content": {"application/json": {"model": RotatedWebhookSecret}},
        },
        **error_responses(401),
    },
)
@tracer.capture_method
def rotate_webhook_secret() -> Response[RotatedWebhookSecret]:
    return webhooks.rotate_secret(app.current_event)


# -- review and re-run ---------------------------------------------------------------------------
@app.post(
    "/v1/jobs/<job_id>/review",
    summary="Approve or reject a job in needs_review",
    responses={
        200: {
            "description": "The job: running again (approved, version + 1) or failed (rejected)",
            "content": {"application/json": {"model": JobView}},
        },
        **JOB_ID_ERRORS,
        **error_responses(409, 415, 422),
    },
)
@tracer.capture_method
def review_job(job_id: str, body: ReviewRequest) -> Response[JobView]:
    return jobs.review(app.current_event, job_id, body)


@app.post(
    "/v1/jobs/<job_id>/rerun",
    summary="Run a stored job again as a new job, with overrides",
    responses={
        202: {
            "description": "The new job (its `rerun_of` names the original)",
            "content": {"application/json": {"model": JobAccepted}},
        },
        **JOB_ID_ERRORS,
        **error_responses(415, 422),
    },
)
@tracer.capture_method
def rerun_job(job_id: str, body: RerunRequest | None = None) -> Response[JobAccepted]:
    return jobs.rerun(app.current_event, job_id, body or RerunRequest())


# -- batches -------------------------------------------------------------------------------------
@app.post(
    "/v1/batches",
    summary="Submit a batch (a JSONL document or inline requests); each line becomes a job",
    responses={
        202: {
            "description": "Accepted; poll `Location`",
            "content": {"application/json": {"model": BatchView}},
        },
        **error_responses(400, 401, 415, 422),
    },
)
@tracer.capture_method
def create_batch(body: CreateBatchRequest) -> Response[BatchView]:
    event = app.current_event
    batch = batches.create(tenant_of(event), body, headers=dict(event.headers))
    return json_response(202, batch, {"Location": f"{base_path(event)}/v1/batches/{batch.id}"})


@app.get(
    "/v1/batches",
    summary="List the tenant's batches, newest first",
    responses={
        200: {"description": "One page of batches", "content": {"application/json": {"model": BatchList}}},
        **error_responses(401, 422),
    },
)
@tracer.capture_method
def list_batches(
    limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: Annotated[str | None, Query()] = None
) -> Response[BatchList]:
    return json_response(200, batches.list_page(tenant_of(app.current_event), limit=limit, cursor=cursor))


@app.get(
    "/v1/batches/<batch_id>",
    summary="Get a batch",
    responses={
        200: {"description": "The batch", "content": {"application/json": {"model": BatchView}}},
        **error_responses(401, 404),
    },
)
@tracer.capture_method
def get_batch(batch_id: str) -> Response[BatchView]:
    return json_response(200, batches.get(tenant_of(app.current_event), batch_id))


@app.delete(
    "/v1/batches/<batch_id>",
    summary="Cancel a batch: lines not yet started never start, running jobs are cancelled",
    responses={
        200: {"description": "The batch", "content": {"application/json": {"model": BatchView}}},
        **error_responses(401, 404, 409),
    },
)
@tracer.capture_method
def cancel_batch(batch_id: str) -> Response[BatchView]:
    return json_response(200, batches.cancel(tenant_of(app.current_event), batch_id))


@app.get(
    "/v1/batches/<batch_id>/deliveries",
    summary="The batch's webhook deliveries",
    responses={
        200: {"description": "Deliveries", "content": {"application/json": {"model": DeliveryList}}},
        **error_responses(401, 404),
    },
)
@tracer.capture_method
def list_batch_deliveries(batch_id: str) -> Response[DeliveryList]:
    found = DeliveryList(data=batches.deliveries(tenant_of(app.current_event), batch_id))
    return json_response(200, found)


@app.post(
    "/v1/batches/<batch_id>/deliveries/<webhook_id>/redeliver",
    summary="Deliver the batch's webhook again (a new schedule of attempts, same webhook-id)",
    responses={
        202: {"description": "Queued again", "content": {"application/json": {"model": DeliveryView}}},
        **error_responses(401, 404, 409),
    },
)
@tracer.capture_method
def redeliver_batch_webhook(batch_id: str, webhook_id: str) -> Response[DeliveryView]:
    return json_response(202, batches.redeliver(tenant_of(app.current_event), batch_id, webhook_id))


# -- the API's own description (no API key: template.yaml sets Auth NONE on this route) -----------
@app.get(OPENAPI_PATH, include_in_schema=False)
def openapi_document() -> Response[str]:
    return Response(
        status_code=200,
        content_type=content_types.APPLICATION_JSON,
        body=app.get_openapi_json_schema(**openapi_info()),
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    idempotency.register_lambda_context(context)
    return app.resolve(event, context)
