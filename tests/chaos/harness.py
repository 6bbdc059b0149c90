"""Fault-injection harness: many jobs through a real local Baton while things go wrong.

Three separate processes, so that killing one leaves the others standing:

* a moto server (all AWS state: queues, tables, the bucket) - it survives a runtime kill;
* the model simulator, standalone, with seeded random 429 / 503 / slow answers - its own request
  log (`GET /_sim/requests`) is the ground truth for "how many paid calls did each step make";
* `baton dev` pointed at both (AWS_ENDPOINT_URL, OPENAI_BASE_URL): the runtime under test, killed
  with SIGKILL mid-flight and restarted on the same stack, state dir and port.

The workload (`build_workload`) mixes plain prompts, per-prompt faults, poison prompts, webhooks to
receivers that are flaky, slow, busy, out for a while, gone or down for good (receivers.py), agent
loops and duplicated stage commands. `ChaosRun` drives it with a few client threads and a bounded
number of jobs in flight (moto's SQS slows down with deep queues), and `analyse` turns what was
observed into figures and a list of problems:
an empty list means every job ended in exactly one honest terminal state.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import math
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import boto3
import httpx
from rich import box
from rich.console import Console
from rich.table import Table

from baton.intake import keyed_job_id
from baton.models import StageCommand, Step
from baton_dev.client import TERMINAL_STATUSES as TERMINAL
from baton_dev.launcher import CONFIGURING_PREFIXES, LaunchedStack, StackConfig, StackStartError
from baton_dev.runtime.local import PROVIDER_WEBHOOK_PATH, free_port, moto_server_command, wait_for_port
from baton_dev.webhook_receiver import WebhookEvent

from .attribution import (
    WINDOW_HITS,
    Cause,
    Duplicate,
    InferLog,
    attribute,
    read_infer_log_file,
    store_latencies,
)
from .receivers import ChaosReceiver, ReceiverKind, account_deliveries, settled, start_receivers
from .side_work import SideWork

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

logger = logging.getLogger("baton.chaos")

ROOT = Path(__file__).resolve().parents[2]
TENANT = "chaos"
REGION = "us-east-1"
CHAT_PATH_SUFFIX = "/chat/completions"
# A background response's create (InferenceMode=background): the paid call. Its polls and cancels
# (GET /v1/responses/{id}, POST .../cancel) are not logged as calls.
RESPONSES_PATH_SUFFIX = "/responses"
# Reading every job (and every delivery log) back through the API goes at ~40 GETs/s on 2 cores
# (measured: 5,096 jobs in 120 s at the end of a 10,000-job run): the time allowed follows the size.
READ_BACK_S = 120.0
READ_BACK_PER_JOB_S = 0.05
SIM_CONTEXT_TOKENS = 32_768  # the simulator's default context window (the template's default too)
SIM_WEBHOOK_SECRET = "BATON_SIM_WEBHOOK_SECRET"  # the standalone simulator signs webhooks with it
KILL_AIM_S = 15.0  # how long the kill may wait for a moment with a job in its infer step
# Errors a step may honestly give up on once its retry budget (MaxAttempts) is spent.
RETRYABLE_MODEL_ERRORS = frozenset({"rate_limited", "model_unavailable", "timeout", "model_error"})
# Linux: a child gets SIGTERM when the harness dies, however it dies (no orphaned servers). Done in
# the child after exec, not in a preexec_fn (unsafe while client threads run).
_ORPHAN_GUARD = (
    "import ctypes, os, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)

SENTENCES = (
    "The quarterly report shows revenue grew in every region except the north.",
    "Customer support tickets doubled after the new billing system went live.",
    "Our warehouse in Lyon shipped twelve thousand parcels during the holiday week.",
    "The engineering team replaced the legacy queue with a managed service.",
    "Latency on the checkout page fell from nine hundred to three hundred milliseconds.",
    "Two suppliers missed their delivery dates because of a port strike.",
    "The board approved a budget for a second data centre next spring.",
    "Most churned customers cited missing integrations as their main reason.",
    "A new onboarding guide cut the time to first invoice by half.",
    "Security audits found no critical issues but several outdated libraries.",
    "The marketing campaign reached four million people and converted poorly.",
    "Field technicians asked for offline access to the maintenance manuals.",
    "Energy costs at the main plant rose by eighteen percent year over year.",
    "The mobile app rating climbed to four point six stars after the redesign.",
    "Legal reviewed the new contract template and requested shorter notice periods.",
    "Hiring for the data team is behind plan by three positions.",
)


# -------------------------------------------------------------------------------------------------
# Configuration
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos run. Shares are fractions of `jobs`; every kind of job appears at least once."""

    jobs: int = 50
    clients: int = 4
    max_in_flight: int = 40  # non-terminal jobs at once: keeps moto's queues shallow
    seed: int = 7
    poison_share: float = 0.03
    directive_share: float = 0.15  # [sim:429x2], [sim:503x1], [sim:slow=2500], in equal parts
    webhook_share: float = 0.20
    duplicate_share: float = 0.10
    agent_share: float = 0.02
    # One receiver per entry (tests/chaos/receivers.py), given to the jobs with a webhook in turn.
    webhook_receivers: tuple[ReceiverKind, ...] = tuple(ReceiverKind)
    # The default 5s,5m,30m,2h,5h,10h,10h scaled to seconds: same number of attempts.
    webhook_schedule: str = "1s,2s,2s,3s,3s,5s,5s"
    kill_at_share: float = 0.4  # SIGKILL the runtime once this share of jobs was accepted
    outage_s: float = 1.0  # extra time the runtime stays down before its restart begins
    kill_window_s: float = 5.0  # a 200 this long before the kill may be lost with its worker
    deadline_s: float | None = None  # default: 240 s + 1.5 s per job
    # After the last terminal state, for the last deliveries to end; it covers a lost delivery
    # message too (the sweeper sends it again once overdue: an attempt's hold plus a minute).
    webhook_grace_s: float = 180.0
    stall_s: float = 240.0  # no job changed state for this long: fail fast, naming them
    sample_every_s: float | None = None  # soak samples (memory, queue depths); default by size
    # A batch and a long document ride along (side_work.py) from this many jobs: `make chaos`. Not
    # in the 50-job run of `make test` (a loaded machine made that run miss its deadline with them).
    side_work_from_jobs: int = 100
    # InferenceMode (template parameter): sync, or background (Responses API, resumed by polls and,
    # with provider_webhooks, by the simulator's signed webhooks: whichever comes first).
    inference_mode: str = "sync"
    provider_webhooks: bool = True
    poll_schedule: str = "1s,1s,2s,3s"
    poison_latency_s: float = 60.0  # a poison job fails as dead_lettered this soon after its last attempt
    # Template parameters that make recovery fast (visibility timeouts of seconds, not minutes).
    max_attempts: int = 8
    max_receive_count: int = 12
    infer_timeout_s: int = 20
    infer_visibility_s: int = 25
    other_visibility_s: int = 20
    sweep_every_s: float = 2.0
    retry_base_s: float = 0.5
    retry_cap_s: float = 4.0
    # Random faults of the simulator (seeded), on top of the per-prompt directives.
    sim_latency_ms: int = 50
    sim_rate_429: float = 0.05
    sim_retry_after_s: float = 1.0
    sim_rate_503: float = 0.05
    sim_rate_slow: float = 0.05
    sim_slow_ms: int = 3000

    @property
    def sample_interval_s(self) -> float:
        return self.sample_every_s or (5.0 if self.jobs <= 200 else 30.0)

    @property
    def read_back_s(self) -> float:
        """At most for reading every submitted job back through the API."""
        return READ_BACK_S + READ_BACK_PER_JOB_S * self.jobs

    @property
    def delivery_grace_s(self) -> float:
        """After the last terminal state, for the last deliveries to end and their logs to be read."""
        return self.webhook_grace_s + READ_BACK_PER_JOB_S * self.jobs

    @property
    def run_deadline_s(self) -> float:
        # 240 s of fixed cost: the stack's start and its restart after the SIGKILL each pay the
        # execution environments' cold starts (seconds each on a busy 2-core machine).
        # 1.5 s per job: the stack sustains about 1 job/s under the drill's faults on 2 cores
        # (0.74 jobs/s over a 300-job run with its restart); a stall fails fast on its own (stall_s).
        return self.deadline_s if self.deadline_s is not None else 240.0 + 1.5 * self.jobs

    @property
    def parameter_overrides(self) -> str:
        other = self.other_visibility_s
        return (
            f"MaxAttempts={self.max_attempts} MaxReceiveCount={self.max_receive_count} "
            f"InferFunctionTimeout={self.infer_timeout_s} InferVisibilityTimeout={self.infer_visibility_s} "
            f"ExtractVisibilityTimeout={other} ToolVisibilityTimeout={other} "
            f"NotifyVisibilityTimeout={other} IngestVisibilityTimeout={other} "
            f"DeliverVisibilityTimeout={other} "
            # Receivers fail for the whole schedule: seconds, not hours.
            f"WebhookRetrySchedule={self.webhook_schedule} "
            f"InferenceMode={self.inference_mode} BackgroundPollSchedule={self.poll_schedule}"
        )


