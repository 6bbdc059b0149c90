"""What every scenario returns, and how results are printed and kept (bench/results/*.json)."""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Result:
    """One scenario's outcome: summary rows for the table, everything else for the JSON history."""

    name: str
    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, metric: str, value: str) -> None:
        self.rows.append((metric, value))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def pcts(values: Sequence[float], qs: Iterable[float] = (50, 95, 99)) -> dict[str, float]:
    return {f"p{q:g}": round(percentile(values, q), 2) for q in qs}


def fmt_ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def fmt_pcts(values: Sequence[float], qs: Iterable[float] = (50, 95, 99), unit: str = "ms") -> str:
    return " / ".join(fmt_ms(percentile(values, q)) for q in qs) + f" {unit}"


def machine() -> dict[str, Any]:
    """Where the figures came from."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import os

        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = 0
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cores": cores,
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def print_results(results: Sequence[Result]) -> None:
    """One table: scenario, metric, value (rich when it can, plain text otherwise)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency of the dev tools
        for result in results:
            print(f"\n== {result.title} ({result.seconds:.0f} s)")
            for metric, value in result.rows:
                print(f"  {metric:<58} {value}")
            for note in result.notes:
                print(f"  note: {note}")
        return
    table = Table(title="Baton benchmarks", show_lines=False, expand=False)
    table.add_column("scenario", style="bold", no_wrap=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for result in results:
        for index, (metric, value) in enumerate(result.rows):
            label = f"{result.title}\n({result.seconds:.0f} s)" if index == 0 else ""
            table.add_row(label, metric, value, end_section=index == len(result.rows) - 1)
    console = Console(width=140)
    console.print(table)
    for result in results:
        for note in result.notes:
            console.print(f"[dim]{result.name}: {note}[/dim]", highlight=False)


def write_json(results: Sequence[Result], path: Path | None = None) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path or RESULTS_DIR / f"{stamp}.json"
    document = {"machine": machine(), "results": [asdict(result) for result in results]}
    text = json.dumps(document, indent=2, default=str)
    target.write_text(text)
    if path is None:
        (RESULTS_DIR / "latest.json").write_text(text)
    return target


def scenario_main(run: Callable[..., Result], description: str, argv: Sequence[str] | None = None) -> int:
    """`python -m bench.<scenario> [--quick] [--json PATH]`: run one scenario and print its table."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="an even smaller run (smoke)")
    parser.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    result = timed(run, quick=args.quick)
    print_results([result])
    if args.json:
        write_json([result], args.json)
    return 0


def timed(run: Callable[..., Result], **kwargs: Any) -> Result:
    started = time.monotonic()
    result = run(**kwargs)
    result.seconds = time.monotonic() - started
    return result
