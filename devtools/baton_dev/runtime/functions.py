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


class LocalFunction:
    def __init__(self, spec: FunctionSpec, environment: dict[str, str], region: str) -> None:
        self.spec = spec
        self.environment = environment
        self.region = region
        self._handler: Callable[[dict[str, Any], Any], Any] | None = None
        # Each invocation runs on a worker so that the function's Timeout can be enforced;
        # a timed-out invocation is abandoned (its result ignored), as Lambda would kill it.
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix=spec.logical_id)
        self.invocations = 0
        self.failures = 0

    @property
    def name(self) -> str:
        return self.spec.logical_id

    def load(self) -> None:
        """Import the handler module with the function's own environment, like a cold start."""
        with _IMPORT_LOCK:
            saved = {name: os.environ.get(name) for name in self.environment}
            os.environ.update(self.environment)
            try:
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
            self._handler = getattr(module, self.spec.handler_name)

    def invoke(self, event: dict[str, Any]) -> Invocation:
        if self._handler is None:
            self.load()
        assert self._handler is not None
        context = LocalLambdaContext(
            function_name=self.spec.logical_id,
            memory_limit_in_mb=self.spec.memory_mb,
            timeout_s=self.spec.timeout,
            region=self.region,
        )
        self.invocations += 1
        started = _now()
        future = self._pool.submit(self._handler, event, context)
        try:
            result = future.result(timeout=self.spec.timeout)
        except FutureTimeout:
            self.failures += 1
            logger.error("%s timed out after %ss", self.name, self.spec.timeout)
            return Invocation(
                ok=False,
                error=f"Task timed out after {self.spec.timeout} seconds",
                duration_ms=_now() - started,
            )
        except Exception as error:
            self.failures += 1
            logger.warning("%s raised %s: %s", self.name, type(error).__name__, error)
            return Invocation(
                ok=False, error=f"{type(error).__name__}: {error}", duration_ms=_now() - started
            )
        return Invocation(ok=True, result=result, duration_ms=_now() - started)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _now() -> float:
    return time.monotonic() * 1000
