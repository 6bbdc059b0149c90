"""The provider limiter (baton.limiter) against the template's LimiterTable in moto: reserve,
settle, learn, lease expiry and fairness. Time is passed in (now_ms), never waited for."""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pytest

import baton.limiter as limiter_module
from baton.clock import now_ms
from baton.limiter import (
    BOOK_AHEAD_S,
    CONFIRM_BEFORE_MS,
    JUMP_WRITE_MARGIN_MS,
    MAX_WAIT_IN_FUNCTION_S,
    PACE_FRACTION,
    PROBE_POLL_MS,
    PROBE_WAIT_IN_FUNCTION_S,
    RETURN_LEAD_S,
    Deferred,
    Limits,
    ProviderLimiter,
    RateLimitHeaders,
    Ticket,
    WaitInFunction,
    estimate_tokens,
    parse_duration,
    provider_key,
    queue_key,
)
from baton.model_calls import ModelCalls
from baton_dev.simulator import SlidingWindowLimiter

if TYPE_CHECKING:
    from conftest import AwsStack

PROVIDER = provider_key("http://127.0.0.1:9999/v1", "baton-local")
STEP_AT_120 = math.ceil(60_000 / (120 * PACE_FRACTION))  # ms between send slots at R = 120/min
T0 = 1_800_000_000_000
LEASE_MS = 30_000


def limiter(aws: AwsStack, *, rpm: int = 0, tpm: int = 0, tenant_cap: int = 0) -> ProviderLimiter:
    return ProviderLimiter(aws.limiter_table, configured=Limits(rpm, tpm), tenant_max_in_flight=tenant_cap)


def admit(
    lim: ProviderLimiter,
    *,
    now: int,
    tokens: int = 100,
    answer_tokens: int = 0,
    tenant: str = "acme",
    job: str = "j",
    held_slot_ms: int | None = None,
) -> Ticket:
    return lim.admit(
        PROVIDER,
        tenant_id=tenant,
        lease_id=job,
        tokens=tokens,
        answer_tokens=answer_tokens,
        now_ms=now,
        lease_ms=LEASE_MS,
        held_slot_ms=held_slot_ms,
    )


# -- parsing -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6m0s", 360.0), ("1s", 1.0), ("250ms", 0.25), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("20ms", 0.02)],
)
def test_openai_reset_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "1s junk"])
def test_unreadable_durations_are_none(text: str) -> None:
    assert parse_duration(text) is None


def test_rate_limit_headers_parse_case_insensitively() -> None:
    headers = RateLimitHeaders.parse(
        {
            "X-RateLimit-Limit-Requests": "120",
            "x-ratelimit-limit-tokens": "40000",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "6m0s",
            "retry-after-ms": "1500",
        }
    )
    assert (headers.limit_requests, headers.limit_tokens, headers.remaining_requests) == (120, 40000, 0)
    assert headers.reset_requests_s == 360.0 and headers.retry_after_s == 1.5
    assert headers.teaches_limits and not RateLimitHeaders.parse({}).teaches_limits


def test_token_estimate_is_prompt_plus_max_tokens() -> None:
    messages = [{"role": "user", "content": "x" * 400}]
    assert estimate_tokens(messages, 50) == 150
    assert estimate_tokens(messages, None) > 1000  # no cap: the default answer budget


# -- reserve -----------------------------------------------------------------------------------
def test_configured_requests_are_paced_evenly(aws: AwsStack) -> None:
    """120/min: one slot every 0.5 s (a little more: paced under the limit), none in a burst.
    Calls whose slot is within MAX_WAIT_IN_FUNCTION_S wait for it in the function; a later one is
    deferred with its turn and asked back RETURN_LEAD_S (to a second more) before it."""
    lim = limiter(aws, rpm=120)
    interval = 60_000 / (120 * PACE_FRACTION)
    in_function = math.floor(MAX_WAIT_IN_FUNCTION_S * 1000 / interval) + 1
    turns = queue_turns(lim, in_function, now=T0)
    assert turns == [pytest.approx(T0 + i * interval, abs=i + 1) for i in range(in_function)]
    with pytest.raises(Deferred) as deferred:
        admit(lim, now=T0, job="late")
    turn = deferred.value.slot_ms
    assert turn is not None
    assert turn == pytest.approx(T0 + in_function * interval, abs=in_function + 1)
    assert turn > T0 + MAX_WAIT_IN_FUNCTION_S * 1000
    back_ms = T0 + deferred.value.delay_seconds * 1000
    assert turn - (RETURN_LEAD_S + 1) * 1000 <= back_ms <= turn - RETURN_LEAD_S * 1000
    # Back early, with its turn: it waits for it in the function, then is given that turn.
    with pytest.raises(WaitInFunction) as near:
        admit(lim, now=back_ms, held_slot_ms=turn, job="late")
    for i, earlier in enumerate(turns):  # those before it that waited in the function book theirs
        if earlier - T0 > BOOK_AHEAD_S * 1000:
            admit(lim, now=earlier - round(BOOK_AHEAD_S * 1000), held_slot_ms=earlier, job=f"acme{i}")
    held = admit(lim, now=near.value.until_ms, held_slot_ms=turn, job="late")
    assert held.slot_ms == turn
    assert lim.state(PROVIDER)["request_tat"] == pytest.approx(turn + interval, abs=in_function + 2)
    assert lim.state(queue_key(PROVIDER, "acme"))["queue_tat"] == pytest.approx(turn + interval, abs=2)


def test_a_call_woken_a_little_late_keeps_the_pace_aligned(aws: AwsStack) -> None:
    """A call that wakes a few ms after the pace freed takes the slot as booked and leaves at once
    (its margin under the limit, 3 % of an interval, absorbs it): the lateness is not lost to
    every later call. Later than that margin, the pace starts again from now."""
    lim = limiter(aws, rpm=120)
    interval = 60_000 / (120 * PACE_FRACTION)
    admit(lim, now=T0, job="a")
    late = admit(lim, now=T0 + round(interval) + 10, job="b")
    assert late.slot_ms == pytest.approx(T0 + interval, abs=1)
    assert lim.state(PROVIDER)["request_tat"] == pytest.approx(T0 + 2 * interval, abs=2)
    now = T0 + round(2 * interval) + 100
    assert admit(lim, now=now, job="c").slot_ms == now


def test_an_idle_limiter_admits_at_once(aws: AwsStack) -> None:
    lim = limiter(aws, rpm=120)
    admit(lim, now=T0, job="a")
    later = T0 + 60_000
    assert admit(lim, now=later, job="b").slot_ms == later  # unused capacity is not banked


def test_tokens_per_minute_paces_by_reserved_tokens(aws: AwsStack) -> None:
    """6000 tokens/min = 100 a second: a 500-token call books 5 s of the budget."""
    lim = limiter(aws, tpm=6000)
    first = admit(lim, now=T0, tokens=500, job="a")
    assert first.slot_ms == T0
    with pytest.raises(Deferred) as deferred:
        admit(lim, now=T0, tokens=500, job="b")
    assert deferred.value.slot_ms == pytest.approx(T0 + 500 * 60_000 / (6000 * PACE_FRACTION), abs=2)


