"""Batches: many requests in one submission, each line a job through the same pipeline.

A batch is one DynamoDB item (pk TENANT#<tenant>, sk BATCH#<id>) with its counts, and its lines
as JSONL in S3 (batches/<tenant>/<id>/input.jsonl). The batch queue carries two kinds of message,
both handled by `BatchService.handle`:
- a slice command over lines [start, start + SLICE), then the next slice (so a 50,000-line file
  never needs one long invocation), of one of three kinds:
  - `slice` (the fan-out): claim the slice on the batch item (`started_slices`, only while the
    batch runs and has not failed), create each line's job (one conditional write: a line is one
    job however often this runs), hand them off in bulk (ten commands per SQS request, ten Job
    Accepted events per PutEvents call) and mark the slice `handed_off_slices`: about 1.25 AWS
    requests per line, where a job at a time took 4;
  - `cancel` (DELETE): cancel the lines' running jobs, count the lines that never started;
  - `fail`: count every line not counted yet (below);
  - `write`: a batch of more than WRITE_SLICES slices writes its files in parts, WRITE_SLICES
    slices (1,000 lines) per invocation, the last one joining them (no invocation holds 50,000
    lines' results);
- a terminal job event (EventBridge rule, jobs with metadata.batch_id): count the line.

Counting is exactly once per line: a conditional put of a line marker (pk BATCH#<id>,
sk LINE#<custom_id>) and the count's ADD go in one DynamoDB transaction (up to 99 lines, 4 MB),
so a redelivered event or a line both cancelled and finished counts once. The same ADD takes
`remaining` down on condition that it stays above zero: a count that is not the batch's last
needs no read to know it (only the last one reads the batch and finishes it). The terminal events
one invocation receives are counted together first (`count_together`: one transaction per batch
among them). The invocation that
sees the counts reach the total writes output.jsonl and errors.jsonl (every line once: lines are
read from the input, in order, and each one's job decides which file it goes to), ends the batch,
publishes `Batch Completed` and hands the batch's webhook to the delivery machinery
(baton.deliveries: a delivery record keyed by the batch id, attempts and retries from the
delivery queue).

A line that stops in `needs_review` counts as ended (in errors.jsonl, status `needs_review`): a
batch does not wait for a person.

`completed` vs `failed` (as OpenAI's Batch API): a batch whose every line ran ends `completed`,
however many lines failed (their errors are in errors.jsonl). It ends `failed` only when the batch
itself could not be carried out: a slice command failed for good (a permanent error, its attempts
spent, or it crashed its worker MaxReceiveCount times and the dead-letter function consumed it
from the batch DLQ), or a line's count did. `abandon` then records the reason (and the dead
slice) and starts the `fail` chain, which counts each line not counted yet: a line without a job
in a slice that never started (none starts once the batch has failed) or whose command died
fails as `batch_failed` (its job written ended in the same transaction, by the conditional put
that creates a job: a late copy of its slice's command then finds it and starts nothing, and if
that copy created the job first, the line is not settled here but counted when its job ends);
an ended line is counted from its job (in case its own count was the one
that failed); a running line is counted by its own terminal event; a slice still being started is
waited for. The last count finishes the batch as `failed` with both files written as usual.

The batch's webhook carries the batch without presigned URLs at rest: the delivery signs fresh
ones at each attempt (baton.deliveries), so a retry hours later still carries working links.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from baton.aws import client, from_dynamo, to_dynamo
from baton.blobs import BlobStore
from baton.clock import iso_from_ms, now_ms
from baton.errors import BatonError, InvalidRequestError, JobConflictError, JobNotFoundError
from baton.models import (
    BATCH_TERMINAL_STATUSES,
    EVENT_SOURCE,
    BatchLine,
    BatchList,
    BatchView,
    CreateBatchRequest,
    CreateJobRequest,
    DeliveryView,
    JobStatus,
    RequestCounts,
)
from baton.records import JobError, JobRecord, job_key
from baton.settings import Settings
from baton.store import listing_keys
from baton.webhook_auth import forwarded_value
from baton.webhooks import Delivery

if TYPE_CHECKING:
    from baton.deliveries import WebhookService
    from baton.intake import JobIntake

logger = Logger(child=True)

SLICE: Final = 100
# One TransactWriteItems holds 100 items: lines' markers (and never-started lines' jobs) and
# the batch's counts.
MAX_TRANSACTION_ITEMS: Final = 100
# ...and 4 MB at most: kept under 3 MB, counting each item's fixed attributes generously.
MAX_TRANSACTION_BYTES: Final = 3_000_000
ITEM_OVERHEAD_BYTES: Final = 2_000
# A batch of more slices than this writes its files through the write chain, this many slices
# (1,000 lines) per invocation; the last one joins the parts.
WRITE_SLICES: Final = 10
JOIN_PART_BYTES: Final = 8 * 1024 * 1024
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


def _part_key(tenant_id: str, batch_id: str, name: str, number: int) -> str:
    """A write chain's part of output.jsonl or errors.jsonl (deleted once joined)."""
    return f"batches/{tenant_id}/{batch_id}/parts/{name}-{number:05d}.jsonl"


