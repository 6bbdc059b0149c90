"""A new user's first hour, tried as they would: the `./baton` wrapper in a fresh shell, a busy
port, the CLI from another directory, `submit --file` with only an API key."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, WRAPPER, DevStack, user_shell_env

pytestmark = pytest.mark.e2e


def run(*args: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(WRAPPER), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout, check=False
    )


def test_a_busy_port_is_one_line_before_anything_is_built(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        answer = run(
            "dev", "--port", str(port), "--state-dir", str(tmp_path / "dev"),
            env=user_shell_env(BATON_STATE=str(tmp_path / "state.json")), cwd=ROOT, timeout=60,
        )  # fmt: skip
    assert answer.returncode == 1, answer
    lines = [line for line in answer.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, answer.stderr
    assert f"port {port} is in use" in lines[0]
    assert "--port" in lines[0]
    assert answer.stdout == ""
    # Checked before provisioning: no moto server was started, nothing was recorded.
    assert not (tmp_path / "dev" / "moto.log").exists()
    assert not (tmp_path / "state.json").exists()


def test_a_missing_template_is_one_line(tmp_path: Path) -> None:
    env = user_shell_env(BATON_STATE=str(tmp_path / "state.json"))
    answer = run("dev", "--template", "nope.yaml", env=env, cwd=tmp_path)
    assert answer.returncode == 1, answer
    assert [line for line in answer.stderr.splitlines() if line.strip()] == [
        "nope.yaml not found: pass --template PATH of a SAM template"
    ]


def test_the_cli_finds_the_running_stack_from_any_directory(dev_stack: DevStack, tmp_path: Path) -> None:
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    env = dev_stack.env()

    url = run("url", env=env, cwd=elsewhere)
    assert url.returncode == 0, url.stderr
    assert url.stdout.strip() == dev_stack.api_url

    created = run("keys", "create", "--tenant", "far-away", env=env, cwd=elsewhere)
    assert created.returncode == 0, created.stderr
    env["BATON_API_KEY"] = json.loads(created.stdout)["api_key"]

    # --file without --tenant: the API key already says whose document it is.
    contract = elsewhere / "contract.md"
    contract.write_text("# Supply contract\n\nLate delivery costs 2% per week, capped at 10%.\n")
    submitted = run(
        "submit", "--file", "contract.md", "--prompt", "List the risks", "--wait", env=env, cwd=elsewhere
    )
    assert submitted.returncode == 0, submitted.stderr
    assert "Late delivery costs 2% per week" in submitted.stdout
    job_id = next(word for word in submitted.stderr.split() if word.startswith("job_")).rstrip(":")

    status = run("status", job_id, env=env, cwd=elsewhere)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "completed"

    dlqs = run("dlq", "queues", "--json", env=env, cwd=elsewhere)
    assert dlqs.returncode == 0, dlqs.stderr
    assert {entry["dlq"] for entry in json.loads(dlqs.stdout)} >= {"InferDeadLetterQueue"}


def test_a_stopped_stack_is_named_not_a_traceback(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    state = tmp_path / "dev.json"
    state.write_text(json.dumps({"pid": int(gone.stdout), "api_url": "http://127.0.0.1:9", "jobs_table": "t",
                                 "endpoint_url": "http://127.0.0.1:9", "region": "us-east-1"}))  # fmt: skip
    env = user_shell_env(BATON_STATE=str(state), BATON_API_KEY="bk_x")
    for args in (("status", "job_x"), ("dlq", "list"), ("keys", "create", "--tenant", "x"), ("url",)):
        answer = run(*args, env=env, cwd=tmp_path)
        assert answer.returncode == 1, answer
        assert "Traceback" not in answer.stderr + answer.stdout
        assert "no running local stack" in answer.stderr and "has stopped" in answer.stderr, answer.stderr


def test_the_wrapper_installs_and_runs_from_another_directory(tmp_path: Path) -> None:
    answer = run("--help", env=user_shell_env(), cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr
    for command in ("dev", "demo", "keys", "submit", "status", "cancel", "dlq", "url"):
        assert command in answer.stdout
