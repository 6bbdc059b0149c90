"""Load a function's handler from its CodeUri and invoke it in-process, as Lambda would."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from baton_dev.runtime.lambda_context import LocalLambdaContext
from baton_dev.runtime.template import FunctionSpec

logger = logging.getLogger("baton.runtime")
_IMPORT_LOCK = threading.Lock()


class FunctionTimeoutError(Exception):
    """The handler ran past the function's Timeout (Lambda would have stopped it)."""


@dataclass
class Invocation:
    ok: bool
    result: Any = None
    error: str | None = None
    duration_ms: float = 0.0


Handler = Callable[[dict[str, Any], Any], Any]
_ROUTER_STATE = ("current_event", "lambda_context")
_router_isolated = False


class _PerThread:
    """A data descriptor whose value is per thread (one local invocation runs on one thread)."""

    def __init__(self, name: str, storage: threading.local) -> None:
        self.name = name
        self.storage = storage

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        try:
            return getattr(self.storage, self.name)
        except AttributeError:
            raise AttributeError(self.name) from None

    def __set__(self, obj: object, value: Any) -> None:
        setattr(self.storage, self.name, value)


def _isolate_router_state() -> None:
    """Powertools' event handler keeps the event being resolved on the BaseRouter *class*
    (`BaseRouter.current_event = ...` in `resolve`): right on Lambda, where an execution
    environment runs one invocation at a time, wrong here, where invocations run concurrently on
    threads of one process: a request would read another one's headers and body. Make that state
    per thread, for class and instance access alike (hence the descriptor on the metaclass too)."""
    global _router_isolated
    with _IMPORT_LOCK:
        if _router_isolated:
            return
        from aws_lambda_powertools.event_handler.api_gateway import BaseRouter

        storage = threading.local()
        for name in _ROUTER_STATE:
            setattr(BaseRouter, name, _PerThread(name, storage))  # instance lookups
        metaclass = type(BaseRouter)
        per_thread = type(
            f"PerThread{metaclass.__name__}",
            (metaclass,),
            {name: _PerThread(name, storage) for name in _ROUTER_STATE},
        )
        # Class lookups and `BaseRouter.current_event = ...` now go through the metaclass descriptor.
        BaseRouter.__class__ = per_thread  # type: ignore[method-assign]
        _router_isolated = True


class LocalFunction:
    """One template function. Like Lambda, it runs each concurrent invocation in an execution
    environment of its own: a separately imported copy of the handler module, never used by two
    invocations at once. Handlers keep per-invocation state in module globals (the Powertools
    resolver's current event, a BatchProcessor's records, the idempotency config's Lambda context),
    so sharing one module between threads would mix up concurrent invocations."""

    def __init__(self, spec: FunctionSpec, environment: dict[str, str], region: str) -> None:
        self.spec = spec
        self.environment = environment
        self.region = region
        self._idle: list[Handler] = []  # warm environments, ready for the next invocation
        self._environments = 0
        self._lock = threading.Lock()
        # Each invocation runs on a worker so that the function's Timeout can be enforced;
        # a timed-out invocation is abandoned (its result ignored), as Lambda would kill it.
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix=spec.logical_id)
        self.invocations = 0
        self.failures = 0

    @property
    def name(self) -> str:
        return self.spec.logical_id

    @property
    def environments(self) -> int:
        """Execution environments created so far (cold starts)."""
        return self._environments

    def load(self) -> None:
        """Create the first execution environment now, so that an import error shows at start."""
        with self._lock:
            if self._environments:
                return
        handler = self._cold_start()
        with self._lock:
            self._idle.append(handler)

    def _cold_start(self) -> Handler:
        """Import the handler module with the function's own environment, as a new copy."""
        _isolate_router_state()
        with self._lock:
            self._environments += 1
        with _IMPORT_LOCK:
            saved = {name: os.environ.get(name) for name in self.environment}
            os.environ.update(self.environment)
            try:
                # One name for every copy: Powertools idempotency keys include the module name, so
                # all environments of a function must share it (as they do on Lambda).
                module_name = f"baton_function_{self.spec.logical_id}"
                spec = importlib.util.spec_from_file_location(module_name, self.spec.module_file)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot load {self.spec.module_file}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            finally:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
        handler: Handler = getattr(module, self.spec.handler_name)
        return handler

    def _acquire(self) -> Handler:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._cold_start()

    def _release(self, handler: Handler) -> None:
        with self._lock:
            self._idle.append(handler)

    def invoke(self, event: dict[str, Any]) -> Invocation:
        handler = self._acquire()
        context = LocalLambdaContext(
            function_name=self.spec.logical_id,
            memory_limit_in_mb=self.spec.memory_mb,
            timeout_s=self.spec.timeout,
            region=self.region,
        )
        with self._lock:
            self.invocations += 1
        started = _now()
        future = self._pool.submit(handler, event, context)
        try:
            result = future.result(timeout=self.spec.timeout)
        except FutureTimeout:
            # The abandoned invocation still runs in that environment: never hand it out again
            # (Lambda would have stopped it); the next invocation gets a fresh one.
            with self._lock:
                self.failures += 1
            logger.error("%s timed out after %ss", self.name, self.spec.timeout)
            return Invocation(
                ok=False,
                error=f"Task timed out after {self.spec.timeout} seconds",
                duration_ms=_now() - started,
            )
        except Exception as error:
            self._release(handler)
            with self._lock:
                self.failures += 1
            logger.warning("%s raised %s: %s", self.name, type(error).__name__, error)
            return Invocation(
                ok=False, error=f"{type(error).__name__}: {error}", duration_ms=_now() - started
            )
        self._release(handler)
        return Invocation(ok=True, result=result, duration_ms=_now() - started)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _now() -> float:
    return time.monotonic() * 1000