def new_batch_id() -> str:
    # Time first, so the tenant's batches sort newest first under one partition.
    return f"batch_{now_ms():012x}{uuid.uuid4().hex[:20]}"


class SliceCommand(BaseModel):
    """What the batch queue carries besides terminal job events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["slice", "cancel", "fail", "write"]
    tenant_id: str
    batch_id: str
    start: int = Field(ge=0)
    # A `fail` slice settled without waiting for a slice still starting: its own command failed
    # for good once already (the wait ran out). Left out of the message when false.
    force: bool = False


class CountConflict(BatonError):
    """A line's count met a concurrent write on the batch item (DynamoDB's TransactionConflict):
    nothing was written, the message is retried."""

    type = "count_conflict"
    retryable = True


@dataclass(frozen=True)
class LineCount:
    """One line to count once, in `bucket`. `never_started`: the line has no job and must never
    get one (its slice never started, or died): the count also writes the line's job as ended,
    with a conditional put on the job's key, the same one that creates a job (baton.store), so
    whichever write comes first decides whether the line ran or was settled without running."""

    custom_id: str
    bucket: str
    never_started: JobRecord | None = None


@dataclass(frozen=True)
class Counted:
    """What a count did: how many lines it counted now, and whether they may be the batch's last
    (then the caller reads the batch and finishes it)."""

    counted: int
    maybe_last: bool


def _transaction_chunks(lines: list[LineCount]) -> list[list[LineCount]]:
    """Lines grouped so that each group's items (a marker each, a never-started line's job too,
    and the count) fit one TransactWriteItems: 100 items, and 4 MB (a never-started line's job
    carries its request, up to 350 KB)."""
    chunks: list[list[LineCount]] = []
    chunk: list[LineCount] = []
    items, size = 1, ITEM_OVERHEAD_BYTES  # the count
    for line in lines:
        needs = 1 + (line.never_started is not None)
        weight = ITEM_OVERHEAD_BYTES * needs
        if line.never_started is not None:
            weight += len(json.dumps(line.never_started.request, separators=(",", ":")))
        if chunk and (items + needs > MAX_TRANSACTION_ITEMS or size + weight > MAX_TRANSACTION_BYTES):
            chunks.append(chunk)
            chunk, items, size = [], 1, ITEM_OVERHEAD_BYTES
        chunk.append(line)
        items += needs
        size += weight
    if chunk:
        chunks.append(chunk)
    return chunks


class SliceStillStarting(BatonError):
    """A settling chain met a slice whose lines are still being made into jobs: it looks again
    later (the slice either finishes its hand-off or dead-letters)."""

    type = "slice_starting"
    retryable = True


@dataclass(frozen=True)
class SliceMarks:
    """What the batch item records of its slices (by index): claimed by the fan-out (`started`),
    every line a job and handed off (`handed_off`), or its command failed for good (`dead`)."""

    started: frozenset[int]
    handed_off: frozenset[int]
    dead: frozenset[int]

    @classmethod
    def of(cls, item: dict[str, Any]) -> SliceMarks:
        def marks(name: str) -> frozenset[int]:
            return frozenset(int(index) for index in item.get(name) or ())

        return cls(marks("started_slices"), marks("handed_off_slices"), marks("dead_slices"))

    def settled(self, index: int) -> bool:
        """No line of this slice becomes a job any more."""
        return index in self.handed_off or index in self.dead


def _running(item: dict[str, Any]) -> bool:
    return item["status"] == "in_progress" and not item.get("failure")


@dataclass(frozen=True)
class BatchLineEvent:
    """A batch line's terminal job event as the batch queue carries it: what counts the line."""

    tenant_id: str
    batch_id: str
    custom_id: str
    job_id: str


