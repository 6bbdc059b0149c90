"""Powertools parser models for the records each SQS-fed function receives."""

from __future__ import annotations

from aws_lambda_powertools.utilities.parser.models import (
    EventBridgeModel,
    S3EventNotificationEventBridgeModel,
    SqsRecordModel,
)
from pydantic import Json

from baton.batches import SliceCommand
from baton.models import LifecycleDetail, StageCommand
from baton.webhooks import DeliveryMessage


class StageCommandRecord(SqsRecordModel):
    """extract / infer: a command from the previous stage."""

    body: Json[StageCommand]


class LifecycleEvent(EventBridgeModel):
    detail: LifecycleDetail
    # moto's EventBridge -> SQS delivery omits `account`; nothing here depends on it.
    account: str = ""


class LifecycleEventRecord(SqsRecordModel):
    """notify: a terminal lifecycle event delivered by the EventBridge rule to the notify queue."""

    body: Json[LifecycleEvent]


class UploadEventRecord(SqsRecordModel):
    """ingest: an S3 "Object Created" event routed from the default bus to the ingest queue."""

    body: Json[S3EventNotificationEventBridgeModel]


class DeliveryMessageRecord(SqsRecordModel):
    """deliver: one webhook attempt to make (baton.webhooks.DeliveryMessage)."""

    body: Json[DeliveryMessage]


class BatchMessageRecord(SqsRecordModel):
    """batch: a slice command (make or cancel a slice's jobs) or a batch job's terminal event."""

    body: Json[SliceCommand | LifecycleEvent]
