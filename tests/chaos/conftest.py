"""Options of the fault-injection suite: its size (`--chaos-jobs` or CHAOS_JOBS) and deadline."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from .harness import ChaosConfig

SMALL_SIZE = 50
DEFAULT_SEED = 7
# Setup (~20 s idle, ~60 s on a loaded machine), the table and archive reads and stopping, on top
# of the run's deadline, the read-back and the delivery grace: the report must get printed, even
# for a run that failed.
TIMEOUT_MARGIN_S = 480
REPORTS = pytest.StashKey[list[str]]()


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


DEFAULTS: dict[str, Callable[[], Any]] = {
    "chaos_jobs": lambda: int(os.environ.get("CHAOS_JOBS", SMALL_SIZE)),
    "chaos_deadline": lambda: _env_float("CHAOS_DEADLINE"),
    "chaos_seed": lambda: int(os.environ.get("CHAOS_SEED", DEFAULT_SEED)),
    "chaos_inference_mode": lambda: os.environ.get("CHAOS_INFERENCE_MODE", "sync"),
    "chaos_provider_webhooks": lambda: os.environ.get("CHAOS_PROVIDER_WEBHOOKS", "1") != "0",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos", "fault-injection suite (tests/chaos)")
    group.addoption(
        "--chaos-jobs",
        type=int,
        default=DEFAULTS["chaos_jobs"](),
        help=f"jobs per chaos run (env CHAOS_JOBS; default {SMALL_SIZE}; `make chaos` runs 2000)",
    )
    group.addoption(
        "--chaos-deadline",
        type=float,
        default=DEFAULTS["chaos_deadline"](),
        help="seconds for every job to end (env CHAOS_DEADLINE; default 240 + 1.5 per job)",
    )
    group.addoption(
        "--chaos-seed",
        type=int,
        default=DEFAULTS["chaos_seed"](),
        help="seed of the workload and of the simulator's faults (env CHAOS_SEED)",
    )
    group.addoption(
        "--chaos-inference-mode",
        choices=("sync", "background"),
        default=DEFAULTS["chaos_inference_mode"](),
        help="the stack's InferenceMode parameter (env CHAOS_INFERENCE_MODE; default sync)",
    )
    group.addoption(
        "--chaos-no-provider-webhooks",
        dest="chaos_provider_webhooks",
        action="store_false",
        default=DEFAULTS["chaos_provider_webhooks"](),
        help="background mode: jobs resume by polls alone, the simulator sends no webhooks "
        "(env CHAOS_PROVIDER_WEBHOOKS=0)",
    )


def _option(config: pytest.Config, name: str) -> Any:
    """An option of this conftest, or its default when pytest loaded the conftest too late to parse
    options (a bare `pytest` from the root reaches tests/chaos/ after parsing the command line)."""
    return config.getoption(name, default=DEFAULTS[name]())


def _chaos_config(config: pytest.Config) -> ChaosConfig:
    return ChaosConfig(
        jobs=_option(config, "chaos_jobs"),
        deadline_s=_option(config, "chaos_deadline"),
        seed=_option(config, "chaos_seed"),
        inference_mode=_option(config, "chaos_inference_mode"),
        provider_webhooks=_option(config, "chaos_provider_webhooks"),
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: fault-injection runs over a real local stack (tests/chaos)")
    config.stash[REPORTS] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """pytest-timeout follows the size of the run (the project default of 300 s fits the small one)."""
    chaos = _chaos_config(config)
    timeout = chaos.run_deadline_s + chaos.read_back_s + chaos.delivery_grace_s + TIMEOUT_MARGIN_S
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(pytest.mark.timeout(timeout))


@pytest.fixture(scope="session")
def chaos_config(request: pytest.FixtureRequest) -> ChaosConfig:
    return _chaos_config(request.config)


@pytest.fixture
def chaos_reports(request: pytest.FixtureRequest) -> list[str]:
    return request.config.stash[REPORTS]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The figures at the end of the run when output was captured (with -s the test printed them)."""
    if config.getoption("capture") == "no":
        return
    for report in config.stash.get(REPORTS, []):
        terminalreporter.section("chaos figures")
        terminalreporter.write(report)
