"""Where `baton dev` records the running stack, and how (atomically, removed only by its owner)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from baton_dev.state import pid_alive, read_state, remove_state, user_state_file, write_state
from baton_dev.target import TargetError, resolve_target


def test_the_user_record_is_baton_state_else_xdg_else_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BATON_STATE", str(tmp_path / "mine.json"))
    assert user_state_file() == tmp_path / "mine.json"
    monkeypatch.delenv("BATON_STATE")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert user_state_file() == tmp_path / "xdg" / "baton" / "dev.json"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_state_file() == tmp_path / "home" / ".local" / "state" / "baton" / "dev.json"


def test_write_state_replaces_the_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dev.json"
    write_state(path, {"pid": 1, "api_url": "old"})
    inode_before = path.stat().st_ino
    write_state(path, {"pid": 2, "api_url": "new"})
    assert json.loads(path.read_text()) == {"pid": 2, "api_url": "new"}
    # A rename, not a rewrite in place: a reader holding the old file never sees it half-written.
    assert path.stat().st_ino != inode_before
    assert sorted(child.name for child in path.parent.iterdir()) == ["dev.json"]


def test_write_state_that_fails_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    write_state(path, {"pid": 1})
    with pytest.raises(TypeError):
        write_state(path, {"pid": object()})
    assert read_state(path) == {"pid": 1}
    assert [child.name for child in tmp_path.iterdir()] == ["dev.json"]


def test_remove_state_only_removes_its_own_record(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    write_state(path, {"pid": 41})
    remove_state(path, 42)  # a second `baton dev` stopping must not remove the first one's record
    assert path.exists()
    remove_state(path, 41)
    assert not path.exists()
    remove_state(path, 41)  # already gone: fine


def test_a_record_left_by_a_killed_stack_is_not_a_running_stack(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(finished.stdout)
    assert pid_alive(os.getpid()) and not pid_alive(dead_pid) and not pid_alive(None)
    write_state(tmp_path / "dev.json", {"pid": dead_pid, "api_url": "http://127.0.0.1:9"})
    with pytest.raises(TargetError, match="has stopped"):
        resolve_target(state_dir=tmp_path)
    with pytest.raises(TargetError, match="missing"):
        resolve_target(state_dir=tmp_path / "nothing")


def test_resolve_target_reads_the_user_record_without_a_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    record = tmp_path / "record.json"
    monkeypatch.setenv("BATON_STATE", str(record))
    write_state(
        record,
        {
            "pid": os.getpid(),
            "api_url": "http://127.0.0.1:3999",
            "jobs_table": "jobs",
            "bucket": "bucket",
            "endpoint_url": "http://127.0.0.1:4000",
            "region": "eu-west-1",
            "queues": {"InferQueue": "http://q"},
        },
    )
    target = resolve_target()
    assert (target.api_url, target.jobs_table, target.region) == (
        "http://127.0.0.1:3999",
        "jobs",
        "eu-west-1",
    )
    assert target.queues == {"InferQueue": "http://q"}


def test_every_cli_command_finds_the_stack_from_any_directory_by_default() -> None:
    """A `--state-dir` defaulting to a relative path (`.baton`) would make that command work only in
    the directory `baton dev` was started from: every command defaults to the per-user record."""
    import typer

    from baton_dev.cli import app

    def commands(command: Any, prefix: str = "baton") -> Iterator[tuple[str, Any]]:
        # Typer's own click: a group has `commands`.
        yield prefix, command
        for name, sub in (getattr(command, "commands", None) or {}).items():
            yield from commands(sub, f"{prefix} {name}")

    with_state_dir = {
        name: param.default
        for name, command in commands(typer.main.get_command(app))
        for param in command.params
        if param.name == "state_dir" and name != "baton dev" and name != "baton demo"
    }
    assert with_state_dir, "no command reads a local stack?"
    assert {name: default for name, default in with_state_dir.items() if default is not None} == {}
