"""Egress safety (baton.egress): which addresses a tenant's webhook may make Baton call."""

from __future__ import annotations

import ipaddress
from typing import Any

import httpx
import pytest

import baton.egress
from baton.egress import BlockedAddressError, check_literal, checked_address, is_blocked, pinned_client

# Every class of address a tenant must not reach, IPv4 and IPv6.
BLOCKED = {
    "loopback": "127.0.0.1",
    "loopback (other)": "127.255.0.9",
    "private 10/8": "10.255.255.1",
    "private 172.16/12": "172.16.0.1",
    "private 192.168/16": "192.168.1.1",
    "link-local (instance metadata)": "169.254.169.254",
    "carrier-grade NAT": "100.64.0.1",
    "multicast": "224.0.0.1",
    "unspecified": "0.0.0.0",
    "this network 0/8": "0.1.2.3",
    "reserved 240/4": "240.0.0.1",
    "broadcast": "255.255.255.255",
    "benchmarking 198.18/15": "198.18.0.1",
    "documentation": "192.0.2.1",
    "IPv6 loopback": "::1",
    "IPv6 unspecified": "::",
    "IPv6 link-local": "fe80::1",
    "IPv6 unique local (ULA)": "fd12:3456::1",
    "IPv6 ULA fc00::/8": "fc00::1",
    "IPv6 multicast": "ff02::1",
    "IPv6 documentation": "2001:db8::1",
    "IPv4-mapped loopback": "::ffff:127.0.0.1",
    "IPv4-mapped metadata": "::ffff:169.254.169.254",
    "IPv4-mapped private": "::ffff:10.0.0.1",
    "IPv4-compatible loopback": "::127.0.0.1",
    "6to4 of loopback": "2002:7f00:1::",
    "NAT64 of private": "64:ff9b::a00:1",
}
ALLOWED = {
    "public IPv4": "93.184.216.34",
    "public IPv4 (dns)": "8.8.8.8",
    "public IPv6": "2606:4700:4700::1111",
    "IPv4-mapped public": "::ffff:8.8.8.8",
}


@pytest.mark.parametrize("address", BLOCKED.values(), ids=BLOCKED.keys())
def test_blocked_classes(address: str) -> None:
    assert is_blocked(ipaddress.ip_address(address))
    with pytest.raises(BlockedAddressError) as refused:
        check_literal(f"[{address}]" if ":" in address else address, field="webhook.url")
    assert refused.value.field == "webhook.url"
    with pytest.raises(BlockedAddressError):
        checked_address(address, 443, allow_private=False)


@pytest.mark.parametrize("address", ALLOWED.values(), ids=ALLOWED.keys())
def test_public_addresses_pass(address: str) -> None:
    assert not is_blocked(ipaddress.ip_address(address))
    check_literal(address, field="webhook.url")
    assert str(checked_address(address, 443, allow_private=False)) == address


def test_names_are_not_refused_on_submit() -> None:
    check_literal("localhost", field="webhook.url")  # resolved (and refused) at delivery instead


def resolving(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[Any]:
        asked.append(host)
        return [ipaddress.ip_address(address) for address in answers[host]]

    monkeypatch.setattr(baton.egress, "resolve", resolve)
    return asked


def test_a_name_that_resolves_to_loopback_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    resolving(monkeypatch, {"hooks.evil.example": ["127.0.0.1"], "six.evil.example": ["::1"]})
    for host in ("hooks.evil.example", "six.evil.example"):
        with pytest.raises(BlockedAddressError, match="not a public address"):
            checked_address(host, 443, allow_private=False)


def test_one_blocked_answer_refuses_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    resolving(monkeypatch, {"mixed.example": ["93.184.216.34", "10.0.0.7"]})
    with pytest.raises(BlockedAddressError):
        checked_address("mixed.example", 443, allow_private=False)


def test_private_networks_allowed_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    resolving(monkeypatch, {"localhost": ["127.0.0.1"]})
    assert str(checked_address("localhost", 80, allow_private=True)) == "127.0.0.1"


def network(monkeypatch: pytest.MonkeyPatch, answer: httpx.Response | None = None) -> list[httpx.Request]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer if answer is not None else httpx.Response(204)

    monkeypatch.setattr(baton.egress, "network_transport", lambda: httpx.MockTransport(handler))
    return seen


def test_connection_goes_to_the_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name is resolved once; a second, different answer is never used."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[Any]:
        asked.append(host)
        return [ipaddress.ip_address(address) for address in next(answers)]

    monkeypatch.setattr(baton.egress, "resolve", resolve)
    seen = network(monkeypatch)
    with pinned_client(allow_private=False, timeout=5) as http:
        assert http.post("https://hooks.example.com:8443/in?x=1", content=b"{}").status_code == 204
    [request] = seen
    assert asked == ["hooks.example.com"]
    assert (request.url.host, request.url.port, request.url.path) == ("93.184.216.34", 8443, "/in")
    assert request.headers["host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"


def test_blocked_name_never_connects(monkeypatch: pytest.MonkeyPatch) -> None:
    resolving(monkeypatch, {"metadata.evil.example": ["169.254.169.254"]})
    seen = network(monkeypatch)
    with pinned_client(allow_private=False, timeout=5) as http, pytest.raises(BlockedAddressError):
        http.post("http://metadata.evil.example/latest/meta-data", content=b"{}")
    assert seen == []


def test_redirects_are_not_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    resolving(monkeypatch, {"hooks.example.com": ["93.184.216.34"]})
    seen = network(monkeypatch, httpx.Response(307, headers={"location": "http://169.254.169.254/"}))
    with pinned_client(allow_private=False, timeout=5) as http:
        assert http.post("https://hooks.example.com/in", content=b"{}").status_code == 307
    assert len(seen) == 1
