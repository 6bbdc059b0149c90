"""Does each function's execution role allow the AWS calls its code makes?

The calls are recorded, not listed by hand: every botocore API call made while a unit test invokes a
handler (`LoadedFunction.__call__`) is attributed to that function (tests/unit/conftest.py), then
mapped to the IAM actions and resource ARNs AWS would authorize (a TransactWriteItems is one
PutItem/UpdateItem/... per item, a HeadObject is s3:GetObject, ...). The role is read from the
*translated* template: SAM policy templates (SQSSendMessagePolicy, DynamoDBCrudPolicy...) are
expanded there, inline statements and the managed policies SAM attaches (AWSLambdaSQSQueueExecutionRole
for SQS event sources) included. moto enforces IAM only partly (resource ARNs barely): this check
matches both action and resource, so a new boto3 call without its statement fails the unit test
that makes it.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from baton_dev.runtime.conditions import parameter_values, resolve_conditionals
from baton_dev.runtime.template import AppTemplate

# What AWS's managed policies that SAM attaches allow (from their published documents).
MANAGED_POLICIES: dict[str, list[tuple[str, str]]] = {
    "AWSLambdaBasicExecutionRole": [
        ("logs:CreateLogGroup", "*"),
        ("logs:CreateLogStream", "*"),
        ("logs:PutLogEvents", "*"),
    ],
    "AWSLambdaSQSQueueExecutionRole": [
        ("sqs:ReceiveMessage", "*"),
        ("sqs:DeleteMessage", "*"),
        ("sqs:GetQueueAttributes", "*"),
        ("logs:CreateLogGroup", "*"),
        ("logs:CreateLogStream", "*"),
        ("logs:PutLogEvents", "*"),
    ],
    "AWSXrayWriteOnlyAccess": [
        ("xray:PutTraceSegments", "*"),
        ("xray:PutTelemetryRecords", "*"),
        ("xray:GetSamplingRules", "*"),
        ("xray:GetSamplingTargets", "*"),
        ("xray:GetSamplingStatisticSummaries", "*"),
    ],
}
# Calls that need no permission.
UNAUTHORIZED_OPERATIONS = {("sts", "GetCallerIdentity")}


@dataclass(frozen=True)
class Call:
    """One AWS API call a function's code made."""

    function: str
    service: str
    operation: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Request:
    """What IAM authorizes: one action on one resource."""

    function: str
    action: str
    resource: str
    via: str  # the API operation that needed it


@dataclass(frozen=True)
class Names:
    region: str
    account: str
    physical_ids: dict[str, str]  # logical id -> physical id (queue URL, table or bucket name...)
    queue_arns: dict[str, str]


def requests_of(call: Call, names: Names) -> list[Request]:
    """The (action, resource) pairs IAM checks for one API call."""
    service, operation, params = call.service, call.operation, call.params
    region, account = names.region, names.account

    def request(action: str, resource: str) -> Request:
        return Request(call.function, f"{service}:{action}", resource, operation)

    if (service, operation) in UNAUTHORIZED_OPERATIONS:
        return []
    if service == "dynamodb":

        def table(name: str, index: str | None = None) -> str:
            arn = f"arn:aws:dynamodb:{region}:{account}:table/{name}"
            return f"{arn}/index/{index}" if index else arn

        if operation == "TransactWriteItems":
            kinds = {
                "Put": "PutItem",
                "Update": "UpdateItem",
                "Delete": "DeleteItem",
                "ConditionCheck": "ConditionCheckItem",
            }
            return [
                request(kinds[kind], table(body["TableName"]))
                for item in params["TransactItems"]
                for kind, body in item.items()
            ]
        if operation == "TransactGetItems":
            return [request("GetItem", table(item["Get"]["TableName"])) for item in params["TransactItems"]]
        if operation == "BatchWriteItem":
            return [
                request("PutItem" if "PutRequest" in write else "DeleteItem", table(name))
                for name, writes in params["RequestItems"].items()
                for write in writes
            ]
        if operation == "BatchGetItem":
            return [request("GetItem", table(name)) for name in params["RequestItems"]]
        return [request(operation, table(params["TableName"], params.get("IndexName")))]
    if service == "sqs":
        queue = f"arn:aws:sqs:{region}:{account}:{params['QueueUrl'].rstrip('/').rsplit('/', 1)[-1]}"
        return [request(operation.removesuffix("Batch"), queue)]
    if service == "s3":
        bucket = f"arn:aws:s3:::{params['Bucket']}"
        if operation in {"ListObjectsV2", "ListObjects", "HeadBucket"}:
            return [request("ListBucket", bucket)]
        if operation == "DeleteObjects":
            return [
                request("DeleteObject", f"{bucket}/{item['Key']}") for item in params["Delete"]["Objects"]
            ]
        if operation == "CopyObject":
            source = params["CopySource"]
            source_key = (
                f"{source['Bucket']}/{source['Key']}"
                if isinstance(source, dict)
                else unquote(source.lstrip("/"))
            )
            return [
                request("GetObject", f"arn:aws:s3:::{source_key}"),
                request("PutObject", f"{bucket}/{params['Key']}"),
            ]
        # IAM authorizes a multipart upload's steps with s3:PutObject (AbortMultipartUpload and
        # ListParts have actions of their own).
        multipart = dict.fromkeys(
            ("CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"), "PutObject"
        )
        action = {"HeadObject": "GetObject", "ListParts": "ListMultipartUploadParts", **multipart}.get(
            operation, operation
        )
        return [request(action, f"{bucket}/{params['Key']}")]
    if service == "events" and operation == "PutEvents":
        buses = {entry.get("EventBusName", "default") for entry in params["Entries"]}
        return [
            request(
                "PutEvents",
                bus if bus.startswith("arn:") else f"arn:aws:events:{region}:{account}:event-bus/{bus}",
            )
            for bus in sorted(buses)
        ]
    if service == "secretsmanager":
        return [request(operation, str(params["SecretId"]))]
    if service == "kms":
        # Decrypt may name no key (the ciphertext carries it): the stack's one key, WebhookAuthKey.
        key = str(params.get("KeyId") or names.physical_ids.get("WebhookAuthKey", "*"))
        arn = key if key.startswith("arn:") else f"arn:aws:kms:{region}:{account}:key/{key}"
        return [request(operation, arn)]
    return [request(operation, "*")]


