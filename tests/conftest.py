"""Every test session records its local stacks in its own state file, never the user's.

`baton dev` records the running stack per user (`baton_dev.state.user_state_file`) so that the CLI
finds it from any directory; stacks started by tests (and their CLI calls) use this session's file
instead, so a test run neither replaces nor removes the record of a developer's own `baton dev`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from baton_dev.state import STATE_ENV


def pytest_configure() -> None:
    os.environ[STATE_ENV] = str(Path(tempfile.mkdtemp(prefix="baton-test-state-")) / "dev.json")
