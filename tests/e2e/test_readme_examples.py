"""Every README example runs as written.

Each ```bash block right after a `<!-- example -->` marker (tests/readme.py) is run, in README
order, by bash in a fresh user shell (no venv on PATH, `set -euo pipefail`, so an unset variable
such as a `$JOB` no earlier block set fails) at the repository's root against one `./baton dev`.
Variables a block sets are there for the blocks after it, as in one terminal. Each block must exit
0, show no HTTP status of 400 or more and no error answer, and show what its marker expects.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.readme import README, Block, readme_blocks

from .conftest import ROOT, DevStack

pytestmark = pytest.mark.e2e

HTTP_STATUS = re.compile(r"^HTTP/[\d.]+ (\d{3})", re.MULTILINE)
# The API's error answer, {"error": {"type": ...}}: "error" is its first key. (A failed or cancelled
# job also has an "error" field, after its "id": that is a job, not a refusal.)
ERROR_BODY = re.compile(r'\{\s*"error"\s*:\s*\{[^{}]*?"type"\s*:\s*"(\w+)"')
BLOCK_TIMEOUT_S = 300


def examples() -> list[Block]:
    return [block for block in readme_blocks(README.read_text()) if block.kind == "example"]


def test_the_readme_has_examples_of_the_api_and_the_cli() -> None:
    code = "\n".join(block.code for block in examples())
    for needed in ("curl", "./baton keys create", "./baton submit", "$JOB", "document", "webhook"):
        assert needed in code, needed


def test_an_error_answer_is_told_from_a_job_that_failed() -> None:
    refused = '{"error": {"type": "conflict", "message": "job already completed"}}'
    cancelled_job = '{"id": "job_1", "status": "cancelled", "error": {"type": "cancelled", "message": "x"}}'
    assert ERROR_BODY.findall(cancelled_job + refused) == ["conflict"]
    assert ERROR_BODY.findall('{\n  "error": {\n    "type": "not_found"\n  }\n}') == ["not_found"]


# A hang guard, not a speed goal: one stack start and every example took 4.5 min on a busy 2-core
# machine, close to the suite's 300 s default.
@pytest.mark.timeout(600)
def test_readme_examples_run_as_written(dev_stack: DevStack, tmp_path: Path) -> None:
    blocks = examples()
    env = dev_stack.env()
    env_file = tmp_path / "env"
    for block in blocks:
        # set -a: what a block assigns reaches the next block, as in one interactive shell.
        script = f"set -euo pipefail\nset -a\n{block.code}\nenv -0 > {shlex.quote(str(env_file))}\n"
        answer = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
            check=False,
        )
        shown = (
            f"{block} exited {answer.returncode}\n{block.code}\n"
            f"--- stdout\n{answer.stdout}\n--- stderr\n{answer.stderr}"
        )
        assert answer.returncode == 0, shown
        output = answer.stdout + answer.stderr
        assert "Traceback" not in output, shown
        statuses = [int(status) for status in HTTP_STATUS.findall(answer.stdout)]
        assert all(status < 400 for status in statuses), shown
        # An error answer passes only when the marker expects its type (e.g. a 409 "conflict").
        errors = set(ERROR_BODY.findall(answer.stdout))
        allowed = {text.strip('"') for options in block.expect_any for text in options}
        assert errors <= allowed, shown
        for text in block.expect:
            assert text in output, f"expected {text!r}\n{shown}"
        for options in block.expect_any:
            assert any(text in output for text in options), f"expected one of {options}\n{shown}"
        env = dict(entry.split("=", 1) for entry in env_file.read_text().split("\0") if "=" in entry)