def test_settle_returns_what_the_estimate_over_reserved(aws: AwsStack) -> None:
    lim = limiter(aws, tpm=6000)
    ticket = admit(lim, now=T0, tokens=1000, job="a")
    booked = lim.state(PROVIDER)["token_tat"]
    lim.settle(ticket, used_tokens=100, headers=RateLimitHeaders(), now_ms=T0 + 200)
    refunded = booked - lim.state(PROVIDER)["token_tat"]
    assert refunded == pytest.approx(900 * 60_000 / (6000 * PACE_FRACTION), abs=2)
    # A call that used more than estimated is charged the difference.
    ticket = admit(lim, now=T0 + 60_000, tokens=100, job="b")
    booked = lim.state(PROVIDER)["token_tat"]
    lim.settle(ticket, used_tokens=300, headers=RateLimitHeaders(), now_ms=T0 + 60_200)
    assert lim.state(PROVIDER)["token_tat"] - booked == pytest.approx(
        200 * 60_000 / (6000 * PACE_FRACTION), abs=2
    )


def test_abandoned_call_gives_its_tokens_back(aws: AwsStack) -> None:
    lim = limiter(aws, tpm=6000)
    before = T0
    ticket = admit(lim, now=before, tokens=1000, job="a")
    lim.abandon(ticket, now_ms=before)
    assert admit(lim, now=before, tokens=10, job="b").slot_ms == pytest.approx(before, abs=1)


def admitted_when_back(lim: ProviderLimiter, *, now: int, turn: int, job: str) -> Ticket:
    """A command back at `now` with its turn, as the infer function admits it: waiting in the
    function while told to (WaitInFunction), then booking its send slot."""
    for _ in range(10):
        try:
            return admit(lim, now=now, held_slot_ms=turn, job=job)
        except WaitInFunction as near:
            assert now < near.until_ms <= now + MAX_WAIT_IN_FUNCTION_S * 1000
            now = near.until_ms
    raise AssertionError("told to wait again and again")


def blocked_until(lim: ProviderLimiter, deferred: Deferred, *, job: str, at: int, block_ms: int) -> int:
    """Where a command deferred at `at` by a block ending at `block_ms` is admitted: back before
    the block ends (never after it), keeping its turn, then sent at the block's end."""
    turn = deferred.slot_ms
    assert turn is not None  # back to its turn, not to the end of its queue
    back = at + deferred.delay_seconds * 1000
    assert back <= block_ms
    return admitted_when_back(lim, now=back, turn=turn, job=job).slot_ms


def test_a_429_blocks_every_caller_until_its_retry_after(aws: AwsStack) -> None:
    lim = limiter(aws, rpm=6000)
    ticket = admit(lim, now=T0, job="a")
    refused = lim.rate_limited(ticket, headers=RateLimitHeaders(retry_after_s=7.0), now_ms=T0 + 100)
    # The refused call itself comes back RETURN_LEAD_S before the Retry-After ends, keeping its turn.
    assert refused.delay_s == 7.0 - RETURN_LEAD_S and refused.slot_ms == T0 + 7_100
    with pytest.raises(Deferred) as deferred:
        admit(lim, now=T0 + 200, job="b")
    assert blocked_until(lim, deferred.value, job="b", at=T0 + 200, block_ms=T0 + 7_100) == T0 + 7_100


def test_a_429s_block_is_its_retry_after_not_a_whole_second(aws: AwsStack) -> None:
    """A sliding window's Retry-After is often a fraction of a second: the block is that long (a
    second's block would leave two slots unused at R = 120), and the refused call comes back at
    once (its turn kept at the block's end)."""
    lim = limiter(aws, rpm=6000)
    ticket = admit(lim, now=T0, job="a")
    refused = lim.rate_limited(ticket, headers=RateLimitHeaders(retry_after_s=0.3), now_ms=T0 + 50)
    assert refused.delay_seconds == 0 and refused.slot_ms == T0 + 350
    assert lim.state(PROVIDER)["request_tat"] == T0 + 350
    assert admit(lim, now=T0 + 60, held_slot_ms=refused.slot_ms, job="a").slot_ms == T0 + 350


def test_no_remaining_requests_counts_the_reset_from_when_the_call_was_sent(aws: AwsStack) -> None:
    """At the pace, the 10th call of a 10-call window reads `remaining: 0` and a reset shorter than
    one interval. Counted from when the answer ended (the call's latency later), that block pushed
    the next slot every time; counted from the send, it leaves the pace as it is."""
    lim = limiter(aws, rpm=120)
    interval = 60_000 / (120 * PACE_FRACTION)
    ticket = admit(lim, now=T0, job="a")
    headers = RateLimitHeaders(remaining_requests=0, reset_requests_s=0.361)
    lim.settle(ticket, used_tokens=None, headers=headers, now_ms=T0 + 600, sent_ms=T0)
    assert lim.state(PROVIDER)["request_tat"] == pytest.approx(T0 + interval, abs=1)
    assert admit(lim, now=T0 + 400, job="b").slot_ms == pytest.approx(T0 + interval, abs=1)


def test_no_remaining_requests_blocks_until_the_reset(aws: AwsStack) -> None:
    lim = limiter(aws, rpm=6000)
    ticket = admit(lim, now=T0, job="a")
    headers = RateLimitHeaders(remaining_requests=0, reset_requests_s=20.0)
    lim.settle(ticket, used_tokens=10, headers=headers, now_ms=T0)
    with pytest.raises(Deferred) as deferred:
        admit(lim, now=T0 + 10, job="b")
    assert blocked_until(lim, deferred.value, job="b", at=T0 + 10, block_ms=T0 + 20_000) == T0 + 20_000


def queue_turns(lim: ProviderLimiter, count: int, *, now: int, tenant: str = "acme") -> list[int]:
    """`count` calls arriving at once: each sent, told to wait in the function, or deferred; their
    turns."""
    turns = []
    for i in range(count):
        try:
            turns.append(admit(lim, now=now, tenant=tenant, job=f"{tenant}{i}").slot_ms)
        except WaitInFunction as near:
            assert near.turn_ms is not None  # known limits: a turn is booked
            assert near.turn_ms - now <= MAX_WAIT_IN_FUNCTION_S * 1000
            turns.append(near.turn_ms)
        except Deferred as deferred:
            assert deferred.slot_ms is not None
            turns.append(deferred.slot_ms)
    return turns


