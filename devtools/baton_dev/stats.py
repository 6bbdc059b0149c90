"""`baton stats`: the figures CloudWatch would make of the functions' EMF lines, from a local stack.

On AWS, Powertools prints each metric as an embedded-metric-format (EMF) JSON document on the
function's stdout and CloudWatch Logs turns it into metrics. `baton dev` keeps every function's
stdout in `<state-dir>/logs/<Function>.log`, so the same documents are there; this module reads
them back and aggregates them per metric and dimension set, as a CloudWatch widget would: count,
sum, p50, p95 and max over a time window.

An EMF document: {"_aws": {"Timestamp": ms, "CloudWatchMetrics": [{"Namespace": ..., "Dimensions":
[[names...]], "Metrics": [{"Name": ..., "Unit": ...}]}]}, "<dimension>": "value", "<Name>": value
or [values]}.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MetricSeries", "aggregate", "emf_documents", "parse_duration", "percentile", "read_series"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in `30s`, `10m`, `2h`, `1d` (a bare number is seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 10m, 2h, 1d)")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100) of `values` (not empty), as CloudWatch reports pNN."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class MetricSeries:
    """Every value of one metric with one set of dimension values."""

    namespace: str
    name: str
    unit: str
    dimensions: dict[str, str]
    values: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "metric": self.name,
            "unit": self.unit,
            "dimensions": self.dimensions,
            "count": len(self.values),
            "sum": sum(self.values),
            "p50": percentile(self.values, 50),
            "p95": percentile(self.values, 95),
            "max": max(self.values),
        }


def emf_documents(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The EMF documents among a function's log lines (its other output is skipped)."""
    for line in lines:
        if '"_aws"' not in line:
            continue
        try:
            document = json.loads(line)
        except ValueError:
            continue
        aws = document.get("_aws") if isinstance(document, dict) else None
        if isinstance(aws, dict) and isinstance(aws.get("CloudWatchMetrics"), list):
            yield document


def _values(raw: object) -> list[float]:
    items = raw if isinstance(raw, list) else [raw]
    return [float(item) for item in items if isinstance(item, int | float) and not isinstance(item, bool)]


def aggregate(documents: Iterable[dict[str, Any]], since_ms: float | None = None) -> list[MetricSeries]:
    """Per metric and dimension set (each set a document declares counts, as in CloudWatch), the
    values of the documents stamped at or after `since_ms`."""
    series: dict[tuple[str, str, tuple[tuple[str, str], ...]], MetricSeries] = {}
    for document in documents:
        aws = document["_aws"]
        if since_ms is not None and float(aws.get("Timestamp", 0)) < since_ms:
            continue
        for directive in aws["CloudWatchMetrics"]:
            namespace = str(directive.get("Namespace", ""))
            for dimension_set in directive.get("Dimensions") or [[]]:
                dimensions = {name: str(document.get(name, "")) for name in dimension_set}
                for metric in directive.get("Metrics", []):
                    name = str(metric["Name"])
                    key = (namespace, name, tuple(sorted(dimensions.items())))
                    if key not in series:
                        series[key] = MetricSeries(
                            namespace, name, str(metric.get("Unit", "None")), dimensions
                        )
                    series[key].values.extend(_values(document.get(name)))
    found = [one for one in series.values() if one.values]
    return sorted(found, key=lambda one: (one.namespace, one.name, sorted(one.dimensions.items())))


def read_series(log_dir: Path, since_ms: float | None = None) -> list[MetricSeries]:
    """The metrics in every function log of a local stack (`<state-dir>/logs/*.log`)."""

    def lines() -> Iterator[str]:
        for path in sorted(log_dir.glob("*.log")):
            with path.open(errors="replace") as log:
                yield from log

    return aggregate(emf_documents(lines()), since_ms)