class ChaosError(Exception):
    """The harness itself could not do its part (a process did not start, a request was refused)."""


# -------------------------------------------------------------------------------------------------
# Processes
# -------------------------------------------------------------------------------------------------


class ManagedProcess:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path, cwd: Path = ROOT
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"\n===== {self.name} started at {time.time():.3f}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-c", _ORPHAN_GUARD, *self.argv],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as when a host dies."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 20.0) -> bool:
        """SIGTERM, then SIGKILL after `timeout_s`. True if it stopped on SIGTERM (or was not running)."""
        if self.process is None or self.process.poll() is not None:
            return True
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop on SIGTERM within %.0fs: killing it", self.name, timeout_s)
            self.process.kill()
            self.process.wait(timeout=10)
            return False

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class Credentials:
    api_key: str
    webhook_secret: str


class ChaosStack:
    """moto + the model simulator + `baton dev`, each a process of its own, on 127.0.0.1 only."""

    def __init__(self, config: ChaosConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.moto_port = free_port()
        self.sim_port = free_port()
        self.api_port = free_port()
        self.stack_name = "baton-chaos"
        self.endpoint_url = f"http://127.0.0.1:{self.moto_port}"
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.state: dict[str, Any] = {}
        self.credentials: Credentials | None = None
        base = {key: value for key, value in os.environ.items() if not key.startswith(CONFIGURING_PREFIXES)}
        self.moto = ManagedProcess(
            "moto",
            # baton dev's own launcher: plain moto deep-copies every table on each transaction
            # (a 10,000-job run grew it by ~4 MB per job) and answers 500 when a table changes
            # during the copy.
            moto_server_command(self.moto_port),
            env=base,
            log_path=workdir / "moto.log",
        )
        c = config
        # Background mode: the simulator signs its responses' webhooks (Standard Webhooks) and sends
        # them to the stack's provider webhook endpoint, so a webhook and the polls race to resume
        # each job, through the runtime's kill too. The secret goes where a deploy keeps it:
        # Secrets Manager, named by ProviderWebhookSecretArn (stored once moto is up).
        self.provider_webhook_secret = (
            "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
            if c.inference_mode == "background" and c.provider_webhooks
            else None
        )
        webhooks = (
            ["--webhook-url", f"{self.api_url}{PROVIDER_WEBHOOK_PATH}"]
            if self.provider_webhook_secret
            else []
        )
        self.simulator = ManagedProcess(
            "simulator",
            [
                sys.executable,
                "-m",
                "baton_dev.simulator",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.sim_port),
                "--latency-ms",
                str(c.sim_latency_ms),
                "--rate-429",
                str(c.sim_rate_429),
                "--retry-after-s",
                str(c.sim_retry_after_s),
                "--rate-503",
                str(c.sim_rate_503),
                "--rate-slow",
                str(c.sim_rate_slow),
                "--slow-ms",
                str(c.sim_slow_ms),
                "--seed",
                str(c.seed),
                "--log-level",
                "WARNING",
                *webhooks,
            ],
            env={**base, SIM_WEBHOOK_SECRET: self.provider_webhook_secret}
            if self.provider_webhook_secret
            else base,
            log_path=workdir / "simulator.log",
        )
        parameters = dict(pair.split("=", 1) for pair in c.parameter_overrides.split())
        self.runtime = LaunchedStack(
            StackConfig(
                state_dir=self.state_dir,
                port=self.api_port,
                stack_name=self.stack_name,
                schedule_every_s=c.sweep_every_s,
                parameters={
                    **parameters,
                    "RetryBaseSeconds": f"{c.retry_base_s:g}",
                    "RetryCapSeconds": f"{c.retry_cap_s:g}",
                },
                aws_endpoint_url=self.endpoint_url,
                model_url=f"{self.sim_url}/v1",
                # A drill: invocations of seconds (InferFunctionTimeout 20 s, visibility 25 s)
                # recover within the run; no deployment takes these values.
                allow_undeployable_parameters=True,
            )
        )

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> ChaosStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.moto.start()
        self.simulator.start()
        self._wait_port(self.moto, self.moto_port)
        self._wait_port(self.simulator, self.sim_port)
        if self.provider_webhook_secret is not None:
            arn = self._client("secretsmanager").create_secret(
                Name=f"{self.stack_name}/provider-webhook-secret", SecretString=self.provider_webhook_secret
            )["ARN"]
            config = self.runtime.config
            parameters = {**config.parameters, "ProviderWebhookSecretArn": arn}
            self.runtime.config = dataclasses.replace(config, parameters=parameters)
        self.start_runtime()
        self.credentials = self._create_key()
        return self

    def start_runtime(self, timeout_s: float = 180.0) -> None:
        """Start `baton dev` and wait until *this* process wrote its state file (a killed one's stays)."""
        try:
            self.runtime.start(timeout_s)
        except StackStartError as error:
            raise ChaosError(str(error)) from error
        self.state = self.runtime.state

    def kill_runtime(self) -> None:
        self.runtime.kill()

    def stop(self) -> dict[str, bool]:
        """Stop everything (each step even if another fails); which ones stopped on SIGTERM."""
        clean: dict[str, bool] = {}
        for process in (self.runtime, self.simulator, self.moto):
            try:
                clean[process.name] = process.stop()
            except Exception:
                logger.exception("could not stop %s", process.name)
                clean[process.name] = False
        return clean

    def __enter__(self) -> ChaosStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- access ---------------------------------------------------------------------------------
    def _client(self, service: str) -> Any:
        return boto3.client(  # type: ignore[call-overload]
            service,
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )

    def dynamodb(self) -> DynamoDBClient:
        return cast("DynamoDBClient", self._client("dynamodb"))

    def s3(self) -> S3Client:
        return cast("S3Client", self._client("s3"))

    def sqs(self) -> SQSClient:
        return cast("SQSClient", self._client("sqs"))

    @property
    def jobs_table(self) -> str:
        return str(self.state["jobs_table"])

    def queue_url(self, logical_id: str) -> str:
        return str(self.state["queues"][logical_id])

    def api_client(self) -> httpx.Client:
        assert self.credentials is not None
        return httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {self.credentials.api_key}"},
            timeout=httpx.Timeout(40.0, connect=5.0),
        )

    def sim_webhooks(self) -> list[dict[str, Any]]:
        """The provider webhooks the simulator sent (with their final status code, attempts)."""
        answer = httpx.get(f"{self.sim_url}/_sim/webhooks", timeout=30)
        answer.raise_for_status()
        return list(answer.json())

    def sim_log(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.sim_url}/_sim/requests", timeout=30)
        answer.raise_for_status()
        entries = answer.json()
        return list(entries["requests"] if isinstance(entries, dict) else entries)

    # -- helpers --------------------------------------------------------------------------------
    @staticmethod
    def _wait_port(process: ManagedProcess, port: int) -> None:
        try:
            wait_for_port(port, timeout_s=60)
        except TimeoutError as error:
            raise ChaosError(f"{process.name} did not listen on {port}:\n{process.tail()}") from error

    def _create_key(self) -> Credentials:
        try:
            issued = self.runtime.create_api_key(TENANT, timeout_s=60)
        except RuntimeError as error:
            raise ChaosError(str(error)) from error
        return Credentials(api_key=issued["api_key"], webhook_secret=issued["webhook_secret"])


# -------------------------------------------------------------------------------------------------
# Workload
# -------------------------------------------------------------------------------------------------


SLOW_DIRECTIVE_MS = 2500


