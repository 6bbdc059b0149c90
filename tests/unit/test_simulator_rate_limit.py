"""The simulator's provider rate limit: a sliding window, 429 with Retry-After beyond it (no network)."""

from __future__ import annotations

import pytest

from baton_dev.simulator import ModelSimulator, SimulatorConfig, SlidingWindowLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_admits_up_to_the_limit_per_window_then_says_when_a_slot_frees() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(clock)
    for offset in (0.0, 1.0, 2.0):
        clock.now = 1000.0 + offset
        assert limiter.acquire(3, 10.0) is None
    clock.now = 1004.0
    assert limiter.acquire(3, 10.0) == pytest.approx(6.0)  # the first admission leaves at 1010
    clock.now = 1010.0
    assert limiter.acquire(3, 10.0) is None  # its slot is free; refused requests were not counted
    assert limiter.acquire(3, 10.0) == pytest.approx(1.0)  # the next leaves at 1011


def test_zero_limit_means_unlimited() -> None:
    limiter = SlidingWindowLimiter(FakeClock())
    assert all(limiter.acquire(0, 60.0) is None for _ in range(1000))


def test_a_lowered_limit_waits_for_enough_admissions_to_leave() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(clock)
    for step in range(4):
        clock.now = 1000.0 + step
        assert limiter.acquire(4, 10.0) is None
    # Now only 2 per window: three of the four must leave for one more to fit, the third at 1002 + 10.
    assert limiter.acquire(2, 10.0) == pytest.approx(1012.0 - clock.now)


def test_requests_per_window_scales_the_per_minute_limit() -> None:
    assert SimulatorConfig().requests_per_window() == 0
    assert SimulatorConfig(rate_limit_rpm=120).requests_per_window() == 120
    assert SimulatorConfig(rate_limit_rpm=120, rate_limit_window_s=5).requests_per_window() == 10
    assert SimulatorConfig(rate_limit_rpm=1, rate_limit_window_s=5).requests_per_window() == 1


def test_config_validation_and_environment() -> None:
    with pytest.raises(ValueError, match="rate_limit_rpm"):
        SimulatorConfig(rate_limit_rpm=-1)
    with pytest.raises(ValueError, match="rate_limit_window_s"):
        SimulatorConfig(rate_limit_window_s=0)
    config = SimulatorConfig.from_env(
        {"BATON_SIM_RATE_LIMIT_RPM": "90", "BATON_SIM_RATE_LIMIT_WINDOW_S": "10"}
    )
    assert (config.rate_limit_rpm, config.rate_limit_window_s) == (90.0, 10.0)
    assert config.faults()["rate_limit_rpm"] == 90.0


def test_the_limit_can_be_changed_at_runtime() -> None:
    simulator = ModelSimulator(SimulatorConfig())
    changed = simulator.set_faults(rate_limit_rpm=60, rate_limit_window_s=2)
    assert changed.requests_per_window() == 2
    with pytest.raises(ValueError):
        simulator.set_faults(rate_limit_window_s=-1)


def test_weighted_admissions_count_tokens() -> None:
    """Tokens per window: a 600-token request does not fit beside 500 of a 1000-token budget."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(clock)
    assert limiter.acquire(1000, 10.0, weight=500) is None
    clock.now = 1002.0
    assert limiter.acquire(1000, 10.0, weight=400) is None
    assert limiter.acquire(1000, 10.0, weight=600) == pytest.approx(8.0)  # when the 500 leave
    assert limiter.state(1000, 10.0) == (100, pytest.approx(8.0))


def test_tokens_per_window_scales_the_per_minute_limit() -> None:
    assert SimulatorConfig().tokens_per_window() == 0
    assert SimulatorConfig(rate_limit_tpm=6000, rate_limit_window_s=5).tokens_per_window() == 500
    config = SimulatorConfig.from_env({"BATON_SIM_RATE_LIMIT_TPM": "9000"})
    assert config.faults()["rate_limit_tpm"] == 9000.0


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.25, "250ms"), (0.0, "0ms"), (1.5, "1.5s"), (360.0, "6m0s"), (61.0, "1m1s")]
)
def test_reset_durations_are_written_as_openai_does(seconds: float, text: str) -> None:
    from baton.limiter import parse_duration
    from baton_dev.simulator import openai_duration

    assert openai_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_a_token_admission_is_settled_at_its_usage() -> None:
    """Admitted at prompt + max_tokens, counted at the real usage once the answer is known."""
    limiter = SlidingWindowLimiter(FakeClock())
    entry = limiter.admit(900)
    assert limiter.wait_s(1000, 10.0, 200) is not None
    limiter.settle(entry, 150)
    assert limiter.wait_s(1000, 10.0, 200) is None
    assert limiter.state(1000, 10.0)[0] == 850
