"""Egress safety: which addresses a tenant's webhook (or OAuth2 token URL) may make Baton call.

A tenant chooses the URL, so without a rule any tenant could make Baton reach the instance
metadata service (169.254.169.254), the VPC or localhost (server-side request forgery). With
`WebhookAllowPrivateNetworks=false` only globally routable unicast addresses are allowed. Names are
resolved once, every answer is checked, and the connection goes to the checked address (the
original name stays in the Host header and TLS SNI), so a second DNS answer cannot rebind it.
"""

from __future__ import annotations

import ipaddress
import socket

import httpx

from baton.errors import InvalidRequestError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Prefixes that embed an IPv4 address in an IPv6 one: the embedded address must pass too.
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOOPBACK_AND_UNSPECIFIED = (ipaddress.IPv6Address("::"), ipaddress.IPv6Address("::1"))


class BlockedAddressError(InvalidRequestError):
    """The URL's host is, or resolves to, an address tenants may not reach (422 on submit)."""

    type = "blocked_address"
    retryable = False


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _IPV4_COMPATIBLE or address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_blocked(address: IPAddress) -> bool:
    """Loopback, private (incl. ULA fc00::/7), link-local (incl. 169.254.169.254 and fe80::/10),
    carrier-grade NAT (100.64/10), multicast, unspecified, reserved, documentation ranges, and IPv6
    addresses that embed any of those (IPv4-mapped, IPv4-compatible, 6to4, NAT64)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None and address not in _LOOPBACK_AND_UNSPECIFIED:
            return is_blocked(embedded)
    # is_global is False for every IANA special-purpose range except multicast, checked apart.
    return (
        not address.is_global
        or address.is_multicast
        or address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_reserved
        or address.is_unspecified
    )


def literal_address(host: str) -> IPAddress | None:
    """The host as an address when it is an address literal (brackets allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_literal(host: str, *, field: str) -> None:
    """On submit: a literal that is blocked is refused at once (a name is checked at delivery)."""
    address = literal_address(host)
    if address is not None and is_blocked(address):
        raise BlockedAddressError(
            f"{field}: {address} is not a public address (loopback, private, link-local, "
            "carrier-grade NAT, multicast, unspecified or reserved)",
            field=field,
        )


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the name resolves to (unit tests replace this)."""
    answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(answer[4][0]).split("%", 1)[0]) for answer in answers]


def checked_address(host: str, port: int, *, allow_private: bool) -> IPAddress:
    """The one address to connect to: the literal itself, or the first answer for a name, after
    every answer was checked (a name with any blocked answer is refused as a whole)."""
    literal = literal_address(host)
    addresses = [literal] if literal is not None else resolve(host, port)
    if not addresses:
        raise BlockedAddressError(f"{host} resolves to no address")
    if not allow_private:
        blocked = [address for address in addresses if is_blocked(address)]
        if blocked:
            raise BlockedAddressError(f"{host} resolves to {blocked[0]}, which is not a public address")
    return addresses[0]


def network_transport() -> httpx.BaseTransport:
    """What actually opens connections (unit tests replace it with an httpx.MockTransport)."""
    return httpx.HTTPTransport()


class PinnedTransport(httpx.BaseTransport):
    """Resolves the host once, checks it, and connects to that very address; Host header and
    TLS SNI (hence certificate verification) keep the original name."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self.inner = network_transport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        address = checked_address(host, port, allow_private=self.allow_private)
        if literal_address(host) is None:
            # httpx set the Host header from the original URL when it built the request.
            request.extensions = {**request.extensions, "sni_hostname": host}
            request.url = request.url.copy_with(host=str(address))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def pinned_client(*, allow_private: bool, timeout: float) -> httpx.Client:
    """An httpx client that never follows redirects, ignores proxy variables (a proxy would
    connect on our behalf to whatever it resolves) and connects only to checked addresses.
    One per delivery: pooled connections are keyed by address, not by name."""
    return httpx.Client(
        transport=PinnedTransport(allow_private=allow_private),
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(timeout),
    )