class JobKind(StrEnum):
    PLAIN = "plain"
    RATE_LIMITED = "429x2"
    UNAVAILABLE = "503x1"
    SLOW = "slow"
    POISON = "poison"
    AGENT = "agent"


DIRECTIVES = {
    JobKind.RATE_LIMITED: "[sim:429x2] ",
    JobKind.UNAVAILABLE: "[sim:503x1] ",
    JobKind.SLOW: f"[sim:slow={SLOW_DIRECTIVE_MS}] ",
    JobKind.POISON: "[sim:malformed] ",
}
AGENT_PROMPT = "What is 12 * 7?"
AGENT_ANSWER = "84"


@dataclass(frozen=True)
class JobSpec:
    index: int
    kind: JobKind
    prompt: str
    idempotency_key: str
    webhook: int | None = None  # index of the receiver, if the job has a webhook
    duplicate: bool = False  # inject an extra copy of its infer command

    @property
    def job_id(self) -> str:
        """Known before submission: the API derives it from the tenant and the Idempotency-Key."""
        return keyed_job_id(TENANT, self.idempotency_key)

    def body(self, webhook_urls: Sequence[str]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "input": {"prompt": self.prompt},
            "metadata": {"chaos_index": str(self.index), "chaos_kind": self.kind.value},
        }
        if self.kind is JobKind.AGENT:
            body["parameters"] = {"tools": ["calculator"]}
        if self.webhook is not None:
            body["webhook"] = {"url": webhook_urls[self.webhook]}
        return body


def _count(share: float, total: int, minimum: int = 1) -> int:
    return min(total, max(minimum, round(share * total)))


def build_workload(config: ChaosConfig, run_id: str) -> list[JobSpec]:
    """A shuffled, seeded mix; every prompt is unique (the simulator counts `xN` attempts per body)."""
    rng = random.Random(config.seed)
    n = config.jobs
    kinds: list[JobKind] = [JobKind.POISON] * _count(config.poison_share, n)
    kinds += [JobKind.AGENT] * _count(config.agent_share, n, minimum=2)
    per_directive = _count(config.directive_share / 3, n)
    kinds += [JobKind.RATE_LIMITED, JobKind.UNAVAILABLE, JobKind.SLOW] * per_directive
    if len(kinds) > n:
        raise ValueError(f"{n} jobs are too few for the mix ({len(kinds)} special jobs); use at least 20")
    kinds += [JobKind.PLAIN] * (n - len(kinds))
    rng.shuffle(kinds)
    with_webhook = set(rng.sample(range(n), _count(config.webhook_share, n)))
    with_webhook.add(kinds.index(JobKind.POISON))  # a dead-lettered job's webhook must fire too
    duplicated = set(rng.sample(range(n), _count(config.duplicate_share, n)))
    receivers = len(config.webhook_receivers)
    # The receivers in turn over the jobs with a webhook: each kind gets its share, even in a small run.
    receiver_of = {index: turn % receivers for turn, index in enumerate(sorted(with_webhook))}
    specs: list[JobSpec] = []
    for index, kind in enumerate(kinds):
        if kind is JobKind.AGENT:
            prompt = AGENT_PROMPT
        else:
            picked = rng.sample(SENTENCES, 3)
            prompt = f"{DIRECTIVES.get(kind, '')}Summarize for ticket T-{index}: {' '.join(picked)}"
        specs.append(
            JobSpec(
                index=index,
                kind=kind,
                prompt=prompt,
                idempotency_key=f"chaos-{run_id}-{index}",
                webhook=receiver_of.get(index),
                duplicate=index in duplicated,
            )
        )
    return specs


# -------------------------------------------------------------------------------------------------
# Running it
# -------------------------------------------------------------------------------------------------


@dataclass
class Submission:
    job_id: str
    attempts: int = 0
    transport_errors: int = 0  # connection refused / reset: the runtime was down
    conflicts: int = 0  # 409: the first attempt was still "in flight" for the API's idempotency
    server_errors: int = 0
    accepted_at: float | None = None
    error: str | None = None