def test_a_call_whose_turn_is_near_waits_for_it_in_the_function_without_booking_a_send_slot(
    aws: AwsStack,
) -> None:
    """A turn within MAX_WAIT_IN_FUNCTION_S but beyond BOOK_AHEAD_S: wait in the function (no
    deferral, no lease) and ask again BOOK_AHEAD_S before it; the send pace is not booked that far
    ahead meanwhile (another tenant's call finds it booked BOOK_AHEAD_S ahead at most)."""
    lim = limiter(aws, rpm=120, tenant_cap=10)
    interval = 60_000 / (120 * PACE_FRACTION)
    turns = queue_turns(lim, 4, now=T0)
    assert turns == [pytest.approx(T0 + i * interval, abs=i + 1) for i in range(4)]
    assert lim.state(PROVIDER)["request_tat"] <= T0 + BOOK_AHEAD_S * 1000 + interval
    assert len(lim.leases("acme")) == 2  # the two booked within BOOK_AHEAD_S
    with pytest.raises(WaitInFunction) as near:
        admit(lim, now=T0 + 100, held_slot_ms=turns[3], job="acme3")
    assert near.value.until_ms == turns[3] - BOOK_AHEAD_S * 1000
    ticket = admit(lim, now=near.value.until_ms, held_slot_ms=turns[3], job="acme3")
    assert ticket.slot_ms == turns[3]  # not before its turn: the calls before it keep theirs


def test_a_turn_that_comes_back_late_takes_the_next_free_send_slot(aws: AwsStack) -> None:
    """A delayed message that returns late (a busy poller) is sent at once if the provider is
    idle: the capacity is not lost, and the call does not queue again behind later turns."""
    lim = limiter(aws, rpm=120)
    turns = queue_turns(lim, 12, now=T0)
    queued = lim.state(queue_key(PROVIDER, "acme"))["queue_tat"]
    late = T0 + 20_000  # every turn long past
    assert admit(lim, now=late, held_slot_ms=turns[-1], job="acme11").slot_ms == late
    assert lim.state(queue_key(PROVIDER, "acme"))["queue_tat"] == queued  # not queued again


@pytest.mark.parametrize("spread", ["least", "most"])
def test_turns_that_come_back_together_are_still_sent_one_interval_apart(
    aws: AwsStack, monkeypatch: pytest.MonkeyPatch, spread: str
) -> None:
    """The send pace, not the queue, decides when calls leave: turns bunched by late messages
    leave one interval apart, waiting in the function up to MAX_WAIT_IN_FUNCTION_S; one whose send
    slot is further is deferred to come back RETURN_LEAD_S before the pace's next free slot, less
    a random spread (so the calls deferred together do not all come back at once): at either end
    of that spread it is back before its slot, and sent at it."""
    monkeypatch.setattr(limiter_module.random, "uniform", lambda a, b: a if spread == "least" else b)
    lim = limiter(aws, rpm=120)
    interval = 60_000 / (120 * PACE_FRACTION)
    now = T0 + 60_000
    in_function = math.floor(MAX_WAIT_IN_FUNCTION_S * 1000 / interval) + 1
    slots = [admit(lim, now=now, held_slot_ms=T0, job=f"j{i}").slot_ms for i in range(in_function)]
    assert slots == [pytest.approx(now + i * interval, abs=i + 1) for i in range(in_function)]
    with pytest.raises(Deferred) as deferred:
        admit(lim, now=now, held_slot_ms=T0, job="late")  # its slot would be > 4 s away
    next_free = now + in_function * interval
    turn = deferred.value.slot_ms
    assert turn is not None and turn == pytest.approx(next_free, abs=in_function + 1)  # its new turn
    # Back before it (spread over what a function may wait: not all at once), then sent at it.
    back = now + deferred.value.delay_seconds * 1000
    most_spread_s = MAX_WAIT_IN_FUNCTION_S - BOOK_AHEAD_S - 1
    assert (
        next_free - (RETURN_LEAD_S + 1) * 1000 <= back <= next_free - (RETURN_LEAD_S - most_spread_s) * 1000
    )
    slot = admitted_when_back(lim, now=back, turn=turn, job="late").slot_ms
    assert slot == pytest.approx(next_free, abs=in_function + 1)


def test_tokens_are_booked_at_what_answers_use_bounded_by_max_tokens(aws: AwsStack) -> None:
    """A call's prompt (100) plus max_tokens (300) is its ceiling; answers that use 50 teach the
    limiter to book about 100 + 50 (with the headroom the ceiling needs at the provider: a
    minute's T until an answer shows the window), not 400; never more answer than max_tokens."""
    lim = limiter(aws, tpm=6000)
    token_interval = 60_000 / (6000 * PACE_FRACTION)
    first = admit(lim, now=T0, tokens=400, answer_tokens=300, job="a")
    assert first.tokens == 400  # nothing seen yet: the ceiling
    lim.settle(first, used_tokens=150, headers=RateLimitHeaders(), now_ms=T0 + 100)
    assert lim.state(PROVIDER)["answer_tokens"] == 50
    now = T0 + 60_000
    second = admit(lim, now=now, tokens=400, answer_tokens=300, job="b")
    share = 1 - 400 / 6000  # room for the ceiling in a minute's budget
    assert second.tokens == math.ceil(150 / share) < 400 / 2
    assert lim.state(queue_key(PROVIDER, "acme"))["queue_tat"] - now == pytest.approx(
        second.tokens * token_interval, abs=2
    )
    assert lim.state(PROVIDER)["token_tat"] - now == pytest.approx(second.tokens * token_interval, abs=2)
    # Settled at the use it was booked for: nothing moves. More use is charged at the same scale.
    booked = lim.state(PROVIDER)["token_tat"]
    lim.settle(second, used_tokens=200, headers=RateLimitHeaders(), now_ms=now + 100)
    assert lim.state(PROVIDER)["token_tat"] - booked == pytest.approx(
        (math.ceil(200 * second.token_scale) - second.tokens) * token_interval, abs=2
    )
    # A call capped below what answers use is expected to use its cap at most.
    capped = admit(lim, now=now + 60_000, tokens=120, answer_tokens=20, job="c")
    assert lim.state(PROVIDER)["answer_tokens"] > 20
    assert (capped.tokens, capped.token_scale) == (120, 1.0)


def test_the_providers_window_is_learned_from_the_remaining_tokens(aws: AwsStack) -> None:
    """A provider admits a call at its ceiling: with a 10 s window (1000 of 6000 tokens/min) a
    400-token ceiling needs 40 % of the window free, so the pace books the use / 0.6."""
    lim = limiter(aws, tpm=6000)
    first = admit(lim, now=T0, tokens=400, answer_tokens=300, job="a")
    # The answer: 600 remaining after admitting this call at 400, in an idle window.
    lim.settle(
        first,
        used_tokens=150,
        headers=RateLimitHeaders(limit_tokens=6000, remaining_tokens=600, reset_tokens_s=10.0),
        now_ms=T0 + 100,
    )
    assert lim.state(PROVIDER)["token_window"] == 1000
    # A busier window shows less remaining: the largest seen is kept.
    lim.settle(
        admit(lim, now=T0 + 60_000, tokens=400, answer_tokens=300, job="b"),
        used_tokens=150,
        headers=RateLimitHeaders(limit_tokens=6000, remaining_tokens=20, reset_tokens_s=10.0),
        now_ms=T0 + 60_100,
    )
    assert lim.state(PROVIDER)["token_window"] == 1000
    booked = admit(lim, now=T0 + 120_000, tokens=400, answer_tokens=300, job="c").tokens
    assert booked == math.ceil(150 / (1 - 400 / 1000)) == 250


