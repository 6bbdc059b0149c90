"""Batches: many requests in one submission, each line a job through the same pipeline.

A batch is one DynamoDB item (pk TENANT#<tenant>, sk BATCH#<id>) with its counts, and its lines
as JSONL in S3 (batches/<tenant>/<id>/input.jsonl). The batch queue carries three kinds of
message, all handled by `BatchService.handle`:
- a slice command: turn lines [start, start + SLICE) into jobs, then queue the next slice (so a
  50,000-line file never needs one long invocation);
- a cancel command: cancel the jobs of lines [start, start + SLICE), then the next slice;
- a terminal job event (EventBridge rule, jobs with metadata.batch_id): count the line.

Counting is exactly once per line: a conditional put of a line marker (pk BATCH#<id>,
sk LINE#<custom_id>) and the count's ADD go in one DynamoDB transaction, so a redelivered event
or a line both cancelled and finished counts once. The invocation that sees the counts reach the
total writes output.jsonl and errors.jsonl (every line once: lines are read from the input, in
order, and each one's job decides which file it goes to), ends the batch, publishes
`Batch Completed` and hands the batch's webhook to the delivery machinery (baton.deliveries: a
delivery record keyed by the batch id, attempts and retries from the delivery queue).

A line that stops in `needs_review` counts as ended (in errors.jsonl, status `needs_review`): a
batch does not wait for a person.

`completed` vs `failed` (as OpenAI's Batch API): a batch whose every line ran ends `completed`,
however many lines failed (their errors are in errors.jsonl). It ends `failed` only when the batch
itself could not be carried out: a slice command (or a line's count) failed for good, so lines
could no longer be started or counted. `fail` then counts every line not counted yet from its
job (a line that never started fails as `batch_failed`), running lines end on their own, and
the batch finishes as `failed` with both files written as usual.

The batch's webhook carries the batch without presigned URLs at rest: the delivery signs fresh
ones at each attempt (baton.deliveries), so a retry hours later still carries working links.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import TYPE_CHECKING, Any, Final, Literal

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from baton.aws import client, from_dynamo, to_dynamo
from baton.blobs import BlobStore
from baton.clock import iso_from_ms, now_ms
from baton.errors import InvalidRequestError, JobConflictError, JobNotFoundError
from baton.models import (
    BATCH_TERMINAL_STATUSES,
    EVENT_SOURCE,
    BatchLine,
    BatchList,
    BatchView,
    CreateBatchRequest,
    CreateJobRequest,
    DeliveryView,
    RequestCounts,
)
from baton.records import JobRecord, job_key
from baton.settings import Settings
from baton.webhook_auth import forwarded_value
from baton.webhooks import Delivery

if TYPE_CHECKING:
    from baton.deliveries import WebhookService
    from baton.intake import JobIntake

logger = Logger(child=True)

SLICE: Final = 100
MAX_INLINE: Final = 1_000
MAX_LINES: Final = 50_000
BATCH_ID_PATTERN_PREFIX: Final = "batch_"
TERMINAL: Final = BATCH_TERMINAL_STATUSES
# A line's job ends its part of the batch in one of these (needs_review included: see above).
LINE_BUCKETS: Final = {"completed": "completed", "cancelled": "cancelled"}


def batch_key(tenant_id: str, batch_id: str) -> dict[str, str]:
    return {"pk": f"TENANT#{tenant_id}", "sk": f"BATCH#{batch_id}"}


def line_job_id(tenant_id: str, batch_id: str, custom_id: str) -> str:
    """A line's job id derives from the batch and its custom_id: a redelivered slice finds it."""
    digest = hashlib.sha256(f"{tenant_id}\n{batch_id}\n{custom_id}".encode()).hexdigest()[:32]
    return f"job_{digest}"


BATCH_FAILED_ERROR: Final = "batch_failed"