@dataclass
class SoakSample:
    """One look at the run: progress, memory of each process (tree), depth of each queue."""

    at: float  # seconds since the run started
    accepted: int
    terminal: int
    in_flight: int
    rss_mb: dict[str, float]
    queues: dict[str, int]  # logical id -> visible + in flight

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (Linux /proc; 0 elsewhere or if gone)."""
    total_kb = 0
    pending = [pid]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total_kb += next(
                int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")
            )
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(child) for child in children)
        except (OSError, StopIteration, ValueError):
            continue
    return round(total_kb / 1024, 1)


@dataclass
class Observations:
    specs: list[JobSpec]
    submissions: dict[str, Submission] = field(default_factory=dict)
    terminal_seen: dict[str, str] = field(default_factory=dict)  # by the in-flight tracker
    duplicates_injected: int = 0
    kill_at: float | None = None  # wall clock (time.time()), comparable with the simulator's log
    in_flight_at_kill: int = 0
    restart_spawned_at: float | None = None
    restart_ready_at: float | None = None
    started_at: float = 0.0
    all_terminal_at: float | None = None
    finished_at: float = 0.0
    webhooks_done_at: float | None = None
    max_open_seen: int = 0
    sim_log: list[dict[str, Any]] = field(default_factory=list)
    jobs_via_get: dict[str, dict[str, Any]] = field(default_factory=dict)
    table_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # job id -> decoded item
    table_job_items: int = 0
    dlq_jobs: Counter[str] = field(default_factory=Counter)  # archived dead letters per job
    dead_lettered_at: dict[str, float] = field(default_factory=dict)  # first archive time per job
    samples: list[SoakSample] = field(default_factory=list)
    stalled: bool = False
    webhook_events: list[WebhookEvent] = field(default_factory=list)
    webhook_refused: list[str] = field(default_factory=list)
    delivery_logs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # job id -> deliveries
    clean_stops: dict[str, bool] = field(default_factory=dict)
    harness_errors: list[str] = field(default_factory=list)
    side_work: SideWork | None = None  # a batch and a long document beside the jobs (side_work.py)
    infer_log: InferLog | None = None  # background mode: the evidence for duplicate paid creates
    provider_webhooks: list[dict[str, Any]] = field(default_factory=list)  # the simulator's, sent


class _SimLogCollector:
    """The simulator keeps its last 10,000 requests: collect them as the run goes, merged."""

    def __init__(self, stack: ChaosStack) -> None:
        self.stack = stack
        self._entries: dict[tuple[Any, ...], dict[str, Any]] = {}

    def collect(self) -> None:
        for entry in self.stack.sim_log():
            key = (entry.get("ts"), entry.get("path"), entry.get("step_key"), entry.get("status"))
            self._entries.setdefault(key, entry)

    @property
    def entries(self) -> list[dict[str, Any]]:
        return sorted(self._entries.values(), key=lambda entry: float(entry.get("ts") or 0))


class ChaosRun:
    """Submit the workload through the API with a few client threads, at most `max_in_flight` jobs
    not terminal at once; SIGKILL and restart the runtime once mid-flight; wait for the end."""

    def __init__(self, stack: ChaosStack, specs: list[JobSpec]) -> None:
        self.stack = stack
        self.config = stack.config
        self.specs = specs
        self.obs = Observations(specs=specs)
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.config.max_in_flight)
        self._open: set[str] = set()
        self._next = 0
        self._accepted = 0
        self._inferring = 0  # jobs in their infer step, as last read
        self._poison = {spec.job_id for spec in specs if spec.kind is JobKind.POISON}
        self._stop = threading.Event()
        self._deadline = 0.0
        self._states: dict[str, str] = {}  # job id -> "status/step" as last read by the tracker
        self._last_change = time.monotonic()
        self._restarted = False
        self.receivers: list[ChaosReceiver] = []
        self._sim_log = _SimLogCollector(stack)
        # A batch of one line per 10 jobs (10 to 1,000: the inline maximum) and a long document.
        self.side = (
            SideWork(stack, lines=min(1000, max(10, len(specs) // 10)), tenant=TENANT)
            if len(specs) >= self.config.side_work_from_jobs
            else None
        )
        self.obs.side_work = self.side

    # -- the run --------------------------------------------------------------------------------
    def execute(self) -> Observations:
        assert self.stack.credentials is not None
        secret = self.stack.credentials.webhook_secret
        obs = self.obs
        obs.started_at = time.time()
        self._deadline = time.monotonic() + self.config.run_deadline_s
        self.receivers = start_receivers(self.config.webhook_receivers, secret)
        threads = [
            threading.Thread(target=self._guard(self._client_loop), name=f"chaos-client-{i}", daemon=True)
            for i in range(self.config.clients)
        ]
        tracker = threading.Thread(target=self._guard(self._track_loop), name="chaos-tracker", daemon=True)
        try:
            tracker.start()
            self._guard(self._submit_side_work)()
            for thread in threads:
                thread.start()
            self._supervise(threads)
            self._guard(self._wait_for_side_work)()
            self._wait_for_webhooks()
            self._read_back()
        finally:
            self._stop.set()
            for thread in [*threads, tracker]:
                thread.join(timeout=60)
            for receiver in self.receivers:
                obs.webhook_events.extend(receiver.events)
                obs.webhook_refused.extend(receiver.refused)
                receiver.stop()
        obs.finished_at = time.time()
        return obs

    def _submit_side_work(self) -> None:
        if self.side is not None:
            with self.stack.api_client() as client:
                self.side.submit(client, self._deadline)

    def _wait_for_side_work(self) -> None:
        if self.side is not None:
            with self.stack.api_client() as client:
                self.side.wait(client, self._deadline)

    def _supervise(self, threads: list[threading.Thread]) -> None:
        """Main thread: the kill and restart (children are spawned from here, see _ORPHAN_GUARD),
        then wait until every job is terminal or the deadline passes."""
        kill_after = max(1, math.ceil(self.config.kill_at_share * len(self.specs)))
        kill_by: float | None = None
        obs = self.obs
        while time.monotonic() < self._deadline:
            with self._lock:
                accepted = self._accepted
                still_open = len(self._open)
                inferring = self._inferring
            if obs.kill_at is None and accepted >= kill_after:
                # Aim the kill at a moment with model calls in flight (their answers die with the
                # worker), but do not wait for one for long.
                kill_by = kill_by or time.monotonic() + KILL_AIM_S
                if inferring or time.monotonic() >= kill_by:
                    self._kill_and_restart()
            if still_open == 0 and not any(t.is_alive() for t in threads):
                obs.all_terminal_at = time.time()
                return
            if self._stalled():
                return
            time.sleep(0.2)
        obs.harness_errors.append(
            f"deadline of {self.config.run_deadline_s:.0f}s passed with "
            f"{len(self.specs) - len(obs.terminal_seen)} job(s) not terminal"
        )

    def _stalled(self) -> bool:
        """No job changed state for `stall_s` while some are open: stop now, naming them, instead
        of waiting out the deadline (issue 8: a stall at 4,900 of 10,000 jobs went unreported)."""
        with self._lock:
            quiet_s = time.monotonic() - self._last_change
            states = {job_id: self._states.get(job_id, "unseen") for job_id in sorted(self._open)}
        if (
            not states
            or quiet_s < self.config.stall_s
            or (self.obs.kill_at is not None and not self._restarted)
        ):
            return False
        listed = _limit((f"{job_id} {state}" for job_id, state in states.items()), 40)
        counts = Counter(states.values())
        self.obs.stalled = True
        self.obs.harness_errors.append(
            f"stalled: no job changed state for {quiet_s:.0f}s with {len(states)} in flight "
            f"({dict(counts)}): {listed}"
        )
        return True

    def _kill_and_restart(self) -> None:
        obs = self.obs
        with self._lock:
            open_jobs = len(self._open)
        logger.warning("SIGKILL baton dev (pid %s) with %d jobs in flight", self.stack.runtime.pid, open_jobs)
        obs.in_flight_at_kill = open_jobs
        obs.kill_at = time.time()
        self.stack.kill_runtime()
        time.sleep(self.config.outage_s)
        obs.restart_spawned_at = time.time()
        self.stack.start_runtime()
        obs.restart_ready_at = time.time()
        with self._lock:
            self._restarted = True
            self._last_change = time.monotonic()  # the outage is not a stall
        logger.warning("baton dev restarted in %.1fs", obs.restart_ready_at - obs.restart_spawned_at)

    # -- clients --------------------------------------------------------------------------------
    def _client_loop(self) -> None:
        webhook_urls = [receiver.url for receiver in self.receivers]
        sqs = self.stack.sqs()
        with self.stack.api_client() as client:
            while not self._stop.is_set():
                with self._lock:
                    if self._next >= len(self.specs):
                        return
                    spec = self.specs[self._next]
                    self._next += 1
                while not self._slots.acquire(timeout=0.5):
                    if self._stop.is_set() or time.monotonic() > self._deadline:
                        return
                with self._lock:
                    self._open.add(spec.job_id)
                    self.obs.max_open_seen = max(self.obs.max_open_seen, len(self._open))
                submission = self._submit(client, spec, webhook_urls)
                with self._lock:
                    self.obs.submissions[spec.job_id] = submission
                if submission.accepted_at is None:
                    self._close(spec.job_id)
                    continue
                with self._lock:
                    self._accepted += 1
                if spec.duplicate:
                    # At-least-once delivery, made certain: the same command again, straight to SQS.
                    command = StageCommand(
                        job_id=spec.job_id, tenant_id=TENANT, step=Step.INFER, version=1, depth=0
                    )
                    sqs.send_message(
                        QueueUrl=self.stack.queue_url("InferQueue"), MessageBody=command.model_dump_json()
                    )
                    with self._lock:
                        self.obs.duplicates_injected += 1

    def _submit(self, client: httpx.Client, spec: JobSpec, webhook_urls: Sequence[str]) -> Submission:
        """POST until accepted; a retry reuses the Idempotency-Key, so it never makes a second job."""
        submission = Submission(job_id=spec.job_id)
        body = spec.body(webhook_urls)
        while time.monotonic() < self._deadline and not self._stop.is_set():
            submission.attempts += 1
            try:
                answer = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": spec.idempotency_key})
            except httpx.TransportError:
                submission.transport_errors += 1
                time.sleep(0.5)
                continue
            if answer.status_code == 202:
                returned = answer.json().get("id")
                if returned != spec.job_id:
                    submission.error = f"202 named job {returned}, expected {spec.job_id}"
                submission.accepted_at = time.time()
                return submission
            if answer.status_code == 409:
                submission.conflicts += 1
                time.sleep(1.0)
                continue
            if answer.status_code >= 500 or answer.status_code == 429:
                submission.server_errors += 1
                time.sleep(1.0)
                continue
            submission.error = f"POST answered {answer.status_code}: {answer.text[:300]}"
            return submission
        submission.error = submission.error or "not accepted before the deadline"
        return submission

    def _close(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._open:
                self._open.discard(job_id)
                self._slots.release()

    # -- tracking -------------------------------------------------------------------------------
    def _track_loop(self) -> None:
        """Read in-flight jobs' states straight from the table (one BatchGetItem a second: cheap for
        moto, unlike one long-poll per job) and free their slots once terminal."""
        ddb = self.stack.dynamodb()
        sqs = self.stack.sqs()
        table = self.stack.jobs_table
        next_log = time.monotonic() + 15
        next_sample = time.monotonic()
        while not self._stop.wait(1.0):
            if time.monotonic() >= next_sample:
                next_sample = time.monotonic() + self.config.sample_interval_s
                self._sample(sqs)
            with self._lock:
                watching = sorted(self._open)
            inferring = 0
            for start in range(0, len(watching), 100):
                keys: list[Any] = [
                    {"pk": {"S": f"TENANT#{TENANT}"}, "sk": {"S": f"JOB#{job_id}"}}
                    for job_id in watching[start : start + 100]
                ]
                try:
                    answer = ddb.batch_get_item(
                        RequestItems={
                            table: {
                                "Keys": keys,
                                "ProjectionExpression": "sk, #status, current_step",
                                "ExpressionAttributeNames": {"#status": "status"},
                                "ConsistentRead": True,
                            }
                        }
                    )
                except Exception as error:  # moto busy: try again next second
                    logger.warning("tracker read failed: %s", error)
                    continue
                for item in answer.get("Responses", {}).get(table, []):
                    status = str(item["status"]["S"])
                    job_id = str(item["sk"]["S"]).removeprefix("JOB#")
                    state = f"{status}/{item.get('current_step', {}).get('S', '-')}"
                    with self._lock:
                        if self._states.get(job_id) != state:
                            self._states[job_id] = state
                            self._last_change = time.monotonic()
                    if status in TERMINAL:
                        with self._lock:
                            self.obs.terminal_seen.setdefault(job_id, status)
                        self._close(job_id)
                    elif (
                        status == "processing"
                        and item.get("current_step", {}).get("S") == "infer"
                        and job_id not in self._poison  # between crashes, mostly: no call in flight
                    ):
                        inferring += 1
            with self._lock:
                self._inferring = inferring
            if time.monotonic() >= next_log:
                next_log = time.monotonic() + 15
                self._collect_sim_log()
                with self._lock:
                    logger.info(
                        "chaos: %d/%d accepted, %d terminal, %d in flight",
                        self._accepted,
                        len(self.specs),
                        len(self.obs.terminal_seen),
                        len(self._open),
                    )

    def _sample(self, sqs: SQSClient) -> None:
        """Soak figures: memory of moto, the runtime (with any child processes) and the simulator,
        and the depth of every queue, as the run goes."""
        depths: dict[str, int] = {}
        for logical_id, url in sorted((self.stack.state.get("queues") or {}).items()):
            try:
                attributes = sqs.get_queue_attributes(
                    QueueUrl=url,
                    AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
                )["Attributes"]
            except Exception as error:  # moto busy: a gap in the curve, not a failure
                logger.warning("queue depth of %s unreadable: %s", logical_id, error)
                continue
            depths[logical_id] = sum(int(value) for value in attributes.values())
        processes: dict[str, ManagedProcess | LaunchedStack] = {
            "moto": self.stack.moto,
            "baton dev": self.stack.runtime,
            "simulator": self.stack.simulator,
        }
        memory = {name: rss_mb(process.pid) for name, process in processes.items() if process.running}
        with self._lock:
            sample = SoakSample(
                at=round(time.time() - self.obs.started_at, 1),
                accepted=self._accepted,
                terminal=len(self.obs.terminal_seen),
                in_flight=len(self._open),
                rss_mb=memory,
                queues=depths,
            )
            self.obs.samples.append(sample)
        # Also on disk as the run goes: a run stopped or killed midway still shows its curves.
        with (self.stack.workdir / "soak.jsonl").open("a") as soak:
            soak.write(json.dumps(sample.to_dict()) + "\n")
        busiest = sorted(depths.items(), key=lambda item: -item[1])[:3]
        logger.info(
            "soak t=%.0fs: %d in flight, %d terminal; RSS %s; deepest queues %s",
            sample.at,
            sample.in_flight,
            sample.terminal,
            ", ".join(f"{name} {mb:.0f} MB" for name, mb in memory.items()),
            ", ".join(f"{name} {depth}" for name, depth in busiest),
        )

    def _collect_sim_log(self) -> None:
        try:
            self._sim_log.collect()
        except httpx.HTTPError as error:
            logger.warning("could not read the simulator's log: %s", error)

    def _wait_for_webhooks(self) -> None:
        """Every terminal event with a webhook: its delivery ended (delivered, failed or exhausted),
        as the delivery log (`GET /v1/jobs/{id}/deliveries`) shows; the logs are kept for the
        analysis. Only deliveries still open are read again."""
        expected = {
            spec.job_id: f"msg_{spec.job_id}_{status}"
            for spec in self.specs
            if spec.webhook is not None and (status := self.obs.terminal_seen.get(spec.job_id))
        }
        open_ids = sorted(expected)
        deadline = time.monotonic() + self.config.delivery_grace_s
        while open_ids:
            logs = self._read_delivery_logs(open_ids, max(5.0, deadline - time.monotonic()))
            self.obs.delivery_logs.update(logs)
            open_ids = [job_id for job_id in open_ids if not settled(logs.get(job_id, []), expected[job_id])]
            if not open_ids or time.monotonic() > deadline:
                break  # the analysis names the ones still open
            time.sleep(2.0)
        self.obs.webhooks_done_at = time.time()

    def _read_delivery_logs(self, job_ids: list[str], within_s: float) -> dict[str, list[dict[str, Any]]]:
        answers, _ = self._get_each(job_ids, "/v1/jobs/{}/deliveries", within_s=within_s)
        return {job_id: list(answer["data"]) for job_id, answer in answers.items()}

    # -- reading back ---------------------------------------------------------------------------
    def _read_back(self) -> None:
        """GET every job through the API, stop the runtime, then read the table, DLQ and model log."""
        self._get_all()
        self._guard(self._read_back_side_work)()
        self._stop.set()  # the tracker stops polling before the runtime goes
        self.obs.clean_stops["baton dev"] = self.stack.runtime.stop()
        self._collect_sim_log()
        self.obs.sim_log = self._sim_log.entries
        if self.stack.provider_webhook_secret is not None:
            try:
                self.obs.provider_webhooks = self.stack.sim_webhooks()
            except httpx.HTTPError as error:
                logger.warning("could not read the simulator's webhooks: %s", error)
        self._scan_table()
        self._read_dead_letter_archive("infer")

    def _read_back_side_work(self) -> None:
        if self.side is not None:
            with self.stack.api_client() as client:
                self.side.read_back(client)

    def _get_all(self) -> None:
        # Jobs never submitted (a run stopped at its deadline) have nothing to read: the analysis
        # counts them apart. Bounded, so that a starved stack still gets its report printed.
        submitted = [spec.job_id for spec in self.specs if spec.job_id in self.obs.submissions]
        within_s = self.config.read_back_s
        self.obs.jobs_via_get, unread = self._get_each(submitted, "/v1/jobs/{}", within_s=within_s)
        if unread:
            self.obs.harness_errors.append(f"{unread} job(s) not read back within {within_s:.0f}s")

    def _get_each(
        self, ids: list[str], path: str, *, within_s: float
    ) -> tuple[dict[str, dict[str, Any]], int]:
        """GET `path` for each id through the API (a few client threads) until `within_s` has
        passed: the 200 answers by id, and how many ids were not asked for in time."""
        results: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + within_s
        asked: set[str] = set()

        def fetch(chunk: list[str]) -> None:
            with self.stack.api_client() as client:
                for item_id in chunk:
                    if time.monotonic() > deadline:
                        return
                    asked.add(item_id)
                    for _ in range(20):
                        if time.monotonic() > deadline:
                            return
                        try:
                            answer = client.get(path.format(item_id))
                        except httpx.TransportError:
                            time.sleep(0.5)
                            continue
                        if answer.status_code == 200:
                            results[item_id] = answer.json()
                        elif answer.status_code >= 500:
                            time.sleep(0.5)
                            continue
                        break

        workers = [
            threading.Thread(target=self._guard(fetch), args=(ids[i :: self.config.clients],), daemon=True)
            for i in range(self.config.clients)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            # One request in flight at the deadline may still take its own timeout (40 s).
            worker.join(timeout=max(0.0, deadline - time.monotonic()) + 45)
        return results, len(set(ids) - asked)

    def _scan_table(self) -> None:
        ddb = self.stack.dynamodb()
        paginator = ddb.get_paginator("scan")
        items = 0
        for page in paginator.paginate(
            TableName=self.stack.jobs_table,
            FilterExpression="pk = :pk AND begins_with(sk, :job)",
            ExpressionAttributeValues={":pk": {"S": f"TENANT#{TENANT}"}, ":job": {"S": "JOB#"}},
        ):
            for item in page.get("Items", []):
                items += 1
                job_id = str(item["sk"]["S"]).removeprefix("JOB#")
                error = item.get("error", {}).get("S")
                self.obs.table_jobs[job_id] = {
                    "status": str(item["status"]["S"]),
                    "error": json.loads(error) if error else None,
                }
        self.obs.table_job_items = items

    def _read_dead_letter_archive(self, stage: str) -> None:
        """Every dead letter the dead-letter function archived for this stage (S3, dead-letters/)."""
        s3 = self.stack.s3()
        bucket = str(self.stack.state["bucket"])
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"dead-letters/{stage}/"
        ):
            for item in page.get("Contents", []):
                letter = json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
                job_id = str(letter.get("job_id"))
                self.obs.dlq_jobs[job_id] += 1
                archived_at = _parse_iso(str(letter["archived_at"]))
                self.obs.dead_lettered_at[job_id] = min(
                    archived_at, self.obs.dead_lettered_at.get(job_id, archived_at)
                )

    def _guard(self, target: Callable[..., None]) -> Callable[..., None]:
        """A thread's crash becomes a harness error the test reports, not a silent hang."""

        def run(*args: Any) -> None:
            try:
                target(*args)
            except Exception as error:
                logger.exception("chaos thread failed")
                with self._lock:
                    self.obs.harness_errors.append(f"{threading.current_thread().name}: {error!r}")

        return run