# -- learn -------------------------------------------------------------------------------------
def test_unknown_limits_are_learned_from_one_probe(aws: AwsStack) -> None:
    lim = limiter(aws)  # ProviderRequestsPerMinute = ProviderTokensPerMinute = 0
    probe = admit(lim, now=T0, job="a")
    assert probe.probe
    # While the probe is out, nobody else calls (and nothing is reserved for them): the others
    # wait in their functions for its answer, asking again in a moment, with no turn booked.
    with pytest.raises(WaitInFunction) as waiting:
        admit(lim, now=T0 + 10, job="b")
    assert waiting.value.turn_ms is None
    assert waiting.value.until_ms == T0 + 10 + PROBE_POLL_MS
    lim.settle(
        probe,
        used_tokens=50,
        headers=RateLimitHeaders.parse(
            {"x-ratelimit-limit-requests": "60", "x-ratelimit-limit-tokens": "100000"}
        ),
        now_ms=T0 + 300,
    )
    state = lim.state(PROVIDER)
    assert (state["learned_rpm"], state["learned_tpm"]) == (60, 100000)
    # Now paced at the learned 60/min: one a second.
    first = admit(lim, now=T0 + 400, job="c")
    assert not first.probe and first.limits == Limits(60, 100000)
    with pytest.raises(WaitInFunction) as near:
        admit(lim, now=T0 + 400, job="d")
    assert near.value.turn_ms == pytest.approx(T0 + 400 + 60_000 / (60 * PACE_FRACTION), abs=2)


def test_a_provider_without_headers_is_learned_unlimited(aws: AwsStack) -> None:
    lim = limiter(aws)
    probe = admit(lim, now=T0, job="a")
    lim.settle(probe, used_tokens=50, headers=RateLimitHeaders(), now_ms=T0 + 100)
    assert [admit(lim, now=T0 + 200, job=f"j{i}").slot_ms for i in range(5)] == [T0 + 200] * 5


def test_a_probe_that_failed_lets_the_next_caller_probe(aws: AwsStack) -> None:
    lim = limiter(aws)
    lim.abandon(admit(lim, now=T0, job="a"), now_ms=T0)
    assert admit(lim, now=T0 + 10, job="b").probe


def test_a_crashed_probe_expires(aws: AwsStack) -> None:
    lim = limiter(aws)
    admit(lim, now=T0, job="a")  # and never settled
    with pytest.raises(WaitInFunction):
        admit(lim, now=T0 + 1_000, job="b")
    assert admit(lim, now=T0 + 31_000, job="b").probe


def test_a_slow_probe_sends_the_others_back_to_their_queue_instead_of_holding_functions(
    aws: AwsStack,
) -> None:
    """Waiting in a function for the probe's answer is bounded: past PROBE_WAIT_IN_FUNCTION_S the
    others are deferred (a delayed message, no attempt spent), not billed while a slow model thinks."""
    lim = limiter(aws)
    admit(lim, now=T0, job="a")
    past = T0 + math.ceil(PROBE_WAIT_IN_FUNCTION_S * 1000)
    with pytest.raises(Deferred) as deferred:
        admit(lim, now=past, job="b")
    assert deferred.value.slot_ms is None and deferred.value.delay_seconds >= 1


def test_calls_that_waited_for_the_probe_are_paced_by_what_it_taught(aws: AwsStack) -> None:
    """A call that arrives while the probe is out waits in the function; asking again after the
    probe's answer taught the limits, it takes its turn at the learned pace (no deferral)."""
    lim = limiter(aws)
    probe = admit(lim, now=T0, job="a")
    with pytest.raises(WaitInFunction) as waiting:
        admit(lim, now=T0 + 10, job="b")
    lim.settle(
        probe,
        used_tokens=50,
        headers=RateLimitHeaders.parse({"x-ratelimit-limit-requests": "60"}),
        now_ms=T0 + 300,
    )
    ticket = admit(lim, now=waiting.value.until_ms, job="b")
    assert not ticket.probe and ticket.limits == Limits(60, 0)
    assert ticket.slot_ms == waiting.value.until_ms


def test_model_calls_wait_in_the_function_while_the_limits_are_learned() -> None:
    """ModelCalls.admit sleeps in the function when told to wait with no turn booked, keeping
    the command's own turn (none here), then returns the ticket it is given."""
    asked: list[int | None] = []
    ticket = cast(Ticket, object())

    class Learning:
        def admit(self, provider: str, **kwargs: Any) -> Ticket:
            asked.append(kwargs["held_slot_ms"])
            if len(asked) < 3:
                raise WaitInFunction(None, kwargs["now_ms"] + 5)
            return ticket

    calls = ModelCalls(
        settings=cast(Any, SimpleNamespace(openai_base_url="http://model/v1", model_timeout_seconds=10)),
        store=cast(Any, None),
        limiter=cast(Any, Learning()),
    )
    record = cast(Any, SimpleNamespace(model="m", tenant_id="acme", job_id="j", version=1, depth=0))
    command = cast(Any, SimpleNamespace(not_before_ms=None))
    assert calls.admit(command, record, [{"role": "user", "content": "hi"}], {}) is ticket
    assert asked == [None, None, None]


def test_configured_limits_are_not_overridden_by_headers(aws: AwsStack) -> None:
    lim = limiter(aws, rpm=120)
    ticket = admit(lim, now=T0, job="a")
    lim.settle(ticket, used_tokens=5, headers=RateLimitHeaders(limit_requests=10_000), now_ms=T0)
    assert "learned_rpm" not in lim.state(PROVIDER)


# -- fairness and lease expiry -----------------------------------------------------------------
def test_one_tenants_backlog_does_not_delay_another_tenants_call(aws: AwsStack) -> None:
    """Each tenant queues at its own pace: the big tenant's 100 queued calls hold turns up to
    ~50 s ahead, the small tenant's one call takes the next free send slot: behind only the calls
    already sent or about to be (booked BOOK_AHEAD_S ahead at most, then one interval)."""
    lim = limiter(aws, rpm=120)
    queue_turns(lim, 100, now=T0, tenant="big")
    assert lim.state(queue_key(PROVIDER, "big"))["queue_tat"] > T0 + 49_000
    small = admit(lim, now=T0 + 100, tenant="small", job="small0")
    assert small.slot_ms <= T0 + BOOK_AHEAD_S * 1000 + 60_000 / (120 * PACE_FRACTION) + 1


