"""Read template.yaml the way AWS does: translate SAM to CloudFormation, then take the wiring from it.

Nothing here declares a queue, table or route: functions, their SQS event sources (batch size,
batching window, maximum concurrency, partial batch responses), the API routes, the authorizer
and the gateway responses are all read from the translated template.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfnlint.decode import decode
from samtranslator.translator.transform import transform

from baton_dev.runtime.conditions import parameter_values, resolve_conditionals

LOCAL_CODE_BUCKET = "baton-local-code"
# Resource types the local runtime creates on the AWS-protocol endpoint. Compute and API Gateway
# are run by the local runtime instead (moto cannot run Lambda code without Docker).
DATA_PLANE_TYPES = frozenset(
    {
        "AWS::SQS::Queue",
        "AWS::SQS::QueuePolicy",
        "AWS::DynamoDB::Table",
        "AWS::S3::Bucket",
        "AWS::Events::EventBus",
        "AWS::Events::Rule",
        "AWS::CloudWatch::Alarm",
        # Execution roles: the local runtime assumes them, so moto enforces what they allow.
        "AWS::IAM::Role",
        "AWS::KMS::Key",
    }
)
# The pseudo parameter CloudFormation removes wherever it appears (`!Ref AWS::NoValue`).
_NO_VALUE = object()
_FUNCTION_ARN = re.compile(r"\$\{(\w+)\.Arn\}")


class TemplateError(Exception):
    """template.yaml cannot be read or translated."""


class _NoManagedPolicies:
    """The translator looks up AWS managed policy ARNs; offline, none are needed locally."""

    def load(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    code_dir: Path
    handler: str
    timeout: int
    memory_mb: int
    environment: dict[str, Any]
    # Layer content folders (ContentUri), in the template's order.
    layers: tuple[Path, ...] = ()
    runtime: str = "python3.13"
    role: str | None = None  # logical id of the execution role

    @property
    def module_file(self) -> Path:
        return self.code_dir / f"{self.handler.rsplit('.', 1)[0]}.py"

    @property
    def handler_name(self) -> str:
        return self.handler.rsplit(".", 1)[1]


@dataclass(frozen=True)
class SqsSourceSpec:
    logical_id: str
    function: str
    queue: str
    batch_size: int
    batching_window_s: float
    max_concurrency: int | None
    report_batch_item_failures: bool
    enabled: bool = True


@dataclass(frozen=True)
class ScheduleSpec:
    logical_id: str
    function: str
    expression: str
    enabled: bool = True


@dataclass(frozen=True)
class RouteSpec:
    path: str
    method: str
    function: str
    authorizer: str | None


@dataclass(frozen=True)
class MockRouteSpec:
    """A route API Gateway answers itself (a mock integration: SAM's CORS preflight)."""

    path: str
    method: str
    status: int
    headers: dict[str, str]


@dataclass(frozen=True)
class AuthorizerSpec:
    name: str
    function: str
    kind: str
    identity_headers: tuple[str, ...]
    ttl_s: int


@dataclass
class AppTemplate:
    path: Path
    parameters: dict[str, str]
    cloudformation: dict[str, Any]
    functions: dict[str, FunctionSpec] = field(default_factory=dict)
    sqs_sources: list[SqsSourceSpec] = field(default_factory=list)
    schedules: list[ScheduleSpec] = field(default_factory=list)
    routes: list[RouteSpec] = field(default_factory=list)
    mock_routes: list[MockRouteSpec] = field(default_factory=list)
    authorizers: dict[str, AuthorizerSpec] = field(default_factory=dict)
    gateway_responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    api_stage: str = "dev"
    _provisioning: tuple[dict[str, Any], dict[str, tuple[str, str]]] | None = field(default=None, repr=False)

    @classmethod
    def load(
        cls, path: Path, parameters: dict[str, str] | None = None, region: str = "us-east-1"
    ) -> AppTemplate:
        path = path.resolve()
        sam, problems = decode(str(path))
        if problems or sam is None:
            raise TemplateError(f"cannot read {path}: {problems}")
        sam = json.loads(json.dumps(sam, default=str))
        code_dirs: dict[str, Path] = {}
        global_code = (sam.get("Globals") or {}).get("Function", {}).pop("CodeUri", None)
        for logical_id, resource in sam.get("Resources", {}).items():
            props = resource.setdefault("Properties", {})
            if resource["Type"] == "AWS::Serverless::Function":
                code_dirs[logical_id] = (path.parent / props.get("CodeUri", global_code)).resolve()
                props["CodeUri"] = f"s3://{LOCAL_CODE_BUCKET}/{logical_id}"
            elif resource["Type"] == "AWS::Serverless::LayerVersion":
                code_dirs[logical_id] = (path.parent / props["ContentUri"]).resolve()
                props["ContentUri"] = f"s3://{LOCAL_CODE_BUCKET}/{logical_id}"
        previous_region = os.environ.get("AWS_DEFAULT_REGION")
        os.environ["AWS_DEFAULT_REGION"] = region  # the translator needs a region, never the network
        try:
            cfn = transform(sam, dict(parameters or {}), _NoManagedPolicies())
        except Exception as error:
            raise TemplateError(f"SAM translation of {path} failed: {error}") from error
        finally:
            if previous_region is None:
                os.environ.pop("AWS_DEFAULT_REGION", None)
            else:
                os.environ["AWS_DEFAULT_REGION"] = previous_region
        app = cls(path=path, parameters=dict(parameters or {}), cloudformation=cfn)
        app._read_functions(code_dirs)
        app._read_event_sources()
        app._read_schedules()
        app._read_api()
        return app

    # -- readers -------------------------------------------------------------------------------
    def _resources(self, type_: str) -> list[tuple[str, dict[str, Any]]]:
        return [(lid, res) for lid, res in self.cloudformation["Resources"].items() if res["Type"] == type_]

    def _read_functions(self, code_dirs: dict[str, Path]) -> None:
        layer_dirs = {
            logical_id: code_dirs[resource["Properties"]["Content"]["S3Key"]]
            for logical_id, resource in self._resources("AWS::Lambda::LayerVersion")
        }
        for logical_id, resource in self._resources("AWS::Lambda::Function"):
            props = self.resolve_static(resource["Properties"])
            layers = [
                layer["Ref"]
                for layer in props.get("Layers", [])
                if isinstance(layer, dict) and "Ref" in layer
            ]
            role = props.get("Role")
            self.functions[logical_id] = FunctionSpec(
                logical_id=logical_id,
                code_dir=code_dirs[props["Code"]["S3Key"]],
                handler=props["Handler"],
                timeout=int(props.get("Timeout", 3)),
                memory_mb=int(props.get("MemorySize", 128)),
                # Fn::If resolved as CloudFormation does: a variable set to AWS::NoValue is absent.
                environment=resolve_conditionals(
                    dict(props.get("Environment", {}).get("Variables", {})),
                    parameter_values(self.cloudformation, self.parameters),
                    self.cloudformation.get("Conditions", {}),
                ),
                layers=tuple(layer_dirs[layer] for layer in layers if layer in layer_dirs),
                runtime=str(props.get("Runtime", "python3.13")),
                role=str(role["Fn::GetAtt"][0]) if isinstance(role, dict) and "Fn::GetAtt" in role else None,
            )

    def _read_event_sources(self) -> None:
        for logical_id, resource in self._resources("AWS::Lambda::EventSourceMapping"):
            props = resource["Properties"]
            arn = props["EventSourceArn"]
            if not (isinstance(arn, dict) and "Fn::GetAtt" in arn):
                raise TemplateError(f"{logical_id}: event source must be a queue declared in the template")
            queue = arn["Fn::GetAtt"][0]
            if self.cloudformation["Resources"][queue]["Type"] != "AWS::SQS::Queue":
                raise TemplateError(f"{logical_id}: only SQS event sources are supported locally")
            scaling = props.get("ScalingConfig") or {}
            self.sqs_sources.append(
                SqsSourceSpec(
                    logical_id=logical_id,
                    function=props["FunctionName"]["Ref"],
                    queue=queue,
                    batch_size=int(self.resolve_parameter(props.get("BatchSize", 10))),
                    batching_window_s=float(
                        self.resolve_parameter(props.get("MaximumBatchingWindowInSeconds", 0))
                    ),
                    max_concurrency=int(self.resolve_parameter(scaling["MaximumConcurrency"]))
                    if "MaximumConcurrency" in scaling
                    else None,
                    report_batch_item_failures="ReportBatchItemFailures"
                    in props.get("FunctionResponseTypes", []),
                    enabled=bool(props.get("Enabled", True)),
                )
            )

    def _read_schedules(self) -> None:
        """EventBridge rules with a ScheduleExpression that invoke a function of the template."""
        for logical_id, resource in self._resources("AWS::Events::Rule"):
            props = resource["Properties"]
            if "ScheduleExpression" not in props:
                continue
            expression = self.resolve_parameter(props["ScheduleExpression"])
            for target in props.get("Targets", []):
                arn = target.get("Arn")
                if isinstance(arn, dict) and "Fn::GetAtt" in arn and arn["Fn::GetAtt"][0] in self.functions:
                    self.schedules.append(
                        ScheduleSpec(
                            logical_id=logical_id,
                            function=arn["Fn::GetAtt"][0],
                            expression=str(expression),
                            enabled=props.get("State", "ENABLED") == "ENABLED",
                        )
                    )

    def _read_api(self) -> None:
        for _, resource in self._resources("AWS::ApiGateway::RestApi"):
            body = resource["Properties"].get("Body") or {}
            for name, definition in (body.get("securityDefinitions") or {}).items():
                authorizer = definition.get("x-amazon-apigateway-authorizer")
                if not authorizer:
                    continue
                identity = authorizer.get("identitySource", "")
                headers = tuple(
                    part.strip().removeprefix("method.request.header.")
                    for part in identity.split(",")
                    if part.strip().startswith("method.request.header.")
                )
                self.authorizers[name] = AuthorizerSpec(
                    name=name,
                    function=_function_of(authorizer["authorizerUri"]),
                    kind=authorizer.get("type", "request"),
                    identity_headers=headers,
                    ttl_s=int(authorizer.get("authorizerResultTtlInSeconds", 300)),
                )
            for route_path, methods in (body.get("paths") or {}).items():
                for method, operation in methods.items():
                    integration = operation.get("x-amazon-apigateway-integration") or {}
                    if integration.get("type") == "mock":
                        self.mock_routes.append(self._mock_route(route_path, method, integration))
                        continue
                    if integration.get("type") != "aws_proxy":
                        continue
                    security = operation.get("security") or []
                    names = [name for entry in security for name in entry if name in self.authorizers]
                    self.routes.append(
                        RouteSpec(
                            path=route_path,
                            method=method.upper(),
                            function=_function_of(integration["uri"]),
                            authorizer=names[0] if names else None,
                        )
                    )
            # Resolved now: a header may depend on a parameter (CorsAllowOrigin).
            responses = self.resolve_static(body.get("x-amazon-apigateway-gateway-responses") or {})
            self.gateway_responses.update(responses or {})
        for _, resource in self._resources("AWS::ApiGateway::Stage"):
            stage = resource["Properties"].get("StageName")
            if isinstance(stage, str):
                self.api_stage = stage
            elif isinstance(stage, dict) and "Ref" in stage:
                self.api_stage = str(self.parameter_value(stage["Ref"]))

    def _mock_route(self, path: str, method: str, integration: dict[str, Any]) -> MockRouteSpec:
        response = (integration.get("responses") or {}).get("default") or {}
        parameters = self.resolve_static(response.get("responseParameters")) or {}
        headers = {
            name.removeprefix("method.response.header."): literal
            for name, value in parameters.items()
            if (literal := static_mapping_value(value)) is not None
        }
        return MockRouteSpec(path, method.upper(), int(response.get("statusCode", 200)), headers)

    def resolve_parameter(self, value: Any) -> Any:
        """A property that may be a !Ref to a template parameter, as its value."""
        if isinstance(value, dict) and set(value) == {"Ref"}:
            return self.parameter_value(value["Ref"])
        return value

    def parameter_value(self, name: str) -> str:
        if name in self.parameters:
            return self.parameters[name]
        definition = self.cloudformation.get("Parameters", {}).get(name, {})
        return str(definition.get("Default", ""))

    # -- what CloudFormation decides before creating anything ----------------------------------
    def condition(self, name: str) -> bool:
        """A template condition's value for these parameter values."""
        definition = self.cloudformation.get("Conditions", {}).get(name)
        if definition is None:
            raise TemplateError(f"unknown condition {name!r}")
        return bool(self._condition_value(definition))

    def _condition_value(self, expression: Any) -> Any:
        if not isinstance(expression, dict) or len(expression) != 1:
            return expression
        ((function, argument),) = expression.items()
        if function == "Fn::Equals":
            left, right = (self._condition_value(self.resolve_static(part)) for part in argument)
            return str(left) == str(right)
        if function == "Fn::Not":
            return not self._condition_value(argument[0])
        if function == "Fn::And":
            return all(self._condition_value(part) for part in argument)
        if function == "Fn::Or":
            return any(self._condition_value(part) for part in argument)
        if function == "Condition":
            return self.condition(argument)
        resolved = self.resolve_static(expression)
        if resolved == expression:
            raise TemplateError(f"cannot evaluate condition expression {expression}")
        return resolved

    def resolve_static(self, value: Any) -> Any:
        """`value` with what CloudFormation settles from parameters alone: `Fn::If` branches
        chosen, `AWS::NoValue` removed (the key or list item disappears), `Ref`s to parameters
        replaced by their values. Intrinsics on resources are left for the endpoint to resolve."""
        resolved = self._resolve_static(value)
        return None if resolved is _NO_VALUE else resolved

    def _resolve_static(self, value: Any) -> Any:
        if isinstance(value, list):
            resolved = [self._resolve_static(item) for item in value]
            return [item for item in resolved if item is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if set(value) == {"Ref"}:
            name = value["Ref"]
            if name == "AWS::NoValue":
                return _NO_VALUE
            if name in self.cloudformation.get("Parameters", {}):
                return self.parameter_value(name)
            return value
        if set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):
            # Only a string made of parameters is settled here (`'${CorsAllowOrigin}'`).
            text = value["Fn::Sub"]
            parameters = self.cloudformation.get("Parameters", {})
            if all(name in parameters for name in _SUB_NAME.findall(text)):
                return _SUB_NAME.sub(lambda match: self.parameter_value(match.group(1)), text)
            return value
        if set(value) == {"Fn::If"}:
            condition, when_true, when_false = value["Fn::If"]
            return self._resolve_static(when_true if self.condition(condition) else when_false)
        items = {key: self._resolve_static(item) for key, item in value.items()}
        return {key: item for key, item in items.items() if item is not _NO_VALUE}

    def environment_parameters(self) -> dict[str, str]:
        """Environment variable -> the template parameter that sets it (`VAR: !Ref Param`, also
        through `!If`), for turning a developer's environment into parameter overrides."""
        found: dict[str, str] = {}
        parameters = self.cloudformation.get("Parameters", {})
        for _, resource in self._resources("AWS::Lambda::Function"):
            variables = resource["Properties"].get("Environment", {}).get("Variables", {})
            for name, value in variables.items():
                for ref in _parameter_refs(value):
                    if ref in parameters:
                        found.setdefault(name, ref)
        return found

    # -- provisioning --------------------------------------------------------------------------
    def provisioning_template(self) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
        """The data-plane part of the stack, plus outputs that make the endpoint resolve every
        intrinsic the local runtime needs (function environments, queue URLs and ARNs).

        Returns the template and a map output-name -> (what, key) to read the outputs back.
        Derived once: callers must not mutate it.
        """
        if self._provisioning is None:
            self._provisioning = self._derive_provisioning_template()
        return self._provisioning

    def _derive_provisioning_template(self) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
        cfn = copy.deepcopy(self.cloudformation)
        kept = {
            lid: self.resolve_static(res)
            for lid, res in cfn["Resources"].items()
            if res["Type"] in DATA_PLANE_TYPES
            and ("Condition" not in res or self.condition(res["Condition"]))
        }
        for res in kept.values():
            res.pop("Condition", None)
        for lid in [lid for lid, res in kept.items() if res["Type"] == "AWS::Events::Rule"]:
            # Rules that invoke functions (schedules) are run by the local runtime instead.
            targets = [
                target
                for target in kept[lid]["Properties"].get("Targets", [])
                if not _references_any(target, set(self.functions))
            ]
            if targets:
                kept[lid]["Properties"]["Targets"] = targets
            else:
                del kept[lid]
        cfn["Resources"] = kept
        cfn["Outputs"] = {}
        lookups: dict[str, tuple[str, str]] = {}
        for index, expression in enumerate(self._environment_expressions()):
            output = f"LocalEnv{index}"
            cfn["Outputs"][output] = {"Value": json.loads(expression)}
            lookups[output] = ("expression", expression)
        for lid, res in kept.items():
            if res["Type"] == "AWS::SQS::Queue":
                cfn["Outputs"][f"LocalUrl{lid}"] = {"Value": {"Ref": lid}}
                cfn["Outputs"][f"LocalArn{lid}"] = {"Value": {"Fn::GetAtt": [lid, "Arn"]}}
                lookups[f"LocalUrl{lid}"] = ("queue_url", lid)
                lookups[f"LocalArn{lid}"] = ("queue_arn", lid)
        return cfn, lookups

    def _environment_expressions(self) -> list[str]:
        """Every distinct intrinsic (Ref, GetAtt, Sub...) used in a function's environment."""
        found = {
            json.dumps(value, sort_keys=True)
            for spec in self.functions.values()
            for value in spec.environment.values()
            if isinstance(value, dict)
        }
        return sorted(found)

    def function_environment(self, logical_id: str, resolved: dict[str, str]) -> dict[str, str]:
        """A function's environment with intrinsics replaced by what the endpoint resolved."""
        environment: dict[str, str] = {}
        for name, value in self.functions[logical_id].environment.items():
            if isinstance(value, dict):
                environment[name] = resolved.get(json.dumps(value, sort_keys=True), "")
            else:
                environment[name] = str(value)
        return environment


_SUB_NAME = re.compile(r"\$\{([^}]+)\}")


def static_mapping_value(value: Any) -> str | None:
    """An API Gateway mapping value that is a literal (`'*'` -> `*`); None for an expression
    such as `method.request.header.Origin`."""
    text = str(value)
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == "'" else None


def _parameter_refs(value: Any) -> list[str]:
    """Parameters a value is (`!Ref P`) or may be (`!If [c, !Ref P, ...]`)."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return [str(value["Ref"])]
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        return [ref for branch in value["Fn::If"][1:] for ref in _parameter_refs(branch)]
    return []


def _references_any(value: Any, names: set[str]) -> bool:
    text = json.dumps(value)
    return any(f'"{name}"' in text or "${" + name in text for name in names)


def _function_of(uri: Any) -> str:
    text = json.dumps(uri)
    match = _FUNCTION_ARN.search(text)
    if match:
        return match.group(1)
    if isinstance(uri, dict) and "Fn::Sub" in uri and isinstance(uri["Fn::Sub"], list):
        for value in uri["Fn::Sub"][1].values():
            if isinstance(value, dict) and "Fn::GetAtt" in value:
                return str(value["Fn::GetAtt"][0])
    raise TemplateError(f"cannot find the Lambda function in integration URI {text}")