# -------------------------------------------------------------------------------------------------
# Analysis
# -------------------------------------------------------------------------------------------------


def soak_figures(samples: Sequence[SoakSample]) -> list[tuple[str, str]]:
    """Memory (first / peak / last sample) per process and the deepest each queue got."""
    if not samples:
        return [("soak samples", "none")]
    figures = [("soak samples", f"{len(samples)} over {samples[-1].at:.0f}s")]
    for name in sorted({name for sample in samples for name in sample.rss_mb}):
        values = [sample.rss_mb[name] for sample in samples if name in sample.rss_mb]
        figures.append(
            (f"RSS {name} first / peak / last", f"{values[0]:.0f} / {max(values):.0f} / {values[-1]:.0f} MB")
        )
    deepest = {
        name: max(sample.queues.get(name, 0) for sample in samples)
        for name in sorted({name for sample in samples for name in sample.queues})
    }
    figures.append(("queue depth peaks", ", ".join(f"{name} {depth}" for name, depth in deepest.items())))
    last = samples[-1].queues
    figures.append(
        ("queue depths at the end", ", ".join(f"{name} {depth}" for name, depth in last.items()) or "-")
    )
    return figures


@dataclass
class ChaosReport:
    figures: list[tuple[str, str]]
    samples: list[SoakSample]
    problems: list[str]
    notes: list[str]
    honest_failures: list[str]
    duplicate_paid_outside: int
    duplicate_paid_inside: int
    duplicate_paid_unexplained: int = 0
    window_hits: int = 0  # background mode: duplicate creates through the create -> id-write window
    paid_creates: int = 0
    duplicates: list[Duplicate] = field(default_factory=list)  # each with its cause and evidence

    def render(self, width: int = 110) -> str:
        table = Table(title="chaos figures", box=box.SIMPLE_HEAD, show_header=True)
        table.add_column("figure", no_wrap=True)
        table.add_column("value")
        for name, value in self.figures:
            table.add_row(name, value)
        buffer = io.StringIO()
        console = Console(file=buffer, width=width, force_terminal=False, color_system=None)
        console.print(table)
        if self.samples:
            console.print(self.curve())
        for note in self.notes:
            console.print(f"note: {note}", highlight=False)
        for problem in self.problems:
            console.print(f"PROBLEM: {problem}", highlight=False)
        return buffer.getvalue()

    def curve(self, rows: int = 16) -> Table:
        """Jobs in flight, memory and queue depths over time (at most `rows` evenly spaced samples)."""
        step = max(1, math.ceil(len(self.samples) / rows))
        picked = self.samples[::step]
        if picked[-1] is not self.samples[-1]:
            picked.append(self.samples[-1])
        names = sorted({name for sample in self.samples for name in sample.rss_mb})
        table = Table(title="over time", box=box.SIMPLE_HEAD)
        for column in ("t (s)", "accepted", "terminal", "in flight", *[f"{n} MB" for n in names], "queued"):
            table.add_column(column, justify="right")
        table.add_column("deepest queue")
        for sample in picked:
            deepest = max(sample.queues.items(), key=lambda item: item[1], default=("-", 0))
            table.add_row(
                f"{sample.at:.0f}",
                str(sample.accepted),
                str(sample.terminal),
                str(sample.in_flight),
                *[f"{sample.rss_mb.get(name, 0):.0f}" for name in names],
                str(sum(sample.queues.values())),
                f"{deepest[0]} {deepest[1]}",
            )
        return table


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _is_paid(entry: Mapping[str, Any]) -> bool:
    """A model answer that was billed and usable: 200, and not the poison body that crashes workers."""
    return entry.get("status") == 200 and entry.get("fault") != "malformed"


