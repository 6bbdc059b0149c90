"""Scenario 6's goodput at the provider (bench/rate_limit_goodput.py): computed from the
simulator's request log, over the window in which calls waited on the limit."""

import pytest

from bench.rate_limit_goodput import _timeline, submission_to_call_s


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


def test_a_prompt_jobs_time_to_its_model_call_is_counted_from_its_submission() -> None:
    """A prompt job has no extract stage (its timings carry no extract_ms): the fairness case's
    "to its model call" figure was nan for every sample. It counts from the submission now: the
    first answered call of that job, not another job's, nor its refused ones."""
    log = [
        {"ts": 1001.0, "status": 200, "job_id": "job_other"},
        {"ts": 1001.5, "status": 429, "job_id": "job_b"},
        {"ts": 1002.25, "status": 200, "job_id": "job_b"},
    ]
    assert submission_to_call_s("job_b", 1_000_500.0, log) == pytest.approx(1.75)
    with pytest.raises(RuntimeError, match="job_none"):
        submission_to_call_s("job_none", 1_000_500.0, log)
