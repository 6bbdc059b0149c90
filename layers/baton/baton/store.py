"""JobStore: every job state change is one conditional DynamoDB write.

Writes are conditioned on the job existing, not being terminal and still being at the version
the caller was scheduled for, so a terminal state is never overwritten and stale work is dropped.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from baton.aws import client, from_dynamo, to_dynamo
from baton.clock import now_ms
from baton.errors import InvalidRequestError, JobConflictError, JobNotFoundError, StaleWriteError
from baton.models import JobStatus, Step
from baton.records import (
    DocumentInfo,
    JobError,
    JobRecord,
    JobResult,
    ProviderCall,
    Usage,
    job_key,
    response_key,
)

# What a state change may start from: a running job, or (review, cancel) one waiting for review.
_RUNNING = (JobStatus.PENDING, JobStatus.PROCESSING)
_NOT_TERMINAL = (*_RUNNING, JobStatus.NEEDS_REVIEW)
_OPEN = tuple(status.value for status in _RUNNING)
OPEN_JOBS_INDEX = "open-jobs"
OPEN_SHARDS = 8
OVERDUE_PAGE = 100  # index entries per query page (keys only: small)


def open_shard(job_id: str) -> str:
    """Jobs that are not terminal carry this in the sparse open-jobs index (spread over shards)."""
    return f"open#{zlib.crc32(job_id.encode()) % OPEN_SHARDS}"


def due_in_shards(
    table_name: str,
    index_name: str,
    *,
    shards: list[str],
    shard_attribute: str,
    due_attribute: str,
    before: int,
    limit: int,
    page_size: int,
) -> Iterator[dict[str, Any]]:
    """Keys of the items of a sparse, sharded index whose `due_attribute` is before `before`: at
    most `limit`, oldest first within each shard, one page per shard in turn (a backlog in one
    shard never starves the others). Pages follow LastEvaluatedKey, so every due item is reachable
    however many there are."""
    ddb = client("dynamodb")
    start_keys: dict[str, dict[str, Any] | None] = dict.fromkeys(shards)
    found = 0
    while start_keys and found < limit:
        for shard in list(start_keys):
            query: dict[str, Any] = {
                "TableName": table_name,
                "IndexName": index_name,
                "KeyConditionExpression": "#shard = :shard AND #due < :before",
                "ExpressionAttributeNames": {"#shard": shard_attribute, "#due": due_attribute},
                "ExpressionAttributeValues": to_dynamo({":shard": shard, ":before": before}),
                "Limit": min(page_size, limit - found),
            }
            if start_keys[shard] is not None:
                query["ExclusiveStartKey"] = start_keys[shard]
            answer = ddb.query(**query)
            for item in answer.get("Items", []):
                found += 1
                yield from_dynamo(item)
            start_keys[shard] = answer.get("LastEvaluatedKey")
            if start_keys[shard] is None:
                del start_keys[shard]  # this shard has nothing more that is due
            if found >= limit:
                return


_JSON_FIELDS = set(JobRecord.JSON_FIELDS)

# GET /v1/jobs reads two sparse indexes (only job items carry their keys), newest first:
# every job of a tenant, and a tenant's jobs in one status (kept in step with each status change).
JOBS_BY_TENANT_INDEX = "jobs-by-tenant"
JOBS_BY_TENANT_STATUS_INDEX = "jobs-by-tenant-status"


def tenant_status(tenant_id: str, status: JobStatus | str) -> str:
    return f"{tenant_id}#{JobStatus(status).value}"


def listing_keys(record: JobRecord) -> dict[str, str]:
    """The index attributes a job item carries so that GET /v1/jobs finds it."""
    return {
        "job_tenant": record.tenant_id,
        "job_tenant_status": tenant_status(record.tenant_id, record.status),
    }


@dataclass(frozen=True)
class JobPage:
    jobs: list[JobRecord]
    cursor: str | None


def encode_cursor(last_key: dict[str, Any]) -> str:
    plain = from_dynamo(last_key)
    position = {"job_id": str(plain["sk"]).removeprefix("JOB#"), "created_ms": int(plain["created_ms"])}
    return base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, tenant_id: str, status: JobStatus | None) -> dict[str, Any]:
    """The index position a cursor stands for, rebuilt for this tenant only: a cursor cannot reach
    another tenant's partition, and a tampered one is a 422, never a DynamoDB error."""
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        job_id = str(position["job_id"])
        created_ms = int(position["created_ms"])
        if not job_id.startswith("job_") or len(job_id) > 64 or created_ms < 0:
            raise ValueError(job_id)
    except (ValueError, TypeError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidRequestError("cursor: not a cursor from a previous page", field="cursor") from error
    start: dict[str, Any] = {**job_key(tenant_id, job_id), "created_ms": created_ms}
    if status is None:
        start["job_tenant"] = tenant_id
    else:
        start["job_tenant_status"] = tenant_status(tenant_id, status)
    return to_dynamo(start)


class JobStore:
    def __init__(self, table_name: str) -> None:
        self.table_name = table_name

    @property
    def _ddb(self) -> Any:
        return client("dynamodb")

    # -- reads -------------------------------------------------------------------------------
    def get(self, tenant_id: str, job_id: str) -> JobRecord:
        """The job, or JobNotFoundError for unknown, foreign or expired ids (TTL may lag)."""
        answer = self._ddb.get_item(
            TableName=self.table_name, Key=to_dynamo(job_key(tenant_id, job_id)), ConsistentRead=True
        )
        item = answer.get("Item")
        if not item:
            raise JobNotFoundError(f"job {job_id} not found")
        record = JobRecord.from_item(from_dynamo(item))
        if record.expires_at * 1000 < now_ms():
            raise JobNotFoundError(f"job {job_id} not found")
        return record

    def page(self, tenant_id: str, *, status: JobStatus | None, limit: int, cursor: str | None) -> JobPage:
        """A page of the tenant's jobs, newest first, from an index (never a scan)."""
        query: dict[str, Any] = {
            "TableName": self.table_name,
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if status is None:
            query["IndexName"] = JOBS_BY_TENANT_INDEX
            query["KeyConditionExpression"] = "job_tenant = :key"
            query["ExpressionAttributeValues"] = to_dynamo({":key": tenant_id})
        else:
            query["IndexName"] = JOBS_BY_TENANT_STATUS_INDEX
            query["KeyConditionExpression"] = "job_tenant_status = :key"
            query["ExpressionAttributeValues"] = to_dynamo({":key": tenant_status(tenant_id, status)})
        if cursor:
            query["ExclusiveStartKey"] = decode_cursor(cursor, tenant_id, status)
        answer = self._ddb.query(**query)
        now = now_ms()
        jobs = [JobRecord.from_item(from_dynamo(item)) for item in answer.get("Items", [])]
        # TTL deletes lag (and never happen in moto): an expired job is gone, as GET says.
        jobs = [job for job in jobs if job.expires_at * 1000 >= now]
        last = answer.get("LastEvaluatedKey")
        return JobPage(jobs=jobs, cursor=encode_cursor(last) if last else None)

    # -- writes ------------------------------------------------------------------------------
    def create(self, record: JobRecord) -> bool:
        """Put a new job; False if a job with this id already exists (idempotent replays)."""
        item = {**record.to_item(), "open_shard": open_shard(record.job_id), **listing_keys(record)}
        try:
            self._ddb.put_item(
                TableName=self.table_name,
                Item=to_dynamo(item),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def start_step(self, record: JobRecord, step: Step, *, progress: int) -> JobRecord:
        now = now_ms()
        started = dict(record.step_started_ms)
        started.setdefault(step.value, now)
        timings = record.timings.model_copy()
        if timings.queued_ms is None:
            timings.queued_ms = now - record.created_ms
        return self._transition(
            record,
            {
                "status": JobStatus.PROCESSING.value,
                "current_step": step.value,
                "progress": max(progress, record.progress),
                "step_started_ms": started,
                "timings": timings.model_dump(),
            },
        )

    def complete_extract(
        self,
        record: JobRecord,
        *,
        text_key: str,
        progress: int,
        document: DocumentInfo,
        chunk_levels: list[int] | None = None,
    ) -> JobRecord:
        """The text is stored; a chunked document also moves on to the infer step here (its
        chunks are answered in parallel, so no single infer command starts the step)."""
        now = now_ms()
        timings = record.timings.model_copy()
        timings.extract_ms = now - record.step_started_ms.get(Step.EXTRACT.value, now)
        changes: dict[str, Any] = {
            "text_key": text_key,
            "progress": progress,
            "timings": timings.model_dump(),
            "document": document.model_dump(),
        }
        if chunk_levels:
            changes["chunk_levels"] = chunk_levels
            changes["current_step"] = Step.INFER.value
            changes["step_started_ms"] = {**record.step_started_ms, Step.INFER.value: now}
        return self._transition(record, changes)

    def add_chunk_level(self, record: JobRecord, chunk_levels: list[int]) -> JobRecord:
        """The answers of the last level do not fit one call: one more level of combining."""
        return self._transition(record, {"chunk_levels": chunk_levels})

    def mark_chunk_answered(self, record: JobRecord, *, level: int, chunk: int, total: int) -> int:
        """Add `chunk` to the level's set of answered chunks; returns how many are answered.

        A set, not a counter: a redelivered chunk adds itself again without counting twice, so
        exactly the chunk that completes the set (and any redelivery of it) sees `total`."""
        name = f"chunks_answered_{level}"
        try:
            answer = self._ddb.update_item(
                TableName=self.table_name,
                Key=to_dynamo(job_key(record.tenant_id, record.job_id)),
                UpdateExpression="ADD #answered :chunk",
                ConditionExpression="#status IN (:pending, :processing) AND #version = :version",
                ExpressionAttributeNames={
                    "#answered": name,
                    "#status": "status",
                    "#version": "version",
                },
                ExpressionAttributeValues=to_dynamo(
                    {
                        ":chunk": {chunk},
                        ":pending": _OPEN[0],
                        ":processing": _OPEN[1],
                        ":version": record.version,
                    }
                ),
                ReturnValues="ALL_NEW",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            raise StaleWriteError(f"job {record.job_id} moved on; chunk {level}/{chunk} dropped") from None
        answered = len(from_dynamo(answer["Attributes"]).get(name, set()))
        if level == 0 and total > 1:
            self._raise_progress(record, 40 + 50 * answered // total)
        return answered

    def _raise_progress(self, record: JobRecord, progress: int) -> None:
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_dynamo(job_key(record.tenant_id, record.job_id)),
                UpdateExpression="SET #progress = :progress, #updated = :now",
                ConditionExpression="#status IN (:pending, :processing) AND #progress < :progress",
                ExpressionAttributeNames={
                    "#progress": "progress",
                    "#status": "status",
                    "#updated": "updated_ms",
                },
                ExpressionAttributeValues=to_dynamo(
                    {
                        ":progress": progress,
                        ":now": now_ms(),
                        ":pending": _OPEN[0],
                        ":processing": _OPEN[1],
                    }
                ),
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    def schedule_tools(self, record: JobRecord, *, usage: Usage) -> JobRecord:
        """The model asked for tools: the job moves to the tool step (same depth)."""
        return self._transition(record, {"current_step": Step.TOOL.value, "usage": usage.model_dump()})

    def advance_depth(self, record: JobRecord) -> JobRecord:
        """Tool results are in: the next inference is one hop deeper (conditional on this depth)."""
        return self._transition(record, {"depth": record.depth + 1, "current_step": Step.INFER.value})

    def mark_needs_review(
        self,
        record: JobRecord,
        error: JobError,
        *,
        usage: Usage,
        result: JobResult | None,
        resume_step: Step | None,
        review_window_ms: int,
    ) -> JobRecord:
        """Stop for a person. The job stays in the open-jobs index with the review's deadline, so
        the sweeper fails it as review_expired if nobody resolves it; its item outlives that."""
        now = now_ms()
        timings = record.timings.model_copy()
        timings.total_ms = now - record.created_ms
        review_deadline = now + review_window_ms
        retention_s = record.expires_at - record.created_ms // 1000
        changes: dict[str, Any] = {
            "status": JobStatus.NEEDS_REVIEW.value,
            "error": error.model_dump(),
            "usage": usage.model_dump(),
            "timings": timings.model_dump(),
            "deadline_ms": review_deadline,
            # Kept a full retention past the review's end, like any job past its end.
            "expires_at": max(record.expires_at, review_deadline // 1000 + retention_s),
        }
        if resume_step is not None:
            changes["resume_step"] = resume_step.value
        if result is not None:
            changes["result"] = result.model_dump(exclude_none=True)
        return self._transition(record, changes)

    def resume_after_review(
        self,
        record: JobRecord,
        *,
        max_depth: int,
        max_total_tokens: int,
        deadline_ms: int,
    ) -> JobRecord:
        """Approved: running again from where it stopped, as a new version (commands issued for the
        old one are discarded)."""
        assert record.resume_step is not None
        return self._transition(
            record,
            {
                "status": JobStatus.PROCESSING.value,
                "current_step": record.resume_step.value,
                "version": record.version + 1,
                "approved_max_depth": max_depth,
                "approved_max_total_tokens": max_total_tokens,
                "deadline_ms": deadline_ms,
            },
            from_statuses=(JobStatus.NEEDS_REVIEW,),
            remove=("error", "resume_step"),
        )

    def complete_after_review(self, record: JobRecord) -> JobRecord:
        """Approved, and nothing was left to run (the budget guard stopped a final answer)."""
        timings = record.timings.model_copy()
        timings.total_ms = now_ms() - record.created_ms
        return self._transition(
            record,
            {"status": JobStatus.COMPLETED.value, "progress": 100, "timings": timings.model_dump()},
            from_statuses=(JobStatus.NEEDS_REVIEW,),
            remove=("error",),
        )

    def overdue(self, now: int, *, limit: int, page_size: int | None = None) -> Iterator[tuple[str, str]]:
        """(tenant_id, job_id) of open jobs whose deadline has passed, from the sparse index: at
        most `limit`, oldest deadline first within each shard (see `due_in_shards`)."""
        for keys in due_in_shards(
            self.table_name,
            OPEN_JOBS_INDEX,
            shards=[f"open#{shard}" for shard in range(OPEN_SHARDS)],
            shard_attribute="open_shard",
            due_attribute="deadline_ms",
            before=now,
            limit=limit,
            page_size=page_size or OVERDUE_PAGE,
        ):
            yield str(keys["pk"]).removeprefix("TENANT#"), str(keys["sk"]).removeprefix("JOB#")

    def leave_open_index(self, tenant_id: str, job_id: str) -> None:
        """Take a job that can no longer be read (expired, TTL not yet applied) off the open-jobs
        index, so that it never again takes a place in the sweeper's bounded run."""
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_dynamo(job_key(tenant_id, job_id)),
                UpdateExpression="REMOVE open_shard",
                ConditionExpression="attribute_exists(pk)",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    def mark_completed(self, record: JobRecord, *, result: JobResult, usage: Usage) -> JobRecord:
        now = now_ms()
        timings = record.timings.model_copy()
        timings.infer_ms = now - record.step_started_ms.get(Step.INFER.value, now)
        timings.total_ms = now - record.created_ms
        return self._transition(
            record,
            {
                "status": JobStatus.COMPLETED.value,
                "progress": 100,
                "result": result.model_dump(exclude_none=True),
                "usage": usage.model_dump(),
                "timings": timings.model_dump(),
            },
        )

    def mark_failed(
        self, record: JobRecord, error: JobError, *, from_statuses: tuple[JobStatus, ...] = _RUNNING
    ) -> JobRecord:
        timings = record.timings.model_copy()
        timings.total_ms = now_ms() - record.created_ms
        return self._transition(
            record,
            {"status": JobStatus.FAILED.value, "error": error.model_dump(), "timings": timings.model_dump()},
            from_statuses=from_statuses,
        )

    def cancel(self, tenant_id: str, job_id: str) -> JobRecord:
        """Cancel whatever version is current; a terminal job answers JobConflictError."""
        record = self.get(tenant_id, job_id)
        if record.is_terminal:
            raise JobConflictError(f"job {job_id} is already {record.status.value}")
        timings = record.timings.model_copy()
        timings.total_ms = now_ms() - record.created_ms
        try:
            return self._transition(
                record,
                {
                    "status": JobStatus.CANCELLED.value,
                    "error": JobError(type="cancelled", message="cancelled by the client").model_dump(),
                    "timings": timings.model_dump(),
                },
                from_statuses=_NOT_TERMINAL,
            )
        except StaleWriteError:
            # It moved on between our read and write: report what it is now.
            latest = self.get(tenant_id, job_id)
            if latest.is_terminal:
                raise JobConflictError(f"job {job_id} is already {latest.status.value}") from None
            return self.cancel(tenant_id, job_id)

    # -- background responses ------------------------------------------------------------------
    def attach_response(self, record: JobRecord, call: ProviderCall) -> bool:
        """Store the provider's response id on the job's current step (one conditional write).
        Alone: until it lands a retry cannot find the response and pays for another, so nothing
        waits in front of it; the webhook's pointer (`point_to_response`) comes after.
        False when the job moved on (cancelled, superseded) or this step already has another
        response: then the caller's response is surplus and must be cancelled. The same call
        again is stored (True): botocore resends a write whose answer it lost, and that write may
        have landed."""
        assert call.response_id is not None
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_dynamo(job_key(record.tenant_id, record.job_id)),
                UpdateExpression="SET provider_call = :call, provider_step = :step, updated_ms = :now",
                ConditionExpression=(
                    "attribute_exists(pk) AND #status IN (:pending, :processing)"
                    " AND #version = :version AND #depth = :depth"
                    " AND (attribute_not_exists(provider_step) OR provider_step <> :step"
                    " OR provider_call = :call)"
                ),
                ExpressionAttributeNames={"#status": "status", "#version": "version", "#depth": "depth"},
                ExpressionAttributeValues=to_dynamo(
                    {
                        ":call": call.model_dump_json(),
                        ":step": call.step,
                        ":now": now_ms(),
                        ":pending": _OPEN[0],
                        ":processing": _OPEN[1],
                        ":version": record.version,
                        ":depth": record.depth,
                    }
                ),
            )
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def point_to_response(self, record: JobRecord, call: ProviderCall) -> None:
        """The pointer from a response id to its job: the provider's webhook carries only the id.
        A job without it is still resumed by its polls; writing it again writes the same item."""
        assert call.response_id is not None
        pointer = {
            **response_key(call.response_id),
            "tenant_id": record.tenant_id,
            "job_id": record.job_id,
            "step": call.step,
            "expires_at": record.expires_at,
        }
        self._ddb.put_item(TableName=self.table_name, Item=to_dynamo(pointer))

    def job_of_response(self, response_id: str) -> tuple[str, str] | None:
        """(tenant_id, job_id) of a stored provider response; None when it is not Baton's."""
        answer = self._ddb.get_item(
            TableName=self.table_name, Key=to_dynamo(response_key(response_id)), ConsistentRead=True
        )
        item = answer.get("Item")
        if not item:
            return None
        pointer = from_dynamo(item)
        return str(pointer["tenant_id"]), str(pointer["job_id"])

    def record_provider_call(
        self, record: JobRecord, call: ProviderCall, *, usage: Usage | None = None
    ) -> None:
        """What became of the provider call (cancelled at the provider...), written onto the job
        whatever its state (a cancelled job learns that its response was cancelled too), with
        the usage of a call cut short when given."""
        values: dict[str, Any] = {":call": call.model_dump_json()}
        update = "SET provider_call = :call"
        if usage is not None:
            values[":usage"] = usage.model_dump_json()
            update += ", #usage = :usage"
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_dynamo(job_key(record.tenant_id, record.job_id)),
                UpdateExpression=update,
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues=to_dynamo(values),
                **({"ExpressionAttributeNames": {"#usage": "usage"}} if usage is not None else {}),
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    def mark_handed_off(self, record: JobRecord) -> None:
        """Note that the first stage command is queued (not a state change: no version bump)."""
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_dynamo(job_key(record.tenant_id, record.job_id)),
                UpdateExpression="SET handed_off = :true",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues=to_dynamo({":true": True}),
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    def record_notification(self, record: JobRecord, *, notify_ms: int) -> None:
        """Timing of webhook delivery; written onto the terminal job without changing its state."""
        timings = record.timings.model_copy()
        timings.notify_ms = notify_ms
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_dynamo(job_key(record.tenant_id, record.job_id)),
                UpdateExpression="SET #timings = :timings",
                ConditionExpression="#status = :status",
                ExpressionAttributeNames={"#timings": "timings", "#status": "status"},
                ExpressionAttributeValues=to_dynamo(
                    {":timings": json.dumps(timings.model_dump()), ":status": record.status.value}
                ),
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    # -- the one conditional write -------------------------------------------------------------
    def _transition(
        self,
        record: JobRecord,
        changes: dict[str, Any],
        *,
        from_statuses: tuple[JobStatus, ...] = _RUNNING,
        remove: tuple[str, ...] = (),
    ) -> JobRecord:
        now = now_ms()
        values: dict[str, Any] = {"updated_ms": now, **changes}
        if "status" in values:
            values["job_tenant_status"] = tenant_status(record.tenant_id, values["status"])
        names = {f"#{name}": name for name in (*values, *remove)}
        names.update({"#status": "status", "#version": "version", "#depth": "depth"})
        attribute_values = {
            f":{name}": (json.dumps(value, separators=(",", ":")) if name in _JSON_FIELDS else value)
            for name, value in values.items()
        }
        allowed = {f":from_{index}": status.value for index, status in enumerate(from_statuses)}
        attribute_values.update(
            {**allowed, ":expected_version": record.version, ":expected_depth": record.depth}
        )
        update = "SET " + ", ".join(f"#{name} = :{name}" for name in values)
        removed = [f"#{name}" for name in remove]
        if JobStatus(values.get("status", record.status.value)).is_terminal:
            removed.append("open_shard")  # leaves the open-jobs index: nothing left to sweep
        if removed:
            update += " REMOVE " + ", ".join(removed)
        condition = (
            f"attribute_exists(pk) AND #status IN ({', '.join(allowed)})"
            " AND #version = :expected_version AND #depth = :expected_depth"
        )
        try:
            answer = self._ddb.update_item(
                TableName=self.table_name,
                Key=to_dynamo(job_key(record.tenant_id, record.job_id)),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=to_dynamo(attribute_values),
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            old: dict[str, Any] | None = error.response.get("Item")  # type: ignore[assignment]
            state = from_dynamo(old).get("status", "missing") if old else "missing"
            raise StaleWriteError(
                f"job {record.job_id} is {state}; write for version {record.version} dropped"
            ) from None
        return JobRecord.from_item(from_dynamo(answer["Attributes"]))
