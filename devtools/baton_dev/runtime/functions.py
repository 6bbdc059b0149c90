"""Lambda execution environments on this machine: one process per environment, started the way
Lambda starts them.

Each environment is `python -m awslambdaric <handler>` (the AWS Lambda Runtime Interface Client,
the bootstrap of Lambda's managed Python runtimes) in a process of its own, with:

- a Runtime API of its own (`AWS_LAMBDA_RUNTIME_API`), served here: `GET
  /2018-06-01/runtime/invocation/next` hands it one invocation (event, request id, deadline,
  function ARN, trace id), `POST .../invocation/{id}/response|error` and `POST /init/error` report
  back, so a process only ever sees its own invocations;
- Lambda's environment variables (LAMBDA_TASK_ROOT, AWS_LAMBDA_FUNCTION_*, _HANDLER, AWS_REGION,
  the execution role's temporary credentials) plus the template's resolved environment, and
  nothing inherited from `baton dev`;
- Lambda's import layout: the function's folder, its layers, the runtime's own packages
  (lambda_sites.py), on an interpreter started without site-packages: nothing from the dev venv.

Like Lambda: one invocation at a time per environment, a new environment per concurrent
invocation, idle environments reused warm; a timeout kills the process (SIGKILL); a crashed or
killed environment is replaced by a cold one on the next invocation. Each function's processes
write to one log file (`<logs>/<Function>.log`), what CloudWatch Logs would hold.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from baton_dev.runtime import lambda_sites
from baton_dev.runtime.template import FunctionSpec

logger = logging.getLogger("baton.runtime")

ACCOUNT_ID = "123456789012"
# Lambda gives init 10 s; a busy 2-core laptop importing pydantic and boto3 in several processes
# at once can need more. A process that never asks for its first invocation is killed after this.
INIT_TIMEOUT_S = 90.0
# Concurrent environments per function (Lambda's account limit is 1000; this is a laptop).
MAX_ENVIRONMENTS = 16
# Retire a warm environment whose role credentials expire within this margin.
CREDENTIALS_MARGIN_S = 300.0
_RUNTIME_API_PATH = re.compile(
    r"^/2018-06-01/runtime/(?:invocation/(?P<id>[^/]+)/(?P<kind>response|error)|init/error)$"
)


class FunctionTimeoutError(Exception):
    """The handler ran past the function's Timeout (Lambda would have stopped it)."""


@dataclass
class Invocation:
    ok: bool
    result: Any = None
    error: str | None = None
    duration_ms: float = 0.0
    request_id: str | None = None  # the invocation's aws_request_id, as its log lines carry it