class Roles:
    """Each function's role statements from a translated template, resolved to concrete ARNs."""

    def __init__(self, app: AppTemplate, names: Names, cloudformation: dict[str, Any] | None = None) -> None:
        self.names = names
        self.cfn = cloudformation if cloudformation is not None else app.cloudformation
        values = parameter_values(self.cfn, app.parameters)
        self.values = values
        conditions = self.cfn.get("Conditions", {})
        self.statements: dict[str, list[tuple[list[str], list[str]]]] = {}
        for function in app.functions:
            role_ref = self.cfn["Resources"][function]["Properties"]["Role"]
            role = resolve_conditionals(
                self.cfn["Resources"][role_ref["Fn::GetAtt"][0]]["Properties"], values, conditions
            )
            allowed: list[tuple[list[str], list[str]]] = []
            for policy in role.get("Policies", []):
                for statement in policy["PolicyDocument"]["Statement"]:
                    if statement.get("Effect") != "Allow":
                        continue
                    actions = _as_list(statement["Action"])
                    resources = [self.resolve(resource) for resource in _as_list(statement["Resource"])]
                    allowed.append((actions, resources))
            for arn in role.get("ManagedPolicyArns", []):
                name = str(self.resolve(arn)).rsplit("/", 1)[-1]
                if name not in MANAGED_POLICIES:
                    raise KeyError(f"{function}: managed policy {name} is not described in iam_check.py")
                allowed.extend(([action], [resource]) for action, resource in MANAGED_POLICIES[name])
            self.statements[function] = allowed

    def allows(self, request: Request) -> bool:
        for actions, resources in self.statements.get(request.function, []):
            if any(fnmatch.fnmatchcase(request.action.lower(), action.lower()) for action in actions) and any(
                fnmatch.fnmatchcase(request.resource, resource) for resource in resources
            ):
                return True
        return False

    def denied(self, calls: list[Call]) -> list[Request]:
        return [
            request for call in calls for request in requests_of(call, self.names) if not self.allows(request)
        ]

    # -- intrinsic functions, as CloudFormation would resolve them in this stack -------------------
    def resolve(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and len(value) == 1:
            [(function, argument)] = value.items()
            if function == "Ref":
                return self._ref(argument)
            if function == "Fn::GetAtt":
                return self._attribute(argument[0], argument[1])
            if function == "Fn::Join":
                return str(argument[0]).join(self.resolve(item) for item in argument[1])
            if function == "Fn::Sub":
                text, variables = (argument, {}) if isinstance(argument, str) else argument
                return re.sub(
                    r"\$\{([^}]+)\}",
                    lambda match: self._substitution(match.group(1), variables),
                    text,
                )
        raise ValueError(f"cannot resolve {value!r} in a policy")

    def _substitution(self, name: str, variables: dict[str, Any]) -> str:
        if name in variables:
            return self.resolve(variables[name])
        if "." in name:
            logical_id, attribute = name.split(".", 1)
            return self._attribute(logical_id, attribute)
        return self._ref(name)

    def _ref(self, name: str) -> str:
        pseudo = {
            "AWS::Partition": "aws",
            "AWS::Region": self.names.region,
            "AWS::AccountId": self.names.account,
            "AWS::URLSuffix": "amazonaws.com",
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.values:
            return self.values[name]
        return self.names.physical_ids[name]

    def _attribute(self, logical_id: str, attribute: str) -> str:
        kind = self.cfn["Resources"][logical_id]["Type"]
        physical = self.names.physical_ids.get(logical_id, "")
        region, account = self.names.region, self.names.account
        if kind == "AWS::SQS::Queue":
            return {
                "Arn": self.names.queue_arns[logical_id],
                "QueueName": physical.rsplit("/", 1)[-1],
                "QueueUrl": physical,
            }[attribute]
        if kind == "AWS::DynamoDB::Table" and attribute == "Arn":
            return f"arn:aws:dynamodb:{region}:{account}:table/{physical}"
        if kind == "AWS::S3::Bucket" and attribute == "Arn":
            return f"arn:aws:s3:::{physical}"
        if kind == "AWS::Events::EventBus":
            # moto leaves a bus's physical id empty: its name is the template's Name property.
            name = physical.rsplit("/", 1)[-1] or self.resolve(
                self.cfn["Resources"][logical_id]["Properties"]["Name"]
            )
            return {"Name": name, "Arn": f"arn:aws:events:{region}:{account}:event-bus/{name}"}[attribute]
        raise ValueError(f"cannot resolve {logical_id}.{attribute} ({kind}) in a policy")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
