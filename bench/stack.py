"""The local stack every benchmark drives, and what it measures about itself.

`StackProcess` (parent side) starts `python -m bench.stack` in a process of its own: Baton's
`LocalRuntime` (moto server, model simulator, local API Gateway, SQS pollers, and every function
in execution-environment processes of its own), instrumented where the handlers run - inside the
function processes, through Lambda's exec wrapper (bench/exec_wrapper.sh, bench/function_hook.py),
which write their figures to files this process merges:

- every boto3 call through botocore's event hooks (`before-parameter-build`, `before-call`,
  `after-call`), attributed to the function - or the event source poller - that made it, with its
  billing units: SQS requests per 64 KB chunk, DynamoDB read/write request units from item sizes
  (plus the sparse open-jobs index entries), S3 request class, EventBridge events per 64 KB;
- every handler invocation: its duration and how much of it was spent inside AWS calls;
- the handlers' log output (their stdout, what CloudWatch Logs would ingest), in bytes.

A control server on loopback answers `GET /metrics`, `POST /reset` and `POST /jobs` (the state of
a list of jobs read straight from the table), so the benchmarks' own bookkeeping never goes through
the API and is never counted as a job's cost. Load generators stay in the parent: on 2 cores,
clients and stack do not share one GIL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

# From the layer, not baton_dev.client: function processes import this module (bench/function_hook.py)
# with the layer on their path, not devtools.
from baton.models import SETTLED_STATUSES

TERMINAL = frozenset(status.value for status in SETTLED_STATUSES)

REPO = Path(__file__).resolve().parents[1]
TENANT = "bench"
OTHER_TENANT = "bench-other"  # a second tenant, for fairness scenarios
START_TIMEOUT_S = 240
# Attributes that are keys of the jobs table's sparse open-jobs index (KEYS_ONLY): writing or
# removing them also writes an index entry, billed as one more write request unit.
INDEX_KEY_ATTRIBUTES = ("open_shard",)


# ==================================================================================================
# Child side: the instrumented runtime
# ==================================================================================================

_local = threading.local()


def _role() -> str:
    """Who is making an AWS call: a function (inside its handler), an event source poller, ..."""
    role = getattr(_local, "role", None)
    if role:
        return str(role)
    if Recorder.process_role:
        return Recorder.process_role
    name = threading.current_thread().name
    for prefix, function in Recorder.poller_prefixes.items():
        if name.startswith(prefix + "-"):
            return f"esm:{function}"
    return "setup" if name == "MainThread" else "other"


def ddb_value_size(value: dict[str, Any]) -> int:
    """Bytes of one DynamoDB attribute value, as DynamoDB sizes items for capacity units."""
    ((kind, inner),) = value.items()
    if kind == "S":
        return len(str(inner).encode())
    if kind == "N":
        return _number_size(str(inner))
    if kind == "B":
        return len(inner)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(str(item).encode()) for item in inner)
    if kind == "NS":
        return sum(_number_size(str(item)) for item in inner)
    if kind == "BS":
        return sum(len(item) for item in inner)
    if kind == "L":
        return 3 + sum(1 + ddb_value_size(item) for item in inner)
    if kind == "M":
        return 3 + sum(1 + len(name.encode()) + ddb_value_size(item) for name, item in inner.items())
    return 0


def _number_size(text: str) -> int:
    digits = text.lstrip("-").replace(".", "").lstrip("0") or "0"
    return (len(digits) + 1) // 2 + 1


def ddb_item_size(item: dict[str, Any] | None) -> int:
    if not item:
        return 0
    return sum(len(name.encode()) + ddb_value_size(value) for name, value in item.items())


def read_units(size: int, *, consistent: bool) -> float:
    return max(1, math.ceil(size / 4096)) * (1.0 if consistent else 0.5)


def write_units(size: int) -> float:
    return float(max(1, math.ceil(size / 1024)))


def _chunks(size: int) -> int:
    """SQS and EventBridge bill each started 64 KB of payload as one request / event."""
    return max(1, math.ceil(size / 65536))


@dataclass
class CallStats:
    calls: int = 0
    ms: float = 0.0
    errors: int = 0
    requests: float = 0.0  # billable requests (SQS per 64 KB, S3, EventBridge events per 64 KB)
    rru: float = 0.0  # DynamoDB read request units
    wru: float = 0.0  # DynamoDB write request units
    messages: int = 0  # SQS messages received
    bytes: int = 0


@dataclass
class InvocationStats:
    memory_mb: int = 0
    ms: list[float] = field(default_factory=list)
    aws_ms: list[float] = field(default_factory=list)
    aws_calls: list[int] = field(default_factory=list)
    failed: int = 0


class Recorder:
    """AWS calls and handler invocations, aggregated; safe to use from every thread."""

    poller_prefixes: dict[str, str] = {}  # noqa: RUF012 - one runtime per process
    # Set in a function's own process (bench/function_hook.py): every thread there is the
    # function's, including the threads a concurrent stage runs its records in (infer).
    process_role: str | None = None

    def __init__(self, *, resolve_update_sizes: bool, function_records: Path | None = None) -> None:
        self.resolve_update_sizes = resolve_update_sizes
        # Where the function processes write their own figures (bench/function_hook.py).
        self.function_records = function_records
        self._lock = threading.Lock()
        self.calls: dict[tuple[str, str, str], CallStats] = {}
        self.invocations: dict[str, InvocationStats] = {}
        self._sizes: dict[tuple[str, str], int] = {}
        # UpdateItem calls that return no item: sized afterwards from the stored item.
        self._pending_updates: list[tuple[tuple[str, str, str], str, dict[str, Any], bool]] = []
        self._side_client: Any = None

    # -- installation ----------------------------------------------------------------------------
    def install(self) -> None:
        """Hook every botocore session created from now on (boto3 makes one per Session)."""
        import botocore.session

        recorder = self
        original_init = botocore.session.Session.__init__

        def init(session: Any, *args: Any, **kwargs: Any) -> None:
            original_init(session, *args, **kwargs)
            session.register("before-parameter-build", recorder._before_parameter_build)
            session.register("before-call", recorder._before_call)
            session.register("after-call", recorder._after_call)
            session.register("after-call-error", recorder._after_call_error)

        botocore.session.Session.__init__ = init  # type: ignore[method-assign,assignment]

    # -- botocore hooks --------------------------------------------------------------------------
    def _before_parameter_build(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["bench_params"] = params

    def _before_call(self, context: dict[str, Any], **_: Any) -> None:
        context["bench_started"] = time.perf_counter()

    def _after_call_error(self, context: dict[str, Any], model: Any, **_: Any) -> None:
        self._record(context, model, parsed={}, failed=True)

    def _after_call(self, context: dict[str, Any], model: Any, parsed: dict[str, Any], **_: Any) -> None:
        status = int(parsed.get("ResponseMetadata", {}).get("HTTPStatusCode", 200) or 200)
        self._record(context, model, parsed=parsed, failed=status >= 300)

    def _record(self, context: dict[str, Any], model: Any, *, parsed: dict[str, Any], failed: bool) -> None:
        if getattr(_local, "suppress", False) or "bench_started" not in context:
            return
        elapsed = (time.perf_counter() - context["bench_started"]) * 1000
        service = model.service_model.service_name
        operation = model.name
        params = context.get("bench_params") or {}
        role = _role()
        if getattr(_local, "in_handler", False):
            _local.aws_ms += elapsed
            _local.aws_calls += 1
        if service == "sqs" and operation == "ReceiveMessage" and not parsed.get("Messages"):
            operation = "ReceiveMessage:empty"
        key = (role, service, operation)
        with self._lock:
            stats = self.calls.setdefault(key, CallStats())
            stats.calls += 1
            stats.ms += elapsed
            stats.errors += 1 if failed else 0
            self._units(key, stats, service, operation, params, parsed)

    def _units(
        self,
        key: tuple[str, str, str],
        stats: CallStats,
        service: str,
        operation: str,
        params: dict[str, Any],
        parsed: dict[str, Any],
    ) -> None:
        if service == "sqs":
            if operation == "SendMessage":
                size = len(str(params.get("MessageBody", "")).encode()) + _attributes_size(
                    params.get("MessageAttributes")
                )
                stats.requests += _chunks(size)
                stats.bytes += size
            elif operation == "SendMessageBatch":
                size = sum(
                    len(str(entry.get("MessageBody", "")).encode())
                    + _attributes_size(entry.get("MessageAttributes"))
                    for entry in params.get("Entries", [])
                )
                stats.requests += _chunks(size)
                stats.bytes += size
            elif operation == "ReceiveMessage":
                messages = parsed.get("Messages") or []
                size = sum(len(str(message.get("Body", "")).encode()) for message in messages)
                stats.messages += len(messages)
                stats.requests += _chunks(size)
                stats.bytes += size
            else:
                stats.requests += 1
        elif service == "dynamodb":
            self._dynamodb_units(key, stats, operation, params, parsed)
        elif service == "events" and operation == "PutEvents":
            for entry in params.get("Entries", []):
                size = sum(
                    len(str(entry.get(name, "")).encode()) for name in ("Source", "DetailType", "Detail")
                ) + sum(len(str(resource).encode()) for resource in entry.get("Resources", []))
                stats.requests += _chunks(size)
                stats.bytes += size
        else:
            stats.requests += 1
            body = params.get("Body")
            if isinstance(body, bytes | str):
                stats.bytes += len(body)

    def _dynamodb_units(
        self,
        key: tuple[str, str, str],
        stats: CallStats,
        operation: str,
        params: dict[str, Any],
        parsed: dict[str, Any],
    ) -> None:
        table = str(params.get("TableName", ""))
        item_key = json.dumps(params.get("Key") or {}, sort_keys=True, default=str)
        consistent = bool(params.get("ConsistentRead"))
        if operation == "GetItem":
            size = ddb_item_size(parsed.get("Item"))
            stats.rru += read_units(size, consistent=consistent)
            if size:
                self._sizes[(table, item_key)] = size
        elif operation in ("Query", "Scan"):
            size = sum(ddb_item_size(item) for item in parsed.get("Items", []))
            stats.rru += read_units(size, consistent=consistent)
        elif operation == "PutItem":
            item = params.get("Item") or {}
            stats.wru += write_units(ddb_item_size(item))
            if any(name in item for name in INDEX_KEY_ATTRIBUTES):
                stats.wru += 1
        elif operation == "UpdateItem":
            index_write = any(
                name in str(params.get("UpdateExpression", "")) for name in INDEX_KEY_ATTRIBUTES
            )
            returned = parsed.get("Attributes") or parsed.get("Item")
            if returned:
                size = ddb_item_size(returned)
                self._sizes[(table, item_key)] = size
                stats.wru += write_units(size) + (1 if index_write else 0)
            elif self.resolve_update_sizes:
                self._pending_updates.append((key, table, params.get("Key") or {}, index_write))
            else:
                size = self._sizes.get((table, item_key), 1024)
                stats.wru += write_units(size) + (1 if index_write else 0)
        elif operation == "DeleteItem":
            stats.wru += write_units(self._sizes.get((table, item_key), 1024))
        elif operation in ("TransactWriteItems", "BatchWriteItem"):
            items = params.get("TransactItems") or [
                request for requests in (params.get("RequestItems") or {}).values() for request in requests
            ]
            stats.wru += len(items) * (2 if operation == "TransactWriteItems" else 1)
        elif operation in ("TransactGetItems", "BatchGetItem"):
            stats.rru += 1

    def resolve_pending(self) -> None:
        """Size the UpdateItem calls whose answer carried no item from the item as stored now
        (items only grow along a job, so this errs on the expensive side)."""
        with self._lock:
            pending, self._pending_updates = self._pending_updates, []
        if not pending:
            return
        if self._side_client is None:
            import boto3

            self._side_client = boto3.session.Session().client("dynamodb")
        _local.suppress = True
        sizes: dict[tuple[str, str], int] = {}
        try:
            for key, table, item_key, index_write in pending:
                cache_key = (table, json.dumps(item_key, sort_keys=True, default=str))
                if cache_key not in sizes:
                    answer = self._side_client.get_item(TableName=table, Key=item_key, ConsistentRead=True)
                    sizes[cache_key] = ddb_item_size(answer.get("Item")) or 1024
                with self._lock:
                    stats = self.calls.setdefault(key, CallStats())
                    stats.wru += write_units(sizes[cache_key]) + (1 if index_write else 0)
        finally:
            _local.suppress = False

    # -- reporting -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        self.resolve_pending()
        with self._lock:
            calls = {key: CallStats(**asdict(stats)) for key, stats in self.calls.items()}
            invocations = {name: asdict(stats) for name, stats in self.invocations.items()}
        for record in self._function_records():
            for role, service, operation, fields in record.get("calls", []):
                merged = calls.setdefault((role, service, operation), CallStats())
                for name, value in fields.items():
                    setattr(merged, name, getattr(merged, name) + value)
            for name, fields in record.get("invocations", {}).items():
                into = invocations.setdefault(name, asdict(InvocationStats(memory_mb=fields["memory_mb"])))
                for field_name in ("ms", "aws_ms", "aws_calls"):
                    into[field_name] = into[field_name] + fields[field_name]
                into["failed"] += fields["failed"]
        return {
            "aws": [
                {"role": role, "service": service, "operation": operation, **asdict(stats)}
                for (role, service, operation), stats in sorted(calls.items())
            ],
            "invocations": invocations,
        }

    def _function_records(self) -> list[dict[str, Any]]:
        if self.function_records is None:
            return []
        records = []
        for path in self.function_records.glob("[0-9]*.json"):
            with contextlib.suppress(OSError, ValueError):
                records.append(json.loads(path.read_text()))
        return records

    def reset(self) -> None:
        if self.function_records is not None:
            # Function processes reset themselves when they see a new epoch (next invocation).
            (self.function_records / "epoch").write_text(str(time.time()))
            for path in self.function_records.glob("[0-9]*.json"):
                path.unlink(missing_ok=True)
        with self._lock:
            self._pending_updates.clear()
            self.calls.clear()
            for stats in self.invocations.values():
                stats.ms.clear()
                stats.aws_ms.clear()
                stats.aws_calls.clear()
                stats.failed = 0


def _attributes_size(attributes: dict[str, Any] | None) -> int:
    size = 0
    for name, value in (attributes or {}).items():
        size += len(name.encode()) + len(str(value.get("DataType", "")).encode())
        size += len(str(value.get("StringValue") or value.get("BinaryValue") or "").encode())
    return size


def serve(options: dict[str, Any], ready_file: Path) -> int:
    """Run the instrumented local stack until SIGTERM; its description goes to `ready_file`."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    records = ready_file.parent / "function-records"
    records.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(
        resolve_update_sizes=bool(options.get("resolve_update_sizes")), function_records=records
    )
    recorder.install()

    from baton.store import JobStore
    from baton.tenants import TenantStore
    from baton_dev.launcher import StackConfig, run_in_process
    from baton_dev.runtime.local import LocalRuntime
    from baton_dev.simulator import SimulatorConfig
    from baton_dev.state import write_state

    class InstrumentedRuntime(LocalRuntime):
        def _start_sources(self) -> None:
            assert self.app is not None
            Recorder.poller_prefixes = {spec.logical_id: spec.function for spec in self.app.sqs_sources}
            super()._start_sources()

    config = StackConfig(
        template=REPO / "template.yaml",
        state_dir=ready_file.parent,
        stack_name="baton-bench",
        parameters={str(k): str(v) for k, v in (options.get("parameters") or {}).items()},
        simulator=SimulatorConfig(**(options.get("simulator") or {})),
        schedule_every_s=options.get("schedule_every_s"),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with run_in_process(
        config,
        runtime_class=InstrumentedRuntime,
        # Measured inside the function processes (bench/exec_wrapper.sh, bench/function_hook.py).
        service_environment={
            "AWS_LAMBDA_EXEC_WRAPPER": str(REPO / "bench" / "exec_wrapper.sh"),
            "BATON_BENCH_RECORD_DIR": str(records),
        },
    ) as runtime:
        jobs_table = str(runtime.state()["jobs_table"])
        issued = TenantStore(jobs_table).create_api_key(TENANT)
        other = TenantStore(jobs_table).create_api_key(OTHER_TENANT)
        store = JobStore(jobs_table)
        control = _ControlServer(recorder, runtime, store)
        assert runtime.api is not None and runtime.stack is not None
        state = runtime.state()
        info = {
            **state,
            "api_key": issued.api_key,
            "other_api_key": other.api_key,
            "webhook_secret": issued.webhook_secret,
            "tenant": TENANT,
            "control_url": control.url,
            "stack_pid": os.getpid(),
            "moto_pid": runtime._moto.pid if runtime._moto is not None else None,
            "memory_mb": {name: fn.spec.memory_mb for name, fn in runtime.functions.items()},
        }
        write_state(ready_file, info)  # atomically: the parent reads it as soon as it exists
        stop.wait()
        control.stop()
    return 0


class _ControlServer:
    def __init__(self, recorder: Recorder, runtime: Any, store: Any) -> None:
        control = self
        self.recorder = recorder
        self.runtime = runtime
        self.store = store

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without TCP_NODELAY, Nagle + the client's
            # delayed ACK hold every answer ~40 ms.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                control._handle(self, "GET")

            def do_POST(self) -> None:
                control._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="bench-control", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        _local.role = "control"
        try:
            length = int(request.headers.get("Content-Length") or 0)
            body = json.loads(request.rfile.read(length) or b"{}") if length else {}
            if method == "GET" and request.path == "/metrics":
                sys.stdout.flush()
                payload: Any = {
                    **self.recorder.snapshot(),
                    "sources": self.runtime.api.stats()["event_sources"],
                    # What CloudWatch Logs would ingest: every function process's output.
                    "handler_log_bytes": sum(
                        path.stat().st_size for path in Path(self.runtime.state()["logs"]).glob("*.log")
                    ),
                    "environments": {
                        name: getattr(function, "environments", 1)
                        for name, function in self.runtime.functions.items()
                    },
                }
            elif method == "POST" and request.path == "/reset":
                self.recorder.reset()
                payload = {"ok": True}
            elif method == "POST" and request.path == "/jobs":
                payload = self._jobs(str(body.get("tenant", TENANT)), list(body.get("ids", [])))
            else:
                self._send(request, 404, {"error": "not found"})
                return
            self._send(request, 200, payload)
        except Exception as error:  # the benchmark reads the message
            self._send(request, 500, {"error": f"{type(error).__name__}: {error}"})
        finally:
            _local.role = None

    def _jobs(self, tenant: str, ids: list[str]) -> dict[str, Any]:
        from baton.errors import JobNotFoundError

        jobs: dict[str, Any] = {}
        for job_id in ids:
            try:
                record = self.store.get(tenant, job_id)
            except JobNotFoundError:
                jobs[job_id] = None
                continue
            jobs[job_id] = {
                "status": record.status.value,
                "created_ms": record.created_ms,
                "updated_ms": record.updated_ms,
                "step_started_ms": dict(record.step_started_ms),
                "timings": record.timings.model_dump(),
                "usage": record.usage.model_dump(),
                "error": record.error.model_dump() if record.error else None,
            }
        return jobs

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)


