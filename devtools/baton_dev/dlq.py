"""Dead letters (`baton dlq`): the archive of the job steps' dead letters, and the DLQs themselves.

The job steps' DLQs (extract, infer, tool) and the batch DLQ are consumed by the dead-letter
function as messages arrive: each one fails its job as `dead_lettered` (a batch message: its
batch, as `failed`) and is archived in S3 under
`dead-letters/<stage>/<date>/<message id>.json` (baton.deadletters). `list`, `show` and
`redrive` of an archive id read that archive. A redrive puts the command back on its stage's
queue only while its job still waits for it; a job the dead letter failed is finished and never
changes: the redrive is refused and names `POST /v1/jobs/{id}/rerun`, which runs it again as a
new job.

The other DLQs (ingest, notify: no job to fail) keep their messages; `queues`, and `show` /
`redrive` of a queue name, work on them directly. Plain functions over boto3 clients, so that
they run the same against the local stack (moto), LocalStack or AWS, and are testable with moto's
`mock_aws`.

Every template queue `XQueue` has its dead-letter queue `XDeadLetterQueue` (template.yaml): the
pairing is by logical id, as the local state file (`queues`) and the stack outputs
(`XQueueUrl`, `XDeadLetterQueueUrl`) both name them.

Peeking is a receive: SQS has no read-only look. `peek` receives with a short visibility timeout
(so that successive receives return different messages), then makes every received message
visible again at once; nothing is deleted. Each peek still adds one to the
`ApproximateReceiveCount` of every message it saw (harmless on a DLQ, which has no redrive
policy of its own), and if the process dies mid-peek the messages reappear after `hide_seconds`.

Redriving uses SQS's own `StartMessageMoveTask` when the endpoint implements it. moto does not
(it answers HTTP 500): then messages are received, sent to the destination with the same body
and message attributes, and deleted from the DLQ only once the send succeeded: at-least-once,
a message may be duplicated (if a delete fails) but never lost.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, cast

from botocore.exceptions import BotoCoreError, ClientError

from baton.deadletters import ARCHIVE_PREFIX, ArchivedDeadLetter, archive_key
from baton.errors import JobNotFoundError
from baton.store import JobStore

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef, SendMessageBatchRequestEntryTypeDef

logger = logging.getLogger("baton.dlq")

DLQ_SUFFIX = "DeadLetterQueue"
SOURCE_SUFFIX = "Queue"
# Keep one SendMessageBatch well under SQS's limit on a batch's total payload.
BATCH_PAYLOAD_BYTES = 256 * 1024
COMMAND_FIELDS = frozenset({"job_id", "tenant_id", "step", "version", "depth"})
# Error codes of an endpoint that does not implement StartMessageMoveTask (LocalStack, ElasticMQ,
# older emulators). moto's server crashes instead: HTTP 500 whose "code" is the status itself.
UNSUPPORTED_CODES = frozenset(
    {
        "NotImplemented",
        "NotImplementedException",
        "UnsupportedOperation",
        "AWS.SimpleQueueService.UnsupportedOperation",
        "InvalidAction",
        "UnknownOperationException",
    }
)
MOVE_TASK_ACTIVE = frozenset({"RUNNING", "CANCELLING"})

Method = Literal["auto", "move-task", "receive-send"]


class DlqError(Exception):
    """A user-facing problem: unknown queue name, a queue redriven onto itself, ..."""


# -- receiving without consuming ------------------------------------------------------------

SQS_BATCH = 10


def receive_hidden(sqs: Any, queue_url: str, count: int, visibility_s: int) -> list[dict[str, Any]]:
    # A 1 s long poll: on AWS a short poll samples a subset of servers and may miss messages.
    messages: list[dict[str, Any]] = sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=count,
        VisibilityTimeout=visibility_s,
        WaitTimeSeconds=1,
        MessageSystemAttributeNames=["All"],
        MessageAttributeNames=["All"],
    ).get("Messages", [])
    return messages


def make_visible(sqs: Any, queue_url: str, handles: Sequence[str]) -> None:
    for chunk in _chunks(list(handles), SQS_BATCH):
        answer = sqs.change_message_visibility_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(index), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                for index, handle in enumerate(chunk)
            ],
        )
        for failure in answer.get("Failed", []):
            # Typically a handle superseded by a later receive of the same message: harmless.
            logger.debug("visibility not restored: %s", failure)


def peek_messages(
    sqs: Any, queue_url: str, *, max_messages: int, hide_seconds: int = 30
) -> list[dict[str, Any]]:
    """Up to `max_messages` distinct messages, left on the queue."""
    seen: dict[str, dict[str, Any]] = {}
    handles: list[str] = []
    try:
        while len(seen) < max_messages:
            batch = receive_hidden(sqs, queue_url, min(SQS_BATCH, max_messages - len(seen)), hide_seconds)
            handles.extend(message["ReceiptHandle"] for message in batch)
            fresh = [message for message in batch if message["MessageId"] not in seen]
            if not fresh:
                break
            seen.update({message["MessageId"]: message for message in fresh})
    finally:
        make_visible(sqs, queue_url, handles)
    return list(seen.values())


# -- discovery -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetterQueue:
    logical_id: str
    url: str
    source_logical_id: str | None
    source_url: str | None

    @property
    def stage(self) -> str:
        """Short name: "infer" for InferDeadLetterQueue."""
        return self.logical_id.removesuffix(DLQ_SUFFIX).lower()

    @property
    def name(self) -> str:
        return queue_name(self.url)


@dataclass
class DeadLetterQueueStatus:
    queue: DeadLetterQueue
    visible: int
    in_flight: int
    delayed: int
    max_receive_count: int | None = None
    oldest_age_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dlq": self.queue.logical_id,
            "stage": self.queue.stage,
            "url": self.queue.url,
            "source": self.queue.source_logical_id,
            "source_url": self.queue.source_url,
            "visible": self.visible,
            "in_flight": self.in_flight,
            "delayed": self.delayed,
            "max_receive_count": self.max_receive_count,
            "oldest_age_s": self.oldest_age_s,
        }


def queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def dead_letter_queues(queues: Mapping[str, str]) -> list[DeadLetterQueue]:
    """Every queue whose logical id ends with DeadLetterQueue, paired with XQueue if there is one
    (sorted by logical id)."""
    found = []
    for logical_id, url in sorted(queues.items()):
        if not logical_id.endswith(DLQ_SUFFIX):
            continue
        source = logical_id.removesuffix(DLQ_SUFFIX) + SOURCE_SUFFIX
        found.append(
            DeadLetterQueue(logical_id, url, source if source in queues else None, queues.get(source))
        )
    return found


def resolve_dead_letter_queue(queues: Mapping[str, str], name: str) -> DeadLetterQueue:
    """A DLQ by logical id (InferDeadLetterQueue), short stage name (infer), queue name or URL."""
    candidates = dead_letter_queues(queues)
    wanted = name.strip().lower()
    for dlq in candidates:
        if wanted in {dlq.logical_id.lower(), dlq.stage, dlq.url.lower(), dlq.name.lower()}:
            return dlq
    known = ", ".join(f"{dlq.stage} ({dlq.logical_id})" for dlq in candidates) or "none"
    raise DlqError(f"no dead-letter queue {name!r}; known: {known}")


def list_dead_letter_queues(
    sqs: SQSClient, queues: Mapping[str, str], *, cloudwatch: Any = None
) -> list[DeadLetterQueueStatus]:
    """Each DLQ with its approximate depth, its source's maxReceiveCount and (from CloudWatch, when
    a client is given and the metric exists) the age of its oldest message."""
    statuses = []
    for dlq in dead_letter_queues(queues):
        attributes = sqs.get_queue_attributes(
            QueueUrl=dlq.url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        statuses.append(
            DeadLetterQueueStatus(
                queue=dlq,
                visible=int(attributes.get("ApproximateNumberOfMessages", 0)),
                in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
                delayed=int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
                max_receive_count=_max_receive_count(sqs, dlq.source_url) if dlq.source_url else None,
            )
        )
    if cloudwatch is not None and statuses:
        ages = oldest_message_ages(cloudwatch, [status.queue.name for status in statuses])
        for status in statuses:
            status.oldest_age_s = ages.get(status.queue.name)
    return statuses


def _max_receive_count(sqs: SQSClient, source_url: str) -> int | None:
    attributes = sqs.get_queue_attributes(QueueUrl=source_url, AttributeNames=["RedrivePolicy"])["Attributes"]
    try:
        return int(json.loads(attributes["RedrivePolicy"])["maxReceiveCount"])
    except (KeyError, TypeError, ValueError):
        return None


def oldest_message_ages(
    cloudwatch: Any, queue_names: Sequence[str], *, now: datetime | None = None
) -> dict[str, float]:
    """`ApproximateAgeOfOldestMessage` (seconds) per queue from CloudWatch, latest minute of the
    last 15: one GetMetricData call. SQS has no queue attribute for it, and peeking would bump
    receive counts. Queues without data points (moto, idle queues, no permission) are absent."""
    end = now or datetime.now(UTC)
    queries = [
        {
            "Id": f"q{index}",
            "Label": name,
            "MetricStat": {
                "Metric": {
                    "Namespace": "AWS/SQS",
                    "MetricName": "ApproximateAgeOfOldestMessage",
                    "Dimensions": [{"Name": "QueueName", "Value": name}],
                },
                "Period": 60,
                "Stat": "Maximum",
            },
        }
        for index, name in enumerate(queue_names)
    ]
    try:
        answer = cloudwatch.get_metric_data(
            MetricDataQueries=queries,
            StartTime=end - timedelta(minutes=15),
            EndTime=end,
            ScanBy="TimestampDescending",
        )
    except (BotoCoreError, ClientError) as error:  # optional information: never fail a listing
        logger.debug("no CloudWatch ages: %s", error)
        return {}
    ages: dict[str, float] = {}
    for result in answer.get("MetricDataResults", []):
        index = int(str(result["Id"]).removeprefix("q"))
        points = sorted(zip(result.get("Timestamps", []), result.get("Values", []), strict=False))
        if points:
            ages[queue_names[index]] = float(points[-1][1])
    return ages


# -- peek ----------------------------------------------------------------------------------------


@dataclass
class PeekedMessage:
    message_id: str
    receive_count: int
    sent_at: datetime | None
    body: str
    kind: str  # "command" (a Baton stage command), "event" (EventBridge), "json" or "text"
    job_id: str | None = None
    tenant_id: str | None = None
    step: str | None = None
    detail_type: str | None = None
    message_attributes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sent_at"] = self.sent_at.isoformat() if self.sent_at else None
        return data


def describe_body(body: str) -> dict[str, Any]:
    """What a DLQ body is: a stage command (job_id, tenant_id, step, version, depth), an EventBridge
    event (`detail.job_id`: lifecycle events; S3 uploads carry no job id), other JSON, or text."""
    try:
        data = json.loads(body)
    except ValueError:
        return {"kind": "text"}
    if not isinstance(data, dict):
        return {"kind": "json"}
    if data.keys() >= COMMAND_FIELDS:
        return {"kind": "command", **{key: _text(data.get(key)) for key in ("job_id", "tenant_id", "step")}}
    detail = data.get("detail")
    if isinstance(detail, dict) and ("detail-type" in data or "source" in data):
        return {
            "kind": "event",
            "detail_type": _text(data.get("detail-type")),
            "job_id": _text(detail.get("job_id")),
            "tenant_id": _text(detail.get("tenant_id")),
            "step": _text(detail.get("step")),
        }
    return {"kind": "json"}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def peek(
    sqs: SQSClient, queue_url: str, *, max_messages: int = 10, hide_seconds: int = 30
) -> list[PeekedMessage]:
    """Up to `max_messages` messages of a queue, left on it (see baton.deadletters: each one's
    receive count goes up by one)."""
    messages = peek_messages(sqs, queue_url, max_messages=max_messages, hide_seconds=hide_seconds)
    return [_peeked(cast("MessageTypeDef", message)) for message in messages]


def _peeked(message: MessageTypeDef) -> PeekedMessage:
    attributes = message.get("Attributes", {})
    sent = attributes.get("SentTimestamp")
    body = message.get("Body", "")
    info = describe_body(body)
    return PeekedMessage(
        message_id=message["MessageId"],
        receive_count=int(attributes.get("ApproximateReceiveCount", 0)),
        sent_at=datetime.fromtimestamp(int(sent) / 1000, UTC) if sent else None,
        body=body,
        message_attributes={
            name: value.get("StringValue", value.get("BinaryValue"))
            for name, value in message.get("MessageAttributes", {}).items()
        },
        **info,
    )


# -- redrive -------------------------------------------------------------------------------------


@dataclass
class RedriveResult:
    moved: int
    method: Literal["move-task", "receive-send"]
    failed: int = 0
    task_handle: str | None = None
    task_status: str | None = None  # move-task only: COMPLETED, FAILED, RUNNING (stopped waiting)...
    fallback_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def redrive(
    sqs: SQSClient,
    dlq_url: str,
    destination_url: str,
    *,
    max_messages: int | None = None,
    method: Method = "auto",
    wait_timeout_s: float = 300.0,
    poll_interval_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> RedriveResult:
    """Move the DLQ's messages to `destination_url` (normally its source queue).

    `auto` starts an SQS message move task and waits for it (up to `wait_timeout_s`); if the
    endpoint does not implement the API it falls back to receive -> send -> delete. A limit
    (`max_messages`) needs receive -> send, as move tasks move everything.
    """
    if dlq_url.rstrip("/") == destination_url.rstrip("/"):
        raise DlqError("the destination is the dead-letter queue itself")
    if max_messages is not None and max_messages < 1:
        raise DlqError("--max must be at least 1")
    if method == "move-task" and max_messages is not None:
        raise DlqError("a move task moves every message: --max needs the receive-send method")
    fallback_reason = None
    if method == "move-task" or (method == "auto" and max_messages is None):
        try:
            return _move_task(sqs, dlq_url, destination_url, wait_timeout_s, poll_interval_s, sleep)
        except ClientError as error:
            if not move_task_unsupported(error):
                raise
            fallback_reason = f"StartMessageMoveTask not supported by the endpoint ({_describe(error)})"
            if method == "move-task":
                raise DlqError(f"{fallback_reason}: use the receive-send method") from error
            logger.info("%s; falling back to receive-send", fallback_reason)
    result = _receive_send(sqs, dlq_url, destination_url, max_messages)
    result.fallback_reason = fallback_reason
    return result


def move_task_unsupported(error: ClientError) -> bool:
    """Whether the endpoint lacks the message-move API (not: a real failure of a supported call)."""
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in UNSUPPORTED_CODES or status == 501:
        return True
    # moto's server: an unhandled NotImplementedError, an HTML 500 page, parsed as code "500".
    # AWS's own server errors carry a named code (InternalError) and are not taken for this.
    return status == 500 and code == "500"


def _describe(error: ClientError) -> str:
    code = str(error.response.get("Error", {}).get("Code", "?"))
    status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?"))
    return f"HTTP {status}" if code == status else f"HTTP {status}, {code}"


def queue_arn(sqs: SQSClient, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def _move_task(
    sqs: SQSClient,
    dlq_url: str,
    destination_url: str,
    wait_timeout_s: float,
    poll_interval_s: float,
    sleep: Callable[[float], None],
) -> RedriveResult:
    source_arn = queue_arn(sqs, dlq_url)
    handle = sqs.start_message_move_task(
        SourceArn=source_arn, DestinationArn=queue_arn(sqs, destination_url)
    )["TaskHandle"]
    deadline = time.monotonic() + wait_timeout_s
    task: Mapping[str, Any] = {}
    while True:
        tasks = sqs.list_message_move_tasks(SourceArn=source_arn, MaxResults=10).get("Results", [])
        task = next((item for item in tasks if item.get("TaskHandle") == handle), tasks[0] if tasks else {})
        status = str(task.get("Status", "RUNNING"))
        if status not in MOVE_TASK_ACTIVE or time.monotonic() >= deadline:
            break
        sleep(poll_interval_s)
    if status == "FAILED":
        logger.warning("message move task failed: %s", task.get("FailureReason"))
    moved = int(task.get("ApproximateNumberOfMessagesMoved", 0))
    to_move = int(task.get("ApproximateNumberOfMessagesToMove", moved))
    return RedriveResult(
        moved=moved,
        method="move-task",
        failed=max(0, to_move - moved) if status == "FAILED" else 0,
        task_handle=handle,
        task_status=status,
    )


def _receive_send(
    sqs: SQSClient, dlq_url: str, destination_url: str, max_messages: int | None, visibility_s: int = 60
) -> RedriveResult:
    """Receive a batch, send it, delete what was sent; stop at the first failed send (the failed
    messages are made visible again on the DLQ, nothing is deleted that was not sent)."""
    moved = 0
    fifo = destination_url.endswith(".fifo")
    while max_messages is None or moved < max_messages:
        wanted = SQS_BATCH if max_messages is None else min(SQS_BATCH, max_messages - moved)
        batch = cast("list[MessageTypeDef]", receive_hidden(sqs, dlq_url, wanted, visibility_s))
        if not batch:
            break
        sent: list[MessageTypeDef] = []
        unsent: list[MessageTypeDef] = []
        try:
            for chunk in _payload_chunks(batch):
                entries = [_send_entry(str(index), message, fifo) for index, message in enumerate(chunk)]
                answer = sqs.send_message_batch(QueueUrl=destination_url, Entries=entries)
                ok = {item["Id"] for item in answer.get("Successful", [])}
                for failure in answer.get("Failed", []):
                    logger.warning("send to %s failed: %s", destination_url, failure)
                for index, message in enumerate(chunk):
                    (sent if str(index) in ok else unsent).append(message)
        except BaseException:
            # Whatever was not confirmed sent goes back to the DLQ now, not after the timeout.
            done = {message["MessageId"] for message in sent}
            make_visible(sqs, dlq_url, [m["ReceiptHandle"] for m in batch if m["MessageId"] not in done])
            _delete(sqs, dlq_url, sent)
            raise
        _delete(sqs, dlq_url, sent)
        moved += len(sent)
        if unsent:
            make_visible(sqs, dlq_url, [message["ReceiptHandle"] for message in unsent])
            return RedriveResult(moved=moved, method="receive-send", failed=len(unsent))
    return RedriveResult(moved=moved, method="receive-send")


def _send_entry(entry_id: str, message: MessageTypeDef, fifo: bool) -> SendMessageBatchRequestEntryTypeDef:
    entry: SendMessageBatchRequestEntryTypeDef = {"Id": entry_id, "MessageBody": message.get("Body", "")}
    attributes = {
        name: {key: value[key] for key in ("DataType", "StringValue", "BinaryValue") if key in value}
        for name, value in message.get("MessageAttributes", {}).items()
    }
    if attributes:
        entry["MessageAttributes"] = attributes  # type: ignore[typeddict-item]
    if fifo:
        system = message.get("Attributes", {})
        entry["MessageGroupId"] = system.get("MessageGroupId", "redrive")
        entry["MessageDeduplicationId"] = system.get("MessageDeduplicationId", message["MessageId"])
    return entry


def _payload_chunks(batch: Sequence[MessageTypeDef]) -> Iterator[list[MessageTypeDef]]:
    chunk: list[MessageTypeDef] = []
    size = 0
    for message in batch:
        message_size = _payload_size(message)
        if chunk and size + message_size > BATCH_PAYLOAD_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(message)
        size += message_size
    if chunk:
        yield chunk


def _payload_size(message: MessageTypeDef) -> int:
    size = len(message.get("Body", "").encode())
    for name, value in message.get("MessageAttributes", {}).items():
        size += len(name.encode()) + len(value.get("DataType", "").encode())
        size += len(value.get("StringValue", "").encode()) + len(value.get("BinaryValue", b""))
    return size


def _delete(sqs: SQSClient, queue_url: str, messages: Sequence[MessageTypeDef]) -> None:
    for chunk in _chunks(list(messages), SQS_BATCH):
        answer = sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
                for index, message in enumerate(chunk)
            ],
        )
        for failure in answer.get("Failed", []):
            # Sent but still on the DLQ: it will be delivered twice (at-least-once), never lost.
            logger.warning("moved message not deleted from the DLQ (it may be redriven twice): %s", failure)


def _chunks[T](items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- the archive of the job steps' dead letters (written by the dead-letter function) -------------


def _children(s3: S3Client, bucket: str, prefix: str) -> list[str]:
    """The next path segments under `prefix` ("infer", "2026-12-01", ...), paginated."""
    names: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        names.extend(
            str(common["Prefix"]).removeprefix(prefix).rstrip("/")
            for common in page.get("CommonPrefixes", [])
        )
    return names


def list_archive(
    s3: S3Client, bucket: str, *, stage: str | None = None, limit: int = 20
) -> list[ArchivedDeadLetter]:
    """The newest archived dead letters first (of one stage, or all), at most `limit`.

    Days are listed as prefixes (one request per stage), then only the days needed, newest first;
    within a day the listing's LastModified orders them, and only the `limit` shown are read."""
    stages = [stage] if stage else _children(s3, bucket, f"{ARCHIVE_PREFIX}/")
    days = sorted(
        ((day, name) for name in stages for day in _children(s3, bucket, f"{ARCHIVE_PREFIX}/{name}/")),
        reverse=True,
    )
    letters: list[ArchivedDeadLetter] = []
    for day in sorted({day for day, _ in days}, reverse=True):
        entries: list[tuple[datetime, str]] = []
        for name in (name for d, name in days if d == day):
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=f"{ARCHIVE_PREFIX}/{name}/{day}/"
            )
            entries.extend(
                (item["LastModified"], item["Key"]) for page in pages for item in page.get("Contents", [])
            )
        for _, key in sorted(entries, reverse=True)[: limit - len(letters)]:
            letters.append(read_letter(s3, bucket, key))
        if len(letters) >= limit:
            break
    return letters


