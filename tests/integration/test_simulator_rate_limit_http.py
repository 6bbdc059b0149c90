"""The simulator's provider rate limit over HTTP: 429 with Retry-After, as Baton's model client sees it."""

from __future__ import annotations

import time

import httpx
import pytest

from baton.limiter import RateLimitHeaders
from baton.llm import retry_after_seconds
from baton_dev.simulator import ModelSimulator, SimulatorConfig

pytestmark = pytest.mark.integration

BODY = {"model": "baton-local", "messages": [{"role": "user", "content": "Hello there."}]}


def test_requests_beyond_the_limit_answer_429_until_a_slot_frees() -> None:
    # 120 requests/min enforced over 1 s windows: 2 per second.
    config = SimulatorConfig(latency_ms=0, ms_per_token=0, rate_limit_rpm=120, rate_limit_window_s=1)
    with ModelSimulator(config) as sim, httpx.Client(base_url=sim.base_url, timeout=10) as client:
        statuses = [client.post("/chat/completions", json=BODY).status_code for _ in range(2)]
        refused = client.post("/chat/completions", json=BODY)
        assert statuses == [200, 200]
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        wait = retry_after_seconds(refused.headers)
        assert wait is not None and 0 < wait <= 1.0
        assert refused.headers["Retry-After"] == "1"
        time.sleep(wait + 0.05)
        assert client.post("/chat/completions", json=BODY).status_code == 200
        faults = [entry["fault"] for entry in sim.request_log()]
        assert faults == [None, None, "rate_limit", None]


def test_answers_carry_openai_rate_limit_headers() -> None:
    config = SimulatorConfig(latency_ms=0, ms_per_token=0, rate_limit_rpm=120, rate_limit_tpm=60_000)
    with ModelSimulator(config) as sim, httpx.Client(base_url=sim.base_url, timeout=10) as client:
        answer = client.post("/chat/completions", json={**BODY, "max_tokens": 100})
        assert answer.status_code == 200
        headers = RateLimitHeaders.parse(answer.headers)
        assert (headers.limit_requests, headers.limit_tokens) == (120, 60_000)
        assert headers.remaining_requests == 119
        assert headers.remaining_tokens is not None and 60_000 - 110 < headers.remaining_tokens < 60_000 - 100
        assert headers.reset_requests_s is not None and 0 < headers.reset_requests_s <= 60


def test_requests_beyond_the_token_limit_answer_429() -> None:
    """6000 tokens/min over 1 s windows: 100 tokens a second; each request asks for about 99 (and
    is then counted at its usage, more than 1)."""
    config = SimulatorConfig(latency_ms=0, ms_per_token=0, rate_limit_tpm=6000, rate_limit_window_s=1)
    with ModelSimulator(config) as sim, httpx.Client(base_url=sim.base_url, timeout=10) as client:
        body = {**BODY, "max_tokens": 95}
        assert client.post("/chat/completions", json=body).status_code == 200
        refused = client.post("/chat/completions", json=body)
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "tokens"
        headers = RateLimitHeaders.parse(refused.headers)
        assert headers.limit_tokens == 6000 and headers.retry_after_s is not None
        assert [entry["status"] for entry in sim.request_log()] == [200, 429]
