"""The fault-injection suite: many jobs while the model, the network, the runtime and the webhook
receivers misbehave; every job must still end in exactly one honest terminal state.

`make test` runs it small (50 jobs); `make chaos` runs 2000 (`--chaos-jobs N` or CHAOS_JOBS=N).
"""

from __future__ import annotations

import logging
import time

import pytest
from rich.console import Console

from .harness import ROOT, ChaosConfig, run_chaos

pytestmark = pytest.mark.chaos

logger = logging.getLogger("baton.chaos")


def test_every_job_ends_in_one_honest_terminal_state_through_faults_a_kill_and_duplicates(
    chaos_config: ChaosConfig, chaos_reports: list[str]
) -> None:
    # Under .baton/ (git-ignored): pytest prunes its own temporary directories, logs must survive.
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{chaos_config.jobs}-jobs-{chaos_config.inference_mode}"
    workdir = ROOT / ".baton" / "chaos" / name
    started = time.monotonic()
    report, observations = run_chaos(chaos_config, workdir)
    rendered = report.render()
    rendered += f"logs: {workdir} (state/dev.log, moto.log, simulator.log, evidence.json)\n"
    chaos_reports.append(rendered)
    Console(soft_wrap=True).print(rendered, highlight=False, markup=False)
    logger.info("chaos run of %d jobs took %.0fs", chaos_config.jobs, time.monotonic() - started)

    assert observations.kill_at is not None, "the runtime was never killed"
    # Background mode: a create whose worker timed out before storing its id is reported as a
    # residual window hit (with its evidence); any other duplicate paid call fails the run.
    assert report.duplicate_paid_unexplained == 0
    assert not report.problems, "\n".join(report.problems)
