"""The embedded local runtime behind `baton dev`: template.yaml on one laptop, no Docker, no account.

1. An AWS-protocol endpoint: moto server on loopback with IAM enforced (every request is
   authenticated and authorized, as on AWS), or whatever AWS_ENDPOINT_URL names.
2. The model: OPENAI_BASE_URL if set, else Baton's local model simulator.
3. The template translated by the SAM translator, with parameter values only: explicit
   `--parameter-overrides`, else what the developer's environment says (OPENAI_BASE_URL ->
   LlmEndpoint, BATON_MODEL -> ModelName, ... as the template maps them), else the simulator.
   Its data-plane resources and execution roles are created there.
4. Every function run in execution-environment processes (functions.py) under the credentials of
   its own role, assumed through STS; the environment is the template's, as CloudFormation
   resolved it, never edited afterwards.
5. Every SQS event source polled as the template declares it; the API served on 127.0.0.1. These
   play the Lambda service and API Gateway, so they call AWS as the runtime's own admin identity.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from baton_dev.runtime.api_gateway import LocalApiGateway
from baton_dev.runtime.conditions import parameter_problems
from baton_dev.runtime.functions import Credentials, LocalFunction
from baton_dev.runtime.provision import ProvisionedStack, bootstrap_admin, provision
from baton_dev.runtime.schedules import ScheduleSource
from baton_dev.runtime.sqs_source import SqsEventSource
from baton_dev.runtime.template import AppTemplate, TemplateError
from baton_dev.simulator import ModelSimulator, SimulatorConfig
from baton_dev.state import remove_state, write_state

logger = logging.getLogger("baton.runtime")

# Requests moto serves before it authenticates every request: exactly the three that create the
# runtime's admin identity (provision.bootstrap_admin). Everything after is signed and authorized.
UNAUTHENTICATED_BOOTSTRAP_REQUESTS = 3
# What the local "Lambda service" adds to every function's environment (a template value wins):
# there is no X-Ray daemon locally, so Powertools tracing stays off. Metrics stay on, as on Lambda:
# Powertools prints EMF to stdout, which is the function's log (`baton stats` reads it back).
LOCAL_SERVICE_DEFAULTS = {"POWERTOOLS_TRACE_DISABLED": "true"}
# Environments of each function kept started and idle (after the first, in the background): the
# second concurrent invocation of a function does not wait seconds for a cold start on a busy laptop.
WARM_ENVIRONMENTS = 2
# How long a stop waits for event sources and schedules to finish what they are doing, in all.
STOP_JOIN_S = 3.0
# Where a provider key given to `baton dev` as OPENAI_API_KEY is stored, as a deploy would.
LOCAL_API_KEY_SECRET = "baton-local/openai-api-key"  # noqa: S105 - a secret's name
LOCAL_PROVIDER_WEBHOOK_SECRET = "baton-local/provider-webhook-secret"  # noqa: S105 - a secret's name
PROVIDER_WEBHOOK_PATH = "/v1/provider-webhooks/openai"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process that should listen on {port} exited ({process.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s:.0f}s")


def _store_secret(name: str, value: str) -> str:
    secrets = boto3.client("secretsmanager")
    try:
        return str(secrets.create_secret(Name=name, SecretString=value)["ARN"])
    except secrets.exceptions.ResourceExistsException:
        return str(secrets.put_secret_value(SecretId=name, SecretString=value)["ARN"])


def _die_with_parent() -> None:
    """Linux: the moto server goes when `baton dev` goes, even on SIGKILL (no orphaned servers)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class RuntimeOptions:
    template: Path = Path("template.yaml")
    port: int = 3000
    state_dir: Path = Path(".baton")
    stack_name: str = "baton-local"
    region: str = "us-east-1"
    parameters: dict[str, str] = field(default_factory=dict)
    simulator: SimulatorConfig | None = None
    # Run scheduled functions this often instead of their rate(...) (fault drills, tests).
    schedule_every_s: float | None = None
    # Added to every function's environment like the local service's own variables (the bench
    # sets AWS_LAMBDA_EXEC_WRAPPER to measure inside the function processes).
    service_environment: dict[str, str] = field(default_factory=dict)
    # Parameter values CloudFormation would refuse (AllowedValues, patterns, ranges, Rules) stop
    # the start, as they stop `sam deploy`; a fault drill that wants seconds-long timeouts says so
    # here and is started with a warning.
    allow_undeployable_parameters: bool = False