def batch_webhook_id(batch_id: str, status: str) -> str:
    """Stable across retries of the batch's one terminal event (receivers deduplicate on it)."""
    return f"msg_{batch_id}_{status}"


def new_batch_id() -> str:
    # Time first, so the tenant's batches sort newest first under one partition.
    return f"batch_{now_ms():012x}{uuid.uuid4().hex[:20]}"


class SliceCommand(BaseModel):
    """What the batch queue carries besides terminal job events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["slice", "cancel"]
    tenant_id: str
    batch_id: str
    start: int = Field(ge=0)


def parse_lines(raw: bytes | str) -> list[BatchLine]:
    """JSONL -> validated lines; 422 naming the (1-based) line for a malformed line or a duplicate
    custom_id."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    lines: list[BatchLine] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            parsed = BatchLine.model_validate_json(line)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            detail = f"{where}: {first['msg']}" if where else first["msg"]
            raise InvalidRequestError(f"line {number}: {detail}", field=f"line {number}") from None
        lines.append(parsed)
        _check_unique(parsed.custom_id, number, seen)
    return lines


def _check_unique(custom_id: str, number: int, seen: dict[str, int]) -> None:
    if custom_id in seen:
        raise InvalidRequestError(
            f"line {number}: custom_id {custom_id!r} repeats line {seen[custom_id]}", field=f"line {number}"
        )
    seen[custom_id] = number


def line_request(batch: dict[str, Any], line: BatchLine) -> CreateJobRequest:
    """The job a line becomes: the batch's model/parameters/metadata under the line's own."""
    defaults = batch.get("defaults", {})
    parameters = {
        **defaults.get("parameters", {}),
        **line.model_dump(exclude_none=True).get("parameters", {}),
    }
    metadata = {
        **defaults.get("metadata", {}),
        **line.metadata,
        "custom_id": line.custom_id,
        "batch_id": batch["batch_id"],
    }
    body: dict[str, Any] = {
        "input": line.input.model_dump(mode="json", exclude_none=True),
        "parameters": parameters,
        "metadata": metadata,
    }
    model = line.model or defaults.get("model")
    if model:
        body["model"] = model
    return CreateJobRequest.model_validate(body)