def test_a_tenant_holds_at_most_its_cap_of_calls(aws: AwsStack) -> None:
    lim = limiter(aws, rpm=60_000, tenant_cap=2)
    tickets = [admit(lim, now=T0, tenant="big", job=f"big{i}") for i in range(2)]
    queue_end = lim.state(queue_key(PROVIDER, "big"))["queue_tat"]
    with pytest.raises(Deferred) as capped:
        admit(lim, now=T0, tenant="big", job="big2")
    # Its turn came, but every lease is held: a new turn at the end of its tenant's queue.
    assert capped.value.slot_ms is not None and "TenantMaxInFlight" in capped.value.message
    assert capped.value.slot_ms >= queue_end
    # Another tenant is not held back by the first one's backlog.
    assert admit(lim, now=T0, tenant="small", job="small0").slot_ms >= T0
    # A finished call returns its lease.
    lim.settle(tickets[0], used_tokens=5, headers=RateLimitHeaders(), now_ms=T0 + 100)
    assert admit(lim, now=T0 + 100, tenant="big", job="big2").lease_id == "big2"
    assert set(lim.leases("big")) == {"big1", "big2"}


def test_a_capped_call_waits_at_the_end_of_its_tenants_queue_not_seconds_away(aws: AwsStack) -> None:
    """A backlog of 40 queued calls (turns 20 s ahead at R = 120) and a cap of 2 held: the call
    whose turn came is sent back behind the backlog, about 20 s, instead of asking again within
    1-4 s (which, for a whole backlog whose turns had passed, loaded the stack with retries)."""
    lim = limiter(aws, rpm=120, tenant_cap=2)
    held = [admit(lim, now=T0, tenant="big", job=f"big{i}") for i in range(2)]
    assert all(ticket.lease_tenant == "big" for ticket in held)
    queue_turns(lim, 40, now=T0 + 10, tenant="big")
    queue_end = lim.state(queue_key(PROVIDER, "big"))["queue_tat"]
    with pytest.raises(Deferred) as capped:
        admit(lim, now=T0 + 20, tenant="big", job="late", held_slot_ms=T0 + 20)
    assert capped.value.slot_ms is not None and capped.value.slot_ms >= queue_end
    assert capped.value.delay_s >= (queue_end - (T0 + 20)) / 1000 - RETURN_LEAD_S


def test_the_same_call_admitted_again_keeps_its_one_lease(aws: AwsStack) -> None:
    lim = limiter(aws, rpm=60_000, tenant_cap=1)
    admit(lim, now=T0, tenant="big", job="big0")
    admit(lim, now=T0 + 5, tenant="big", job="big0")  # a redelivery of the same step
    assert list(lim.leases("big")) == ["big0"]


def test_a_crashed_holders_lease_expires(aws: AwsStack) -> None:
    lim = limiter(aws, rpm=60_000, tenant_cap=1)
    admit(lim, now=T0, tenant="big", job="crashed")  # its invocation dies: never settled
    expiry = T0 + int(MAX_WAIT_IN_FUNCTION_S * 1000) + LEASE_MS  # sent within the wait, then the call
    with pytest.raises(Deferred):
        admit(lim, now=expiry - 1, tenant="big", job="next")
    assert admit(lim, now=expiry + 1, tenant="big", job="next").lease_id == "next"
    assert list(lim.leases("big")) == ["next"]


def test_a_command_waiting_for_its_turn_holds_no_lease(aws: AwsStack) -> None:
    """Leases count calls in flight: a command queued for a later turn holds none (so a tenant's
    backlog never fills its cap with waiting calls); the one sent holds one until it expires."""
    lim = limiter(aws, rpm=60, tenant_cap=5)
    admit(lim, now=T0, tenant="t", job="a")
    for job in "bcde":  # turns 1 to 4 s away: they wait in the function
        with pytest.raises(WaitInFunction):
            admit(lim, now=T0, tenant="t", job=job)
    with pytest.raises(Deferred) as deferred:  # beyond MAX_WAIT_IN_FUNCTION_S: a delayed message
        admit(lim, now=T0, tenant="t", job="f")
    assert deferred.value.slot_ms is not None
    leases = lim.leases("t")
    assert list(leases) == ["a"]
    assert leases["a"] == T0 + MAX_WAIT_IN_FUNCTION_S * 1000 + LEASE_MS


# -- against the simulator's provider, in limiter time ------------------------------------------
@dataclass
class Call:
    tenant: str
    job: str
    held_slot_ms: int | None = None


@dataclass
class Run:
    """What the provider saw: sends (slot, tenant, job), 429s, and each call's first arrival."""

    sends: list[tuple[int, str, str]] = field(default_factory=list)
    refused: int = 0
    moved: int = 0  # confirmations that found their slot moved by another tenant's jump
    arrived: dict[str, int] = field(default_factory=dict)

    def rate_per_min(self, weight: int = 1) -> float:
        slots = sorted(slot for slot, _, _ in self.sends)
        return (len(slots) - 1) * weight * 60_000 / (slots[-1] - slots[0])


POLL_LAG_MS = 40  # a delayed message comes back a little after its delay
LATENCY_MS = 200


def against_provider(
    lim: ProviderLimiter,
    arrivals: list[tuple[int, str, str]],
    *,
    rpm: int = 0,
    tpm: int = 0,
    window_s: float = 5.0,
    ceiling: int = 100,
    answer_cap: int = 0,
    used: int = 100,
    return_lag_ms: Callable[[int], int] = lambda _: POLL_LAG_MS,
) -> Run:
    """Calls (arrival, tenant, job) through the limiter as the infer function makes them, sent to
    the simulator's sliding-window limits (admitted at their ceiling, counted at their use once
    answered): waits in the function, deferrals through SQS (whole seconds), 429s. Limiter time
    only: an event loop over now_ms, nothing sleeps. `return_lag_ms(n)`: how late the n-th delayed
    message comes back after its delay."""
    clock = [0.0]
    requests, tokens = SlidingWindowLimiter(lambda: clock[0]), SlidingWindowLimiter(lambda: clock[0])
    request_budget, token_budget = math.floor(rpm * window_s / 60), math.floor(tpm * window_s / 60)
    run = Run()
    events: list[tuple[int, int, str, Any]] = []
    order = itertools.count()
    for at, tenant, job in arrivals:
        heapq.heappush(events, (at, next(order), "admit", Call(tenant, job)))
        run.arrived[job] = at

    returns = itertools.count()

    def defer(call: Call, deferred: Deferred, now: int) -> None:
        call.held_slot_ms = deferred.slot_ms
        lag_ms = return_lag_ms(next(returns))
        heapq.heappush(events, (now + deferred.delay_seconds * 1000 + lag_ms, next(order), "admit", call))

    while events:
        now, _, kind, subject = heapq.heappop(events)
        clock[0] = now / 1000
        if kind == "admit":
            call = subject
            try:
                ticket = lim.admit(
                    PROVIDER,
                    tenant_id=call.tenant,
                    lease_id=call.job,
                    tokens=ceiling,
                    answer_tokens=answer_cap,
                    now_ms=now,
                    lease_ms=LEASE_MS,
                    held_slot_ms=call.held_slot_ms,
                )
            except Deferred as deferred:
                defer(call, deferred, now)
                continue
            except WaitInFunction as near:
                call.held_slot_ms = near.turn_ms
                heapq.heappush(events, (near.until_ms, next(order), "admit", call))
                continue
            if ticket.confirm:
                # As ModelCalls.metered: the slot is read again just before it (a jump may move it).
                confirm_at = max(now, ticket.slot_ms - CONFIRM_BEFORE_MS)
                heapq.heappush(events, (confirm_at, next(order), "confirm", (call, ticket, ticket.slot_ms)))
                continue
            heapq.heappush(events, (max(now, ticket.slot_ms), next(order), "send", (call, ticket)))
        elif kind == "confirm":
            call, ticket, slot = subject
            moved = lim.confirmed_slot(ticket)
            if moved != slot:
                run.moved += 1
                again = (moved - CONFIRM_BEFORE_MS, next(order), "confirm", (call, ticket, moved))
                heapq.heappush(events, again)
            else:
                heapq.heappush(events, (max(now, slot), next(order), "send", (call, ticket)))
        elif kind == "send":
            call, ticket = subject
            waits = [
                (wait, name)
                for name, window, budget, weight in (
                    ("requests", requests, request_budget, 1),
                    ("tokens", tokens, token_budget, ceiling),
                )
                if (wait := window.wait_s(budget, window_s, weight)) is not None
            ]
            if waits:
                run.refused += 1
                defer(
                    call,
                    lim.rate_limited(
                        ticket, headers=RateLimitHeaders(retry_after_s=max(waits)[0]), now_ms=now
                    ),
                    now,
                )
                continue
            entry = tokens.admit(ceiling) if token_budget else None
            if request_budget:
                requests.admit(1)
            headers = RateLimitHeaders(
                limit_requests=rpm or None,
                remaining_requests=requests.state(request_budget, window_s)[0] if rpm else None,
                limit_tokens=tpm or None,
                remaining_tokens=tokens.state(token_budget, window_s)[0] if tpm else None,
            )
            if entry is not None:
                tokens.settle(entry, used)  # the simulator counts the use once the answer is built
            run.sends.append((now, call.tenant, call.job))
            heapq.heappush(events, (now + LATENCY_MS, next(order), "settle", (ticket, headers)))
        else:
            ticket, headers = subject
            lim.settle(ticket, used_tokens=used, headers=headers, now_ms=now)
    return run


