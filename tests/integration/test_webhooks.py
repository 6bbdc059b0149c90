"""Webhooks over a real `baton dev`: egress safety, delivery log, schedule, rotation, auth, size."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

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
}


@pytest.fixture(scope="module")
def locked_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A second stack as deployed: private networks refused."""
    with running_stack(tmp_path_factory.mktemp("baton-locked"), "WebhookAllowPrivateNetworks=false") as stack:
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
    for url in ("http://93.184.216.34/hook", "http://localhost:9/hook"):
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
