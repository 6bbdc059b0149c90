"""Which Baton the CLI talks to: a running `baton dev` (its state file) or a deployed stack."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import boto3

from baton.tenants import TenantStore
from baton_dev.state import pid_alive, read_state, user_state_file


class TargetError(Exception):
    pass


@dataclass(frozen=True)
class Target:
    api_url: str
    jobs_table: str
    bucket: str | None
    endpoint_url: str | None
    region: str
    # Every SQS queue by template logical id (e.g. "InferQueue", "InferDeadLetterQueue") -> URL.
    queues: dict[str, str] = field(default_factory=dict, hash=False)
    # A local stack's own identity on its endpoint (moto enforces IAM): {aws_access_key_id, ...}.
    credentials: dict[str, str] | None = field(default=None, hash=False)

    def apply_aws_environment(self) -> None:
        """Point boto3 (and the shared domain package) at this target's endpoint."""
        os.environ.setdefault("AWS_DEFAULT_REGION", self.region)
        if self.endpoint_url:
            os.environ["AWS_ENDPOINT_URL"] = self.endpoint_url
            if self.credentials:
                os.environ["AWS_ACCESS_KEY_ID"] = self.credentials["aws_access_key_id"]
                os.environ["AWS_SECRET_ACCESS_KEY"] = self.credentials["aws_secret_access_key"]
                os.environ.pop("AWS_SESSION_TOKEN", None)
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")

    def tenants(self) -> TenantStore:
        self.apply_aws_environment()
        return TenantStore(self.jobs_table)


SAMCONFIG = Path(__file__).resolve().parents[2] / "samconfig.toml"


def stack_region(stack: str, samconfig: Path = SAMCONFIG) -> str:
    """The region of a deployed stack: AWS's own configuration (AWS_REGION as the AWS CLI v2 reads
    it, AWS_DEFAULT_REGION, the profile), else the region of the samconfig.toml profile that deploys
    a stack of that name, as `sam deploy` would."""
    configured = os.environ.get("AWS_REGION") or boto3.session.Session().region_name
    if configured:
        return str(configured)
    config = tomllib.loads(samconfig.read_text()) if samconfig.is_file() else {}
    for environment in config.values():
        if not isinstance(environment, dict):
            continue
        deploy = environment.get("deploy", {}).get("parameters", {})
        named = deploy.get("stack_name") or environment.get("global", {}).get("parameters", {}).get(
            "stack_name"
        )
        if named == stack and deploy.get("region"):
            return str(deploy["region"])
    raise TargetError(
        f"no AWS region for stack {stack!r}: set AWS_REGION (or a region in your AWS profile), or deploy "
        f"it with a {samconfig.name} profile whose stack_name is {stack!r} and which sets region"
    )


def resolve_target(*, stack: str | None = None, state_dir: Path | None = None) -> Target:
    """A deployed stack by name; else the local stack in `state_dir`; else the one `baton dev`
    recorded for this user (`baton_dev.state.user_state_file`), found from any directory."""
    if stack:
        region = stack_region(stack)
        outputs = {
            output["OutputKey"]: output["OutputValue"]
            for output in boto3.client("cloudformation", region_name=region).describe_stacks(StackName=stack)[
                "Stacks"
            ][0]["Outputs"]
        }
        return Target(
            api_url=outputs["ApiUrl"],
            jobs_table=outputs["JobsTableName"],
            bucket=outputs.get("BucketName"),
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
            region=region,
            queues={
                key.removesuffix("Url"): value for key, value in outputs.items() if key.endswith("QueueUrl")
            },
        )
    state_file = state_dir / "dev.json" if state_dir is not None else user_state_file()
    state = read_state(state_file)
    if state is None:
        raise TargetError(
            f"no running local stack ({state_file} missing): start `baton dev`, or pass --stack NAME"
        )
    if not pid_alive(state.get("pid")):
        raise TargetError(
            f"no running local stack (the one recorded in {state_file}, pid {state.get('pid')}, "
            "has stopped): start `baton dev`, or pass --stack NAME"
        )
    return Target(
        api_url=state["api_url"],
        jobs_table=state["jobs_table"],
        bucket=state.get("bucket"),
        endpoint_url=state["endpoint_url"],
        region=state["region"],
        queues=dict(state.get("queues") or {}),
        credentials=state.get("credentials"),
    )
