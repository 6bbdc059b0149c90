"""Where a running `baton dev` records itself, so that the CLI finds it from any directory.

`baton dev` writes its state (API URL, AWS endpoint, table, bucket, queue URLs, pid) twice: to
`<state-dir>/dev.json` beside its logs, and to one per-user file, `$BATON_STATE` if set, else
`$XDG_STATE_HOME/baton/dev.json` (`~/.local/state/baton/dev.json`). Commands without `--state-dir`
read the per-user file. Both are written atomically (a temporary file renamed over the old one),
so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["STATE_ENV", "pid_alive", "read_state", "remove_state", "user_state_file", "write_state"]

STATE_ENV = "BATON_STATE"


def user_state_file() -> Path:
    """The per-user record of the running local stack: `$BATON_STATE`, else the XDG state dir."""
    explicit = os.environ.get(STATE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "baton" / "dev.json"


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write `state` as JSON to `path` atomically: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump(state, file, indent=2)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_state(path: Path) -> dict[str, Any] | None:
    """The state in `path`, or None if there is none."""
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return state


def remove_state(path: Path, pid: int) -> None:
    """Remove `path` if the stack of process `pid` wrote it (another `baton dev` may have since)."""
    try:
        state = read_state(path)
    except (OSError, ValueError):
        return
    if state is not None and state.get("pid") == pid:
        path.unlink(missing_ok=True)


def pid_alive(pid: object) -> bool:
    """Whether a process `pid` exists (a stack killed with SIGKILL leaves its state behind)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
