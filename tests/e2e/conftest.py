"""One `./baton dev` for the first-hour tests, started as a user starts it: through the repo's
`./baton` wrapper, from a shell whose PATH has no venv, its stack recorded in its own state file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WRAPPER = ROOT / "baton"
START_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def user_shell_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh shell: no virtualenv activated, no venv `bin` on PATH."""
    env = {key: value for key, value in os.environ.items() if key not in {"VIRTUAL_ENV", "BATON_API_KEY"}}
    venv_bin = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", "").split(os.pathsep) if part and Path(part) != Path(venv_bin)
    )
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


@dataclass
class DevStack:
    api_url: str
    state_file: Path
    log_path: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A user's shell in which `baton` finds this stack (as it finds the user's own)."""
        return user_shell_env(BATON_STATE=str(self.state_file), **extra)


@pytest.fixture(scope="session")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    workdir = tmp_path_factory.mktemp("first-hour")
    state_file = workdir / "user-state" / "dev.json"
    log_path = workdir / "dev.log"
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            # From another directory, as `path/to/baton dev`: it runs this checkout's template.
            [str(WRAPPER), "dev", "--port", str(port)],
            cwd=workdir,
            env=user_shell_env(BATON_STATE=str(state_file)),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        # The per-user record is written once the stack serves: when it names our process, it is up.
        while _pid_in(state_file) != process.pid:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`./baton dev` did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield DevStack(api_url=f"http://127.0.0.1:{port}", state_file=state_file, log_path=log_path)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.returncode == 0:
        # Stopped by SIGTERM, `baton dev` removes its record: the CLI then says no stack runs.
        assert not state_file.exists(), f"{state_file} left behind by a stopped `baton dev`"


def _pid_in(state_file: Path) -> object:
    try:
        return json.loads(state_file.read_text()).get("pid")
    except (OSError, ValueError):
        return None
