"""Reading a dead-letter queue without consuming it (the sweeper and `baton dlq` share this).

A receive with VisibilityTimeout=0 would be the obvious peek, but moto answers it with the same
first ten messages every time; so messages are hidden while being collected (each receive then
returns different ones) and all made visible again at the end, even on error. Each peek adds one
to every message's receive count: harmless on a DLQ, which has no redrive policy of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

logger = logging.getLogger(__name__)

SQS_BATCH = 10


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


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
    for chunk in chunks(list(handles), SQS_BATCH):
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
