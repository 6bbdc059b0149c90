"""Create the template's data-plane resources on an AWS-protocol endpoint (moto, LocalStack, AWS)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import boto3

from baton_dev.runtime.template import AppTemplate

logger = logging.getLogger("baton.runtime")

_DONE = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}
_FAILED = {"CREATE_FAILED", "ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "ROLLBACK_IN_PROGRESS"}


@dataclass
class ProvisionedStack:
    stack_name: str
    # expression JSON -> value, for function environments
    resolved: dict[str, str] = field(default_factory=dict)
    queue_urls: dict[str, str] = field(default_factory=dict)
    queue_arns: dict[str, str] = field(default_factory=dict)
    physical_ids: dict[str, str] = field(default_factory=dict)


def provision(app: AppTemplate, *, stack_name: str, timeout_s: float = 120.0) -> ProvisionedStack:
    """Create (or reuse, if it already exists) the local stack and read back resolved values."""
    cloudformation = boto3.client("cloudformation")
    template, lookups = app.provisioning_template()
    parameters: list[Any] = [
        {"ParameterKey": key, "ParameterValue": value} for key, value in app.parameters.items()
    ]
    existing = _describe(cloudformation, stack_name)
    if existing is None:
        logger.info("creating stack %s from %s", stack_name, app.path.name)
        cloudformation.create_stack(
            StackName=stack_name,
            TemplateBody=json.dumps(template),
            Parameters=parameters,
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
    deadline = time.monotonic() + timeout_s
    stack = _describe(cloudformation, stack_name)
    while stack is None or stack["StackStatus"] not in _DONE or len(stack.get("Outputs", [])) < len(lookups):
        if stack is not None and stack["StackStatus"] in _FAILED:
            raise RuntimeError(
                f"stack {stack_name} failed: {stack.get('StackStatusReason', stack['StackStatus'])}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"stack {stack_name} not ready after {timeout_s:.0f}s")
        time.sleep(0.2)
        stack = _describe(cloudformation, stack_name)
    result = ProvisionedStack(stack_name=stack_name)
    for output in stack.get("Outputs", []):
        kind, key = lookups.get(output["OutputKey"], ("", ""))
        if kind == "expression":
            result.resolved[key] = output["OutputValue"]
        elif kind == "queue_url":
            result.queue_urls[key] = output["OutputValue"]
        elif kind == "queue_arn":
            result.queue_arns[key] = output["OutputValue"]
    paginator = cloudformation.get_paginator("list_stack_resources")
    for page in paginator.paginate(StackName=stack_name):
        for resource in page["StackResourceSummaries"]:
            result.physical_ids[resource["LogicalResourceId"]] = resource.get("PhysicalResourceId", "")
    _apply_bucket_notifications(app, result)
    return result


def _apply_bucket_notifications(app: AppTemplate, stack: ProvisionedStack) -> None:
    """moto's CloudFormation ignores a bucket's NotificationConfiguration (AWS and LocalStack
    honour it): apply the template's EventBridge switch through the S3 API when it is missing."""
    s3 = boto3.client("s3")
    for logical_id, resource in app.cloudformation["Resources"].items():
        if resource["Type"] != "AWS::S3::Bucket":
            continue
        wanted = resource.get("Properties", {}).get("NotificationConfiguration") or {}
        if not (wanted.get("EventBridgeConfiguration") or {}).get("EventBridgeEnabled"):
            continue
        bucket = stack.physical_ids[logical_id]
        current = s3.get_bucket_notification_configuration(Bucket=bucket)
        if "EventBridgeConfiguration" not in current:
            s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
            )
            logger.info("enabled S3 -> EventBridge notifications on %s (from the template)", bucket)


def _describe(cloudformation: Any, stack_name: str) -> dict[str, Any] | None:
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except cloudformation.exceptions.ClientError as error:
        if "does not exist" in str(error):
            return None
        raise
    return stacks[0] if stacks else None