# ==================================================================================================
# Parent side
# ==================================================================================================


@dataclass
class StackOptions:
    """What a scenario needs from its stack. `simulator` takes SimulatorConfig fields."""

    simulator: dict[str, Any] = field(default_factory=lambda: {"latency_ms": 0, "ms_per_token": 0})
    parameters: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    resolve_update_sizes: bool = False
    schedule_every_s: float | None = None


@dataclass
class Submitted:
    status: int  # 0: no HTTP answer (connection reset or refused)
    job_id: str | None
    ms: float  # POST -> answer, as the client saw it
    sent_epoch_ms: float


class StackProcess:
    """`with StackProcess(StackOptions(...)) as stack:` - a fresh instrumented local stack."""

    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        self._dir = Path(tempfile.mkdtemp(prefix="baton-bench-"))
        self._process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self._control: httpx.Client | None = None
        self.started_in_s = 0.0

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> StackProcess:
        started = time.monotonic()
        ready = self._dir / "ready.json"
        env = {k: v for k, v in os.environ.items() if k not in {"AWS_ENDPOINT_URL", "OPENAI_BASE_URL"}}
        env.update(self.options.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        options = asdict(self.options)
        with (self._dir / "handlers.log").open("wb") as out, (self._dir / "stack.log").open("wb") as err:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "bench.stack", json.dumps(options), str(ready)],
                cwd=REPO,
                stdout=out,
                stderr=err,
                env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"bench stack did not start:\n{self.log_tail()}")
            time.sleep(0.1)
        self.info = json.loads(ready.read_text())
        self._control = httpx.Client(base_url=self.info["control_url"], timeout=120)
        self.started_in_s = time.monotonic() - started
        return self

    def __exit__(self, *exc: object) -> None:
        if self._control is not None:
            self._control.close()
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        path = self._dir / "stack.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # -- what the stack is -----------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return str(self.info["api_url"])

    @property
    def pid(self) -> int:
        return int(self.info["stack_pid"])

    @property
    def moto_pid(self) -> int | None:
        pid = self.info.get("moto_pid")
        return int(pid) if pid else None

    @property
    def simulator_url(self) -> str:
        return str(self.info["model_url"]).removesuffix("/v1")

    def client(self, *, timeout: float = 60, other_tenant: bool = False) -> httpx.Client:
        key = self.info["other_api_key" if other_tenant else "api_key"]
        return httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout
        )

    def aws(self, service: str) -> Any:
        import boto3

        return boto3.session.Session().client(  # type: ignore[call-overload]
            service,
            endpoint_url=self.info["endpoint_url"],
            region_name=self.info["region"],
            **self.info["credentials"],  # the stack's own identity: its moto server enforces IAM
        )

    # -- control ---------------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        assert self._control is not None
        answer = self._control.get("/metrics")
        if answer.status_code != 200:
            raise RuntimeError(f"bench stack /metrics answered {answer.status_code}: {answer.text[:500]}")
        return dict(answer.json())

    def reset(self) -> None:
        assert self._control is not None
        self._control.post("/reset").raise_for_status()

    def jobs(self, ids: Sequence[str], *, tenant: str = TENANT) -> dict[str, Any]:
        assert self._control is not None
        answer = self._control.post("/jobs", json={"tenant": tenant, "ids": list(ids)})
        if answer.status_code != 200:
            raise RuntimeError(f"bench stack /jobs answered {answer.status_code}: {answer.text[:500]}")
        return dict(answer.json())

    def wait_terminal(
        self, ids: Sequence[str], *, timeout_s: float, every_s: float = 0.25, tenant: str = TENANT
    ) -> dict[str, Any]:
        """The jobs' records once all are terminal, or as they are at the deadline."""
        deadline = time.monotonic() + timeout_s
        pending = list(ids)
        done: dict[str, Any] = {}
        while pending:
            for start in range(0, len(pending), 100):
                for job_id, job in self.jobs(pending[start : start + 100], tenant=tenant).items():
                    if job is not None and job["status"] in TERMINAL:
                        done[job_id] = job
            pending = [job_id for job_id in pending if job_id not in done]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(every_s)
        if pending:
            for start in range(0, len(pending), 100):
                done.update(self.jobs(pending[start : start + 100], tenant=tenant))
        return done

    def wait_records(self, source: str, count: int, *, timeout_s: float) -> bool:
        """Until an event source has handled `count` records since the stack started."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if int(self.metrics()["sources"].get(source, {}).get("records_ok", 0)) >= count:
                return True
            time.sleep(0.25)
        return False

    def set_simulator(self, **faults: Any) -> None:
        httpx.post(f"{self.simulator_url}/_sim/faults", json=faults, timeout=10).raise_for_status()

    def simulator_requests(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.simulator_url}/_sim/requests", timeout=30).json()
        return list(answer["requests"] if isinstance(answer, dict) else answer)

    def clear_simulator_requests(self) -> None:
        httpx.delete(f"{self.simulator_url}/_sim/requests", timeout=10)

    # -- jobs ------------------------------------------------------------------------------------
    @staticmethod
    def submit(
        client: httpx.Client, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Submitted:
        sent = time.time() * 1000
        started = time.perf_counter()
        try:
            answer = client.post("/v1/jobs", json=body, headers=headers or {})
        except httpx.TransportError:  # e.g. a reset connection: the client sees no answer at all
            return Submitted(0, None, (time.perf_counter() - started) * 1000, sent)
        elapsed = (time.perf_counter() - started) * 1000
        job_id = answer.json().get("id") if answer.status_code in (200, 202) else None
        return Submitted(answer.status_code, job_id, elapsed, sent)

    def put_document(self, name: str, text: str) -> None:
        self.aws("s3").put_object(
            Bucket=self.info["bucket"],
            Key=f"documents/{TENANT}/{name}",
            Body=text.encode(),
            ContentType="text/markdown",
        )


def use_stack(
    stack: StackProcess | None, options: StackOptions | None = None
) -> contextlib.AbstractContextManager[StackProcess]:
    """The stack a scenario was handed, or a fresh one with `options` (stopped afterwards)."""
    if stack is not None:
        return contextlib.nullcontext(stack)
    return StackProcess(options)


def cpu_seconds(pid: int | None, *, children_except: int | None = None) -> float:
    """User + system CPU time of a process (Linux /proc), 0 when unknown. With `children_except`,
    plus its child processes' (live ones, and the ones that ended) - all but that one's (moto's,
    counted on its own)."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    total = (int(fields[11]) + int(fields[12])) / ticks
    if children_except is None:
        return total
    total += (int(fields[13]) + int(fields[14])) / ticks  # children that ended (reaped)
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            for child in children.read_text().split():
                if int(child) != children_except:
                    total += cpu_seconds(int(child))
    return total


