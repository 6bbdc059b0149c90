"""The chaos suite's stack (tests/chaos/harness.py) runs the same AWS endpoint as `baton dev`."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from baton_dev.runtime.local import moto_server_command
from tests.chaos import harness


def test_the_chaos_moto_is_baton_devs_moto_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Plain `moto.server` deep-copies every table a DynamoDB transaction names: a 10,000-job run
    grew it by ~4 MB per job and got 500s ('dictionary changed size during iteration'). The chaos
    stack must start the patched launcher, as `baton dev` does."""
    ports = itertools.count(50_000)
    monkeypatch.setattr(harness, "free_port", lambda: next(ports))
    stack = harness.ChaosStack(harness.ChaosConfig(jobs=50), tmp_path)
    assert stack.moto.argv == moto_server_command(stack.moto_port)
    assert "baton_dev.runtime.moto_server" in stack.moto.argv


def test_the_read_back_budgets_follow_the_size_of_the_run() -> None:
    """A 10,000-job run read 5,096 jobs back in a fixed 120 s (~40 GETs/s) and reported the rest
    lost, and its 2,001 delivery logs did not fit the fixed 180 s grace: both follow the size now."""
    small, large = harness.ChaosConfig(jobs=50), harness.ChaosConfig(jobs=10_000)
    assert small.read_back_s >= 120 and small.delivery_grace_s >= small.webhook_grace_s
    assert large.read_back_s >= 10_000 / 40 + 120
    assert large.delivery_grace_s >= small.webhook_grace_s + 2_001 / 40 * 2  # a read, then a re-read