def test_a_burst_meets_the_request_limit_with_no_429_and_calls_one_interval_apart(aws: AwsStack) -> None:
    """40 calls at once, R = 120/min enforced over 5 s: the provider sees them about one pace
    interval apart (never two closer than 60/R s), refuses none, and the limit is used at the
    pace (97 %)."""
    lim = limiter(aws, rpm=120)
    run = against_provider(lim, [(T0, "acme", f"j{i}") for i in range(40)], rpm=120)
    assert run.refused == 0 and len(run.sends) == 40
    slots = sorted(slot for slot, _, _ in run.sends)
    # A call that woke a little late leaves late on its slot: never closer than R's own interval.
    assert min(b - a for a, b in itertools.pairwise(slots)) >= 60_000 / 120
    assert run.rate_per_min() >= 0.9 * 120


def test_calls_that_come_back_seconds_late_still_fill_the_pace(aws: AwsStack) -> None:
    """A busy stack returns delayed messages 1-3 s after their delay (measured locally: more).
    Asked back RETURN_LEAD_S (+ up to 1 s) before their turns, and waiting in the function for
    them, the calls are there at their slots: the provider sees the pace (97 % of R) nearly full,
    no 429. (The limiter before, which asked them back at their turns and deferred them again for
    a busy send slot, made 87 % of R of the same calls in a variant of this loop that adds send
    jitter; this one 95 %.)"""
    lim = limiter(aws, rpm=120)
    run = against_provider(
        lim,
        [(T0, "acme", f"j{i}") for i in range(60)],
        rpm=120,
        return_lag_ms=lambda n: 1_000 + (n * 7_919) % 2_000,
    )
    assert run.refused == 0 and len(run.sends) == 60
    assert run.rate_per_min() >= 0.95 * 120


def test_a_burst_on_learned_limits_waits_for_the_probe_in_the_function(aws: AwsStack) -> None:
    """Nothing configured: the first call of a burst of 60 probes the provider (R = 120/min over
    5 s), and the 59 others wait in their functions for its answer instead of a deferral that a
    busy stack returns seconds late (1-3 s here). From the burst's arrival, the provider sees
    95 % of R (the pace is 97 %), with at most a few 429s. (With a 1 s deferral while the probe
    was out, this loop measured 91 %: 109 calls/min.)"""
    lim = limiter(aws)
    run = against_provider(
        lim,
        [(T0, "acme", f"j{i}") for i in range(60)],
        rpm=120,
        return_lag_ms=lambda n: 1_000 + (n * 7_919) % 2_000,
    )
    assert len(run.sends) == 60 and run.refused <= 3
    last = max(slot for slot, _, _ in run.sends)
    from_arrival_per_min = len(run.sends) * 60_000 / (last - T0 + 60_000 / 120)
    assert from_arrival_per_min >= 0.95 * 120


def test_a_token_limited_burst_books_what_answers_use_and_meets_no_429(aws: AwsStack) -> None:
    """T = 3000/min enforced over 5 s (250 tokens), 40 calls with a ceiling of 52 (max_tokens 40)
    that use 19, the use already seen (a deployment in use): the provider admits each at 52
    beside the others' 19s, so at most ~87 % of T fits without a 429. The pace books the use
    plus that headroom: no 429 once the window is learned, and far above the ~37 % that booking
    the ceiling allows (52 tokens a call)."""
    lim = limiter(aws, tpm=3000)
    seen = admit(lim, now=T0 - 60_000, tokens=52, answer_tokens=40, job="seen")
    lim.settle(
        seen,
        used_tokens=19,
        headers=RateLimitHeaders(limit_tokens=3000, remaining_tokens=250 - 52, reset_tokens_s=5.0),
        now_ms=T0 - 59_800,
    )
    run = against_provider(
        lim, [(T0, "acme", f"j{i}") for i in range(40)], tpm=3000, ceiling=52, answer_cap=40, used=19
    )
    assert run.refused == 0 and len(run.sends) == 40
    fraction = run.rate_per_min(weight=19) / 3000
    assert 0.7 < fraction <= (250 - 52 + 19) / 250


@pytest.mark.parametrize("offset_ms", [0, 170, 340])  # anywhere within one interval
def test_another_tenants_first_call_is_sent_within_one_slot_of_the_backlogs_horizon(
    aws: AwsStack, offset_ms: int
) -> None:
    """Tenant A's 40 calls keep the pace full (20 s of it), their send slots booked BOOK_AHEAD_S
    ahead (those back earlier wait in the function, unbooked). B's one call, arriving at any
    moment, takes the slot right after A's last booked one: sent within BOOK_AHEAD_S + one interval
    of arriving (three refills at R = 120, not one). Without that rule it could lose the race for
    slots to A's calls again and again."""
    interval = 60_000 / (120 * PACE_FRACTION)
    arrival = T0 + 5_000 + offset_ms
    arrivals = [(T0, "a", f"a{i}") for i in range(40)] + [(arrival, "b", "b0")]
    run = against_provider(limiter(aws, rpm=120), arrivals, rpm=120)
    sent_b = [slot for slot, tenant, _ in run.sends if tenant == "b"]
    assert sent_b and sent_b[0] - arrival <= BOOK_AHEAD_S * 1000 + interval + 1
    assert run.refused == 0 and len(run.sends) == 41