def batch_message_of(body: str) -> SliceCommand | BatchLineEvent | None:
    """What a batch queue message is, from its raw body (a dead letter's): a slice command, a
    line's terminal job event, or None (anything else)."""
    try:
        return SliceCommand.model_validate_json(body)
    except ValidationError:
        pass
    try:
        detail = json.loads(body).get("detail")
        metadata = detail.get("metadata")
        found = (
            detail.get("tenant_id"),
            metadata.get("batch_id"),
            metadata.get("custom_id"),
            detail.get("job_id"),
        )
    except (ValueError, AttributeError):
        return None
    if not all(isinstance(value, str) for value in found):
        return None
    tenant_id, batch_id, custom_id, job_id = found
    if job_id != line_job_id(tenant_id, batch_id, custom_id):
        return None
    return BatchLineEvent(tenant_id, batch_id, custom_id, job_id)


def _line_of_event(
    tenant_id: str, job_id: str, status: str, metadata: dict[str, str]
) -> tuple[str, LineCount] | None:
    """The batch and line a terminal job event counts, or None (not a batch's line)."""
    batch_id, custom_id = metadata.get("batch_id"), metadata.get("custom_id")
    if not batch_id or custom_id is None:
        return None
    if job_id != line_job_id(tenant_id, batch_id, custom_id):
        # metadata a client set by hand on an ordinary job: not one of the batch's lines.
        return None
    return batch_id, LineCount(custom_id, LINE_BUCKETS.get(status, "failed"))


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
        # (batch id, custom_id) counted by count_together in the current invocation.
        self._counted_together: set[tuple[str, str]] = set()

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
            # Lines not counted yet: a count conditioned on it staying above zero needs no read to
            # know it was not the last (baton.batches.BatchService._count_together).
            "remaining": len(lines),
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

    def _send(self, command: SliceCommand, *, delay_s: int = 0) -> None:
        client("sqs").send_message(
            QueueUrl=self.settings.batch_queue_url,
            MessageBody=command.model_dump_json(exclude_defaults=True),
            DelaySeconds=delay_s,
        )

    # -- the batch queue ------------------------------------------------------------------------
    def handle(self, message: Any) -> dict[str, Any]:
        """A slice command, or (anything else the queue carries) a terminal job event."""
        if isinstance(message, SliceCommand):
            return self.run_slice(message)
        detail = message.detail
        return self.run_job_event(detail.tenant_id, detail.job_id, detail.status.value, detail.metadata)

    def run_slice(self, command: SliceCommand) -> dict[str, Any]:
        """One slice of lines: turned into jobs (`slice`), or settled by a `cancel` or `fail` chain;
        then the next slice of the same kind is queued."""
        try:
            item = self._item(command.tenant_id, command.batch_id)
        except JobNotFoundError:
            return {"outcome": "gone"}
        offsets: list[int] = json.loads(item["slice_offsets"])
        index = command.start // SLICE
        if index + 1 >= len(offsets):
            return {"outcome": "past_end"}
        if command.kind == "slice":
            return self._fan_out(command, item, index, offsets)
        if command.kind == "write":
            return self._write(command, item, index, offsets)
        answer = self._settle(command, item, index, offsets, force=command.force)
        if index + 2 < len(offsets):
            self._send(command.model_copy(update={"start": command.start + SLICE, "force": False}))
        return answer

    def _fan_out(
        self, command: SliceCommand, item: dict[str, Any], index: int, offsets: list[int]
    ) -> dict[str, Any]:
        """Claim the slice (once, while the batch runs), make its lines' jobs, hand them off in
        bulk, mark the slice handed off, queue the next slice. A redelivered command finishes a
        claimed slice's hand-off (even if the batch has since stopped: its lines were promised);
        a batch that stopped claims no new slice (its cancel or fail chain settles those lines)."""
        slices = SliceMarks.of(item)
        if index in slices.dead:
            return {"outcome": "dead_slice"}
        started = 0
        if index not in slices.handed_off:
            if index not in slices.started:
                refused = self._claim(command, index)
                if refused is not None:
                    item = refused or self._item(command.tenant_id, command.batch_id)
                    slices = SliceMarks.of(item)
                    if index not in slices.started or index in slices.dead:
                        return {"outcome": "stopped", "status": item["status"]}
            started = self._start_slice(command.tenant_id, item, index, offsets)
        if _running(item) and index + 2 < len(offsets):
            self._send(command.model_copy(update={"start": command.start + SLICE}))
        return {"outcome": "slice", "started": started}

    def _claim(self, command: SliceCommand, index: int) -> dict[str, Any] | None:
        """Mark the slice started: None when this call did it; otherwise the batch as it was (or {}
        if the answer did not carry it). Only a running batch that has not failed starts a slice,
        so a settling chain knows a line without a job in an unstarted slice never gets one."""
        try:
            self._ddb.update_item(
                TableName=self.settings.jobs_table,
                Key=to_dynamo(batch_key(command.tenant_id, command.batch_id)),
                UpdateExpression="ADD started_slices :slice",
                ConditionExpression=(
                    "#status = :in_progress AND attribute_not_exists(failure) "
                    "AND NOT contains(started_slices, :index)"
                ),
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=to_dynamo(
                    {":slice": {index}, ":index": index, ":in_progress": "in_progress"}
                ),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            old: dict[str, Any] | None = error.response.get("Item")  # type: ignore[assignment]
            return from_dynamo(old) if old else {}
        return None

    def _start_slice(self, tenant_id: str, item: dict[str, Any], index: int, offsets: list[int]) -> int:
        """The slice's jobs, created one conditional write each (a line is one job, however often
        this runs) and handed off in bulk; then the slice is marked handed off."""
        batch = {"batch_id": item["batch_id"], "defaults": json.loads(item["defaults"])}
        lines = self._slice_lines(item, offsets[index], offsets[index + 1])
        records = [self._line_record(tenant_id, batch, line) for line in lines]
        started = self.jobs.store_and_start_many(records)
        self._mark(tenant_id, str(item["batch_id"]), "handed_off_slices", index)
        return len(started)

    def _line_record(self, tenant_id: str, batch: dict[str, Any], line: BatchLine) -> JobRecord:
        job_id = line_job_id(tenant_id, str(batch["batch_id"]), line.custom_id)
        return self.jobs.new_record(
            tenant_id, job_id=job_id, request=line_request(batch, line), document_key=None, source="batch"
        )

    def _mark(self, tenant_id: str, batch_id: str, marks: str, index: int) -> None:
        self._ddb.update_item(
            TableName=self.settings.jobs_table,
            Key=to_dynamo(batch_key(tenant_id, batch_id)),
            UpdateExpression="ADD #marks :slice",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames={"#marks": marks},
            ExpressionAttributeValues=to_dynamo({":slice": {index}}),
        )

    def _slice_lines(self, item: dict[str, Any], start: int, end: int) -> list[BatchLine]:
        answer = client("s3").get_object(
            Bucket=self.settings.bucket, Key=str(item["input_key"]), Range=f"bytes={start}-{end - 1}"
        )
        data = bytes(answer["Body"].read())
        return [BatchLine.model_validate_json(raw) for raw in data.splitlines() if raw.strip()]

    def _settle(
        self, command: SliceCommand, item: dict[str, Any], index: int, offsets: list[int], *, force: bool
    ) -> dict[str, Any]:
        """A `cancel` or `fail` chain's slice. A line with no job in a slice that never started (or
        whose command dead-lettered) never gets one: counted at once, as cancelled in a cancelling
        batch, else failed (batch_failed), and its job written as ended in the same transaction, so
        a late copy of the slice's command cannot make it a job afterwards (and if that copy made
        it first, the line is not counted here: its job's terminal event counts it). A slice still
        being started is waited for (retried), unless `force` (the wait ran out). Cancel: the
        lines' running jobs are cancelled (their terminal events count them). Fail: ended lines
        are counted from their jobs, in case their own count is the one that failed; running ones
        are counted by their own events."""
        tenant_id, batch_id = command.tenant_id, command.batch_id
        lines = self._slice_lines(item, offsets[index], offsets[index + 1])
        job_ids = [line_job_id(tenant_id, batch_id, line.custom_id) for line in lines]
        records = self._jobs(tenant_id, job_ids)
        slices = SliceMarks.of(item)
        may_still_start = index in slices.started and not slices.settled(index)
        if may_still_start and not force and any(job_id not in records for job_id in job_ids):
            raise SliceStillStarting(f"slice of lines from {index * SLICE} is still being started")
        cancelling = item["status"] == "cancelling"
        batch = {"batch_id": batch_id, "defaults": json.loads(item["defaults"])}
        counts: list[LineCount] = []
        cancelled = 0
        for line, job_id in zip(lines, job_ids, strict=True):
            record = records.get(job_id)
            if record is None:
                ended = self._never_started(tenant_id, batch, line, item, cancelling=cancelling)
                counts.append(LineCount(line.custom_id, ended.status.value, ended))
            elif command.kind == "cancel" and not record.is_terminal:
                cancelled += self._cancel_job(tenant_id, job_id)
            elif command.kind == "fail" and (record.is_terminal or record.status.value == "needs_review"):
                counts.append(LineCount(line.custom_id, LINE_BUCKETS.get(record.status.value, "failed")))
        counted = self._count_many(tenant_id, batch_id, counts).counted
        self._finish_if_done(tenant_id, batch_id)
        return {"outcome": command.kind, "counted": counted, "cancelled": cancelled}

    def _never_started(
        self,
        tenant_id: str,
        batch: dict[str, Any],
        line: BatchLine,
        item: dict[str, Any],
        *,
        cancelling: bool,
    ) -> JobRecord:
        """The job of a line that never started, as it is written when the line is counted: ended
        (cancelled, or failed as batch_failed) without running. GET /v1/jobs/{id} shows why."""
        try:
            record = self._line_record(tenant_id, batch, line)
        except (BatonError, ValidationError):
            # The line cannot become a request (what may have killed its slice): the ended job
            # carries its custom_id and batch_id alone.
            now = now_ms()
            record = JobRecord(
                job_id=line_job_id(tenant_id, str(batch["batch_id"]), line.custom_id),
                tenant_id=tenant_id,
                model=line.model or batch["defaults"].get("model") or self.settings.model,
                created_ms=now,
                updated_ms=now,
                expires_at=now // 1000 + self.settings.retention_days * 86_400,
                deadline_ms=now,
                metadata={"custom_id": line.custom_id, "batch_id": str(batch["batch_id"])},
                source="batch",
            )
        if cancelling:
            status = JobStatus.CANCELLED
            error = JobError(type="cancelled", message="the batch was cancelled before this request started")
        else:
            status = JobStatus.FAILED
            error = JobError(
                type=BATCH_FAILED_ERROR,
                message=f"the batch failed before this request started: {item.get('failure')}",
            )
        return record.model_copy(update={"status": status, "error": error})

    def _cancel_job(self, tenant_id: str, job_id: str) -> int:
        try:
            self.jobs.cancel(tenant_id, job_id)  # its terminal event counts the line
        except (JobConflictError, JobNotFoundError):
            return 0  # ended meanwhile (counted by its own event) or expired
        return 1

    def run_job_event(
        self, tenant_id: str, job_id: str, status: str, metadata: dict[str, str]
    ) -> dict[str, Any]:
        line = _line_of_event(tenant_id, job_id, status, metadata)
        if line is None:
            return {"outcome": "not_a_batch_job"}
        batch_id, count = line
        if (batch_id, count.custom_id) in self._counted_together:
            return {"outcome": "counted_together"}
        return self.count_line(tenant_id, batch_id, count.custom_id, count.bucket)

    def count_together(self, events: list[tuple[str, str, str, dict[str, str]]]) -> int:
        """The terminal events of one invocation (tenant, job id, status, metadata), counted
        together: one transaction per batch among them, rather than one per line. Each line then
        finds itself counted (`run_job_event`) for the rest of the invocation (`forget_counted`
        ends it). A failure here is logged and left to the line-by-line counts, which redo it
        (a line this did count is then found counted before). Returns the lines counted now."""
        groups: dict[tuple[str, str], dict[str, LineCount]] = {}
        for tenant_id, job_id, status, metadata in events:
            line = _line_of_event(tenant_id, job_id, status, metadata)
            if line is not None:
                # Copies of one event (SQS may deliver one twice in a batch): one item each.
                groups.setdefault((tenant_id, line[0]), {})[line[1].custom_id] = line[1]
        counted = 0
        for (tenant_id, batch_id), lines in groups.items():
            if len(lines) < 2:
                continue  # one line: its own count is the same transaction
            try:
                result = self._count_many(tenant_id, batch_id, list(lines.values()))
                if result.maybe_last or result.counted < len(lines):
                    self._finish_if_done(tenant_id, batch_id)
            except Exception:  # each line's own count retries it, with its retry policy
                logger.warning("counting together failed", extra={"batch_id": batch_id}, exc_info=True)
                continue
            counted += result.counted
            self._counted_together.update((batch_id, custom_id) for custom_id in lines)
        return counted

    def forget_counted(self) -> None:
        self._counted_together.clear()

    def count_line(self, tenant_id: str, batch_id: str, custom_id: str, bucket: str) -> dict[str, Any]:
        """Count one line once (marker + count in one transaction, which also says whether it
        was the batch's last line: no read), and finish the batch when it was. A line counted
        before looks too: the copy of the last line's event whose finishing failed must finish."""
        result = self._count_many(tenant_id, batch_id, [LineCount(custom_id, bucket)])
        if result.maybe_last or not result.counted:
            outcome = self._finish_if_done(tenant_id, batch_id)
            if outcome is not None:
                return {"outcome": outcome, "counted": result.counted == 1}
        return {"outcome": "counted" if result.counted else "counted_before"}

    def _count_many(self, tenant_id: str, batch_id: str, lines: list[LineCount]) -> Counted:
        """Count lines once each: each line's marker (a conditional put; and a never-started
        line's ended job, another) and the counts' ADD in one transaction of up to 100 items. A
        transaction that a line counted before cancels is redone line by line."""
        counted = 0
        maybe_last = False
        for chunk in _transaction_chunks(lines):
            result = self._count_together(tenant_id, batch_id, chunk)
            if result is None and len(chunk) > 1:
                for line in chunk:
                    one = self._count_together(tenant_id, batch_id, [line])
                    counted += one.counted if one else 0
                    maybe_last = maybe_last or bool(one and one.maybe_last)
            elif result is not None:
                counted += result.counted
                maybe_last = maybe_last or result.maybe_last
        return Counted(counted, maybe_last)

    def _count_together(self, tenant_id: str, batch_id: str, lines: list[LineCount]) -> Counted | None:
        """One transaction. The count's `remaining` goes down by the lines counted; its condition
        `remaining > n` fails only for the batch's last lines, which are then counted with no
        such condition and reported `maybe_last` (the caller reads the batch and finishes it):
        every other count takes this one request. None: a line was counted before (a redelivery),
        a never-started line's job exists after all (it ran: its own event counts it), or the
        batch is gone."""
        if not lines:
            return Counted(0, False)
        items = self._count_items(tenant_id, batch_id, lines)
        count = items[-1]["Update"]
        count["ConditionExpression"] = "remaining > :lines"
        count["ExpressionAttributeValues"][":lines"] = {"N": str(len(lines))}
        reasons = self._transact_count(batch_id, lines, items)
        if reasons is None:
            return Counted(len(lines), False)
        if not reasons or any(code != "None" for code in reasons[:-1]):
            return None  # a marker or a never-started job was there first
        # Only the count's condition failed: these are the batch's last lines (or a batch from
        # before `remaining`, or one that is gone: the plain condition below tells).
        if self._transact_count(batch_id, lines, self._count_items(tenant_id, batch_id, lines)) is not None:
            return None
        return Counted(len(lines), True)

    def _transact_count(
        self, batch_id: str, lines: list[LineCount], items: list[dict[str, Any]]
    ) -> list[str] | None:
        """Run a count's transaction: None when it committed, else why DynamoDB cancelled it (a
        code per item, "None" for the items that passed). A concurrent write on the batch item
        (TransactionConflict) wrote nothing: CountConflict, so the message is retried."""
        try:
            self._ddb.transact_write_items(TransactItems=items)
            return None
        except ClientError as error:
            if error.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            reasons = [reason.get("Code", "None") for reason in error.response.get("CancellationReasons", [])]
        if "TransactionConflict" in reasons:
            raise CountConflict(f"counting {len(lines)} line(s) of batch {batch_id} met a concurrent write")
        return reasons

    def _count_items(self, tenant_id: str, batch_id: str, lines: list[LineCount]) -> list[dict[str, Any]]:
        """The transaction's items: each line's marker (and a never-started line's ended job),
        then the counts' ADD (last) on the batch item, on condition that it exists."""
        table = self.settings.jobs_table
        expires_at = now_ms() // 1000 + self.settings.retention_days * 86_400
        buckets: dict[str, int] = {}
        for line in lines:
            buckets[line.bucket] = buckets.get(line.bucket, 0) + 1
        names = {f"#b{i}": bucket for i, bucket in enumerate(sorted(buckets))}
        values: dict[str, Any] = {f":n{i}": buckets[bucket] for i, bucket in enumerate(sorted(buckets))}
        adds = ", ".join(f"{name} {value}" for name, value in zip(names, values, strict=True))
        values[":counted"] = -len(lines)
        items: list[dict[str, Any]] = []
        for line in lines:
            marker = {
                "pk": f"BATCH#{batch_id}",
                "sk": f"LINE#{line.custom_id}",
                "bucket": line.bucket,
                "expires_at": expires_at,
            }
            items.append(
                {
                    "Put": {
                        "TableName": table,
                        "Item": to_dynamo(marker),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
            )
            if line.never_started is not None:
                # A job item as baton.store creates one, already ended: not in the open-jobs index.
                job = {**line.never_started.to_item(), **listing_keys(line.never_started)}
                items.append(
                    {
                        "Put": {
                            "TableName": table,
                            "Item": to_dynamo(job),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    }
                )
        items.append(
            {
                "Update": {
                    "TableName": table,
                    "Key": to_dynamo(batch_key(tenant_id, batch_id)),
                    "UpdateExpression": f"ADD remaining :counted, {adds}",
                    "ConditionExpression": "attribute_exists(pk)",
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": to_dynamo(values),
                }
            }
        )
        return items

    def _finish_if_done(self, tenant_id: str, batch_id: str) -> str | None:
        """Finish the batch if every line is counted: "batch_finished", "batch_writing" (a batch
        of more than WRITE_SLICES slices writes its files through the write chain), "gone", or
        None (lines left)."""
        try:
            item = self._item(tenant_id, batch_id)
        except JobNotFoundError:
            return "gone"
        done = int(item["completed"]) + int(item["failed"]) + int(item["cancelled"])
        if done < int(item["total"]) or item["status"] in TERMINAL:
            return None
        if len(json.loads(item["slice_offsets"])) - 1 <= WRITE_SLICES:
            self.finish(item, tenant_id)
            return "batch_finished"
        # Copies of this command (two last counts at once, a redelivery) write the same parts.
        self._send(SliceCommand(kind="write", tenant_id=tenant_id, batch_id=batch_id, start=0))
        return "batch_writing"

    def finish(self, item: dict[str, Any], tenant_id: str) -> None:
        """Write output.jsonl / errors.jsonl (every input line once, in input order) in this
        invocation, end the batch, announce it. Safe to run twice: the files come out the same,
        one status write wins."""
        batch_id = str(item["batch_id"])
        output, errors = self._entries(tenant_id, item, self._all_lines(item))
        output_key = self.blobs.batch_file_key(tenant_id, batch_id, "output")
        errors_key = self.blobs.batch_file_key(tenant_id, batch_id, "errors")
        self.blobs.write(output_key, output, content_type="application/x-ndjson")
        self.blobs.write(errors_key, errors, content_type="application/x-ndjson")
        self._end(item, tenant_id, output_key, errors_key)

    def _write(
        self, command: SliceCommand, item: dict[str, Any], index: int, offsets: list[int]
    ) -> dict[str, Any]:
        """The write chain (a batch of more than WRITE_SLICES slices, so no invocation holds
        50,000 lines' results): this command's WRITE_SLICES slices' entries as two part objects,
        then the next command; the last one joins the parts, in order, into output.jsonl and
        errors.jsonl (a multipart upload when they are large), ends the batch and deletes them."""
        tenant_id, batch_id = command.tenant_id, command.batch_id
        if item["status"] in TERMINAL:
            return {"outcome": "written_before"}
        last = min(index + WRITE_SLICES, len(offsets) - 1)
        output, errors = self._entries(
            tenant_id, item, self._slice_lines(item, offsets[index], offsets[last])
        )
        group = index // WRITE_SLICES
        self.blobs.write(
            _part_key(tenant_id, batch_id, "output", group), output, content_type="application/x-ndjson"
        )
        self.blobs.write(
            _part_key(tenant_id, batch_id, "errors", group), errors, content_type="application/x-ndjson"
        )
        if last < len(offsets) - 1:
            self._send(command.model_copy(update={"start": last * SLICE}))
            return {"outcome": "write", "part": group}
        keys: dict[str, str] = {}
        parts: list[str] = []
        for name in ("output", "errors"):
            keys[name] = self.blobs.batch_file_key(tenant_id, batch_id, name)
            names = [_part_key(tenant_id, batch_id, name, number) for number in range(group + 1)]
            self._join(keys[name], names)
            parts.extend(names)
        self._end(item, tenant_id, keys["output"], keys["errors"])
        s3 = client("s3")
        for start in range(0, len(parts), 1000):
            s3.delete_objects(
                Bucket=self.settings.bucket,
                Delete={"Objects": [{"Key": key} for key in parts[start : start + 1000]], "Quiet": True},
            )
        return {"outcome": "batch_finished", "parts": group + 1}

    def _join(self, key: str, parts: list[str]) -> None:
        """Parts, in order, into one object: one PUT when small, else a multipart upload whose
        parts are at least JOIN_PART_BYTES (S3's minimum is 5 MiB but for the last). An upload
        that fails is aborted (S3 bills the parts of an unfinished upload until then; the command
        is retried and uploads again); one a crash left behind, the bucket's lifecycle rule aborts."""
        s3 = client("s3")
        bucket = self.settings.bucket
        buffer = bytearray()
        upload_id: str | None = None
        uploaded: list[dict[str, Any]] = []

        def upload_buffer() -> None:
            number = len(uploaded) + 1
            answer = s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=bytes(buffer)
            )
            uploaded.append({"PartNumber": number, "ETag": answer["ETag"]})
            buffer.clear()

        try:
            for part in parts:
                buffer += s3.get_object(Bucket=bucket, Key=part)["Body"].read()
                if len(buffer) < JOIN_PART_BYTES:
                    continue
                if upload_id is None:
                    upload_id = str(
                        s3.create_multipart_upload(
                            Bucket=bucket, Key=key, ContentType="application/x-ndjson"
                        )["UploadId"]
                    )
                upload_buffer()
            if upload_id is None:
                self.blobs.write(key, bytes(buffer), content_type="application/x-ndjson")
                return
            if buffer:
                upload_buffer()
            s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": uploaded}
            )
        except BaseException:
            if upload_id is not None:
                try:
                    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                except Exception:  # the lifecycle rule aborts it later; the first error is the one
                    logger.exception("a failed multipart upload was not aborted", extra={"key": key})
            raise

    def _entries(self, tenant_id: str, item: dict[str, Any], lines: list[BatchLine]) -> tuple[bytes, bytes]:
        """The output.jsonl and errors.jsonl entries of these lines (in their order), each line in
        exactly one of them, decided by its job."""
        batch_id = str(item["batch_id"])
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
        return b"".join(output), b"".join(errors)

    def _end(self, item: dict[str, Any], tenant_id: str, output_key: str, errors_key: str) -> None:
        """The batch's files are written: end it (one status write wins) and announce it."""
        batch_id = str(item["batch_id"])
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

    # -- a batch that cannot be carried out ------------------------------------------------------
    def abandon(self, tenant_id: str, batch_id: str, reason: str, *, dead_slice: int | None = None) -> str:
        """The batch cannot be carried out (a slice's command, or a line's count, failed for good):
        record why (the first reason stays) and which slice is dead, and start the `fail` chain
        once. It counts every line not counted yet; the last count finishes the batch as `failed`.
        Returns "batch_failing", or "batch_already_ended" (terminal, or gone)."""
        update = "SET failure = if_not_exists(failure, :reason)"
        values: dict[str, Any] = {
            ":reason": reason[:500],
            ":in_progress": "in_progress",
            ":cancelling": "cancelling",
        }
        if dead_slice is not None:
            update += " ADD dead_slices :slice"
            values[":slice"] = {dead_slice}
        try:
            answer = self._ddb.update_item(
                TableName=self.settings.jobs_table,
                Key=to_dynamo(batch_key(tenant_id, batch_id)),
                UpdateExpression=update,
                ConditionExpression="#status IN (:in_progress, :cancelling)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=to_dynamo(values),
                ReturnValues="ALL_OLD",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return "batch_already_ended"
        before = from_dynamo(answer.get("Attributes") or {})
        if not before.get("failure"):
            logger.error(
                "batch failing", extra={"batch_id": batch_id, "reason": reason, "dead_slice": dead_slice}
            )
            self._send(SliceCommand(kind="fail", tenant_id=tenant_id, batch_id=batch_id, start=0))
        return "batch_failing"

    def give_up(self, command: SliceCommand, reason: str) -> str:
        """A slice command that failed for good (permanently, past its attempts, or dead-lettered).
        A `fail` chain's own slice is queued again, to be settled without waiting for a slice still
        starting (the wait ran out), and the chain goes on from there: the settling (and perhaps
        the batch's files) runs in the batch function, never in the dead-letter function's short
        timeout. Any other fails the batch."""
        if command.kind == "write":
            # The lines are all counted: only the files are missing. Tried again later.
            logger.error(
                "batch files cannot be written", extra={"batch_id": command.batch_id, "reason": reason}
            )
            self._send(command, delay_s=900)
            return "batch_writing"
        if command.kind == "fail":
            if command.force:
                # Even settling without waiting failed for good: not a slice still starting but
                # the store itself. Tried again later, not at once (no hot loop).
                logger.error(
                    "batch fail slice cannot be settled",
                    extra={"batch_id": command.batch_id, "reason": reason},
                )
            self._send(command.model_copy(update={"force": True}), delay_s=900 if command.force else 0)
            return "batch_failing"
        dead = command.start // SLICE if command.kind == "slice" else None
        return self.abandon(command.tenant_id, command.batch_id, reason, dead_slice=dead)

    def dead_lettered(self, message: SliceCommand | BatchLineEvent, *, archive_id: str, attempts: int) -> str:
        """A batch queue message that crashed its worker `attempts` times (the dead-letter
        function consumes the batch DLQ): the batch fails as if its step had failed for good."""
        if isinstance(message, SliceCommand):
            what = {"slice": "slice", "cancel": "cancel slice", "fail": "fail slice", "write": "write"}[
                message.kind
            ]
            reason = (
                f"the {what} of lines from {message.start} failed {attempts} times (dead letter {archive_id})"
            )
            return self.give_up(message, reason)
        reason = f"the count of line {message.custom_id!r} failed {attempts} times (dead letter {archive_id})"
        return self.abandon(message.tenant_id, message.batch_id, reason)

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