def _parse_webhook_id(webhook_id: str) -> tuple[str, str]:
    """`msg_<job>_<status>` -> (job, status); statuses may hold an underscore (needs_review)."""
    for status in TERMINAL:
        suffix = f"_{status}"
        if webhook_id.startswith("msg_") and webhook_id.endswith(suffix):
            return webhook_id[len("msg_") : -len(suffix)], status
    return "", ""


def _event_identity(payload: Any) -> dict[str, Any]:
    data = (payload or {}).get("data") or {} if isinstance(payload, dict) else {}
    return {
        "type": payload.get("type") if isinstance(payload, dict) else None,
        **{name: data.get(name) for name in ("id", "status", "result", "error", "usage", "updated_at")},
    }


def _limit(items: Iterable[str], n: int = 8) -> str:
    listed = list(items)
    more = f" (+{len(listed) - n} more)" if len(listed) > n else ""
    return ", ".join(listed[:n]) + more


def paid_creates(chat: Sequence[Mapping[str, Any]]) -> int:
    return sum(1 for entry in chat if _is_paid(entry) and entry["path"].endswith(RESPONSES_PATH_SUFFIX))


def background_figures(
    chat: Sequence[Mapping[str, Any]],
    causes: Mapping[Cause, int],
    log: InferLog | None,
    webhooks: Sequence[Mapping[str, Any]],
) -> list[tuple[str, str]]:
    """The residual create -> id-write window: how often it was hit, and what the id's write took;
    which path resumed the jobs (polls or the provider's webhooks)."""
    creates, stores = store_latencies(log) if log is not None else ([], [])
    answered = Counter(
        "2xx" if (hook.get("status_code") or 0) // 100 == 2 else str(hook.get("status_code") or "failed")
        for hook in webhooks
    )
    resumed = log.finished_by if log is not None else Counter()

    def spread(values: list[float]) -> str:
        if not values:
            return "-"
        return f"{_percentile(values, 0.5):.0f} / {_percentile(values, 0.99):.0f} / {max(values):.0f} ms"

    return [
        (
            "residual create -> id-write window hits",
            f"{sum(causes[cause] for cause in WINDOW_HITS)} of {paid_creates(chat)} paid creates "
            f"({causes[Cause.TIMED_OUT]} timed out before the id write, "
            f"{causes[Cause.CREATE_LOST]} create answers that never reached their worker)",
        ),
        ("create round trip p50 / p99 / max", spread(creates)),
        ("response id write p50 / p99 / max", spread(stores)),
        (
            "creates deferred (too little time for the id write)",
            str(log.deferred_for_time) if log is not None else "-",
        ),
        (
            "provider webhooks sent by the simulator",
            f"{len(webhooks)} ({', '.join(f'{k} {v}' for k, v in sorted(answered.items())) or '-'})",
        ),
        (
            "responses finished, found by poll / webhook",
            f"{resumed.get('poll', 0)} / {resumed.get('webhook', 0)}",
        ),
    ]


def kill_window(config: ChaosConfig, obs: Observations) -> tuple[float, float]:
    """When a model answer may have died with the killed worker, in the simulator's clock.

    The simulator logs a request when it answers. An answer lost with the runtime was logged either
    shortly before the kill (the worker had it, but had not recorded it yet: `kill_window_s`) or
    after it, for a call in flight at the kill (at most the slowest answer later, and never after
    the new runtime could have made calls of its own)."""
    if obs.kill_at is None:
        return (0.0, -1.0)
    slowest_s = (max(config.sim_slow_ms, SLOW_DIRECTIVE_MS) + config.sim_latency_ms) / 1000 + 1.0
    end = obs.kill_at + slowest_s
    if obs.restart_ready_at is not None:
        end = min(end, obs.restart_ready_at)
    return (obs.kill_at - config.kill_window_s, end)


