"""Run by bench/exec_wrapper.sh inside each function process of the bench's stack (never shipped,
never in `baton dev`): the bench's Recorder hooks botocore here, every invocation is timed, and the
totals go to BATON_BENCH_RECORD_DIR/<pid>.json after each invocation for the stack to merge.
Then awslambdaric runs exactly as Lambda starts it."""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

# This script's folder (bench/) must not shadow anything (bench/profile.py vs the stdlib profile).
del sys.path[0]
sys.path.append(str(Path(__file__).resolve().parents[1]))
# bench.stack reads baton_dev.client; python -S (as Lambda starts it) skips the venv's .pth file
# that makes the editable devtools package importable.
sys.path.append(str(Path(__file__).resolve().parents[1] / "devtools"))

from bench.stack import InvocationStats, Recorder, _local  # noqa: E402

RECORD_DIR = Path(os.environ["BATON_BENCH_RECORD_DIR"])
FUNCTION = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
Recorder.process_role = FUNCTION  # also the calls of its record threads (a concurrent stage)
recorder = Recorder(resolve_update_sizes=False)
recorder.install()
_epoch = ""


def _current_epoch() -> str:
    try:
        return (RECORD_DIR / "epoch").read_text()
    except OSError:
        return ""


def _write() -> None:
    with recorder._lock:
        payload = {
            "calls": [[*key, asdict(stats)] for key, stats in recorder.calls.items()],
            "invocations": {name: asdict(stats) for name, stats in recorder.invocations.items()},
        }
    staging = RECORD_DIR / f".{os.getpid()}.json"
    staging.write_text(json.dumps(payload))
    staging.replace(RECORD_DIR / f"{os.getpid()}.json")


def _timed(original: Any) -> Any:
    def handle_event_request(*args: Any, **kwargs: Any) -> Any:
        global _epoch
        epoch = _current_epoch()
        if epoch != _epoch:  # the bench reset its figures since this process last wrote
            recorder.reset()
            _epoch = epoch
        _local.role, _local.in_handler, _local.aws_ms, _local.aws_calls = FUNCTION, True, 0.0, 0
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            with recorder._lock:
                stats = recorder.invocations.setdefault(
                    FUNCTION, InvocationStats(memory_mb=int(os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]))
                )
                stats.ms.append(elapsed)
                stats.aws_ms.append(_local.aws_ms)
                stats.aws_calls.append(_local.aws_calls)
            _local.role, _local.in_handler = None, False
            _write()

    return handle_event_request


from awslambdaric import bootstrap  # noqa: E402

bootstrap.handle_event_request = _timed(bootstrap.handle_event_request)
sys.argv = ["awslambdaric", sys.argv[-1]]
runpy.run_module("awslambdaric", run_name="__main__", alter_sys=True)
