"""The model call's timeout is counted from when the call leaves, not from the invocation's start:
the waits before it (capacity, the send slot) must not let the call outlive its invocation, whose
timeout would kill it after the provider answered, and whose retry would pay again (seen once in
10,904 paid calls of a 10,000-job chaos run). A call left without time is deferred to a fresh
invocation, not failed as an attempt."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from baton import llm, model_calls
from baton.limiter import Deferred
from baton.model_calls import ModelCalls

T = 1_800_000_000_000


class Clock:
    def __init__(self) -> None:
        self.ms = T

    def now_ms(self) -> int:
        return self.ms

    def sleep(self, seconds: float) -> None:
        self.ms += round(seconds * 1000)


class NoLimits:
    def __init__(self) -> None:
        self.abandoned: list[Any] = []

    def settle(self, *args: Any, **kwargs: Any) -> None:
        return None

    def abandon(self, ticket: Any, **kwargs: Any) -> None:
        self.abandoned.append(ticket)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(model_calls, "now_ms", clock.now_ms)
    monkeypatch.setattr(model_calls.time, "sleep", clock.sleep)
    monkeypatch.setattr(model_calls.telemetry, "model_call", lambda *args: None)  # metrics: not here
    return clock


@pytest.fixture
def calls() -> ModelCalls:
    return ModelCalls(
        settings=cast(Any, SimpleNamespace(model_timeout_seconds=60)),
        store=cast(Any, None),
        limiter=cast(Any, NoLimits()),
    )


RECORD = cast(Any, SimpleNamespace(model="m", job_id="j", step_key="j:1:0", deadline_ms=T + 900_000))
MESSAGES = [{"role": "user", "content": "hi"}]


def test_the_timeout_leaves_the_safety_margin_after_the_wait_for_the_send_slot(
    clock: Clock, calls: ModelCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    timeouts: list[float] = []

    def answer(settings: Any, **kwargs: Any) -> Any:
        timeouts.append(kwargs["timeout"])
        return SimpleNamespace(usage=SimpleNamespace(total_tokens=10), headers={})

    monkeypatch.setattr(model_calls.llm, "complete", answer)
    ticket = cast(Any, SimpleNamespace(slot_ms=T + 4_000, confirm=False))  # its send slot is 4 s away
    invocation_deadline = T + 12_000  # 12 s left when the record started
    calls.complete(RECORD, MESSAGES, {}, invocation_deadline, ticket)
    # Sent at T + 4 s with 8 s left: 8 - the margin, not 12 - the margin.
    assert clock.ms == T + 4_000
    assert timeouts == [pytest.approx(8.0 - llm.SAFETY_MARGIN_SECONDS)]


def test_no_time_left_after_the_wait_defers_the_call_without_spending_an_attempt(
    clock: Clock, calls: ModelCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_calls.llm, "complete", lambda *a, **k: pytest.fail("the model was called"))
    ticket = cast(Any, SimpleNamespace(slot_ms=T + 4_000, confirm=False))
    with pytest.raises(Deferred) as deferred:
        calls.complete(RECORD, MESSAGES, {}, T + 9_000, ticket)
    # Back at once, in a fresh invocation with its whole time; a Deferred is not a retry's attempt.
    assert deferred.value.delay_seconds == 0
    assert "not enough time left" in deferred.value.message
    # Its tokens and lease are given back, not held by a call that was never made; its turn has
    # come and stays: the fresh invocation takes the next free send slot, not a new turn behind
    # its tenant's other queued calls.
    assert cast(NoLimits, calls.limiter).abandoned == [ticket]
    assert deferred.value.slot_ms == ticket.slot_ms
