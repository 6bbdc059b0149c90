"""Documents: the client asks for an upload slot, PUTs the bytes to a presigned S3 URL (no AWS
credentials of its own), and references the document from jobs and batches by its id.

A document is one DynamoDB item (pk TENANT#<tenant>, sk DOC#<id>: filename, content type) and
one S3 object at documents/<tenant>/<id>. Whether it is uploaded, and how big, S3 says.
"""

from __future__ import annotations

import mimetypes
import re
import uuid
from typing import Any, Final

from botocore.exceptions import ClientError

from baton.aws import client, from_dynamo, to_dynamo
from baton.blobs import BlobStore
from baton.clock import iso_from_ms, now_ms
from baton.errors import JobNotFoundError
from baton.models import CreateDocumentRequest, DocumentUpload, DocumentView, UploadSlot
from baton.settings import Settings

DOCUMENT_ID_PATTERN: Final = re.compile(r"doc_[0-9a-f]{32}")
# The filename travels as x-amz-meta-filename (the extract stage reads the format from it): S3
# user metadata is ASCII, so anything else becomes "_".
_NON_HEADER_CHARS: Final = re.compile(r"[^\x20-\x7e]+")
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"


def document_item_key(tenant_id: str, document_id: str) -> dict[str, str]:
    return {"pk": f"TENANT#{tenant_id}", "sk": f"DOC#{document_id}"}


def header_safe(filename: str) -> str:
    return _NON_HEADER_CHARS.sub("_", filename).strip() or "document"


class DocumentService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.blobs = BlobStore(settings.bucket)

    @property
    def _ddb(self) -> Any:
        return client("dynamodb")

    def create(self, tenant_id: str, request: CreateDocumentRequest) -> DocumentUpload:
        document_id = f"doc_{uuid.uuid4().hex}"
        content_type = (
            request.content_type or mimetypes.guess_type(request.filename)[0] or DEFAULT_CONTENT_TYPE
        )
        created = now_ms()
        expires_in = self.settings.upload_url_expiry_seconds
        self._ddb.put_item(
            TableName=self.settings.jobs_table,
            Item=to_dynamo(
                {
                    **document_item_key(tenant_id, document_id),
                    "filename": request.filename,
                    "content_type": content_type,
                    "created_ms": created,
                    "expires_at": created // 1000 + self.settings.retention_days * 86_400,
                }
            ),
            ConditionExpression="attribute_not_exists(pk)",
        )
        headers = {"Content-Type": content_type, "x-amz-meta-filename": header_safe(request.filename)}
        url = self.blobs.presigned_put_url(
            self.blobs.document_key(tenant_id, document_id),
            content_type=content_type,
            metadata={"filename": headers["x-amz-meta-filename"]},
            expires_in=expires_in,
        )
        return DocumentUpload(
            id=document_id,
            upload=UploadSlot(method="PUT", url=url, headers=headers),
            expires_at=iso_from_ms(created + expires_in * 1000),
        )

    def get(self, tenant_id: str, document_id: str) -> DocumentView:
        if not DOCUMENT_ID_PATTERN.fullmatch(document_id):
            raise JobNotFoundError(f"document {document_id[:64]} not found")
        answer = self._ddb.get_item(
            TableName=self.settings.jobs_table,
            Key=to_dynamo(document_item_key(tenant_id, document_id)),
            ConsistentRead=True,
        )
        item = from_dynamo(answer["Item"]) if answer.get("Item") else None
        if item is None or int(item["expires_at"]) * 1000 < now_ms():
            raise JobNotFoundError(f"document {document_id} not found")
        size = self._size(self.blobs.document_key(tenant_id, document_id))
        return DocumentView(
            id=document_id,
            filename=str(item["filename"]),
            content_type=str(item["content_type"]),
            size=size,
            status="uploaded" if size is not None else "awaiting_upload",
        )

    def _size(self, key: str) -> int | None:
        try:
            head = client("s3").head_object(Bucket=self.settings.bucket, Key=key)
        except ClientError as error:
            if error.response["Error"]["Code"] in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return int(head["ContentLength"])
