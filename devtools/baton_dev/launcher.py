"""The one way to start Baton's local stack: `baton dev`, `baton demo`, the integration, build and
chaos suites and the bench all go through here, so they cannot drift apart.

A stack is described by a `StackConfig`: a template (or a built artifact's folder, as `sam build`
leaves it), a state dir, template parameter overrides - the only way to configure the stack, as
for a deploy - and the model simulator's settings. Then either

- `run_in_process(config)`: the runtime in this process (`baton dev` itself, the bench's
  instrumented stack), or
- `LaunchedStack(config)`: `baton dev` in a process of its own, ready once it recorded itself in
  `<state_dir>/dev.json`; the handle has the endpoints, the runtime's identity, `stop`, and `kill`
  and `restart` for fault drills.

A launched stack never sees the launching process's AWS_*, OPENAI_*, BATON_* or POWERTOOLS_*
variables unless asked to (`inherit_environment`): a developer's shell cannot configure it behind
the template's back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from baton_dev.simulator import SimulatorConfig
from baton_dev.state import STATE_ENV

if TYPE_CHECKING:
    from baton_dev.runtime.local import LocalRuntime, RuntimeOptions

__all__ = [
    "CONFIGURING_PREFIXES",
    "LOCAL_PARAMETERS",
    "LaunchedStack",
    "StackConfig",
    "StackStartError",
    "run_in_process",
]

REPO = Path(__file__).resolve().parents[2]
# Local receivers (webhook sinks, the demo's) listen on 127.0.0.1: the deployed default (false)
# would refuse them. An explicit override still wins.
LOCAL_PARAMETERS: Mapping[str, str] = {"WebhookAllowPrivateNetworks": "true"}
# Variables that would configure a stack behind its template (or point it at another endpoint).
CONFIGURING_PREFIXES = ("AWS_", "OPENAI_", "BATON_", "POWERTOOLS_")
# A deadline, not a speed goal: on a 2-core machine at load 30 a start has taken 140 s.
START_TIMEOUT_S = 360.0
# Linux: `baton dev` gets SIGTERM when its launcher dies, however it dies (no orphaned stacks).
# Done in the child before exec, not in a preexec_fn (unsafe while the launcher runs threads).
_ORPHAN_GUARD = (
    "import ctypes, os, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


class StackStartError(RuntimeError):
    """The stack did not become ready (the message ends with the end of its log)."""


@dataclass(frozen=True)
class StackConfig:
    # A SAM template, or a folder holding one (`.aws-sam/build`: the deploy rehearsal).
    template: Path = REPO / "template.yaml"
    state_dir: Path = Path(".baton")
    # Template parameter overrides, as `sam deploy --parameter-overrides` takes them.
    parameters: Mapping[str, str] = field(default_factory=dict)
    # The model simulator's settings (None: its defaults, or a developer's BATON_SIM_* when inherited).
    simulator: SimulatorConfig | None = None
    port: int = 0  # of the local API; 0: a free one, kept across restarts
    stack_name: str = "baton-local"
    # Run scheduled functions this often instead of their rate(...) (fault drills, tests).
    schedule_every_s: float | None = None
    # An AWS endpoint and a model that already run (the chaos suite's: they outlive a runtime kill).
    aws_endpoint_url: str | None = None
    model_url: str | None = None
    # Where `baton dev` records itself for the other commands; None: <state_dir>/dev.json, so a
    # launched stack never replaces the record of the developer's own `baton dev`.
    user_state_file: Path | None = None
    # The launching process's whole environment goes to the stack (`baton demo` run by a developer
    # who set OPENAI_BASE_URL for a real model); tests and the bench leave it off.
    inherit_environment: bool = False
    log_level: str = "INFO"
    # Parameter values `sam deploy` would refuse, allowed with a warning (a fault drill's
    # seconds-long timeouts); else the stack refuses to start on them.
    allow_undeployable_parameters: bool = False

    def template_file(self) -> Path:
        return self.template / "template.yaml" if self.template.is_dir() else self.template

    def all_parameters(self) -> dict[str, str]:
        return {**LOCAL_PARAMETERS, **{str(k): str(v) for k, v in self.parameters.items()}}

    def runtime_options(
        self, *, port: int | None = None, service_environment: Mapping[str, str] | None = None
    ) -> RuntimeOptions:
        """The runtime's options for this stack, in this process."""
        from baton_dev.runtime.local import RuntimeOptions

        return RuntimeOptions(
            template=self.template_file(),
            port=self.port if port is None else port,
            state_dir=self.state_dir,
            stack_name=self.stack_name,
            parameters=self.all_parameters(),
            simulator=self.simulator,
            schedule_every_s=self.schedule_every_s,
            service_environment=dict(service_environment or {}),
            allow_undeployable_parameters=self.allow_undeployable_parameters,
        )

    def command(self, port: int) -> list[str]:
        """`baton dev` with this stack's options (every parameter override spelt out)."""
        argv = [
            sys.executable,
            "-m",
            "baton_dev.cli",
            "dev",
            "--port",
            str(port),
            "--template",
            str(self.template_file()),
            "--state-dir",
            str(self.state_dir),
            "--stack-name",
            self.stack_name,
            "--log-level",
            self.log_level,
        ]
        if self.schedule_every_s is not None:
            argv += ["--schedule-every", f"{self.schedule_every_s:g}"]
        if self.allow_undeployable_parameters:
            argv.append("--allow-undeployable-parameters")
        for name, value in self.all_parameters().items():
            if any(character.isspace() for character in value):
                raise ValueError(f"parameter {name}: a value with white space cannot be passed ({value!r})")
            argv += ["--parameter-overrides", f"{name}={value}"]
        return argv

    def environment(self) -> dict[str, str]:
        """The environment of a launched `baton dev`."""
        base = dict(os.environ)
        if not self.inherit_environment:
            base = {key: value for key, value in base.items() if not key.startswith(CONFIGURING_PREFIXES)}
        base[STATE_ENV] = str(self.user_state_file or self.state_dir / "dev.json")
        if self.simulator is not None:
            base.update(self.simulator.to_env())
        if self.aws_endpoint_url:
            region = base.get("AWS_REGION", "us-east-1")
            base.update(
                AWS_ENDPOINT_URL=self.aws_endpoint_url,
                AWS_ACCESS_KEY_ID=base.get("AWS_ACCESS_KEY_ID", "local"),
                AWS_SECRET_ACCESS_KEY=base.get("AWS_SECRET_ACCESS_KEY", "local"),
                AWS_REGION=region,
                AWS_DEFAULT_REGION=region,
            )
        if self.model_url:
            base["OPENAI_BASE_URL"] = self.model_url
        return base


