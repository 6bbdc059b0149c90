"""Webhooks over a real `baton dev`: egress safety, delivery log, schedule, rotation, auth, size."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from baton_dev.webhook_receiver import WebhookReceiver

from .conftest import LocalStack, Tenant, running_stack

PROMPT = {"prompt": "Say something short."}

# With WebhookAllowPrivateNetworks=false (the deployed default) every one of these is refused on
# submit, naming webhook.url.
BLOCKED_LITERALS = {
    "loopback": "http://127.0.0.1:9/hook",
    "private 10/8": "http://10.255.255.1/hook",
    "private 172.16/12": "http://172.16.5.4/hook",
    "private 192.168/16": "http://192.168.0.1/hook",
    "instance metadata (link-local)": "http://169.254.169.254/latest/meta-data/",
    "link-local": "http://169.254.1.1/hook",
    "carrier-grade NAT": "http://100.64.0.1/hook",
    "multicast": "http://224.0.0.1/hook",
    "unspecified": "http://0.0.0.0/hook",
    "reserved": "http://240.0.0.1/hook",
    "IPv6 loopback": "http://[::1]/hook",
    "IPv6 unspecified": "http://[::]/hook",
    "IPv6 link-local": "http://[fe80::1]/hook",
    "IPv6 unique local": "http://[fd00::1]/hook",
    "IPv6 multicast": "http://[ff02::1]/hook",
    "IPv4-mapped loopback": "http://[::ffff:127.0.0.1]/hook",
    "IPv4-mapped metadata": "http://[::ffff:169.254.169.254]/hook",
    "IPv4-mapped private": "http://[::ffff:10.0.0.1]/hook",
    "IPv4-mapped carrier-grade NAT": "http://[::ffff:100.64.0.1]/hook",
    "NAT64 metadata": "http://[64:ff9b::a9fe:a9fe]/hook",
    "6to4 loopback": "http://[2002:7f00:1::]/hook",
}


@pytest.fixture(scope="module")
def locked_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A second stack as deployed: private networks refused."""
    with running_stack(
        tmp_path_factory.mktemp("baton-locked"), {"WebhookAllowPrivateNetworks": "false"}
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def locked_api(locked_stack: LocalStack) -> Iterator[httpx.Client]:
    with locked_stack.client(locked_stack.create_tenant("acme")) as client:
        yield client


def submit(client: httpx.Client, webhook: dict[str, Any], prompt: str = PROMPT["prompt"]) -> httpx.Response:
    return client.post("/v1/jobs", json={"input": {"prompt": prompt}, "webhook": webhook})


def assert_refused(answer: httpx.Response, field: str) -> dict[str, Any]:
    assert answer.status_code == 422, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["field"] == field, error
    return error


@pytest.mark.parametrize("url", BLOCKED_LITERALS.values(), ids=BLOCKED_LITERALS.keys())
def test_blocked_literals_are_refused_on_submit(locked_api: httpx.Client, url: str) -> None:
    error = assert_refused(submit(locked_api, {"url": url}), "webhook.url")
    assert error["type"] == "blocked_address"


def test_public_literal_and_names_are_accepted_on_submit(locked_api: httpx.Client) -> None:
    for url in (
        "http://93.184.216.34/hook",
        "http://[2606:2800:220:1:248:1893:25c8:1946]/hook",  # public IPv6
        "http://localhost:9/hook",  # a name: checked when it is resolved, at delivery
    ):
        answer = submit(locked_api, {"url": url})
        assert answer.status_code == 202, answer.text


@pytest.mark.parametrize(
    "url", ["http://user:pass@example.com/hook", "https://token@example.com/hook"], ids=["user:pass", "user"]
)
def test_credentials_in_the_url_are_refused(api: httpx.Client, url: str) -> None:
    error = assert_refused(submit(api, {"url": url}), "webhook.url")
    assert "webhook.auth" in error["message"]


def test_baton_dev_allows_local_receivers(api: httpx.Client, tenant: Tenant) -> None:
    answer = submit(api, {"url": "http://127.0.0.1:9/hook"})
    assert answer.status_code == 202, answer.text


# -- delivery log, schedule, redelivery (WebhookRetrySchedule=1s,2s,3s in the session stack) ----
DELIVERY_TIMEOUT_S = 90


def job_with_webhook(api: httpx.Client, url: str, **webhook: Any) -> str:
    answer = submit(api, {"url": url, **webhook})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def wait_for_delivery(
    api: httpx.Client, job_id: str, status: str, timeout: float = DELIVERY_TIMEOUT_S
) -> dict[str, Any]:
    """Poll the delivery log until the job's one delivery has `status`."""
    deadline = time.monotonic() + timeout
    seen: Any = None
    while time.monotonic() < deadline:
        answer = api.get(f"/v1/jobs/{job_id}/deliveries")
        assert answer.status_code == 200, answer.text
        seen = answer.json()["data"]
        if seen and seen[0]["status"] == status:
            return dict(seen[0])
        time.sleep(0.3)
    pytest.fail(f"delivery of {job_id} not {status} after {timeout}s; last seen {seen}")


def test_delivery_log_shows_each_attempt_and_delivery(api: httpx.Client, tenant: Tenant) -> None:
    with WebhookReceiver(tenant.webhook_secret, fail_first=2) as receiver:
        job_id = job_with_webhook(api, receiver.url)
        delivery = wait_for_delivery(api, job_id, "delivered")
        [event] = receiver.events
    assert delivery["webhook_id"] == event.webhook_id == f"msg_{job_id}_completed"
    assert receiver.failed_ids == [event.webhook_id] * 2  # same webhook-id on every attempt
    assert delivery["type"] == "job.completed" and delivery["next_attempt_at"] is None
    assert [(a["status_code"], a["error"]) for a in delivery["attempts"]] == [
        (503, "http_error"),
        (503, "http_error"),
        (204, None),
    ]
    assert all(a["at"] and a["duration_ms"] >= 0 for a in delivery["attempts"])


def test_a_receiver_down_for_the_whole_schedule_exhausts_then_redelivers(
    api: httpx.Client, tenant: Tenant
) -> None:
    with WebhookReceiver(tenant.webhook_secret, fail_first=-1) as down:
        job_id = job_with_webhook(api, down.url)
        delivery = wait_for_delivery(api, job_id, "exhausted")
        failed_at = down.wait_failed(4, 5)
    assert len(delivery["attempts"]) == 4  # the first attempt and the schedule's three retries
    # Gaps follow the schedule (1 s, 2 s, 3 s), never shorter.
    gaps = [later - earlier for earlier, later in pairwise(failed_at)]
    assert all(gap >= expected - 0.2 for gap, expected in zip(gaps, (1, 2, 3), strict=True)), gaps
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "completed"  # never depends on it

    # Redelivery: one new attempt series with the same webhook-id (on a delivered one here, whose
    # receiver is still listening).
    with WebhookReceiver(tenant.webhook_secret, fail_first=0) as receiver:
        other = job_with_webhook(api, receiver.url)
        first = wait_for_delivery(api, other, "delivered")
        answer = api.post(f"/v1/jobs/{other}/deliveries/{first['webhook_id']}/redeliver")
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "pending"
        events = receiver.wait_for(2, DELIVERY_TIMEOUT_S)
    assert events[0].webhook_id == events[1].webhook_id == first["webhook_id"]
    assert all(event.verified for event in events)
    again = wait_for_delivery(api, other, "delivered")
    assert len(again["attempts"]) == 2


def test_410_gone_stops_at_once(api: httpx.Client, tenant: Tenant) -> None:
    with WebhookReceiver(tenant.webhook_secret, fail_first=-1, fail_status=410) as gone:
        job_id = job_with_webhook(api, gone.url)
        delivery = wait_for_delivery(api, job_id, "failed")
    assert [(a["status_code"], a["error"]) for a in delivery["attempts"]] == [(410, "gone")]
    assert delivery["next_attempt_at"] is None
    assert len(gone.failed_ids) == 1


def test_retry_after_is_honoured(api: httpx.Client, tenant: Tenant) -> None:
    with WebhookReceiver(
        tenant.webhook_secret, fail_first=1, fail_status=429, fail_headers={"Retry-After": "4"}
    ) as busy:
        job_id = job_with_webhook(api, busy.url)
        wait_for_delivery(api, job_id, "delivered")
        [refused_at] = busy.failed_at
        [event] = busy.events
    delivered_at = datetime.fromisoformat(wait_for_delivery(api, job_id, "delivered")["attempts"][1]["at"])
    # The schedule says 1 s; the receiver asked for 4 s.
    assert delivered_at.timestamp() - refused_at >= 4 - 0.2
    assert event.verified


def test_deliveries_are_tenant_scoped(
    api: httpx.Client, tenant: Tenant, local_stack: LocalStack, other_tenant: Tenant
) -> None:
    with WebhookReceiver(tenant.webhook_secret) as receiver:
        job_id = job_with_webhook(api, receiver.url)
        delivery = wait_for_delivery(api, job_id, "delivered")
    with local_stack.client(other_tenant) as other:
        assert other.get(f"/v1/jobs/{job_id}/deliveries").status_code == 404
        answer = other.post(f"/v1/jobs/{job_id}/deliveries/{delivery['webhook_id']}/redeliver")
        assert answer.status_code == 404
    assert api.post(f"/v1/jobs/{job_id}/deliveries/msg_nope/redeliver").status_code == 404
    assert api.get("/v1/jobs/job_00000000000000000000000000000000/deliveries").status_code == 404


def test_a_name_resolving_to_loopback_is_blocked_at_delivery(
    locked_stack: LocalStack, locked_api: httpx.Client
) -> None:
    job_id = job_with_webhook(locked_api, "http://localhost:9/hook")
    delivery = wait_for_delivery(locked_api, job_id, "failed")
    assert [(a["status_code"], a["error"]) for a in delivery["attempts"]] == [(None, "blocked_address")]


def test_rotation_signs_with_both_secrets(local_stack: LocalStack) -> None:
    tenant = local_stack.create_tenant("rotating")
    with local_stack.client(tenant) as api:
        answer = api.post("/v1/webhook-secret/rotate")
        assert answer.status_code == 200, answer.text
        rotated = answer.json()
        assert (
            rotated["webhook_secret"].startswith("whsec_")
            and rotated["webhook_secret"] != tenant.webhook_secret
        )
        assert datetime.fromisoformat(rotated["previous_valid_until"]).timestamp() > time.time()
        with WebhookReceiver(rotated["webhook_secret"]) as new, WebhookReceiver(tenant.webhook_secret) as old:
            for receiver in (new, old):
                job_with_webhook(api, receiver.url)
            # Each receiver knows one secret only; both verify.
            assert new.wait_for(1, DELIVERY_TIMEOUT_S)[0].verified
            assert old.wait_for(1, DELIVERY_TIMEOUT_S)[0].verified
            signature = new.events[0].headers["webhook-signature"]
        assert len(signature.split(" ")) == 2


def test_cli_rotates_the_webhook_secret(local_stack: LocalStack) -> None:
    tenant = local_stack.create_tenant("rotating-cli")
    answer = subprocess.run(
        [
            str(Path(sys.executable).parent / "baton"),
            "keys",
            "rotate-webhook-secret",
            "--api-key",
            tenant.api_key,
            "--state-dir",
            str(local_stack.log_path.parent),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rotated = json.loads(answer.stdout)
    assert (
        rotated["webhook_secret"].startswith("whsec_") and rotated["webhook_secret"] != tenant.webhook_secret
    )
    assert datetime.fromisoformat(rotated["previous_valid_until"]).timestamp() > time.time()


# -- receiver authentication -------------------------------------------------------------------
class TokenServer:
    """A tiny OAuth2 client-credentials endpoint on 127.0.0.1: counts the tokens it issues."""

    def __init__(self) -> None:
        self.issued: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = self.rfile.read(length).decode()
                expected = "Basic " + base64.b64encode(b"cid:client-s3cret").decode()
                ok = self.headers.get("Authorization") == expected and "grant_type=client_credentials" in form
                server.issued.append(f"token-{len(server.issued)}")
                body = json.dumps({"access_token": server.issued[-1], "expires_in": 3600}).encode()
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_each_auth_mode_reaches_the_receiver(api: httpx.Client, tenant: Tenant) -> None:
    tokens = TokenServer()
    try:
        with WebhookReceiver(tenant.webhook_secret) as receiver:
            modes: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
                "basic": ({"type": "basic", "username": "u", "password": "p-s3cret"}, {}),
                "bearer": ({"type": "bearer", "token": "b-s3cret"}, {}),
                "header": ({"type": "header", "name": "X-Hook-Key", "value": "h-s3cret"}, {}),
                "query": ({"type": "query", "name": "key", "value": "q-s3cret"}, {}),
                "oauth2": (
                    {
                        "type": "oauth2",
                        "token_url": tokens.url,
                        "client_id": "cid",
                        "client_secret": "client-s3cret",
                    },
                    {},
                ),
                "on_behalf": ({"type": "on_behalf", "header": "X-User-Token"}, {"X-User-Token": "u-s3cret"}),
            }
            jobs = {}
            for mode, (auth, headers) in modes.items():
                answer = api.post(
                    "/v1/jobs",
                    json={"input": PROMPT, "webhook": {"url": receiver.url, "auth": auth}},
                    headers=headers,
                )
                assert answer.status_code == 202, (mode, answer.text)
                jobs[answer.json()["id"]] = mode
            events = receiver.wait_for(len(modes), DELIVERY_TIMEOUT_S)
            for job_id in jobs:
                view = api.get(f"/v1/jobs/{job_id}").text + api.get(f"/v1/jobs/{job_id}/deliveries").text
                assert "s3cret" not in view  # never returned by any GET
    finally:
        tokens.stop()
    seen = {jobs[event.payload["data"]["id"]]: event for event in events}
    assert all(event.verified for event in events)
    assert seen["basic"].headers["authorization"] == "Basic " + base64.b64encode(b"u:p-s3cret").decode()
    assert seen["bearer"].headers["authorization"] == "Bearer b-s3cret"
    assert seen["header"].headers["x-hook-key"] == "h-s3cret"
    assert seen["query"].path.endswith("?key=q-s3cret")
    assert seen["oauth2"].headers["authorization"] == "Bearer token-0"
    assert seen["on_behalf"].headers["x-user-token"] == "u-s3cret"
    assert tokens.issued == ["token-0"]
