"""Documents API (POST/GET /v1/documents) and what the extract stage does with an uploaded document."""

from __future__ import annotations

import io
import json
import zipfile
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import boto3

from baton.models import StageCommand, Step
from baton.store import JobStore

if TYPE_CHECKING:
    from conftest import AwsStack, LoadedFunction


def make_docx(paragraphs: list[str]) -> bytes:
    """A minimal WordprocessingML package: the parts Word itself needs to open it."""
    ns = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    body = "".join(f"<w:p><w:r><w:t xml:space='preserve'>{text}</w:t></w:r></w:p>" for text in paragraphs)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" '
            'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
            'officedocument.wordprocessingml.document.main+xml"/></Types>',
        )
        archive.writestr(
            "_rels/.rels",
            '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/'
            'relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/'
            '2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>',
        )
        archive.writestr(
            "word/document.xml",
            f'<?xml version="1.0"?><w:document xmlns:w="{ns}"><w:body>{body}</w:body></w:document>',
        )
    return buffer.getvalue()


def document_event(
    aws: AwsStack, method: str, *, body: Any = None, document_id: str | None = None, tenant: str = "acme"
) -> dict[str, Any]:
    return route_event(aws, method, "documents", "document_id", item_id=document_id, body=body, tenant=tenant)


def route_event(
    aws: AwsStack,
    method: str,
    collection: str,
    parameter: str,
    *,
    item_id: str | None = None,
    body: Any = None,
    tenant: str = "acme",
) -> dict[str, Any]:
    """An API Gateway event for /v1/<collection> or /v1/<collection>/{<parameter>} (`item_id`,
    which may carry a sub-path such as "<id>/deliveries")."""
    event = aws.api_event(
        "api-create-job.json", body=body, tenant=tenant, drop_headers=("Idempotency-Key", "Prefer")
    )
    path = f"/v1/{collection}" + (f"/{item_id}" if item_id else "")
    event["httpMethod"] = method
    event["path"] = path
    event["resource"] = f"/v1/{collection}/{{{parameter}}}" if item_id else f"/v1/{collection}"
    event["pathParameters"] = {parameter: item_id} if item_id else None
    event["requestContext"]["path"] = f"/{event['requestContext']['stage']}{path}"
    event["requestContext"]["httpMethod"] = method
    event["requestContext"]["resourcePath"] = event["resource"]
    if body is None:
        event["body"] = None
    return event


def call(api: LoadedFunction, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = api(event)
    return response["statusCode"], json.loads(response["body"])


def put_as_client(
    aws: AwsStack, upload: dict[str, Any], data: bytes, document_id: str, tenant: str = "acme"
) -> None:
    """What the client's PUT to the presigned URL stores (no HTTP server under mock_aws)."""
    headers = upload["headers"]
    boto3.client("s3").put_object(
        Bucket=aws.bucket,
        Key=f"documents/{tenant}/{document_id}",
        Body=data,
        ContentType=headers["Content-Type"],
        Metadata={"filename": headers["x-amz-meta-filename"]},
    )


def test_create_answers_a_presigned_put_into_the_tenants_prefix(aws: AwsStack, api: LoadedFunction) -> None:
    status, created = call(api, document_event(aws, "POST", body={"filename": "Q3 report.docx"}))
    assert status == 201, created
    assert created["id"].startswith("doc_")
    upload = created["upload"]
    assert upload["method"] == "PUT"
    url = urlsplit(upload["url"])
    assert url.path.endswith(f"/documents/acme/{created['id']}")
    query = parse_qs(url.query)
    # SigV4 query signing, with the headers the client must send among the signed ones.
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    signed = query["X-Amz-SignedHeaders"][0].split(";")
    assert "content-type" in signed and "x-amz-meta-filename" in signed
    assert upload["headers"] == {
        "Content-Type": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "x-amz-meta-filename": "Q3 report.docx",
    }
    assert created["expires_at"].endswith("Z")


def test_get_reports_awaiting_then_uploaded_and_hides_foreign_documents(
    aws: AwsStack, api: LoadedFunction
) -> None:
    _, created = call(api, document_event(aws, "POST", body={"filename": "notes.txt"}))
    document_id = created["id"]
    status, view = call(api, document_event(aws, "GET", document_id=document_id))
    assert status == 200
    assert view == {
        "id": document_id,
        "filename": "notes.txt",
        "content_type": "text/plain",
        "size": None,
        "status": "awaiting_upload",
    }
    put_as_client(aws, created["upload"], b"hello world", document_id)
    _, view = call(api, document_event(aws, "GET", document_id=document_id))
    assert view["status"] == "uploaded" and view["size"] == 11
    status, body = call(api, document_event(aws, "GET", document_id=document_id, tenant="globex"))
    assert status == 404 and body["error"]["type"] == "not_found"
    status, _ = call(api, document_event(aws, "GET", document_id="doc_" + "0" * 32))
    assert status == 404


def test_create_validates_the_body(aws: AwsStack, api: LoadedFunction) -> None:
    status, body = call(api, document_event(aws, "POST", body={"filename": ""}))
    assert status == 422 and body["error"]["field"] == "filename"
    status, body = call(
        api, document_event(aws, "POST", body={"filename": "a.txt", "content_type": "not a type"})
    )
    assert status == 422 and body["error"]["field"] == "content_type"


def test_a_job_reads_an_uploaded_docx_by_its_filename(
    aws: AwsStack, api: LoadedFunction, extract: LoadedFunction
) -> None:
    _, created = call(api, document_event(aws, "POST", body={"filename": "memo.docx"}))
    document_id = created["id"]
    # Before the upload a job cannot reference it.
    job_body = {"input": {"prompt": "Summarize."}, "document": {"id": document_id}}
    response = api(aws.api_event("api-create-job.json", body=job_body, drop_headers=("Idempotency-Key",)))
    assert response["statusCode"] == 422 and "document.id" in response["body"]
    put_as_client(
        aws, created["upload"], make_docx(["The launch moved to March.", "Budget: 40k."]), document_id
    )
    response = api(aws.api_event("api-create-job.json", body=job_body, drop_headers=("Idempotency-Key",)))
    assert response["statusCode"] == 202, response["body"]
    job_id = json.loads(response["body"])["id"]
    extract(aws.take_event("ExtractQueue"))
    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.text_key is not None
    text = boto3.client("s3").get_object(Bucket=aws.bucket, Key=record.text_key)["Body"].read().decode()
    assert text == "The launch moved to March.\nBudget: 40k."
    queued = [StageCommand.model_validate_json(m["Body"]) for m in aws.receive("InferQueue")]
    assert [(c.job_id, c.step) for c in queued] == [(job_id, Step.INFER)]


def test_an_unsupported_upload_fails_its_job_naming_the_type(
    aws: AwsStack, api: LoadedFunction, extract: LoadedFunction
) -> None:
    _, created = call(api, document_event(aws, "POST", body={"filename": "slides.pptx"}))
    put_as_client(aws, created["upload"], b"PK\x03\x04not really", created["id"])
    job_body = {"input": {"prompt": "Summarize."}, "document": {"id": created["id"]}}
    response = api(aws.api_event("api-create-job.json", body=job_body, drop_headers=("Idempotency-Key",)))
    job_id = json.loads(response["body"])["id"]
    extract(aws.take_event("ExtractQueue"))
    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.status.value == "failed"
    assert record.error is not None and record.error.type == "unsupported_document"
    assert ".pptx" in record.error.message