def read_letter(s3: S3Client, bucket: str, key: str) -> ArchivedDeadLetter:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return ArchivedDeadLetter.model_validate_json(body)


def find_letter(s3: S3Client, bucket: str, ident: str) -> ArchivedDeadLetter:
    """A dead letter by its archive id (`infer/2026-12-01/<message id>`, as the job's error and
    `baton dlq list` name it) or by its bare message id (one HEAD per stage and day)."""
    ident = ident.strip().removeprefix(f"{ARCHIVE_PREFIX}/").removesuffix(".json")
    candidates = [ident] if ident.count("/") == 2 else []
    if not candidates and "/" not in ident:
        candidates = [
            f"{stage}/{day}/{ident}"
            for stage in _children(s3, bucket, f"{ARCHIVE_PREFIX}/")
            for day in sorted(_children(s3, bucket, f"{ARCHIVE_PREFIX}/{stage}/"), reverse=True)
        ]
    for candidate in candidates:
        try:
            return read_letter(s3, bucket, archive_key(candidate))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in {"NoSuchKey", "404", "NotFound"}:
                raise
    raise DlqError(f"no archived dead letter {ident!r} (ids look like infer/2026-12-01/<message id>)")


def redrive_letter(
    letter: ArchivedDeadLetter, *, jobs: JobStore, sqs: SQSClient, queues: Mapping[str, str]
) -> str:
    """Put an archived stage command back on its stage's queue; the queue URL it went to.

    Only while its job still waits at that command's version and depth (e.g. the dead letter
    arrived while the table was unreachable). A job the dead letter failed is terminal, and a
    terminal job never changes (contract): redrive refuses and names the re-run, which runs the
    same request again as a new job (`rerun_of`)."""
    if letter.batch_id is not None:
        raise DlqError(
            f"dead letter {letter.id} is a batch message: batch {letter.batch_id} failed on it (every "
            "line is in its output or errors file), and a finished batch never changes: submit the "
            "lines again as a new batch"
        )
    if letter.job_id is None or letter.tenant_id is None:
        raise DlqError(f"dead letter {letter.id} is not a stage command: there is nothing to redrive")
    try:
        record = jobs.get(letter.tenant_id, letter.job_id)
    except JobNotFoundError:
        raise DlqError(
            f"job {letter.job_id} no longer exists (expired): there is nothing to redrive"
        ) from None
    if record.is_terminal:
        reason = f" ({record.error.type})" if record.error else ""
        raise DlqError(
            f"job {letter.job_id} is {record.status.value}{reason}, and a finished job never changes: "
            f"to run it again as a new job, POST /v1/jobs/{letter.job_id}/rerun (the new job's rerun_of "
            "names this one)"
        )
    if (record.version, record.depth) != (letter.version, letter.depth):
        raise DlqError(
            f"job {letter.job_id} has moved on (version {record.version}, depth {record.depth}; this "
            f"command was for version {letter.version}, depth {letter.depth}): it would be discarded"
        )
    queue = f"{letter.stage.title()}{SOURCE_SUFFIX}"
    if queue not in queues:
        raise DlqError(f"no queue {queue} for stage {letter.stage!r}")
    sqs.send_message(QueueUrl=queues[queue], MessageBody=letter.body)
    return queues[queue]
