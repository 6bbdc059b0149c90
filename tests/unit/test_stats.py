"""`baton stats` over a function log recorded from Powertools (EMF lines between log lines): the
same figures a CloudWatch widget would show, per metric and dimension set, within a window."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from baton_dev.cli import app
from baton_dev.stats import aggregate, emf_documents, parse_duration, percentile, read_series

SAMPLE = Path(__file__).parent / "data" / "emf_infer_function.log"
EARLY_MS = 1796150000000  # the first four EMF documents
LATE_MS = 1796150600000  # ten minutes later: the rest


Key = tuple[str, tuple[tuple[str, str], ...]]


def key(metric: str, **dimensions: str) -> Key:
    """A metric and its dimension values (every function adds its `service`)."""
    return (metric, tuple(sorted({"service": "baton-infer", **dimensions}.items())))


def _by_key(log_dir: Path, since_ms: float | None = None) -> dict[Key, dict[str, Any]]:
    return {
        (summary["metric"], tuple(sorted(summary["dimensions"].items()))): summary
        for summary in (series.summary() for series in read_series(log_dir, since_ms))
    }


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    logs = tmp_path / "logs"
    logs.mkdir()
    shutil.copy(SAMPLE, logs / "InferFunction.log")
    return logs


def test_only_emf_documents_are_read_from_a_function_log() -> None:
    lines = SAMPLE.read_text().splitlines()
    documents = list(emf_documents(lines))
    assert len(documents) == 11
    assert len(lines) == 14  # two Powertools log lines and a traceback line are not metrics


def test_every_metric_and_dimension_set_gets_count_sum_percentiles_and_max(log_dir: Path) -> None:
    figures = _by_key(log_dir)
    latency = figures[key("ModelLatency", model="baton-local", outcome="ok")]
    assert (latency["count"], latency["sum"], latency["max"]) == (2, 2016.5, 1204.0)
    assert latency["p50"] == 812.5
    assert latency["p95"] == 1204.0
    assert latency["unit"] == "Milliseconds"
    refused = figures[key("ModelLatency", model="baton-local", outcome="rate_limited")]
    assert refused["count"] == 1
    stage = figures[key("StageDuration", stage="infer")]
    assert (stage["count"], stage["sum"]) == (2, 2400.0)
    acme = figures[key("JobTokens", tenant="acme", model="baton-local")]
    globex = figures[key("JobTokens", tenant="globex", model="baton-local")]
    assert (acme["count"], acme["sum"]) == (2, 200.0)
    assert (globex["count"], globex["sum"]) == (1, 300.0)
    # A metric added twice to one metric set is one document with a list of values: two data points.
    completed = figures[key("JobsCompleted")]
    assert (completed["count"], completed["sum"]) == (2, 2.0)
    assert figures[key("QueueWait")]["sum"] == 40.0
    assert figures[key("WebhookDeliveries", outcome="delivered")]["count"] == 1


def test_the_window_keeps_only_documents_stamped_in_it(log_dir: Path) -> None:
    figures = _by_key(log_dir, since_ms=LATE_MS)
    assert key("QueueWait") not in figures
    stage = figures[key("StageDuration", stage="infer")]
    assert (stage["count"], stage["sum"]) == (1, 1500.0)
    latency = figures[key("ModelLatency", model="baton-local", outcome="ok")]
    assert latency["sum"] == 1204.0
    assert _by_key(log_dir, since_ms=LATE_MS + 1) == {}


def test_a_document_counts_once_per_dimension_set_it_declares() -> None:
    document = {
        "_aws": {
            "Timestamp": EARLY_MS,
            "CloudWatchMetrics": [
                {
                    "Namespace": "Baton",
                    "Dimensions": [["stage"], []],
                    "Metrics": [{"Name": "D", "Unit": "Count"}],
                }
            ],
        },
        "stage": "infer",
        "D": 3,
    }
    series = aggregate([document])
    assert [(one.dimensions, one.values) for one in series] == [({}, [3.0]), ({"stage": "infer"}, [3.0])]


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([7.0], 95) == 7.0


def test_durations() -> None:
    assert [parse_duration(text) for text in ("30s", "10m", "2h", "1d", "45")] == [30, 600, 7200, 86400, 45]
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("ten minutes")


def test_the_cli_prints_json_and_a_table_for_a_state_dir(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = log_dir.parent
    # The window counts back from now: pretend now is a minute after the late documents.
    monkeypatch.setattr(time, "time", lambda: LATE_MS / 1000 + 60)
    runner = CliRunner()
    answer = runner.invoke(app, ["stats", "--state-dir", str(state_dir), "--since", "5m", "--json"])
    assert answer.exit_code == 0, answer.output
    report = json.loads(answer.stdout)
    assert report["since_s"] == 300
    metrics = {(m["metric"], m["dimensions"].get("stage")) for m in report["metrics"]}
    assert ("StageDuration", "infer") in metrics
    assert ("QueueWait", None) not in metrics  # stamped eleven minutes before "now"
    table = runner.invoke(app, ["stats", "--state-dir", str(state_dir), "--since", "1h"])
    assert table.exit_code == 0, table.output
    assert "QueueWait" in table.stdout and "JobTokens" in table.stdout
    bad = runner.invoke(app, ["stats", "--state-dir", str(state_dir), "--since", "soon"])
    assert bad.exit_code == 1
    assert "not a duration" in bad.output
