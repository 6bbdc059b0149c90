"""The provider limiter (baton.limiter) against the template's LimiterTable in moto: reserve,
settle, learn, lease expiry and fairness. Time is passed in (now_ms), never waited for."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from baton.limiter import (
    MAX_WAIT_IN_FUNCTION_S,
    PACE_FRACTION,
    Deferred,
    Limits,
    ProviderLimiter,
    RateLimitHeaders,
    Ticket,
    estimate_tokens,
    parse_duration,
    provider_key,
)

if TYPE_CHECKING:
    from conftest import AwsStack

PROVIDER = provider_key("http://127.0.0.1:9999/v1", "baton-local")
T0 = 1_800_000_000_000
LEASE_MS = 30_000


def limiter(aws: AwsStack, *, rpm: int = 0, tpm: int = 0, tenant_cap: int = 0) -> ProviderLimiter:
    return ProviderLimiter(aws.limiter_table, configured=Limits(rpm, tpm), tenant_max_in_flight=tenant_cap)


def admit(
    lim: ProviderLimiter,
    *,
    now: int,
    tokens: int = 100,
    tenant: str = "acme",
    job: str = "j",
    held_slot_ms: int | None = None,
) -> Ticket:
    return lim.admit(
        PROVIDER,
        tenant_id=tenant,
        lease_id=job,
        tokens=tokens,
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
    """120/min: one slot every 0.5 s (a little more: paced under the limit), none in a burst."""
    lim = limiter(aws, rpm=120)
    interval = 60_000 / (120 * PACE_FRACTION)
    first = admit(lim, now=T0, job="a")
    second = admit(lim, now=T0, job="b")
    assert first.slot_ms == T0
    assert second.slot_ms == pytest.approx(T0 + interval, abs=1)
    # The third slot is more than MAX_WAIT_IN_FUNCTION_S away: deferred, keeping its slot.
    with pytest.raises(Deferred) as deferred:
        admit(lim, now=T0, job="c")
    slot = deferred.value.slot_ms
    assert slot is not None
    assert slot == pytest.approx(T0 + 2 * interval, abs=2) and slot > T0 + MAX_WAIT_IN_FUNCTION_S * 1000
    assert deferred.value.delay_seconds <= (slot - T0) / 1000  # it comes back no later than its slot
    # Coming back (delayed) with its slot, the command is admitted at that slot without reserving.
    held = admit(lim, now=slot - 400, held_slot_ms=slot, job="c")
    assert held.slot_ms == slot
    assert lim.state(PROVIDER)["request_tat"] == pytest.approx(T0 + 3 * interval, abs=3)


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
    lim.abandon(ticket)
    assert admit(lim, now=before, tokens=10, job="b").slot_ms == pytest.approx(before, abs=1)


def test_a_429_blocks_every_caller_until_its_retry_after(aws: AwsStack) -> None:
    lim = limiter(aws, rpm=6000)
    ticket = admit(lim, now=T0, job="a")
    wait = lim.rate_limited(ticket, headers=RateLimitHeaders(retry_after_s=7.0), now_ms=T0 + 100)
    assert wait == 7.0
    with pytest.raises(Deferred) as deferred:
        admit(lim, now=T0 + 200, job="b")
    assert deferred.value.slot_ms == T0 + 7_100


def test_no_remaining_requests_blocks_until_the_reset(aws: AwsStack) -> None:
    lim = limiter(aws, rpm=6000)
    ticket = admit(lim, now=T0, job="a")
    headers = RateLimitHeaders(remaining_requests=0, reset_requests_s=20.0)
    lim.settle(ticket, used_tokens=10, headers=headers, now_ms=T0)
    with pytest.raises(Deferred) as deferred:
        admit(lim, now=T0 + 10, job="b")
    assert deferred.value.slot_ms == T0 + 20_000


# -- learn -------------------------------------------------------------------------------------
def test_unknown_limits_are_learned_from_one_probe(aws: AwsStack) -> None:
    lim = limiter(aws)  # ProviderRequestsPerMinute = ProviderTokensPerMinute = 0
    probe = admit(lim, now=T0, job="a")
    assert probe.probe
    # While the probe is out, nobody else calls (and nothing is reserved for them).
    with pytest.raises(Deferred) as waiting:
        admit(lim, now=T0 + 10, job="b")
    assert waiting.value.slot_ms is None
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
    with pytest.raises(Deferred) as deferred:
        admit(lim, now=T0 + 400, job="d")
    assert deferred.value.slot_ms == pytest.approx(T0 + 400 + 60_000 / (60 * PACE_FRACTION), abs=2)


def test_a_provider_without_headers_is_learned_unlimited(aws: AwsStack) -> None:
    lim = limiter(aws)
    probe = admit(lim, now=T0, job="a")
    lim.settle(probe, used_tokens=50, headers=RateLimitHeaders(), now_ms=T0 + 100)
    assert [admit(lim, now=T0 + 200, job=f"j{i}").slot_ms for i in range(5)] == [T0 + 200] * 5


def test_a_probe_that_failed_lets_the_next_caller_probe(aws: AwsStack) -> None:
    lim = limiter(aws)
    lim.abandon(admit(lim, now=T0, job="a"))
    assert admit(lim, now=T0 + 10, job="b").probe


def test_a_crashed_probe_expires(aws: AwsStack) -> None:
    lim = limiter(aws)
    admit(lim, now=T0, job="a")  # and never settled
    with pytest.raises(Deferred):
        admit(lim, now=T0 + 1_000, job="b")
    assert admit(lim, now=T0 + 31_000, job="b").probe


def test_configured_limits_are_not_overridden_by_headers(aws: AwsStack) -> None:
    lim = limiter(aws, rpm=120)
    ticket = admit(lim, now=T0, job="a")
    lim.settle(ticket, used_tokens=5, headers=RateLimitHeaders(limit_requests=10_000), now_ms=T0)
    assert "learned_rpm" not in lim.state(PROVIDER)


# -- fairness and lease expiry -----------------------------------------------------------------
def test_a_tenant_holds_at_most_its_cap_of_calls(aws: AwsStack) -> None:
    lim = limiter(aws, rpm=60_000, tenant_cap=2)
    tickets = [admit(lim, now=T0, tenant="big", job=f"big{i}") for i in range(2)]
    with pytest.raises(Deferred) as capped:
        admit(lim, now=T0, tenant="big", job="big2")
    assert capped.value.slot_ms is None and "TenantMaxInFlight" in capped.value.message
    # Another tenant is not held back by the first one's backlog.
    assert admit(lim, now=T0, tenant="small", job="small0").slot_ms >= T0
    # A finished call returns its lease.
    lim.settle(tickets[0], used_tokens=5, headers=RateLimitHeaders(), now_ms=T0 + 100)
    assert admit(lim, now=T0 + 100, tenant="big", job="big2").lease_id == "big2"
    assert set(lim.leases("big")) == {"big1", "big2"}


def test_the_same_call_admitted_again_keeps_its_one_lease(aws: AwsStack) -> None:
    lim = limiter(aws, rpm=60_000, tenant_cap=1)
    admit(lim, now=T0, tenant="big", job="big0")
    admit(lim, now=T0 + 5, tenant="big", job="big0")  # a redelivery of the same step
    assert list(lim.leases("big")) == ["big0"]


def test_a_crashed_holders_lease_expires(aws: AwsStack) -> None:
    lim = limiter(aws, rpm=60_000, tenant_cap=1)
    admit(lim, now=T0, tenant="big", job="crashed")  # its invocation dies: never settled
    with pytest.raises(Deferred):
        admit(lim, now=T0 + LEASE_MS - 1, tenant="big", job="next")
    assert admit(lim, now=T0 + LEASE_MS + 1, tenant="big", job="next").lease_id == "next"
    assert list(lim.leases("big")) == ["next"]


def test_a_command_deferred_for_capacity_releases_its_lease(aws: AwsStack) -> None:
    """Waiting without a slot (the provider is booked out) holds no lease; waiting for a booked
    slot keeps one, which expires after the slot."""
    lim = limiter(aws, rpm=60, tenant_cap=5)
    admit(lim, now=T0, tenant="t", job="a")
    with pytest.raises(Deferred) as deferred:
        admit(lim, now=T0, tenant="t", job="b")
    assert deferred.value.slot_ms is not None
    leases = lim.leases("t")
    assert leases["b"] == deferred.value.slot_ms + LEASE_MS
