"""The built artifact (`make build` -> .aws-sam/build), inspected as `sam deploy` would ship it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / ".aws-sam" / "build"
_summary: list[str] = []


@pytest.fixture(scope="session")
def build_dir() -> Path:
    if not (BUILD / "template.yaml").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{BUILD} is missing: CI must run `make build` before these tests")
        pytest.skip(f"{BUILD} is missing: run `make build` (make test does) to inspect the artifact")
    return BUILD


@pytest.fixture(scope="session")
def build_summary() -> list[str]:
    """Lines printed in the terminal summary (e.g. the zipped layer size)."""
    return _summary


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _summary:
        terminalreporter.write_line(line)
