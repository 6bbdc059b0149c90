"""Create the template's data-plane resources on an AWS-protocol endpoint (moto, LocalStack, AWS)."""

from __future__ import annotations

import ast
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import boto3

from baton_dev.runtime.functions import Credentials
from baton_dev.runtime.template import AppTemplate

logger = logging.getLogger("baton.runtime")

_DONE = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}
_FAILED = {"CREATE_FAILED", "ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "ROLLBACK_IN_PROGRESS"}
ADMIN_USER = "baton-local-runtime"
# Role sessions last an hour (a role's default maximum); re-assumed when less than this is left.
SESSION_SECONDS = 3600
REASSUME_MARGIN_S = 900.0


def bootstrap_admin(endpoint_url: str, region: str) -> Credentials:
    """The runtime's own identity on a moto server that authenticates every request after its
    first three: an IAM user allowed everything (it plays CloudFormation, the Lambda service and
    API Gateway), created with exactly those three unauthenticated requests."""
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",  # noqa: S106 - accepted only before enforcement starts
    )
    iam.create_user(UserName=ADMIN_USER)
    iam.put_user_policy(
        UserName=ADMIN_USER,
        PolicyName="everything",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        ),
    )
    key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
    return Credentials(key["AccessKeyId"], key["SecretAccessKey"])


class RoleCredentials:
    """A function's execution role, assumed through STS like Lambda does for each environment;
    re-assumed before the session expires (environments started later get fresh credentials)."""

    def __init__(self, role_arn: str, session_name: str) -> None:
        self.role_arn = role_arn
        self.session_name = session_name[:64]
        self._lock = threading.Lock()
        self._current: Credentials | None = None

    def current(self) -> Credentials:
        with self._lock:
            if self._current is None or self._current.expiring(REASSUME_MARGIN_S):
                answer = boto3.client("sts").assume_role(
                    RoleArn=self.role_arn, RoleSessionName=self.session_name, DurationSeconds=SESSION_SECONDS
                )["Credentials"]
                self._current = Credentials(
                    answer["AccessKeyId"],
                    answer["SecretAccessKey"],
                    answer["SessionToken"],
                    expires_at=answer["Expiration"].timestamp(),
                )
            return self._current


@dataclass
class ProvisionedStack:
    stack_name: str
    # expression JSON -> value, for function environments
    resolved: dict[str, str] = field(default_factory=dict)
    queue_urls: dict[str, str] = field(default_factory=dict)
    queue_arns: dict[str, str] = field(default_factory=dict)
    physical_ids: dict[str, str] = field(default_factory=dict)
    roles: dict[str, RoleCredentials] = field(default_factory=dict)  # role logical id -> role


def provision(
    app: AppTemplate,
    *,
    stack_name: str,
    timeout_s: float = 120.0,
    execution_roles: bool = True,
) -> ProvisionedStack:
    """Create (or reuse, if it already exists) the local stack and read back resolved values.
    With `execution_roles`, each function's role is made assumable (see below); in-process unit
    tests, which call handlers directly under moto's mock, do without."""
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
    if execution_roles:
        _let_runtime_assume_roles(app, result)
    return result


def _let_runtime_assume_roles(app: AppTemplate, stack: ProvisionedStack) -> None:
    """Each function role as CloudFormation created it trusts the Lambda service
    (`Principal: {Service: lambda.amazonaws.com}`). Locally the runtime *is* the Lambda service,
    but it calls STS as an IAM user, and moto cannot evaluate a trust statement whose principal
    has no `AWS` entry (AssumeRole answers 500, a TypeError in its principal check). So, through
    the IAM API and after creation - the template and its resolved properties stay as they are -
    each trust statement also names the runtime's identity as an `AWS` principal."""
    iam = boto3.client("iam")
    runtime_arn = boto3.client("sts").get_caller_identity()["Arn"]
    for logical_id in {spec.role for spec in app.functions.values() if spec.role}:
        name = stack.physical_ids.get(logical_id)
        if not name:
            continue
        role = iam.get_role(RoleName=name)["Role"]
        document = role["AssumeRolePolicyDocument"]
        if isinstance(document, str):
            document = json.loads(document)
        changed = False
        for statement in document.get("Statement", []):
            principal = statement.setdefault("Principal", {})
            trusted = principal.get("AWS") or []
            trusted = [trusted] if isinstance(trusted, str) else list(trusted)
            if runtime_arn not in trusted:
                principal["AWS"] = [*trusted, runtime_arn]
                changed = True
        if changed:
            iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(document))
        _complete_role(iam, name, app.cloudformation["Resources"][logical_id])
        stack.roles[logical_id] = RoleCredentials(role["Arn"], f"{stack.stack_name}-{logical_id}")


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


def _complete_role(iam: Any, name: str, resource: dict[str, Any]) -> None:
    """moto's CloudFormation creates a role with its inline policies stored as Python reprs (which
    its own IAM evaluation then cannot parse: every call answers 500) and without its
    ManagedPolicyArns. Give the role what the template declares, through the IAM API, as AWS would
    have created it: each inline policy as JSON (the values moto resolved), each managed policy."""
    for policy_name in iam.list_role_policies(RoleName=name)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"]
        if isinstance(document, str):
            try:
                document = json.loads(document)
            except ValueError:
                document = ast.literal_eval(document)  # moto's repr of the resolved document
            # SAM writes no Version; AWS then assumes the 2008 grammar, moto refuses the document.
            document.setdefault("Version", "2012-10-17")
            iam.put_role_policy(RoleName=name, PolicyName=policy_name, PolicyDocument=json.dumps(document))
    attached = {
        policy["PolicyArn"] for policy in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
    }
    for arn in resource.get("Properties", {}).get("ManagedPolicyArns", []):
        if isinstance(arn, str) and arn not in attached:
            try:
                iam.attach_role_policy(RoleName=name, PolicyArn=arn)
            except iam.exceptions.NoSuchEntityException:
                # An endpoint started without AWS's managed policies (moto without
                # MOTO_IAM_LOAD_MANAGED_POLICIES, as `baton dev` starts it): it enforces no IAM either.
                logger.warning("%s: managed policy %s does not exist on this endpoint", name, arn)


def _describe(cloudformation: Any, stack_name: str) -> dict[str, Any] | None:
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except cloudformation.exceptions.ClientError as error:
        if "does not exist" in str(error):
            return None
        raise
    return stacks[0] if stacks else None
