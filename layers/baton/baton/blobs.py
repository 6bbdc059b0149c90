"""S3 layout of Baton's one bucket.

uploads/<tenant>/...      client uploads; each object created here becomes a job
documents/<tenant>/<id>   documents referenced by `document.id` (POST /v1/documents hands out a
                          presigned PUT for doc_<hex> ids)
extracted/<tenant>/<job>.txt   text pulled out of a job's document
conversations/<tenant>/<job>.json   the messages of an agent loop, hop after hop
results/<tenant>/<job>.json    results too large for the job item
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from baton.aws import client
from baton.errors import DocumentTooLargeError, InvalidRequestError, UnreadableDocumentError


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    content_type: str | None
    metadata: dict[str, str]


class BlobStore:
    def __init__(self, bucket: str) -> None:
        self.bucket = bucket

    @property
    def _s3(self) -> Any:
        return client("s3")

    @staticmethod
    def document_key(tenant_id: str, document_id: str) -> str:
        return f"documents/{tenant_id}/{document_id}"

    @staticmethod
    def extracted_key(tenant_id: str, job_id: str) -> str:
        return f"extracted/{tenant_id}/{job_id}.txt"

    @staticmethod
    def conversation_key(tenant_id: str, job_id: str) -> str:
        return f"conversations/{tenant_id}/{job_id}.json"

    @staticmethod
    def result_key(tenant_id: str, job_id: str) -> str:
        return f"results/{tenant_id}/{job_id}.json"

    @staticmethod
    def batch_file_key(tenant_id: str, batch_id: str, name: str) -> str:
        """A batch's input, output or errors JSONL (`name`: input | output | errors)."""
        return f"batches/{tenant_id}/{batch_id}/{name}.jsonl"

    def key_from_uri(self, tenant_id: str, s3_uri: str) -> str:
        """A document URI must be inside Baton's bucket and the tenant's own prefixes."""
        parsed = urlparse(s3_uri)
        key = parsed.path.lstrip("/")
        if parsed.netloc != self.bucket:
            raise InvalidRequestError(
                "document.s3_uri must be inside Baton's bucket", field="document.s3_uri"
            )
        if not any(key.startswith(f"{prefix}/{tenant_id}/") for prefix in ("uploads", "documents")):
            raise InvalidRequestError(
                f"document.s3_uri must be under uploads/{tenant_id}/ or documents/{tenant_id}/",
                field="document.s3_uri",
            )
        return key

    def read(self, key: str, *, max_bytes: int) -> StoredObject:
        s3 = self._s3
        try:
            head = s3.head_object(Bucket=self.bucket, Key=key)
        except s3.exceptions.ClientError as error:
            if error.response["Error"]["Code"] in {"404", "NoSuchKey", "NotFound"}:
                raise UnreadableDocumentError(f"document {key} does not exist") from None
            raise
        if head["ContentLength"] > max_bytes:
            raise DocumentTooLargeError(
                f"document is {head['ContentLength']} bytes; the limit is {max_bytes}"
            )
        body = s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return StoredObject(
            data=body, content_type=head.get("ContentType"), metadata=head.get("Metadata", {})
        )

    def exists(self, key: str) -> bool:
        s3 = self._s3
        try:
            s3.head_object(Bucket=self.bucket, Key=key)
        except s3.exceptions.ClientError as error:
            if error.response["Error"]["Code"] in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return True

    def head(self, key: str) -> tuple[dict[str, str], str]:
        """The object's user metadata and its ETag (unquoted)."""
        answer = self._s3.head_object(Bucket=self.bucket, Key=key)
        return dict(answer.get("Metadata", {})), str(answer.get("ETag", "")).strip('"')

    def write(self, key: str, data: bytes, *, content_type: str) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def write_json(self, key: str, value: Any) -> None:
        self.write(key, json.dumps(value, separators=(",", ":")).encode(), content_type="application/json")

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_text(key))

    def read_text(self, key: str) -> str:
        return bytes(self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()).decode()

    def presigned_put_url(
        self, key: str, *, content_type: str, metadata: dict[str, str], expires_in: int
    ) -> str:
        """A URL the client PUTs the bytes to, sending exactly these as headers (they are signed):
        Content-Type and one x-amz-meta-<name> per metadata entry."""
        return str(
            self._s3.generate_presigned_url(
                "put_object",
                Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type, "Metadata": metadata},
                ExpiresIn=expires_in,
            )
        )

    def presigned_url(self, key: str, *, expires_in: int) -> str:
        return str(
            self._s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in
            )
        )
