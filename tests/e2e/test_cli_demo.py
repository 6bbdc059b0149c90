"""The `baton` CLI end to end: `baton demo`, and submit/status/cancel against a real `baton dev`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from baton_dev.launcher import LaunchedStack, StackConfig
from baton_dev.webhook_receiver import Refusal, WebhookReceiver

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BATON = Path(sys.executable).with_name("baton")
START_TIMEOUT_S = 240
ARTICLE = (
    "The settlement queue peaked at 380,000 messages on 30 September. Consumers were capped at 20 "
    "workers by an old setting. The backlog drained in three hours once the cap was raised to 80."
)


def baton(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    command = [str(BATON)] if BATON.exists() else [sys.executable, "-m", "baton_dev.cli"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    state_dir: Path
    log_path: Path
    api_key: str

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return baton(
            *args, "--state-dir", str(self.state_dir), env={"BATON_API_KEY": self.api_key}, timeout=timeout
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig(state_dir=tmp_path_factory.mktemp("baton-cli"))
    with LaunchedStack(config).start(START_TIMEOUT_S) as launched:
        created = baton("keys", "create", "--tenant", "cli-test", "--state-dir", str(launched.state_dir))
        assert created.returncode == 0, created.stderr
        yield Stack(
            state_dir=launched.state_dir,
            log_path=launched.log_path,
            api_key=json.loads(created.stdout)["api_key"],
        )


def assert_clean_failure(answer: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert answer.returncode == 1, answer
    assert "Traceback" not in answer.stderr + answer.stdout
    for text in expected:
        assert text in answer.stderr, answer.stderr


# -- baton demo -------------------------------------------------------------------------------------


@pytest.mark.timeout(660)
def test_demo_runs_every_kind_of_job_and_verifies_the_webhook(tmp_path: Path) -> None:
    # A deadline for a hung demo, not a speed goal (timings belong in bench/): the demo itself
    # allows 240 s for the stack to start on a loaded machine.
    answer = baton("demo", "--state-dir", str(tmp_path / "demo"), timeout=600)
    output = answer.stdout + answer.stderr
    assert answer.returncode == 0, output
    assert "Demo passed" in output
    assert "signature verified" in output
    assert "msg_job_" in output  # the webhook-id of job (c)
    for label in ("(a)", "(b)", "(c)", "(d)"):
        assert f"{label} " in output
    assert "Traceback" not in output
    assert not (tmp_path / "demo" / "dev.json").exists(), "the demo's stack should have stopped"


# -- submit / status / cancel -----------------------------------------------------------------------


def test_submit_wait_prints_the_result_and_exits_0(stack: Stack) -> None:
    answer = stack.run("submit", "--prompt", ARTICLE, "--metadata", "ticket=OPS-7", "--wait")
    assert answer.returncode == 0, answer.stderr
    assert "380,000" in answer.stdout  # the simulator's extractive summary of the prompt
    assert "completed" in answer.stderr
    assert "Traceback" not in answer.stderr


def test_submit_file_uploads_it_as_a_document(stack: Stack, tmp_path: Path) -> None:
    notes = tmp_path / "release notes.md"
    notes.write_text("# Release 2.1\n\nCancelling a queued job is now instant. Webhooks retry for a day.\n")
    answer = stack.run("submit", "--file", str(notes), "--prompt", "What changed?", "--wait")
    assert answer.returncode == 0, answer.stderr
    assert "uploaded release notes.md as document doc_" in answer.stderr  # POST /v1/documents' id
    assert "Cancelling a queued job" in answer.stdout


def test_submit_without_wait_then_status_then_cancel_conflict(stack: Stack) -> None:
    answer = stack.run("submit", "--prompt", ARTICLE, "--idempotency-key", "cli-test-1")
    assert answer.returncode == 0, answer.stderr
    accepted = json.loads(answer.stdout)
    assert accepted["status"] == "pending"
    job_id = accepted["id"]

    deadline = time.monotonic() + 60
    job: dict[str, object] = {}
    while time.monotonic() < deadline:
        status = stack.run("status", job_id, "--wait", "5")
        assert status.returncode == 0, status.stderr
        job = json.loads(status.stdout)
        assert job["id"] == job_id
        if job["status"] == "completed":
            break
    assert job["status"] == "completed", job

    cancel = stack.run("cancel", job_id)
    assert_clean_failure(cancel, "conflict", "already completed")


def test_api_errors_are_one_red_line_not_a_traceback(stack: Stack) -> None:
    assert_clean_failure(stack.run("submit", "--prompt", ""), "validation_error", "(input.prompt)")
    assert_clean_failure(stack.run("status", "job_doesnotexist"), "not_found")
    assert_clean_failure(stack.run("cancel", "job_doesnotexist"), "not_found")
    bad_key = baton("status", "job_x", "--state-dir", str(stack.state_dir), env={"BATON_API_KEY": "bk_wrong"})
    assert_clean_failure(bad_key, "unauthorized")


def test_missing_stack_or_key_is_a_clean_message(tmp_path: Path) -> None:
    assert_clean_failure(
        baton("keys", "create", "--tenant", "x", "--state-dir", str(tmp_path)), "no running local stack"
    )
    assert_clean_failure(
        baton("status", "job_x", "--state-dir", str(tmp_path), env={"BATON_API_KEY": "bk_x"}),
        "no running local stack",
    )
    no_key = baton("status", "job_x", "--state-dir", str(tmp_path), env={"BATON_API_KEY": ""})
    assert_clean_failure(no_key, "no API key")
    refused = baton("status", "job_x", "--api-url", f"http://127.0.0.1:{free_port()}", "--api-key", "bk_x")
    assert_clean_failure(refused, "cannot reach")


# -- the webhook receiver ---------------------------------------------------------------------------

SECRET = "whsec_" + "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTAxMjM0NTY3ODk="


def deliver(url: str, body: str, *, message_id: str, secret: str = SECRET) -> int:
    now = datetime.now(tz=UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, now, body),
    }
    return httpx.post(url, content=body.encode(), headers=headers, timeout=5).status_code


def test_webhook_receiver_verifies_signatures_and_can_fail_first_deliveries() -> None:
    body = json.dumps({"type": "job.completed", "data": {"id": "job_1"}})
    with WebhookReceiver(SECRET, fail_first=1) as receiver:
        assert deliver(receiver.url, body, message_id="msg_1") == 503
        assert deliver(receiver.url, body, message_id="msg_1") == 204
        other_secret = "whsec_" + "b3RoZXItc2VjcmV0LWZvci10ZXN0cy0wMTIzNDU2Nzg="
        assert deliver(receiver.url, body, message_id="msg_2", secret=other_secret) == 401
        events = receiver.wait_for(2, timeout=5)
    assert receiver.failed_ids == ["msg_1"]
    assert [(event.webhook_id, event.verified) for event in events] == [("msg_1", True), ("msg_2", False)]
    assert events[0].payload == {"type": "job.completed", "data": {"id": "job_1"}}
    with pytest.raises(TimeoutError):
        receiver.wait_for(3, timeout=0.1)


def test_webhook_receiver_refuses_each_event_its_own_way_then_accepts_it() -> None:
    body = json.dumps({"type": "job.completed", "data": {"id": "job_1"}})
    refusals = (Refusal(429, {"Retry-After": "4"}), Refusal(503, delay_s=0.3))
    with WebhookReceiver(SECRET, refuse_each=refusals) as receiver:
        for message_id in ("msg_1", "msg_2"):  # every event, not only the first ones received
            assert deliver(receiver.url, body, message_id=message_id) == 429
            started = time.monotonic()
            assert deliver(receiver.url, body, message_id=message_id) == 503
            assert time.monotonic() - started >= 0.3  # answered late
            assert deliver(receiver.url, body, message_id=message_id) == 204
    assert receiver.failed_ids == ["msg_1", "msg_1", "msg_2", "msg_2"]
    assert [event.webhook_id for event in receiver.events] == ["msg_1", "msg_2"]