def moto_server_command(port: int) -> list[str]:
    """The one way to start the local AWS endpoint (`baton dev`, the chaos suite): moto's server
    with the fixes in baton_dev.runtime.moto_server (a transaction backs up the items it touches,
    not whole tables; per-request reflection computed once; no access log)."""
    return [sys.executable, "-m", "baton_dev.runtime.moto_server", "-H", "127.0.0.1", "-p", str(port)]


class LocalRuntime:
    def __init__(self, options: RuntimeOptions) -> None:
        self.options = options
        self.region = options.region
        self._moto: subprocess.Popen[bytes] | None = None
        self.simulator: ModelSimulator | None = None
        self.functions: dict[str, LocalFunction] = {}
        self.sources: list[SqsEventSource] = []
        self.schedules: list[ScheduleSource] = []
        self.api: LocalApiGateway | None = None
        self.stack: ProvisionedStack | None = None
        self.endpoint_url = ""
        self.model_url = ""
        self.app: AppTemplate | None = None
        self.admin: Credentials | None = None
        # Parameter values the stack was created with, and where each came from.
        self.parameters: dict[str, str] = {}
        self.parameter_sources: dict[str, str] = {}
        self.iam_enforced = False
        # The simulator signs its background responses' webhooks with this (Secrets Manager has it too).
        self.provider_webhook_secret: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> LocalRuntime:
        started = time.monotonic()
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        self._start_endpoint()
        self._start_model()
        self.app = self._load_template()
        self.stack = provision(self.app, stack_name=self.options.stack_name)
        self._load_functions()
        self._start_sources()
        self._start_schedules()
        self.api = LocalApiGateway(self.app, self.functions, port=self.options.port, region=self.region)
        self.api.sources = self.sources
        self.api.schedules = self.schedules
        self.api.start()
        if self.simulator is not None and self.provider_webhook_secret is not None:
            self.simulator.set_webhook(self.api.url + PROVIDER_WEBHOOK_PATH, self.provider_webhook_secret)
        self._write_state()
        logger.info(
            "local stack ready in %.1fs: API %s, %d functions, %d event sources, AWS endpoint %s, model %s",
            time.monotonic() - started,
            self.api.url,
            len(self.functions),
            len(self.sources),
            self.endpoint_url,
            self.model_url,
        )
        return self

    def stop(self) -> None:
        if self.api is not None:
            self.api.stop()
        # Signal every poller first, then join them all within one short deadline: a poller in
        # a batch finishes it; one in a 20 s long poll is left to the process's exit.
        for source in self.sources:
            source.signal_stop()
        for schedule in self.schedules:
            schedule.signal_stop()
        deadline = time.monotonic() + STOP_JOIN_S
        for source in self.sources:
            source.stop(timeout=max(0.0, deadline - time.monotonic()))
        for schedule in self.schedules:
            schedule.stop(timeout=max(0.0, deadline - time.monotonic()))
        for function in self.functions.values():
            function.close()
        if self.simulator is not None:
            self.simulator.stop()
        if self._moto is not None:
            self._moto.terminate()
            try:
                self._moto.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._moto.kill()
        # Only our own state file: another `baton dev` may have started since.
        remove_state(self.options.state_dir / "dev.json", os.getpid())
        logger.info("local stack stopped")

    def __enter__(self) -> LocalRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- parts -------------------------------------------------------------------------------------
    def _start_endpoint(self) -> None:
        os.environ.setdefault("AWS_DEFAULT_REGION", self.region)
        os.environ.setdefault("AWS_REGION", self.region)
        external = os.environ.get("AWS_ENDPOINT_URL")
        if external:
            self.endpoint_url = external
            logger.info("using the AWS endpoint at %s (AWS_ENDPOINT_URL)", external)
            return
        port = free_port()
        log = (self.options.state_dir / "moto.log").open("wb")
        self._moto = subprocess.Popen(
            moto_server_command(port),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            env={
                **os.environ,
                # IAM as on AWS: a permission missing from template.yaml fails the call locally.
                "INITIAL_NO_AUTH_ACTION_COUNT": str(UNAUTHENTICATED_BOOTSTRAP_REQUESTS),
                # SAM attaches AWS managed policies (AWSLambdaSQSQueueExecutionRole...) by ARN.
                "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
            },
        )
        wait_for_port(port, timeout_s=60, process=self._moto)
        self.endpoint_url = f"http://127.0.0.1:{port}"
        os.environ["AWS_ENDPOINT_URL"] = self.endpoint_url
        self.admin = bootstrap_admin(self.endpoint_url, self.region)
        self.iam_enforced = True
        os.environ["AWS_ACCESS_KEY_ID"] = self.admin.access_key_id
        os.environ["AWS_SECRET_ACCESS_KEY"] = self.admin.secret_access_key
        os.environ.pop("AWS_SESSION_TOKEN", None)
        logger.info("moto server on %s (IAM enforced)", self.endpoint_url)

    def _start_model(self) -> None:
        configured = os.environ.get("OPENAI_BASE_URL")
        if configured:
            self.model_url = configured
            logger.info("model endpoint %s (OPENAI_BASE_URL)", configured)
            return
        self.simulator = ModelSimulator(self.options.simulator or SimulatorConfig.from_env()).start()
        self.model_url = self.simulator.base_url

    def _load_template(self) -> AppTemplate:
        """The template with parameter values only, as `sam deploy --parameter-overrides` gives them:
        explicit overrides win over what `baton dev`'s own environment says."""
        explicit = dict(self.options.parameters)
        app = AppTemplate.load(self.options.template, explicit, region=self.region)
        derived = self._environment_parameters(app, explicit)
        self.parameters = {**derived, **explicit}
        self.parameter_sources.update({name: "--parameter-overrides" for name in explicit})
        for name, value in sorted(derived.items()):
            shown = value if "secret" not in name.lower() else value.rsplit(":", 1)[-1]
            logger.info("parameter %s=%s (%s)", name, shown, self.parameter_sources[name])
        self._check_deployable(app)
        if not derived:
            return app
        return AppTemplate.load(self.options.template, self.parameters, region=self.region)

    def _check_deployable(self, app: AppTemplate) -> None:
        """Values `sam deploy` would refuse are refused here too (a stack that runs only locally
        would hide the failure until the deploy), unless the options allow them."""
        problems = parameter_problems(app.cloudformation, self.parameters)
        if not problems:
            return
        listed = "; ".join(problems)
        if not self.options.allow_undeployable_parameters:
            raise TemplateError(
                f"CloudFormation would refuse these parameter values, so `sam deploy` would fail: {listed}"
            )
        logger.warning("parameter values `sam deploy` would refuse (allowed for this local run): %s", listed)

    def _environment_parameters(self, app: AppTemplate, explicit: dict[str, str]) -> dict[str, str]:
        derived: dict[str, str] = {}
        by_variable = app.environment_parameters()
        for variable, parameter in by_variable.items():
            value = os.environ.get(variable)
            if value is not None and parameter not in explicit:
                derived[parameter] = value
                self.parameter_sources[parameter] = f"from ${variable}"
        endpoint = by_variable.get("OPENAI_BASE_URL")
        if endpoint and endpoint not in explicit and self.simulator is not None:
            derived[endpoint] = self.model_url
            self.parameter_sources[endpoint] = "the local model simulator"
        secret = by_variable.get("OPENAI_API_KEY_SECRET_ARN")
        key = os.environ.get("OPENAI_API_KEY")
        # A real provider's key goes where a deploy keeps it: Secrets Manager, named by a parameter.
        if secret and key and secret not in explicit and self.simulator is None:
            derived[secret] = _store_secret(LOCAL_API_KEY_SECRET, key)
            self.parameter_sources[secret] = "$OPENAI_API_KEY stored in Secrets Manager"
        # The simulator plays a provider with webhooks: a fresh signing secret, kept where a deploy
        # keeps it (Secrets Manager, named by ProviderWebhookSecretArn).
        webhook_secret = by_variable.get("PROVIDER_WEBHOOK_SECRET_ARN")
        if webhook_secret and webhook_secret not in explicit and self.simulator is not None:
            self.provider_webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
            derived[webhook_secret] = _store_secret(
                LOCAL_PROVIDER_WEBHOOK_SECRET, self.provider_webhook_secret
            )
            self.parameter_sources[webhook_secret] = "a signing secret the local model simulator shares"
        return derived

    def _load_functions(self) -> None:
        assert self.app is not None and self.stack is not None
        log_dir = self.options.state_dir / "logs"
        service = {
            **LOCAL_SERVICE_DEFAULTS,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            **self.options.service_environment,
        }
        for logical_id, spec in self.app.functions.items():
            role = self.stack.roles.get(spec.role or "")
            self.functions[logical_id] = LocalFunction(
                spec,
                self.app.function_environment(logical_id, self.stack.resolved),
                self.region,
                credentials=role.current if role is not None else self._runtime_credentials,
                log_dir=log_dir,
                service_environment=service,
            )
        # Every function's first environment starts at once (the cores share the imports), then
        # the runtime waits for each one's init, so an import error stops `baton dev` here.
        for function in self.functions.values():
            function.prepare()
        for function in self.functions.values():
            function.finish_loading()
        for function in self.functions.values():
            function.keep_warm(WARM_ENVIRONMENTS)
        logger.info("function logs in %s/<Function>.log", log_dir)

    def _runtime_credentials(self) -> Credentials:
        """A function without a role of its own in the template calls AWS as the runtime does."""
        if self.admin is not None:
            return self.admin
        return Credentials(
            os.environ.get("AWS_ACCESS_KEY_ID", "local"),
            os.environ.get("AWS_SECRET_ACCESS_KEY", "local"),
            os.environ.get("AWS_SESSION_TOKEN"),
        )

    def _start_sources(self) -> None:
        assert self.app is not None and self.stack is not None
        for spec in self.app.sqs_sources:
            source = SqsEventSource(
                spec,
                self.functions[spec.function],
                queue_url=self.stack.queue_urls[spec.queue],
                queue_arn=self.stack.queue_arns[spec.queue],
                region=self.region,
            )
            source.start()
            self.sources.append(source)

    def _start_schedules(self) -> None:
        assert self.app is not None
        for spec in self.app.schedules:
            schedule = ScheduleSource(
                spec, self.functions[spec.function], region=self.region, every_s=self.options.schedule_every_s
            )
            schedule.start()
            self.schedules.append(schedule)

    def state(self) -> dict[str, Any]:
        assert self.app is not None and self.stack is not None and self.api is not None
        shared_env = self.app.function_environment(next(iter(self.app.functions)), self.stack.resolved)
        return {
            "pid": os.getpid(),
            "api_url": self.api.url,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "model_url": self.model_url,
            "stack_name": self.options.stack_name,
            "jobs_table": shared_env.get("JOBS_TABLE"),
            "bucket": shared_env.get("BUCKET_NAME"),
            "event_bus": shared_env.get("EVENT_BUS_NAME"),
            "queues": self.stack.queue_urls,
            "functions": sorted(self.functions),
            "event_sources": [source.spec.logical_id for source in self.sources],
            "schedules": [schedule.spec.logical_id for schedule in self.schedules],
            "parameters": self.parameters,
            "iam_enforced": self.iam_enforced,
            # Absolute: commands read it from any directory (`baton stats`).
            "logs": str((self.options.state_dir / "logs").resolve()),
            # The runtime's own (admin) identity on the local endpoint: moto's keys, not AWS's.
            "credentials": {
                "aws_access_key_id": self.admin.access_key_id,
                "aws_secret_access_key": self.admin.secret_access_key,
            }
            if self.admin is not None
            else None,
        }

    def _write_state(self) -> None:
        write_state(self.options.state_dir / "dev.json", self.state())