class BatchService:
    def __init__(self, settings: Settings, jobs: JobIntake, webhooks: WebhookService) -> None:
        self.settings = settings
        self.jobs = jobs
        self.webhooks = webhooks
        self.blobs = BlobStore(settings.bucket)

    @property
    def _ddb(self) -> Any:
        return client("dynamodb")

    # -- API ------------------------------------------------------------------------------------
    def create(
        self, tenant_id: str, request: CreateBatchRequest, *, headers: dict[str, Any] | None = None
    ) -> BatchView:
        """Validate every line (422 naming it), store them normalized, queue the first slice.
        `headers`: the submitting request's, for a webhook.auth of type on_behalf."""
        self.jobs.check_webhook(request.webhook)
        webhook = request.webhook
        if webhook is not None and webhook.auth is not None and webhook.auth.type == "on_behalf":
            auth = forwarded_value(webhook.auth, headers or {})
            webhook = webhook.model_copy(update={"auth": auth})
        if request.input_document_id is not None:
            key = self.blobs.document_key(tenant_id, request.input_document_id)
            if not self.blobs.exists(key):
                raise InvalidRequestError("input_document_id: no such document", field="input_document_id")
            stored = self.blobs.read(key, max_bytes=self.settings.max_document_bytes)
            try:
                lines = parse_lines(stored.data)
            except UnicodeDecodeError:
                raise InvalidRequestError(
                    "input_document_id: the file is not UTF-8 JSONL", field="input_document_id"
                ) from None
            label = "line"
        else:
            lines = list(request.requests or [])
            seen: dict[str, int] = {}
            for number, line in enumerate(lines, start=1):
                _check_unique(line.custom_id, number, seen)
            label = "line"
        if not lines:
            raise InvalidRequestError("the batch has no requests", field="requests")
        if len(lines) > MAX_LINES:
            raise InvalidRequestError(f"a batch holds at most {MAX_LINES} requests", field="requests")
        batch_id = new_batch_id()
        created = now_ms()
        defaults = request.model_dump(
            mode="json", include={"model", "parameters", "metadata"}, exclude_none=True
        )
        batch: dict[str, Any] = {"batch_id": batch_id, "defaults": defaults}
        for number, line in enumerate(lines, start=1):
            try:
                line_request(batch, line)
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise InvalidRequestError(
                    f"{label} {number}: {where}: {first['msg']}", field=f"{label} {number}"
                ) from None
        # The normalized lines, with the byte offset of each slice so a slice reads only its part.
        encoded = [line.model_dump_json(exclude_none=True).encode() + b"\n" for line in lines]
        offsets = [0]
        position = 0
        for index, data in enumerate(encoded, start=1):
            position += len(data)
            if index % SLICE == 0 or index == len(encoded):
                offsets.append(position)
        input_key = self.blobs.batch_file_key(tenant_id, batch_id, "input")
        self.blobs.write(input_key, b"".join(encoded), content_type="application/x-ndjson")
        item = {
            **batch_key(tenant_id, batch_id),
            "batch_id": batch_id,
            "status": "in_progress",
            "total": len(lines),
            "completed": 0,
            "failed": 0,
            "cancelled": 0,
            "created_ms": created,
            "expires_at": created // 1000 + self.settings.retention_days * 86_400,
            "input_key": input_key,
            "slice_offsets": json.dumps(offsets),
            "defaults": json.dumps(defaults),
            # Credentials sealed like a job's (never stored or returned in plain text).
            "webhook": json.dumps(self.jobs.stored_webhook(tenant_id, webhook)) if webhook else "",
        }
        self._ddb.put_item(TableName=self.settings.jobs_table, Item=to_dynamo(item))
        self._send(SliceCommand(kind="slice", tenant_id=tenant_id, batch_id=batch_id, start=0))
        logger.info(
            "batch accepted", extra={"batch_id": batch_id, "tenant_id": tenant_id, "lines": len(lines)}
        )
        return self.view(item)

    def get(self, tenant_id: str, batch_id: str) -> BatchView:
        return self.view(self._item(tenant_id, batch_id))

    def list_page(self, tenant_id: str, *, limit: int, cursor: str | None) -> BatchList:
        query: dict[str, Any] = {
            "TableName": self.settings.jobs_table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": to_dynamo({":pk": f"TENANT#{tenant_id}", ":prefix": "BATCH#batch_"}),
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if cursor:
            query["ExclusiveStartKey"] = to_dynamo(batch_key(tenant_id, cursor))
        answer = self._ddb.query(**query)
        items = [from_dynamo(item) for item in answer.get("Items", [])]
        last = answer.get("LastEvaluatedKey")
        next_cursor = str(from_dynamo(last)["sk"]).removeprefix("BATCH#") if last else None
        return BatchList(data=[self.view(item) for item in items], next_cursor=next_cursor)

    def cancel(self, tenant_id: str, batch_id: str) -> BatchView:
        item = self._item(tenant_id, batch_id)
        if item["status"] in TERMINAL:
            raise JobConflictError(f"batch {batch_id} is already {item['status']}")
        try:
            answer = self._ddb.update_item(
                TableName=self.settings.jobs_table,
                Key=to_dynamo(batch_key(tenant_id, batch_id)),
                UpdateExpression="SET #status = :cancelling",
                ConditionExpression="#status = :in_progress",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=to_dynamo(
                    {":cancelling": "cancelling", ":in_progress": "in_progress"}
                ),
                ReturnValues="ALL_NEW",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return self.get(tenant_id, batch_id)  # already cancelling (or just finished)
        self._send(SliceCommand(kind="cancel", tenant_id=tenant_id, batch_id=batch_id, start=0))
        return self.view(from_dynamo(answer["Attributes"]))

    def view(self, item: dict[str, Any]) -> BatchView:
        def url(name: str) -> str | None:
            key = item.get(name)
            if not key:
                return None
            return self.blobs.presigned_url(str(key), expires_in=self.settings.result_url_expiry_seconds)

        return BatchView(
            id=str(item["batch_id"]),
            status=item["status"],
            request_counts=RequestCounts(
                total=int(item["total"]),
                completed=int(item["completed"]),
                failed=int(item["failed"]),
                cancelled=int(item["cancelled"]),
            ),
            created_at=iso_from_ms(int(item["created_ms"])),
            completed_at=iso_from_ms(int(item["completed_ms"])) if item.get("completed_ms") else None,
            output_url=url("output_key"),
            errors_url=url("errors_key"),
        )

    def _item(self, tenant_id: str, batch_id: str) -> dict[str, Any]:
        if not batch_id.startswith(BATCH_ID_PATTERN_PREFIX) or len(batch_id) > 64:
            raise JobNotFoundError(f"batch {batch_id[:64]} not found")
        answer = self._ddb.get_item(
            TableName=self.settings.jobs_table,
            Key=to_dynamo(batch_key(tenant_id, batch_id)),
            ConsistentRead=True,
        )
        if not answer.get("Item"):
            raise JobNotFoundError(f"batch {batch_id} not found")
        item = from_dynamo(answer["Item"])
        if int(item["expires_at"]) * 1000 < now_ms():
            raise JobNotFoundError(f"batch {batch_id} not found")
        return item

    def _send(self, command: SliceCommand) -> None:
        client("sqs").send_message(
            QueueUrl=self.settings.batch_queue_url, MessageBody=command.model_dump_json()
        )

    # -- the batch queue ------------------------------------------------------------------------
    def handle(self, message: Any) -> dict[str, Any]:
        """A slice command, or (anything else the queue carries) a terminal job event."""
        if isinstance(message, SliceCommand):
            return self.run_slice(message)
        detail = message.detail
        return self.run_job_event(detail.tenant_id, detail.job_id, detail.status.value, detail.metadata)

    def run_slice(self, command: SliceCommand) -> dict[str, Any]:
        """Turn one slice of lines into jobs (or cancel them), then queue the next slice."""
        try:
            item = self._item(command.tenant_id, command.batch_id)
        except JobNotFoundError:
            return {"outcome": "gone"}
        offsets: list[int] = json.loads(item["slice_offsets"])
        index = command.start // SLICE
        if index + 1 >= len(offsets):
            return {"outcome": "past_end"}
        lines = self._slice_lines(item, offsets[index], offsets[index + 1])
        stopping = item["status"] != "in_progress"
        started = cancelled = 0
        for line in lines:
            job_id = line_job_id(command.tenant_id, command.batch_id, line.custom_id)
            if command.kind == "cancel" or stopping:
                cancelled += self._cancel_line(command.tenant_id, command.batch_id, line.custom_id, job_id)
            else:
                self._start_line(command.tenant_id, item, line, job_id)
                started += 1
        if index + 2 < len(offsets):
            self._send(command.model_copy(update={"start": command.start + SLICE}))
        return {"outcome": command.kind, "started": started, "cancelled": cancelled}

    def _slice_lines(self, item: dict[str, Any], start: int, end: int) -> list[BatchLine]:
        answer = client("s3").get_object(
            Bucket=self.settings.bucket, Key=str(item["input_key"]), Range=f"bytes={start}-{end - 1}"
        )
        data = bytes(answer["Body"].read())
        return [BatchLine.model_validate_json(raw) for raw in data.splitlines() if raw.strip()]

    def _start_line(self, tenant_id: str, item: dict[str, Any], line: BatchLine, job_id: str) -> None:
        batch = {"batch_id": item["batch_id"], "defaults": json.loads(item["defaults"])}
        record = self.jobs.new_record(
            tenant_id, job_id=job_id, request=line_request(batch, line), document_key=None, source="batch"
        )
        self.jobs.store_and_start(record)

    def _cancel_line(self, tenant_id: str, batch_id: str, custom_id: str, job_id: str) -> int:
        try:
            self.jobs.cancel(tenant_id, job_id)  # its terminal event counts the line
        except JobConflictError:
            return 0  # already finished: counted by its own event
        except JobNotFoundError:
            # Never started: it ends here, counted as cancelled.
            self.count_line(tenant_id, batch_id, custom_id, "cancelled")
        return 1

    def run_job_event(
        self, tenant_id: str, job_id: str, status: str, metadata: dict[str, str]
    ) -> dict[str, Any]:
        batch_id, custom_id = metadata.get("batch_id"), metadata.get("custom_id")
        if not batch_id or custom_id is None:
            return {"outcome": "not_a_batch_job"}
        if job_id != line_job_id(tenant_id, batch_id, custom_id):
            # metadata a client set by hand on an ordinary job: not one of the batch's lines.
            return {"outcome": "not_a_batch_job"}
        bucket = LINE_BUCKETS.get(status, "failed")
        return self.count_line(tenant_id, batch_id, custom_id, bucket)

    def count_line(self, tenant_id: str, batch_id: str, custom_id: str, bucket: str) -> dict[str, Any]:
        """Count one line once (marker + count in one transaction), and finish the batch when the
        counts reach the total."""
        table = self.settings.jobs_table
        try:
            self._ddb.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": table,
                            "Item": to_dynamo(
                                {
                                    "pk": f"BATCH#{batch_id}",
                                    "sk": f"LINE#{custom_id}",
                                    "bucket": bucket,
                                    "expires_at": now_ms() // 1000 + self.settings.retention_days * 86_400,
                                }
                            ),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {
                        "Update": {
                            "TableName": table,
                            "Key": to_dynamo(batch_key(tenant_id, batch_id)),
                            "UpdateExpression": "ADD #bucket :one",
                            "ConditionExpression": "attribute_exists(pk)",
                            "ExpressionAttributeNames": {"#bucket": bucket},
                            "ExpressionAttributeValues": to_dynamo({":one": 1}),
                        }
                    },
                ]
            )
            counted = True
        except ClientError as error:
            if error.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            counted = False  # counted before (a redelivery), or the batch is gone
        try:
            item = self._item(tenant_id, batch_id)
        except JobNotFoundError:
            return {"outcome": "gone"}
        done = int(item["completed"]) + int(item["failed"]) + int(item["cancelled"])
        if done >= int(item["total"]) and item["status"] not in TERMINAL:
            self.finish(item, tenant_id)
            return {"outcome": "batch_finished", "counted": counted}
        return {"outcome": "counted" if counted else "counted_before", "done": done}

    def finish(self, item: dict[str, Any], tenant_id: str) -> None:
        """Write output.jsonl / errors.jsonl (every input line once, in input order), end the
        batch, announce it. Safe to run twice: the files come out the same, one status write wins."""
        batch_id = str(item["batch_id"])
        lines = self._all_lines(item)
        job_ids = [line_job_id(tenant_id, batch_id, line.custom_id) for line in lines]
        records = self._jobs(tenant_id, job_ids)
        output: list[bytes] = []
        errors: list[bytes] = []
        for line, job_id in zip(lines, job_ids, strict=True):
            record = records.get(job_id)
            entry: dict[str, Any] = {"custom_id": line.custom_id, "job_id": job_id if record else None}
            if record is not None and record.status.value == "completed":
                job_view = self.jobs.public_view(record)
                entry.update(status="completed", result=job_view.get("result"), usage=job_view["usage"])
                output.append(json.dumps(entry).encode() + b"\n")
                continue
            if record is None and item["status"] != "cancelling" and item.get("failure"):
                entry.update(
                    status="failed",
                    error={
                        "type": BATCH_FAILED_ERROR,
                        "message": f"the batch failed before this request started: {item['failure']}",
                    },
                    usage=None,
                )
            elif record is None:
                entry.update(
                    status="cancelled",
                    error={
                        "type": "cancelled",
                        "message": "the batch was cancelled before this request started",
                    },
                    usage=None,
                )
            else:
                # failed, cancelled, or stopped for review (needs_review): its error says why.
                status = record.status.value
                error = (
                    record.error.model_dump()
                    if record.error
                    else {"type": status, "message": f"the request was {status} when the batch ended"}
                )
                entry.update(status=status, error=error, usage=record.usage.model_dump())
            errors.append(json.dumps(entry).encode() + b"\n")
        output_key = self.blobs.batch_file_key(tenant_id, batch_id, "output")
        errors_key = self.blobs.batch_file_key(tenant_id, batch_id, "errors")
        self.blobs.write(output_key, b"".join(output), content_type="application/x-ndjson")
        self.blobs.write(errors_key, b"".join(errors), content_type="application/x-ndjson")
        if item["status"] == "cancelling":
            final = "cancelled"
        else:
            final = "failed" if item.get("failure") else "completed"
        try:
            answer = self._ddb.update_item(
                TableName=self.settings.jobs_table,
                Key=to_dynamo(batch_key(tenant_id, batch_id)),
                UpdateExpression=(
                    "SET #status = :final, completed_ms = :now, output_key = :out, errors_key = :err"
                ),
                ConditionExpression="#status IN (:in_progress, :cancelling)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=to_dynamo(
                    {
                        ":final": final,
                        ":now": now_ms(),
                        ":out": output_key,
                        ":err": errors_key,
                        ":in_progress": "in_progress",
                        ":cancelling": "cancelling",
                    }
                ),
                ReturnValues="ALL_NEW",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return  # another invocation finished it
        finished = from_dynamo(answer["Attributes"])
        view = self.view(finished)
        self._announce(tenant_id, finished, view)
        logger.info(
            "batch finished",
            extra={
                "batch_id": batch_id,
                "status": final,
                "failure": item.get("failure"),
                **view.request_counts.model_dump(),
            },
        )

    def fail(self, tenant_id: str, batch_id: str, reason: str) -> dict[str, Any]:
        """The batch cannot be carried out (a slice or a count failed for good): mark it failing,
        count every line not counted yet from its job (never started: failed as batch_failed;
        ended: by its status, in case its own count was the one that failed), and let the last
        count finish it as `failed`. Safe to run again: counts are once per line."""
        try:
            self._ddb.update_item(
                TableName=self.settings.jobs_table,
                Key=to_dynamo(batch_key(tenant_id, batch_id)),
                UpdateExpression="SET failure = :reason",
                ConditionExpression=(
                    "#status IN (:in_progress, :cancelling) AND attribute_not_exists(failure)"
                ),
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=to_dynamo(
                    {":reason": reason[:500], ":in_progress": "in_progress", ":cancelling": "cancelling"}
                ),
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
        try:
            item = self._item(tenant_id, batch_id)
        except JobNotFoundError:
            return {"outcome": "gone"}
        if item["status"] in TERMINAL:
            return {"outcome": "already_" + str(item["status"])}
        logger.error("batch failing", extra={"batch_id": batch_id, "reason": item.get("failure", reason)})
        lines = self._all_lines(item)
        job_ids = [line_job_id(tenant_id, batch_id, line.custom_id) for line in lines]
        records = self._jobs(tenant_id, job_ids)
        # A batch being cancelled ends cancelled: its unstarted lines are cancelled, not failed.
        never_started = "cancelled" if item["status"] == "cancelling" else "failed"
        running = 0
        for line, job_id in zip(lines, job_ids, strict=True):
            record = records.get(job_id)
            if record is None:
                self.count_line(tenant_id, batch_id, line.custom_id, never_started)
            elif record.status.value in TERMINAL or record.status.value == "needs_review":
                self.count_line(
                    tenant_id, batch_id, line.custom_id, LINE_BUCKETS.get(record.status.value, "failed")
                )
            else:
                running += 1  # its own terminal event counts it
        return {"outcome": "failing", "running": running}

    def _all_lines(self, item: dict[str, Any]) -> list[BatchLine]:
        data = bytes(
            client("s3").get_object(Bucket=self.settings.bucket, Key=str(item["input_key"]))["Body"].read()
        )
        return [BatchLine.model_validate_json(raw) for raw in data.splitlines() if raw.strip()]

    def _jobs(self, tenant_id: str, job_ids: list[str]) -> dict[str, JobRecord]:
        found: dict[str, JobRecord] = {}
        for start in range(0, len(job_ids), 100):
            keys = [to_dynamo(job_key(tenant_id, job_id)) for job_id in job_ids[start : start + 100]]
            request: dict[str, Any] = {self.settings.jobs_table: {"Keys": keys, "ConsistentRead": True}}
            while request:
                answer = self._ddb.batch_get_item(RequestItems=request)
                for item in answer.get("Responses", {}).get(self.settings.jobs_table, []):
                    record = JobRecord.from_item(from_dynamo(item))
                    found[record.job_id] = record
                request = answer.get("UnprocessedKeys") or {}
                if request:
                    time.sleep(0.05)
        return found

    def _announce(self, tenant_id: str, item: dict[str, Any], view: BatchView) -> None:
        """`Batch Completed` on the bus, and the batch's webhook as a delivery (signed, logged and
        retried like a job's; `webhook-id: msg_<batch id>_<status>`)."""
        body = view.model_dump(mode="json")
        # Stored without links: each delivery attempt signs fresh ones (a retry may come hours later).
        stored = {**body, "output_url": None, "errors_url": None}
        client("events").put_events(
            Entries=[
                {
                    "Source": EVENT_SOURCE,
                    "DetailType": "Batch Completed",
                    "Detail": json.dumps(
                        {"batch_id": view.id, "tenant_id": tenant_id, "status": view.status, "batch": body}
                    ),
                    "EventBusName": self.settings.event_bus,
                    "Resources": [f"baton:batch/{view.id}"],
                }
            ]
        )
        if not item.get("webhook"):
            return
        webhook = json.loads(str(item["webhook"]))
        self.webhooks.start(
            Delivery(
                tenant_id=tenant_id,
                job_id=view.id,
                webhook_id=batch_webhook_id(view.id, view.status),
                type=f"batch.{view.status}",
                url=str(webhook["url"]),
                data=stored,
                expires_at=int(item["expires_at"]),
                next_attempt_ms=now_ms(),
                auth_sealed=webhook.get("auth_sealed"),
            )
        )

    def deliveries(self, tenant_id: str, batch_id: str) -> list[DeliveryView]:
        """GET /v1/batches/{id}/deliveries: the batch's webhook deliveries (404 like the batch)."""
        self._item(tenant_id, batch_id)
        found = self.webhooks.store.list(tenant_id, batch_id)
        return [DeliveryView.model_validate(delivery.public_view()) for delivery in found]

    def redeliver(self, tenant_id: str, batch_id: str, webhook_id: str) -> DeliveryView:
        """POST /v1/batches/{id}/deliveries/{webhook_id}/redeliver: one new attempt series, same
        webhook-id (404 like the batch)."""
        self._item(tenant_id, batch_id)
        if webhook_id not in {batch_webhook_id(batch_id, status) for status in TERMINAL}:
            raise JobNotFoundError(f"delivery {webhook_id[:80]} not found")
        delivery = self.webhooks.restart(tenant_id, batch_id, webhook_id)
        return DeliveryView.model_validate(delivery.public_view())