def analyse(config: ChaosConfig, obs: Observations) -> ChaosReport:
    problems: list[str] = list(obs.harness_errors)
    notes: list[str] = []
    specs = obs.specs
    by_id = {spec.job_id: spec for spec in specs}
    chat = [
        entry
        for entry in obs.sim_log
        if str(entry.get("path", "")).endswith((CHAT_PATH_SUFFIX, RESPONSES_PATH_SUFFIX))
    ]
    calls_by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    paid_by_step: dict[str, list[float]] = defaultdict(list)
    paid_entries: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in chat:
        if entry.get("job_id"):
            calls_by_job[str(entry["job_id"])].append(entry)
        if _is_paid(entry) and entry.get("step_key"):
            paid_by_step[str(entry["step_key"])].append(float(entry["ts"]))
            paid_entries[str(entry["step_key"])].append(entry)

    # -- submissions: accepted once, never twice --------------------------------------------------
    not_accepted = [
        f"{job_id} ({s.error})" for job_id, s in obs.submissions.items() if s.accepted_at is None or s.error
    ]
    never_tried = [spec.job_id for spec in specs if spec.job_id not in obs.submissions]
    if not_accepted:
        problems.append(f"{len(not_accepted)} submission(s) not accepted cleanly: {_limit(not_accepted)}")
    if never_tried:
        problems.append(f"{len(never_tried)} job(s) never submitted: {_limit(never_tried)}")
    side_jobs = obs.side_work.results.job_ids if obs.side_work else set()
    foreign = sorted(set(obs.table_jobs) - set(by_id) - side_jobs)
    if foreign or obs.table_job_items != len(obs.table_jobs):
        problems.append(
            f"duplicate jobs: {obs.table_job_items} items for {len(obs.table_jobs)} ids, "
            f"{len(foreign)} not ours: {_limit(foreign)}"
        )

    # -- every job exists and is in exactly one terminal state -----------------------------------
    lost = [
        spec.job_id
        for spec in specs
        if obs.table_jobs.get(spec.job_id, {}).get("status") not in TERMINAL
        or spec.job_id not in obs.jobs_via_get
    ]
    if lost:
        states = Counter(str(obs.table_jobs.get(job_id, {}).get("status", "missing")) for job_id in lost)
        problems.append(f"{len(lost)} job(s) lost (not terminal or not readable): {dict(states)}")
    disagree = [
        job_id
        for job_id, job in obs.jobs_via_get.items()
        if job.get("status") != obs.table_jobs.get(job_id, {}).get("status")
    ]
    if disagree:
        problems.append(f"{len(disagree)} job(s) where GET and the table disagree: {_limit(disagree)}")

    # -- outcomes by kind ------------------------------------------------------------------------
    outcomes: Counter[str] = Counter()
    honest: list[str] = []
    poison_ok = 0
    poison_latency: list[tuple[float, str]] = []
    for spec in specs:
        job = obs.jobs_via_get.get(spec.job_id)
        if job is None:
            continue
        status = str(job.get("status"))
        error = job.get("error") or {}
        outcomes[status] += 1
        if (job.get("metadata") or {}).get("chaos_index") != str(spec.index):
            problems.append(f"job {spec.job_id} carries another submission's metadata: {job.get('metadata')}")
        if spec.kind is JobKind.POISON:
            if status != "failed" or error.get("type") != "dead_lettered":
                problems.append(
                    f"poison job {spec.job_id} ended {status} {error.get('type')}, not dead_lettered"
                )
            elif obs.dlq_jobs[spec.job_id] < 1:
                problems.append(f"poison job {spec.job_id} failed but its dead letter is not archived")
            else:
                poison_ok += 1
                attempts = [float(c["ts"]) for c in calls_by_job.get(spec.job_id, []) if c.get("ts")]
                if attempts:
                    # From its last (crashing) model call to its end as dead_lettered.
                    failed_at = _parse_iso(str(job.get("updated_at")))
                    poison_latency.append((failed_at - max(attempts), spec.job_id))
            continue
        if status == "completed":
            if spec.kind is JobKind.AGENT:
                text = str((job.get("result") or {}).get("text") or "")
                if AGENT_ANSWER not in text or job.get("depth") != 1:
                    problems.append(
                        f"agent job {spec.job_id} completed without {AGENT_ANSWER}: {text[:120]!r}"
                    )
            else:
                text = str((job.get("result") or {}).get("text") or "")
                if f"ticket T-{spec.index}:" not in text:
                    problems.append(f"job {spec.job_id} (T-{spec.index}) holds another answer: {text[:80]!r}")
            steps = [f"{spec.job_id}:1:0"] + ([f"{spec.job_id}:1:1"] if spec.kind is JobKind.AGENT else [])
            unpaid = [step for step in steps if not paid_by_step.get(step)]
            if unpaid:
                problems.append(f"job {spec.job_id} completed without a model answer for {unpaid}")
            continue
        calls = calls_by_job.get(spec.job_id, [])
        refused = [c for c in calls if c.get("status") != 200]
        if (
            status == "failed"
            and error.get("retryable") is True
            and error.get("type") in RETRYABLE_MODEL_ERRORS
            and not any(_is_paid(c) for c in calls)
            and len(refused) >= 3
        ):
            faults = Counter(str(c.get("fault")) for c in refused)
            honest.append(f"{spec.job_id} ({spec.kind.value}): {error.get('type')} after {dict(faults)}")
        else:
            problems.append(
                f"{spec.kind.value} job {spec.job_id} ended {status} "
                f"{error.get('type')}: {str(error.get('message'))[:200]} ({len(calls)} model calls)"
            )
    if len(honest) > max(1, len(specs) // 100):
        problems.append(f"{len(honest)} jobs gave up after their retry budget: more than 1% is not rare")
    for line in honest:
        notes.append(f"gave up honestly (faults beyond MaxAttempts={config.max_attempts}): {line}")

    late = [
        f"{job_id} ({seconds:.0f}s)"
        for seconds, job_id in poison_latency
        if seconds > config.poison_latency_s
    ]
    if late:
        problems.append(
            f"{len(late)} poison job(s) failed more than {config.poison_latency_s:.0f}s after their last "
            f"attempt: {_limit(late)}"
        )

    # -- paid model calls: one per step, except answers lost with the killed worker and (background
    # mode) creates whose worker timed out before storing the id: each with its evidence ---------
    window_start, window_end = kill_window(config, obs)
    background = config.inference_mode == "background"
    duplicates = attribute(
        paid_entries,
        background=background,
        log=obs.infer_log,
        kill_window=(window_start, window_end),
        kill_at=obs.kill_at,
        invocation_limit_s=config.infer_timeout_s + 1.0,
    )
    causes = Counter(duplicate.cause for duplicate in duplicates)
    inside = causes[Cause.KILLED]
    window_hits = sum(causes[cause] for cause in WINDOW_HITS)
    unexplained = [d for d in duplicates if d.cause is Cause.UNEXPLAINED]
    outside = len(duplicates) - inside
    if unexplained:
        problems.append(
            f"{len(unexplained)} duplicate paid model call(s) "
            + (
                "without evidence of a kill or a timeout before the id write: "
                if background
                else "outside the kill window: "
            )
            + _limit(f"{d.step_key} ({len(paid_by_step[d.step_key])}x: {d.evidence})" for d in unexplained)
        )
    for duplicate in duplicates:
        if duplicate.cause is not Cause.UNEXPLAINED and background:
            notes.append(
                f"duplicate paid create {duplicate.step_key}: {duplicate.cause.value} ({duplicate.evidence})"
            )

    # -- webhooks: every terminal event delivered, one stable id per (job, status) ----------------
    final_status = {job_id: str(job.get("status")) for job_id, job in obs.jobs_via_get.items()}
    webhook_jobs = {spec.job_id for spec in specs if spec.webhook is not None}
    delivered: dict[str, list[WebhookEvent]] = defaultdict(list)
    for event in obs.webhook_events:
        delivered[event.webhook_id].append(event)
    unverified = [event.webhook_id for event in obs.webhook_events if not event.verified]
    if unverified:
        problems.append(f"{len(unverified)} webhook deliveries failed signature checks: {_limit(unverified)}")
    for webhook_id in set(delivered) | set(obs.webhook_refused):
        job_id, named_status = _parse_webhook_id(webhook_id)
        if job_id not in webhook_jobs:
            problems.append(f"webhook id {webhook_id!r} names no job of ours with a webhook")
        elif named_status != final_status.get(job_id):
            problems.append(
                f"webhook {webhook_id!r} for a job whose final status is {final_status.get(job_id)}"
            )
    redelivered_after_success = 0
    for job_id in sorted(webhook_jobs):
        status = final_status.get(job_id, "missing")
        events = delivered.get(f"msg_{job_id}_{status}", [])
        if status not in TERMINAL or not events:
            continue
        # A redelivery carries the same event: same type, job, status and outcome (timings may have
        # gained notify_ms in between).
        bodies = {json.dumps(_event_identity(event.payload), sort_keys=True) for event in events}
        if len(bodies) > 1:
            problems.append(f"webhook msg_{job_id}_{status} delivered as {len(bodies)} different events")
        first = events[0].payload or {}
        data = first.get("data") or {}
        if first.get("type") != f"job.{status}" or data.get("id") != job_id or data.get("status") != status:
            problems.append(f"webhook msg_{job_id}_{status} carries {first.get('type')} for {data.get('id')}")
        redelivered_after_success += len(events) - 1
    # Every terminal event with a webhook: delivered once, or exhausted / stopped by 410 with its reason.
    account = account_deliveries(
        events={
            f"msg_{spec.job_id}_{final_status[spec.job_id]}": (
                spec.job_id,
                config.webhook_receivers[spec.webhook],
            )
            for spec in specs
            if spec.webhook is not None and final_status.get(spec.job_id) in TERMINAL
        },
        logs=obs.delivery_logs,
        received=obs.webhook_events,
        schedule_len=len(config.webhook_schedule.split(",")),
    )
    problems.extend(account.problems)

    # -- the batch and the long document (side_work.py) ----------------------------------------
    side_figures: list[tuple[str, str]] = []
    if obs.side_work is not None:
        side_figures, side_problems = obs.side_work.analyse(
            chat, paid_by_step, (window_start, window_end), SIM_CONTEXT_TOKENS
        )
        problems.extend(side_problems)

    # -- figures ---------------------------------------------------------------------------------
    faults = Counter(str(entry.get("fault")) for entry in chat if entry.get("fault"))
    durations = [
        _parse_iso(job["updated_at"]) - _parse_iso(job["created_at"])
        for job in obs.jobs_via_get.values()
        if job.get("status") in TERMINAL
    ]
    transport = sum(s.transport_errors for s in obs.submissions.values())
    conflicts = sum(s.conflicts for s in obs.submissions.values())
    server_errors = sum(s.server_errors for s in obs.submissions.values())
    kinds = Counter(spec.kind.value for spec in specs)
    work_s = (obs.all_terminal_at or obs.finished_at) - obs.started_at
    deliveries = len(obs.webhook_events) + len(obs.webhook_refused)
    distinct_ids = len(set(delivered) | set(obs.webhook_refused))
    figures = [
        ("jobs", f"{len(specs)} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})"),
        (
            "inference mode",
            f"{config.inference_mode} ({sum(1 for e in chat if e['path'].endswith(RESPONSES_PATH_SUFFIX))} "
            "background responses created)",
        ),
        ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "-"),
        ("lost", str(len(lost))),
        ("honest failures (retry budget spent)", str(len(honest))),
        ("model calls", f"{len(chat)} ({sum(1 for e in chat if _is_paid(e))} paid)"),
        ("faults injected (sim log)", ", ".join(f"{k} {v}" for k, v in sorted(faults.items())) or "-"),
        ("duplicate commands injected", str(obs.duplicates_injected)),
        (
            "runtime kills (SIGKILL)",
            f"1 ({obs.in_flight_at_kill} jobs in flight)" if obs.kill_at else "0",
        ),
        (
            "restart",
            f"{(obs.restart_ready_at or 0) - (obs.kill_at or 0):.1f}s down" if obs.kill_at else "-",
        ),
        ("client retries (refused / 409 / 5xx)", f"{transport} / {conflicts} / {server_errors}"),
        (
            "duplicate paid calls outside kill window",
            f"{outside} ({window_hits} residual create -> id-write window hits, "
            f"{len(unexplained)} unexplained)"
            if background
            else str(outside),
        ),
        (
            "duplicate paid calls inside kill window",
            f"{inside} (answers logged {window_start - (obs.kill_at or 0):+.1f}s to "
            f"{window_end - (obs.kill_at or 0):+.1f}s around the kill)"
            if obs.kill_at
            else "-",
        ),
        *(background_figures(chat, causes, obs.infer_log, obs.provider_webhooks) if background else []),
        ("poison accounted for (dead_lettered, archived)", f"{poison_ok}/{kinds.get('poison', 0)}"),
        (
            "poison: last attempt -> dead_lettered p50 / max",
            f"{_percentile([v for v, _ in poison_latency], 0.5):.1f}s / "
            f"{max((v for v, _ in poison_latency), default=float('nan')):.1f}s",
        ),
        ("webhook jobs", str(len(webhook_jobs))),
        *account.figures,
        (
            "webhook deliveries",
            f"{deliveries} received ({len(obs.webhook_refused)} refused, {distinct_ids} distinct ids, "
            f"{deliveries - distinct_ids} redeliveries, {redelivered_after_success} after a 2xx)",
        ),
        (
            "time to terminal p50 / p99",
            f"{_percentile(durations, 0.5):.1f}s / {_percentile(durations, 0.99):.1f}s",
        ),
        ("max jobs in flight", str(obs.max_open_seen)),
        *side_figures,
        *soak_figures(obs.samples),
        ("workload wall time", f"{work_s:.0f}s ({len(specs) / work_s:.2f} jobs/s)" if work_s > 0 else "-"),
        ("total wall time (with checks)", f"{obs.finished_at - obs.started_at:.0f}s"),
    ]
    stops = [name for name, clean in obs.clean_stops.items() if not clean]
    if stops:
        notes.append(f"did not stop on SIGTERM (killed): {', '.join(stops)}")
    return ChaosReport(
        figures=figures,
        samples=obs.samples,
        problems=problems,
        notes=notes,
        honest_failures=honest,
        duplicate_paid_outside=outside,
        duplicate_paid_inside=inside,
        duplicate_paid_unexplained=len(unexplained),
        window_hits=window_hits,
        paid_creates=paid_creates(chat),
        duplicates=duplicates,
    )


