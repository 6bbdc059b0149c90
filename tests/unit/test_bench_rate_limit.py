"""Scenario 6's goodput at the provider (bench/rate_limit_goodput.py): computed from the
simulator's request log, over the window in which calls waited on the limit."""

import pytest

from bench.rate_limit_goodput import _timeline


def test_goodput_at_the_provider_counts_n_calls_over_n_minus_1_intervals() -> None:
    started_ms = 1_000_000.0
    log = [
        {
            "ts": 1002.0,
            "path": "/v1/chat/completions",
            "status": 200,
            "prompt_tokens": 12,
            "completion_tokens": 8,
        },
        {
            "ts": 1002.2,
            "path": "/v1/chat/completions",
            "status": 429,
            "prompt_tokens": 12,
            "completion_tokens": 0,
        },
        {
            "ts": 1002.5,
            "path": "/v1/chat/completions",
            "status": 200,
            "prompt_tokens": 12,
            "completion_tokens": 8,
        },
        {
            "ts": 1003.0,
            "path": "/v1/chat/completions",
            "status": 200,
            "prompt_tokens": 12,
            "completion_tokens": 7,
        },
        {"ts": 1003.1, "path": "/v1/models", "status": 200},
    ]
    timeline = _timeline(log, started_ms)
    assert timeline["first_call_s"] == pytest.approx(2.0) and timeline["last_call_s"] == pytest.approx(3.0)
    assert timeline["provider_rate_per_min"] == pytest.approx(120.0)  # 2 intervals in 1 s
    assert timeline["provider_tokens_per_min"] == pytest.approx(40 * 60)  # all calls' tokens but the last
    assert timeline["refused_at_s"] == [2.2]
