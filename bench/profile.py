"""Whole-process profiles with py-spy: every thread of the local stack and of moto, not just one.

pyinstrument (and cProfile) see the thread that started them; the local runtime runs handlers on
worker threads and AWS lives in a second process (moto), so the profile here is py-spy's sampled
stacks of whichever thread holds the GIL (`--gil`: Python CPU time, never threads waiting on I/O).
Samples are folded into the innermost non-standard-library package (stdlib frames count for the
code that called them: `json.dumps` under Powertools' logger is the logger's cost).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import sysconfig
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class Profile:
    samples: int = 0
    by_package: Counter[str] = field(default_factory=Counter)
    by_function: Counter[str] = field(default_factory=Counter)  # innermost frame (self time)
    by_caller: Counter[str] = field(default_factory=Counter)  # innermost non-stdlib frame
    error: str | None = None

    def top(self, counter: Counter[str], n: int = 8) -> list[tuple[str, float]]:
        total = max(1, self.samples)
        return [(name, round(100 * count / total, 1)) for name, count in counter.most_common(n)]


class Recording:
    """`py-spy record --pid PID --gil --format raw` in the background for `duration_s`."""

    def __init__(self, pid: int, duration_s: float, output: Path, rate: int = 97) -> None:
        self.output = output
        exe = py_spy()
        self._process: subprocess.Popen[bytes] | None = None
        self.error: str | None = None
        if exe is None:
            self.error = "py-spy not installed (make install)"
            return
        self._process = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(duration_s))),
                "--rate",
                str(rate),
                "--gil",
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def finish(self, timeout_s: float = 60) -> Profile:
        if self._process is None:
            return Profile(error=self.error)
        try:
            _, stderr = self._process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return Profile(error="py-spy did not finish")
        if self._process.returncode != 0 or not self.output.exists():
            return Profile(error=f"py-spy failed: {stderr.decode(errors='replace')[-300:]}")
        return parse_raw(self.output.read_text(errors="replace"))


def parse_raw(text: str) -> Profile:
    profile = Profile()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parsed = [_parse_frame(frame) for frame in stack.split(";")]
        frames = [frame for frame in parsed if frame is not None]
        if not frames:
            continue
        profile.samples += count
        function, file = frames[-1]
        profile.by_function[f"{function} ({_short(file)})"] += count
        package, caller = _owner(frames)
        profile.by_package[package] += count
        profile.by_caller[caller] += count
    return profile


def _parse_frame(frame: str) -> tuple[str, str] | None:
    match = _FRAME.match(frame.strip())
    if match is None:
        return None
    return match.group("function"), match.group("file")


def _owner(frames: list[tuple[str, str]]) -> tuple[str, str]:
    """(package, function) of the innermost frame outside the standard library."""
    for function, file in reversed(frames):
        package = _package(file)
        if package is not None:
            return package, f"{function} ({_short(file)})"
    function, file = frames[-1]
    return f"stdlib:{_stdlib_module(file)}", f"{function} ({_short(file)})"


def _package(file: str) -> str | None:
    """Top-level package of a non-stdlib file, None for the standard library."""
    normalized = file.replace("\\", "/")
    if "site-packages/" in normalized:
        rest = normalized.split("site-packages/", 1)[1]
        return rest.split("/", 1)[0].removesuffix(".py")
    for marker, name in (
        ("layers/baton/baton/", "baton"),
        ("devtools/baton_dev/", "baton_dev"),
        ("functions/", "functions"),
        ("bench/", "bench"),
    ):
        if marker in normalized:
            return name
    path = Path(file)
    if path.is_absolute():
        try:
            path.resolve().relative_to(_STDLIB)
            return None
        except ValueError:
            return path.parts[-2] if len(path.parts) > 1 else path.stem
    # py-spy shortens paths to the module's path under its sys.path entry: a bare stdlib
    # module ("json/encoder.py", "threading.py") or a package.
    head = normalized.split("/", 1)[0].removesuffix(".py")
    return None if head in sys.stdlib_module_names or head.startswith("<") else head


def _stdlib_module(file: str) -> str:
    normalized = file.replace("\\", "/")
    if Path(normalized).is_absolute():
        with contextlib.suppress(ValueError):
            normalized = str(Path(normalized).resolve().relative_to(_STDLIB))
    return normalized.split("/", 1)[0].removesuffix(".py")


def _short(file: str) -> str:
    normalized = file.replace("\\", "/")
    if "site-packages/" in normalized:
        return normalized.split("site-packages/", 1)[1]
    parts = normalized.split("/")
    return "/".join(parts[-3:])