class SettleRecorder:
    """Stands in for the limiter behind ModelCalls.metered: records what settles a ticket."""

    def __init__(self) -> None:
        self.settled: list[dict[str, Any]] = []

    def settle(self, ticket: Ticket, **details: Any) -> None:
        self.settled.append({"ticket": ticket, **details})


def test_a_metered_call_is_sent_at_its_slot_and_settles_with_when_it_was_sent() -> None:
    """The wait for the slot is the last thing before the call (the step's own writes, such as
    marking the step started, happen during it, not after the slot): the call leaves no earlier
    than its slot, and the limiter learns when it left."""
    recorder = SettleRecorder()
    calls = ModelCalls(settings=cast(Any, None), store=cast(Any, None), limiter=cast(Any, recorder))
    slot = now_ms() + 30
    sent: list[int] = []

    def call() -> str:
        sent.append(now_ms())
        return "answer"

    answer = calls.metered(Ticket(PROVIDER, slot, 1, Limits(120, 0)), call, settle=lambda _: (None, {}))
    assert answer == "answer" and sent[0] >= slot
    [settled] = recorder.settled
    assert slot <= settled["sent_ms"] <= sent[0]


# -- another tenant's call ahead of a backlog (jumps) -------------------------------------------
# The jump's guard here: CONFIRM_BEFORE_MS + its write's time, taken as its read's (in-process moto:
# well under 100 ms) + JUMP_WRITE_MARGIN_MS.
GUARD_BOUND_MS = CONFIRM_BEFORE_MS + 100 + JUMP_WRITE_MARGIN_MS


def booked_ahead(lim: ProviderLimiter, count: int, *, now: int, tenant: str = "a") -> list[Ticket]:
    """`count` of the tenant's calls holding send slots (each admitted at its turn, as calls
    waiting in their functions are): the pace booked `count` slots ahead of `now`."""
    return [admit(lim, now=now, tenant=tenant, job=f"{tenant}{i}", held_slot_ms=now) for i in range(count)]


def test_another_tenants_first_call_takes_a_slot_ahead_of_the_backlog_and_moves_it_by_one(
    aws: AwsStack,
) -> None:
    """Tenant A's calls hold the send pace 4 s ahead (its calls wait in their functions). B's one
    call, its queue empty, takes the first of A's slots far enough away for its write to land
    before A's calls read their slots again (CONFIRM_BEFORE_MS before them); A's calls
    booked at or after it move one slot later when they read their slots again, those before it
    keep theirs, and B's own slot does not move."""
    lim = limiter(aws, rpm=120)
    a_tickets = booked_ahead(lim, 8, now=T0)
    a_slots = [ticket.slot_ms for ticket in a_tickets]
    assert a_slots == [T0 + i * STEP_AT_120 for i in range(8)]
    b = admit(lim, now=T0 + 100, tenant="b", job="b0")
    assert b.slot_ms == T0 + STEP_AT_120  # the first booked slot >= now + the guard
    assert b.slot_ms - (T0 + 100) <= GUARD_BOUND_MS + STEP_AT_120
    assert lim.confirmed_slot(b) == b.slot_ms
    moved = [lim.confirmed_slot(ticket) for ticket in a_tickets]
    assert moved == [a_slots[0]] + [slot + STEP_AT_120 for slot in a_slots[1:]]
    # The pace's end moved too: A's next call books after its moved calls.
    later = admit(lim, now=T0 + 150, tenant="a", job="a8", held_slot_ms=T0 + 150)
    assert later.slot_ms == a_slots[-1] + 2 * STEP_AT_120
    assert lim.confirmed_slot(later) == later.slot_ms


