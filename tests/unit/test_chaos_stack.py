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