@contextmanager
def run_in_process(
    config: StackConfig,
    *,
    runtime_class: type[LocalRuntime] | None = None,
    service_environment: Mapping[str, str] | None = None,
) -> Iterator[LocalRuntime]:
    """The stack's runtime started in this process, stopped when the block ends."""
    from baton_dev.runtime.local import LocalRuntime, free_port

    cls = runtime_class or LocalRuntime
    options = config.runtime_options(port=config.port or free_port(), service_environment=service_environment)
    runtime = cls(options)
    try:
        runtime.start()
        yield runtime
    finally:
        runtime.stop()


class LaunchedStack:
    """`baton dev` for `config` in a process of its own. `with LaunchedStack(config) as stack:`, or
    `start()` / `stop()`; `kill()` (SIGKILL, as a host dies) and `restart()` for fault drills: the
    same state dir, stack and port, so the API comes back where it was."""

    name = "baton dev"

    def __init__(self, config: StackConfig) -> None:
        from baton_dev.runtime.local import free_port

        self.config = config
        self.port = config.port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.state: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------------------
    def spawn(self) -> None:
        """Start the process (`wait_ready` waits for it to serve)."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.state = {}
        with self.log_path.open("ab") as log:
            log.write(f"\n===== baton dev started at {time.time():.3f}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-c", _ORPHAN_GUARD, *self.config.command(self.port)],
                cwd=REPO,
                env=self.config.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> Self:
        """Until *this* process recorded itself in <state_dir>/dev.json (a killed one's record stays
        behind, with its own pid) and its API listens."""
        from baton_dev.runtime.local import wait_for_port
        from baton_dev.state import read_state

        process = self.process
        assert process is not None, "spawn() first"
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                code = process.returncode
                raise StackStartError(f"baton dev exited ({code}) while starting:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise StackStartError(f"baton dev not ready after {timeout_s:.0f}s:\n{self.tail()}")
            try:
                state = read_state(self.state_file) or {}
            except (OSError, ValueError):
                state = {}
            if state.get("pid") == process.pid:
                break
            time.sleep(0.1)
        try:
            wait_for_port(self.port, timeout_s=max(1.0, deadline - time.monotonic()), process=process)
        except (TimeoutError, RuntimeError) as error:
            raise StackStartError(f"{error}:\n{self.tail()}") from error
        self.state = state
        return self

    def start(self, timeout_s: float = START_TIMEOUT_S) -> Self:
        self.spawn()
        try:
            return self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM, then SIGKILL after `timeout_s`. True if it stopped on SIGTERM (or was not running)."""
        process = self.process
        if process is None or process.poll() is not None:
            return True
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            return False

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind. Its AWS state lives on only in an external endpoint."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def restart(self, timeout_s: float = START_TIMEOUT_S) -> Self:
        """Kill whatever still runs, then start again on the same state dir, stack and port."""
        self.kill()
        return self.start(timeout_s)

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what it is --------------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    @property
    def state_file(self) -> Path:
        return self.config.state_dir / "dev.json"

    @property
    def log_path(self) -> Path:
        """`baton dev`'s own output (the functions' logs are in <state_dir>/logs/)."""
        return self.config.state_dir / "dev.log"

    @property
    def pid(self) -> int:
        assert self.process is not None, "baton dev was never started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint_url(self) -> str:
        return str(self.state["endpoint_url"])

    @property
    def region(self) -> str:
        return str(self.state["region"])

    @property
    def simulator_url(self) -> str:
        """The model's base URL without /v1 (the simulator's /_sim/... control routes hang off it)."""
        return str(self.state["model_url"]).removesuffix("/v1")

    @property
    def credentials(self) -> dict[str, str]:
        """The runtime's own identity on its endpoint (moto enforces IAM), or moto's open default."""
        return dict(
            self.state.get("credentials") or {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
        )

    def aws(self, service: str) -> Any:
        """A boto3 client of the stack's endpoint with the runtime's identity."""
        import boto3

        return boto3.session.Session().client(  # type: ignore[call-overload]
            service, endpoint_url=self.endpoint_url, region_name=self.region, **self.credentials
        )

    def create_api_key(self, tenant: str, timeout_s: float = 120) -> dict[str, str]:
        """`baton keys create` for this stack: {"tenant", "api_key", "webhook_secret", ...}."""
        answer = subprocess.run(
            [sys.executable, "-m", "baton_dev.cli", "keys", "create", "--tenant", tenant],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**self.config.environment(), STATE_ENV: str(self.state_file)},
            timeout=timeout_s,
            check=False,
        )
        if answer.returncode != 0:
            raise RuntimeError(f"baton keys create failed ({answer.returncode}): {answer.stderr[-2000:]}")
        return dict(json.loads(answer.stdout))

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
