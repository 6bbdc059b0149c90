"""Jobs API: routes only hand off to baton.api; errors are mapped in baton.http_errors."""

from typing import Annotated, Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from baton.api import JobsHttp, WebhooksHttp, base_path, tenant_of
from baton.batches import BatchService
from baton.documents import DocumentService
from baton.http_errors import register_error_handlers
from baton.idempotency import persistence_layer, submission_config
from baton.jobs import JobService
from baton.models import CreateBatchRequest, CreateDocumentRequest, CreateJobRequest, DeliveryList
from baton.settings import get_settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = get_settings()
idempotency = submission_config(settings)
service = JobService(settings)
jobs = JobsHttp(service, persistence_layer(settings), idempotency)
documents = DocumentService(settings)
webhooks = WebhooksHttp(service)
batches = BatchService(settings, service)

app = APIGatewayRestResolver(enable_validation=True)
register_error_handlers(app)


@app.post("/v1/jobs")
@tracer.capture_method
def create_job(body: CreateJobRequest) -> Response[str]:
    return jobs.create(app.current_event, body)


@app.get("/v1/jobs/<job_id>")
@tracer.capture_method
def get_job(job_id: str, wait: Annotated[float | None, Query(ge=0, le=600)] = None) -> Response[str]:
    return jobs.get(app.current_event, job_id, wait)


@app.delete("/v1/jobs/<job_id>")
@tracer.capture_method
def cancel_job(job_id: str) -> Response[str]:
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


# -- webhook deliveries and secret rotation
@app.get("/v1/jobs/<job_id>/deliveries")
@tracer.capture_method
def list_deliveries(job_id: str) -> Response[str]:
    return webhooks.deliveries(app.current_event, job_id)


@app.post("/v1/jobs/<job_id>/deliveries/<webhook_id>/redeliver")
@tracer.capture_method
def redeliver(job_id: str, webhook_id: str) -> Response[str]:
    return webhooks.redeliver(app.current_event, job_id, webhook_id)


@app.post("/v1/webhook-secret/rotate")
@tracer.capture_method
def rotate_webhook_secret() -> Response[str]:
    return webhooks.rotate_secret(app.current_event)


# -- batches
@app.post("/v1/batches")
@tracer.capture_method
def create_batch(body: CreateBatchRequest) -> Response[str]:
    event = app.current_event
    batch = batches.create(tenant_of(event), body, headers=dict(event.headers))
    headers = {"Location": f"{base_path(event)}/v1/batches/{batch.id}"}
    return Response(202, content_types.APPLICATION_JSON, batch.model_dump_json(), headers)


@app.get("/v1/batches")
@tracer.capture_method
def list_batches(
    limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: Annotated[str | None, Query()] = None
) -> Response[str]:
    page = batches.list_page(tenant_of(app.current_event), limit=limit, cursor=cursor)
    return Response(200, content_types.APPLICATION_JSON, page.model_dump_json())


@app.get("/v1/batches/<batch_id>")
@tracer.capture_method
def get_batch(batch_id: str) -> Response[str]:
    batch = batches.get(tenant_of(app.current_event), batch_id)
    return Response(200, content_types.APPLICATION_JSON, batch.model_dump_json())


@app.delete("/v1/batches/<batch_id>")
@tracer.capture_method
def cancel_batch(batch_id: str) -> Response[str]:
    batch = batches.cancel(tenant_of(app.current_event), batch_id)
    return Response(200, content_types.APPLICATION_JSON, batch.model_dump_json())


@app.get("/v1/batches/<batch_id>/deliveries")
@tracer.capture_method
def list_batch_deliveries(batch_id: str) -> Response[str]:
    found = DeliveryList(data=batches.deliveries(tenant_of(app.current_event), batch_id))
    return Response(200, content_types.APPLICATION_JSON, found.model_dump_json())


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    idempotency.register_lambda_context(context)
    return app.resolve(event, context)
