"""The embedded local runtime behind `baton dev`: template.yaml on one laptop, no Docker, no account.

1. An AWS-protocol endpoint: moto server on loopback, or whatever AWS_ENDPOINT_URL names.
2. The template translated by the SAM translator; its data-plane resources created there.
3. Every function loaded in-process with its template environment (Refs resolved by the endpoint).
4. Every SQS event source polled as the template declares it; the API served on 127.0.0.1.
5. The model: OPENAI_BASE_URL if set, else Baton's local model simulator.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baton_dev.runtime.api_gateway import LocalApiGateway
from baton_dev.runtime.functions import LocalFunction
from baton_dev.runtime.provision import ProvisionedStack, provision
from baton_dev.runtime.schedules import ScheduleSource
from baton_dev.runtime.sqs_source import SqsEventSource
from baton_dev.runtime.template import AppTemplate
from baton_dev.simulator import ModelSimulator, SimulatorConfig
from baton_dev.state import write_state

logger = logging.getLogger("baton.runtime")

LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_SESSION_TOKEN": "local",
}
# Locally there is no X-Ray daemon or CloudWatch agent: Powertools tracing and metrics stay off.
LOCAL_POWERTOOLS = {"POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_DISABLED": "true"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s:.0f}s")


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

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> LocalRuntime:
        started = time.monotonic()
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        self._start_endpoint()
        self._start_model()
        self.app = AppTemplate.load(self.options.template, self.options.parameters, region=self.region)
        self.stack = provision(self.app, stack_name=self.options.stack_name)
        self._load_functions()
        self._start_sources()
        self._start_schedules()
        self.api = LocalApiGateway(self.app, self.functions, port=self.options.port, region=self.region)
        self.api.sources = self.sources
        self.api.schedules = self.schedules
        self.api.start()
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
        # Signal every poller first so their last long polls end together, then join.
        for source in self.sources:
            source.signal_stop()
        for schedule in self.schedules:
            schedule.signal_stop()
        for source in self.sources:
            source.stop(timeout=2.0)
        for schedule in self.schedules:
            schedule.stop(timeout=2.0)
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
        state = self.options.state_dir / "dev.json"
        # Only our own state file: another `baton dev` may have started since.
        if state.exists() and json.loads(state.read_text() or "{}").get("pid") == os.getpid():
            state.unlink()
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
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        wait_for_port(port, timeout_s=60)
        self.endpoint_url = f"http://127.0.0.1:{port}"
        for name, value in LOCAL_CREDENTIALS.items():
            os.environ[name] = value
        os.environ["AWS_ENDPOINT_URL"] = self.endpoint_url
        logger.info("moto server on %s", self.endpoint_url)

    def _start_model(self) -> None:
        configured = os.environ.get("OPENAI_BASE_URL")
        if configured:
            self.model_url = configured
            logger.info("model endpoint %s (OPENAI_BASE_URL)", configured)
            return
        self.simulator = ModelSimulator(self.options.simulator or SimulatorConfig.from_env()).start()
        self.model_url = self.simulator.base_url

    def _load_functions(self) -> None:
        assert self.app is not None and self.stack is not None
        environments = {
            logical_id: self._function_environment(logical_id) for logical_id in self.app.functions
        }
        # Variables every function shares (the template's Globals) are set for the whole process;
        # per-function ones (e.g. POWERTOOLS_SERVICE_NAME) apply while that function is imported.
        shared = dict(set.intersection(*(set(env.items()) for env in environments.values())))
        os.environ.update(shared)
        os.environ.update(LOCAL_POWERTOOLS)
        # Metrics are off locally; Powertools still warns on every invocation that has none.
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        for logical_id, environment in environments.items():
            function = LocalFunction(self.app.functions[logical_id], environment, self.region)
            function.load()
            self.functions[logical_id] = function

    def _function_environment(self, logical_id: str) -> dict[str, str]:
        assert self.app is not None and self.stack is not None
        environment = self.app.function_environment(logical_id, self.stack.resolved)
        environment.update(LOCAL_POWERTOOLS)
        environment["AWS_LAMBDA_FUNCTION_NAME"] = logical_id
        if not environment.get("OPENAI_BASE_URL"):
            environment["OPENAI_BASE_URL"] = self.model_url
        return environment

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
            "parameters": self.options.parameters,
        }

    def _write_state(self) -> None:
        write_state(self.options.state_dir / "dev.json", self.state())