class StoppedClock:
    """The limiter's monotonic clock, still unless a DynamoDB read moves it: what a jump measures
    of its own calls is exactly what the test says, whatever the machine's load."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def monotonic(self) -> float:
        return self.seconds


@pytest.mark.parametrize(("read_ms", "slot_after_t0"), [(0, STEP_AT_120), (200, 2 * STEP_AT_120)])
def test_a_jumps_guard_is_the_confirmation_lead_plus_its_writes_time_taken_as_its_reads(
    aws: AwsStack, read_ms: int, slot_after_t0: int
) -> None:
    """B arrives at T0 + 200, A's calls booked on the grid from T0 (a step of 516 ms). With an
    instant read the guard is CONFIRM_BEFORE_MS + JUMP_WRITE_MARGIN_MS (250 ms): B takes A's
    second slot, 316 ms away (a fixed 350 ms guard kept it to the third). With a 200 ms read the
    write is taken to last as long: the slot must be 200 + 200 + 250 ms past arrival, the third.
    A's calls at or after B's slot move one slot later."""
    clock = StoppedClock()
    lim = limiter(aws, rpm=120)
    a_tickets = booked_ahead(lim, 8, now=T0)
    read = lim._read

    def timed_read(provider: str) -> dict[str, Any]:
        clock.seconds += read_ms / 1000
        return read(provider)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(limiter_module, "time", clock)
        patch.setattr(lim, "_read", timed_read)
        b = admit(lim, now=T0 + 200, tenant="b", job="b0")
    assert b.slot_ms == T0 + slot_after_t0
    assert b.slot_ms - (T0 + 200) >= CONFIRM_BEFORE_MS + JUMP_WRITE_MARGIN_MS + 2 * read_ms
    moved = [lim.confirmed_slot(ticket) for ticket in a_tickets]
    assert moved == [t.slot_ms if t.slot_ms < b.slot_ms else t.slot_ms + STEP_AT_120 for t in a_tickets]


def test_a_tenant_does_not_jump_over_its_own_booked_calls(aws: AwsStack) -> None:
    lim = limiter(aws, rpm=120)
    a_tickets = booked_ahead(lim, 8, now=T0)
    # A's queue is idle again 8 turns later, but its own calls lead the pace: it books at the end.
    again = admit(lim, now=T0 + 8 * STEP_AT_120, tenant="a", job="again")
    assert again.slot_ms == a_tickets[-1].slot_ms + STEP_AT_120
    assert [lim.confirmed_slot(ticket) for ticket in a_tickets] == [t.slot_ms for t in a_tickets]


def test_one_jump_is_ahead_at_a_time(aws: AwsStack) -> None:
    """Two other tenants arrive together: the first jumps, the second queues behind the booked
    calls as before (so a stream of single calls cannot keep a backlog's calls waiting)."""
    lim = limiter(aws, rpm=120)
    a_tickets = booked_ahead(lim, 8, now=T0)
    b = admit(lim, now=T0 + 100, tenant="b", job="b0")
    c = admit(lim, now=T0 + 100, tenant="c", job="c0")
    assert b.slot_ms == T0 + STEP_AT_120
    assert c.slot_ms == a_tickets[-1].slot_ms + 2 * STEP_AT_120  # after A's moved calls
    # Once B's slot has passed, the next tenant may jump again.
    d = admit(lim, now=b.slot_ms + 1, tenant="d", job="d0")
    assert d.slot_ms - (b.slot_ms + 1) <= GUARD_BOUND_MS + STEP_AT_120


def test_a_jump_never_lands_inside_a_429_block(aws: AwsStack) -> None:
    """A 429 blocked the pace for 2 s, and A's calls booked after it: B's jump takes a slot after
    the block too, though the guard alone would allow one inside it."""
    lim = limiter(aws, rpm=120)
    first = admit(lim, now=T0, tenant="a", job="first")
    lim.rate_limited(first, headers=RateLimitHeaders(retry_after_s=2.0), now_ms=T0 + 50)
    a_tickets = booked_ahead(lim, 4, now=T0 + 100)
    assert a_tickets[0].slot_ms == T0 + 50 + 2_000
    b = admit(lim, now=T0 + 150, tenant="b", job="b0")
    assert b.slot_ms >= T0 + 50 + 2_000


def test_with_a_token_limit_nobody_jumps(aws: AwsStack) -> None:
    lim = limiter(aws, rpm=120, tpm=100_000)
    a_tickets = booked_ahead(lim, 8, now=T0)
    b = admit(lim, now=T0 + 100, tenant="b", job="b0")
    assert b.slot_ms > a_tickets[-1].slot_ms
    assert not any(ticket.confirm for ticket in [*a_tickets, b])


@pytest.mark.parametrize("offset_ms", [0, 170, 340])  # anywhere within one interval
def test_behind_a_backlog_whose_calls_come_back_late_another_tenant_is_sent_within_one_slot(
    aws: AwsStack, offset_ms: int
) -> None:
    """Tenant A's 60 calls come back from their delays 1-3 s late, as on a busy stack, so late
    calls shift the pace and A's slots are booked up to MAX_WAIT_IN_FUNCTION_S ahead. B's one call
    jumps ahead of them: sent within the jump's guard + one interval of arriving (it was booked after
    A's last slot before: measured in the stack 1.8-2.2 s later than alone). The provider refuses
    nothing: the jump takes a slot of the pace's grid and A's calls after it move one slot."""
    interval = 60_000 / (120 * PACE_FRACTION)
    arrival = T0 + 9_000 + offset_ms
    arrivals = [(T0, "a", f"a{i}") for i in range(60)] + [(arrival, "b", "b0")]
    run = against_provider(
        limiter(aws, rpm=120),
        arrivals,
        rpm=120,
        return_lag_ms=lambda n: 1_000 + (n * 7_919) % 2_000,
    )
    sent_b = [slot for slot, tenant, _ in run.sends if tenant == "b"]
    assert sent_b and sent_b[0] - arrival <= GUARD_BOUND_MS + interval + 1
    assert run.refused == 0 and len(run.sends) == 61
    slots = sorted(slot for slot, _, _ in run.sends)
    assert min(b - a for a, b in itertools.pairwise(slots)) >= 60_000 / 120


def test_a_stream_of_other_tenants_single_calls_leaves_the_backlog_its_share(aws: AwsStack) -> None:
    """While A's 60 calls wait at the pace, 30 other tenants send one call each, one every 400 ms
    (more than the pace's whole rate with A's). One jump is ahead at a time: the provider refuses
    nothing, never sees two calls closer than R's interval, and A still gets at least a third of
    the slots while the stream lasts."""
    arrivals = [(T0, "a", f"a{i}") for i in range(60)]
    arrivals += [(T0 + 6_000 + i * 400, f"t{i}", f"t{i}") for i in range(30)]
    run = against_provider(
        limiter(aws, rpm=120), arrivals, rpm=120, return_lag_ms=lambda n: 1_000 + (n * 7_919) % 2_000
    )
    assert run.refused == 0 and len(run.sends) == 90
    slots = sorted(slot for slot, _, _ in run.sends)
    assert min(b - a for a, b in itertools.pairwise(slots)) >= 60_000 / 120
    stream_end = max(slot for slot, tenant, _ in run.sends if tenant != "a")
    during = [tenant for slot, tenant, _ in run.sends if T0 + 6_000 <= slot <= stream_end]
    assert during.count("a") >= len(during) / 3


class MovingSlots(SettleRecorder):
    """A limiter whose first confirmation finds the slot moved (another tenant jumped)."""

    def __init__(self, moves: list[int]) -> None:
        super().__init__()
        self.moves = moves
        self.confirmed_at: list[int] = []

    def confirmed_slot(self, ticket: Ticket) -> int:
        self.confirmed_at.append(now_ms())
        return self.moves.pop(0) if self.moves else self.confirmed_at_slot

    confirmed_at_slot = 0


def test_a_metered_call_whose_slot_was_taken_waits_for_its_moved_slot() -> None:
    """A ticket booked ahead reads its slot again just before it: moved by a jump, the call waits
    for the new slot (and reads it again just before), and leaves no earlier."""
    slot = now_ms() + 150
    moved = slot + 120
    limiter = MovingSlots([moved])
    limiter.confirmed_at_slot = moved
    calls = ModelCalls(settings=cast(Any, None), store=cast(Any, None), limiter=cast(Any, limiter))
    sent: list[int] = []
    ticket = Ticket(PROVIDER, slot, 1, Limits(120, 0), confirm=True, pace_end_ms=slot + 500)
    calls.metered(ticket, lambda: sent.append(now_ms()), settle=lambda _: (None, {}))
    assert sent[0] >= moved
    first, second = limiter.confirmed_at
    assert first >= slot - CONFIRM_BEFORE_MS and second >= moved - CONFIRM_BEFORE_MS


class SlowReads(SettleRecorder):
    """A limiter whose pace reads take longer than the confirmation's lead."""

    read_ended: int = 0

    def confirmed_slot(self, ticket: Ticket) -> int:
        time.sleep((CONFIRM_BEFORE_MS + 300) / 1000)
        self.read_ended = now_ms()
        return ticket.slot_ms + 10_000  # too late to matter: the call has left


def test_a_slow_confirmation_never_makes_the_call_late() -> None:
    """The read before the slot runs beside the wait: not back by the slot, the call leaves at
    its slot anyway (a call late by more than the pace's margin crowds the provider's window)."""
    slot = now_ms() + CONFIRM_BEFORE_MS + 50
    reads = SlowReads()
    calls = ModelCalls(settings=cast(Any, None), store=cast(Any, None), limiter=cast(Any, reads))
    sent: list[int] = []
    ticket = Ticket(PROVIDER, slot, 1, Limits(120, 0), confirm=True, pace_end_ms=slot + 500)
    calls.metered(ticket, lambda: sent.append(now_ms()), settle=lambda _: (None, {}))
    assert reads.read_ended == 0  # the read was still out when the call left
    assert sent[0] >= slot