@dataclass(frozen=True)
class Credentials:
    """What a function calls AWS with: its execution role's temporary credentials."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    expires_at: float | None = None  # time.time(); None: does not expire

    def expiring(self, margin_s: float = CREDENTIALS_MARGIN_S) -> bool:
        return self.expires_at is not None and self.expires_at - time.time() < margin_s


CredentialsProvider = Callable[[], Credentials]


@dataclass
class _Call:
    request_id: str
    payload: bytes
    timeout_s: int
    function_arn: str
    delivered: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    deadline_ms: int = 0
    result: Any = None
    error: str | None = None


class ExecutionEnvironment:
    """One awslambdaric process and the Runtime API it alone talks to."""

    def __init__(self, function: LocalFunction, number: int) -> None:
        self.function = function
        self.number = number
        self.credentials = function.credentials()
        self._lock = threading.Lock()
        self._ready = threading.Event()  # asked for its first invocation: init is over
        self._exited = threading.Event()
        self._call: _Call | None = None
        self._next_waiting = threading.Condition(self._lock)
        self.init_error: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        environment = self

        class RuntimeApi(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != "/2018-06-01/runtime/invocation/next":
                    self._answer(404, b'{"errorMessage": "not found"}')
                    return
                call = environment._next()
                if call is None:  # the environment is being shut down
                    self._answer(410, b'{"errorMessage": "environment stopped"}')
                    return
                self.send_response(200)
                # The client's native part crashes on an answer without this header.
                self.send_header("Content-Type", "application/json")
                self.send_header("Lambda-Runtime-Aws-Request-Id", call.request_id)
                self.send_header("Lambda-Runtime-Deadline-Ms", str(call.deadline_ms))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn", call.function_arn)
                self.send_header(
                    "Lambda-Runtime-Trace-Id",
                    f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=0",
                )
                self.send_header("Content-Length", str(len(call.payload)))
                self.end_headers()
                self.wfile.write(call.payload)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                match = _RUNTIME_API_PATH.match(self.path)
                if match is None:
                    self._answer(404, b'{"errorMessage": "not found"}')
                    return
                if match.group("kind") is None:
                    environment._init_failed(body)
                elif not environment._finish(match.group("id"), match.group("kind"), body):
                    self._answer(400, b'{"errorMessage": "unknown request id"}')
                    return
                self._answer(202, b'{"status": "OK"}')

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = _QuietServer(("127.0.0.1", 0), RuntimeApi)
        self._server.daemon_threads = True
        self._serving = threading.Thread(
            target=self._server.serve_forever, name=f"{function.name}-runtime-api-{number}", daemon=True
        )

    @property
    def runtime_api(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def alive(self) -> bool:
        return not self._exited.is_set() and self.init_error is None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._serving.start()
        function = self.function
        spec = function.spec
        log = function.log_file()
        environment = self._environment()
        command = [
            str(lambda_sites.interpreter()),
            "-S",  # no site-packages: Lambda's import path only (PYTHONPATH below)
            "-s",
            "-m",
            "awslambdaric",
            spec.handler,
        ]
        # Lambda's exec wrapper: a script that receives the runtime's command line and runs it.
        wrapper = environment.get("AWS_LAMBDA_EXEC_WRAPPER")
        try:
            self.process = subprocess.Popen(
                [wrapper, *command] if wrapper else command,
                cwd=spec.code_dir,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # No PR_SET_PDEATHSIG here: it fires when the spawning *thread* ends (a request's).
                # A process whose runtime died exits on its own: its Runtime API is gone.
            )
        finally:
            log.close()
        threading.Thread(
            target=self._watch, name=f"{function.name}-process-{self.number}", daemon=True
        ).start()

    def _environment(self) -> dict[str, str]:
        function = self.function
        spec = function.spec
        credentials = self.credentials
        variables = {
            # What every Lambda process gets from the service (the template cannot change these).
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            "LAMBDA_TASK_ROOT": str(spec.code_dir),
            "LAMBDA_RUNTIME_DIR": str(function.import_path[-1]),
            "AWS_LAMBDA_RUNTIME_API": self.runtime_api,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}",
            "AWS_LAMBDA_FUNCTION_NAME": function.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex,
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_REGION": function.region,
            "AWS_DEFAULT_REGION": function.region,
            "_HANDLER": spec.handler,
            "PYTHONPATH": os.pathsep.join(str(path) for path in function.import_path),
            "AWS_ACCESS_KEY_ID": credentials.access_key_id,
            "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
            **({"AWS_SESSION_TOKEN": credentials.session_token} if credentials.session_token else {}),
        }
        # Then the template's variables as CloudFormation resolved them, over the local service's
        # defaults; Lambda refuses templates that set its reserved names, so those come last.
        return {**function.service_environment, **function.environment, **variables}

    def _watch(self) -> None:
        assert self.process is not None
        code = self.process.wait()
        self._exited.set()
        with self._lock:
            call = self._call
            self._next_waiting.notify_all()
        if call is not None and not call.done.is_set():
            reason = f"signal {-code}" if code < 0 else f"exit status {code}"
            call.error = (
                self.init_error
                or f"Runtime.ExitError: RequestId: {call.request_id} Error: Runtime exited with {reason}"
            )
            call.done.set()
        self._server.shutdown()
        self._server.server_close()

    def wait_ready(self, timeout_s: float = INIT_TIMEOUT_S) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._ready.wait(0.05):
                return True
            if not self.alive:
                return False
        return False

    def kill(self) -> None:
        """SIGKILL, as Lambda ends a timed-out or retired environment."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                logger.error("%s: process %d survived SIGKILL for 10 s", self.function.name, self.process.pid)
        with self._lock:
            self._next_waiting.notify_all()

    # -- Runtime API side --------------------------------------------------------------------------
    def _next(self) -> _Call | None:
        self._ready.set()
        with self._lock:
            while self._call is None or self._call.delivered.is_set():
                if self._exited.is_set() or self.process is None or self.process.poll() is not None:
                    return None
                self._next_waiting.wait(1.0)
            call = self._call
            call.deadline_ms = int(time.time() * 1000) + call.timeout_s * 1000
            call.delivered.set()
            return call

    def _log_timeout(self, call: _Call) -> None:
        """Lambda's line in the function's own log: which invocation the timeout ended."""
        stamp = datetime.now(tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with self.function.log_file() as log:
            log.write(f"{stamp} {call.request_id} {call.error}\n".encode())

    def _finish(self, request_id: str, kind: str, body: bytes) -> bool:
        with self._lock:
            call = self._call
        if call is None or call.request_id != request_id:
            return False
        if kind == "response":
            call.result = json.loads(body) if body else None
        else:
            call.error = _error_text(body)
        call.done.set()
        return True

    def _init_failed(self, body: bytes) -> None:
        self.init_error = _error_text(body)
        with self._lock:
            call = self._call
        if call is not None:
            call.error = self.init_error
            call.done.set()

    # -- invocation --------------------------------------------------------------------------------
    def invoke(self, event: Any) -> Invocation:
        function = self.function
        call = _Call(
            request_id=str(uuid.uuid4()),
            payload=json.dumps(event).encode(),
            timeout_s=function.spec.timeout,
            function_arn=function.arn,
        )
        with self._lock:
            self._call = call
            self._next_waiting.notify_all()
        started = time.monotonic()
        try:
            if not self.alive and not call.done.is_set():
                call.error = self.init_error or "Runtime.ExitError: the environment is not running"
                call.done.set()
            # Init (a cold start) is not part of the function's timeout, as on Lambda.
            while not call.delivered.wait(0.05):
                if call.done.is_set():
                    break
                if time.monotonic() - started > INIT_TIMEOUT_S:
                    self.kill()
                    call.error = (
                        f"Runtime.InitTimeout: no request for an invocation after {INIT_TIMEOUT_S:.0f}s"
                    )
                    call.done.set()
            if not call.done.wait(function.spec.timeout + 0.5 if call.delivered.is_set() else 0):
                self.kill()
                call.error = f"Task timed out after {function.spec.timeout:.2f} seconds"
                self._log_timeout(call)
                call.done.set()
        finally:
            with self._lock:
                self._call = None
        elapsed = (time.monotonic() - started) * 1000
        if call.error is not None:
            return Invocation(ok=False, error=call.error, duration_ms=elapsed, request_id=call.request_id)
        return Invocation(ok=True, result=call.result, duration_ms=elapsed, request_id=call.request_id)


class LocalFunction:
    """One template function and its pool of execution environments."""

    def __init__(
        self,
        spec: FunctionSpec,
        environment: dict[str, str],
        region: str,
        *,
        credentials: CredentialsProvider,
        log_dir: Path,
        service_environment: dict[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.environment = environment
        self.region = region
        self.credentials = credentials
        self.log_dir = log_dir
        # Variables the local "Lambda service" adds (the local AWS endpoint...); the template wins.
        self.service_environment = dict(service_environment or {})
        self.arn = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{spec.logical_id}"
        self.import_path: list[Path] = [
            spec.code_dir,
            *(path for layer in spec.layers for path in lambda_sites.layer_paths(layer)),
            lambda_sites.runtime_site(),
        ]
        self._idle: list[ExecutionEnvironment] = []
        self._all: set[ExecutionEnvironment] = set()
        self._slots = threading.BoundedSemaphore(MAX_ENVIRONMENTS)
        self._lock = threading.Lock()
        self._closed = False
        self._environments = 0
        self.invocations = 0
        self.failures = 0
        self.log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def name(self) -> str:
        return self.spec.logical_id

    @property
    def environments(self) -> int:
        """Execution environments created so far (cold starts)."""
        return self._environments

    def log_file(self) -> Any:
        return (self.log_dir / f"{self.name}.log").open("ab")

    def process_ids(self) -> list[int]:
        with self._lock:
            return [env.process.pid for env in self._all if env.process is not None and env.alive]

    def load(self) -> None:
        """Start the first execution environment and wait for its init (import errors show now)."""
        self.prepare().finish_loading()

    def prepare(self) -> LocalFunction:
        with self._lock:
            if self._environments:
                return self
        self._idle.append(self._cold_start())
        return self

    def finish_loading(self) -> None:
        env = self._idle[0]
        if not env.wait_ready():
            raise RuntimeError(
                f"{self.name} failed to start: {env.init_error or 'no first request for an invocation'}"
                f" (see {self.log_dir / (self.name + '.log')})"
            )

    def keep_warm(self, count: int) -> None:
        """Start environments in the background until `count` are idle (like provisioned
        concurrency): on a busy 2-core laptop a cold start takes seconds, and the second concurrent
        invocation of a function should not wait for one. Returns at once."""

        def warm() -> None:
            with self._lock:
                missing = count - len(self._idle)
            started = [self._cold_start() for _ in range(max(0, missing))]
            for env in started:
                if env.wait_ready():
                    with self._lock:
                        if not self._closed:
                            self._idle.insert(0, env)  # the oldest warm one is used first
                            continue
                self._discard(env)

        threading.Thread(target=warm, name=f"{self.name}-keep-warm", daemon=True).start()

    def _cold_start(self) -> ExecutionEnvironment:
        with self._lock:
            self._environments += 1
            env = ExecutionEnvironment(self, self._environments)
            self._all.add(env)
        env.start()
        return env

    def _acquire(self) -> ExecutionEnvironment:
        self._slots.acquire()
        retired: list[ExecutionEnvironment] = []
        with self._lock:
            env = None
            while self._idle:
                candidate = self._idle.pop()
                if candidate.alive and not candidate.credentials.expiring():
                    env = candidate
                    break
                retired.append(candidate)
        for old in retired:
            self._discard(old)
        return env if env is not None else self._cold_start()

    def _discard(self, env: ExecutionEnvironment) -> None:
        env.kill()
        with self._lock:
            self._all.discard(env)

    def invoke(self, event: Any) -> Invocation:
        env = self._acquire()
        with self._lock:
            self.invocations += 1
        try:
            outcome = env.invoke(event)
        finally:
            with self._lock:
                keep = env.alive and not self._closed
                if keep:
                    self._idle.append(env)
            if not keep:
                self._discard(env)
            self._slots.release()
        if not outcome.ok:
            with self._lock:
                self.failures += 1
            logger.warning("%s failed: %s", self.name, outcome.error)
        return outcome

    def close(self) -> None:
        with self._lock:
            self._closed = True
            envs = list(self._all)
            self._idle.clear()
        for env in envs:
            env.kill()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A killed environment drops its connection mid-answer: expected, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _error_text(body: bytes) -> str:
    try:
        error = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:2000]
    if not isinstance(error, dict):
        return str(error)[:2000]
    return f"{error.get('errorType', 'Error')}: {error.get('errorMessage', '')}"