class WebhookSink:
    """Receives Baton's webhooks on loopback and notes when each job's arrived (epoch ms).
    Signatures are not checked here: the delivery time is what is measured."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.types: dict[str, str] = {}
        self._cond = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                arrived = time.time() * 1000
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    payload = json.loads(raw)
                    job_id = str(payload["data"]["id"])
                    with sink._cond:
                        sink.arrivals.setdefault(job_id, arrived)
                        sink.types[job_id] = str(payload.get("type"))
                        sink._cond.notify_all()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-sink", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def __enter__(self) -> WebhookSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait(self, job_id: str, timeout_s: float) -> float | None:
        with self._cond:
            self._cond.wait_for(lambda: job_id in self.arrivals, timeout=timeout_s)
            return self.arrivals.get(job_id)

    def wait_all(self, ids: Sequence[str], timeout_s: float) -> int:
        with self._cond:
            self._cond.wait_for(lambda: all(job_id in self.arrivals for job_id in ids), timeout=timeout_s)
            return sum(1 for job_id in ids if job_id in self.arrivals)


@contextlib.contextmanager
def parallel(count: int, target: Any, *args: Any) -> Iterator[list[threading.Thread]]:
    """Start `count` threads running target(index, *args); join them on exit."""
    threads = [threading.Thread(target=target, args=(index, *args), daemon=True) for index in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield threads
    finally:
        for thread in threads:
            thread.join()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m bench.stack OPTIONS_JSON READY_FILE (started by bench.stack.StackProcess)")
        return 2
    return serve(json.loads(args[0]), Path(args[1]))


if __name__ == "__main__":
    raise SystemExit(main())