def run_chaos(
    config: ChaosConfig, workdir: Path, *, run_id: str | None = None
) -> tuple[ChaosReport, Observations]:
    """Start the stack, run the workload, stop everything (always), analyse."""
    specs = build_workload(config, run_id or f"{int(time.time())}")
    stack = ChaosStack(config, workdir)
    try:
        stack.start()
        observations = ChaosRun(stack, specs).execute()
    finally:
        clean = stack.stop()
    observations.clean_stops.update({k: v for k, v in clean.items() if k not in observations.clean_stops})
    if config.inference_mode == "background":
        observations.infer_log = read_infer_log_file(stack.state_dir / "logs" / "InferFunction.log")
    leftovers = [p.name for p in (stack.runtime, stack.simulator, stack.moto) if p.running]
    if leftovers:
        observations.harness_errors.append(f"processes still running after stop: {leftovers}")
    report = analyse(config, observations)
    save_evidence(workdir, config, observations, report)
    return report, observations


def save_evidence(workdir: Path, config: ChaosConfig, obs: Observations, report: ChaosReport) -> None:
    """Everything observed, next to the processes' logs, for a post-mortem of a failed run."""
    evidence = {
        "config": dataclasses.asdict(config),
        "kill_at": obs.kill_at,
        "restart_spawned_at": obs.restart_spawned_at,
        "restart_ready_at": obs.restart_ready_at,
        "jobs": [
            {
                "index": spec.index,
                "job_id": spec.job_id,
                "kind": spec.kind.value,
                "webhook": spec.webhook,
                "duplicate": spec.duplicate,
                "submission": dataclasses.asdict(obs.submissions[spec.job_id])
                if spec.job_id in obs.submissions
                else None,
                "job": obs.jobs_via_get.get(spec.job_id),
                "table": obs.table_jobs.get(spec.job_id),
                "in_dlq": obs.dlq_jobs.get(spec.job_id, 0),
            }
            for spec in obs.specs
        ],
        "sim_log": obs.sim_log,
        "webhooks_delivered": [event._asdict() for event in obs.webhook_events],
        "webhooks_refused": obs.webhook_refused,
        "delivery_logs": obs.delivery_logs,
        "figures": dict(report.figures),
        "samples": [sample.to_dict() for sample in obs.samples],
        "dead_lettered_at": obs.dead_lettered_at,
        "duplicate_paid_calls": [dataclasses.asdict(duplicate) for duplicate in report.duplicates],
        "problems": report.problems,
        "notes": report.notes,
    }
    (workdir / "evidence.json").write_text(json.dumps(evidence, indent=1, default=str))
