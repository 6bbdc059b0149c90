"""EventBridge schedules (`rate(...)`) that invoke template functions, run locally on a timer."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from typing import Any

from baton_dev.runtime.functions import LocalFunction
from baton_dev.runtime.template import ScheduleSpec

logger = logging.getLogger("baton.runtime")

_RATE = re.compile(r"^rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def rate_seconds(expression: str) -> float:
    match = _RATE.match(expression.strip())
    if not match:
        raise ValueError(f"only rate(...) schedules run locally, not {expression!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2).rstrip("s")]


def scheduled_event(spec: ScheduleSpec, region: str) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": region,
        "resources": [f"arn:aws:events:{region}:123456789012:rule/{spec.logical_id}"],
        "detail": {},
    }


class ScheduleSource:
    def __init__(
        self, spec: ScheduleSpec, function: LocalFunction, *, region: str, every_s: float | None = None
    ) -> None:
        self.spec = spec
        self.function = function
        self.region = region
        self.period_s = every_s if every_s is not None else rate_seconds(spec.expression)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0

    def start(self) -> None:
        if not self.spec.enabled:
            return
        self._thread = threading.Thread(target=self._loop, name=self.spec.logical_id, daemon=True)
        self._thread.start()
        logger.info("%s invokes %s every %.0fs", self.spec.logical_id, self.function.name, self.period_s)

    def signal_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self.function.invoke(scheduled_event(self.spec, self.region))
            self.runs += 1
