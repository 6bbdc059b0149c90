"""Receiver authentication (`webhook.auth`): sealed with KMS at rest, applied at delivery.

The credentials are encrypted with the template's WebhookAuthKey, bound to the tenant by the
encryption context, on submit; only the deliver function may decrypt them. They never appear in a
GET, an event or a log line.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from baton.aws import client
from baton.egress import pinned_client
from baton.models import WebhookAuth

# A token is refreshed this long before the expiry its issuer announced.
TOKEN_EXPIRY_MARGIN_SECONDS = 30
DEFAULT_TOKEN_LIFETIME_SECONDS = 300


class TokenFetchError(Exception):
    """The OAuth2 token endpoint refused or could not be reached: the attempt fails, retried."""


def seal(auth: WebhookAuth, *, key_id: str, tenant_id: str) -> str:
    plaintext = auth.model_dump_json(exclude_none=True).encode()
    answer = client("kms").encrypt(
        KeyId=key_id, Plaintext=plaintext, EncryptionContext={"tenant_id": tenant_id}
    )
    return base64.b64encode(answer["CiphertextBlob"]).decode()


def unseal(sealed: str, *, tenant_id: str) -> WebhookAuth:
    answer = client("kms").decrypt(
        CiphertextBlob=base64.b64decode(sealed), EncryptionContext={"tenant_id": tenant_id}
    )
    return WebhookAuth.model_validate(json.loads(answer["Plaintext"]))


@dataclass
class _Token:
    value: str
    expires_at: float


class TokenCache:
    """OAuth2 client-credentials tokens, kept per (token URL, client, scope, audience) in the
    function's memory until they expire."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(auth: WebhookAuth) -> tuple[str, ...]:
        return (str(auth.token_url), str(auth.client_id), auth.scope or "", auth.audience or "")

    def token(self, auth: WebhookAuth, *, timeout: float, allow_private: bool, fresh: bool = False) -> str:
        key = self._key(auth)
        with self._lock:
            cached = self._tokens.get(key)
        if cached is not None and not fresh and cached.expires_at > time.time():
            return cached.value
        fetched = _fetch_token(auth, timeout=timeout, allow_private=allow_private)
        with self._lock:
            self._tokens[key] = fetched
        return fetched.value


def _fetch_token(auth: WebhookAuth, *, timeout: float, allow_private: bool) -> _Token:
    form = {"grant_type": "client_credentials"}
    if auth.scope:
        form["scope"] = auth.scope
    if auth.audience:
        form["audience"] = auth.audience
    try:
        # The token URL is the tenant's choice too: the same egress rule applies.
        with pinned_client(allow_private=allow_private, timeout=timeout) as http:
            response = http.post(
                str(auth.token_url), data=form, auth=(str(auth.client_id), str(auth.client_secret))
            )
    except httpx.HTTPError as error:
        raise TokenFetchError(f"token endpoint unreachable: {type(error).__name__}") from None
    if response.status_code != 200:
        raise TokenFetchError(f"token endpoint answered {response.status_code}")
    try:
        body = response.json()
        token = str(body["access_token"])
        lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME_SECONDS)
    except (ValueError, KeyError, TypeError):
        raise TokenFetchError("token endpoint answered without an access_token") from None
    return _Token(token, time.time() + max(0.0, lifetime - TOKEN_EXPIRY_MARGIN_SECONDS))


def apply(
    auth: WebhookAuth | None,
    url: str,
    *,
    tokens: TokenCache,
    timeout: float,
    allow_private: bool,
    fresh_token: bool = False,
) -> tuple[str, dict[str, str]]:
    """The URL and headers of one attempt with this auth."""
    if auth is None:
        return url, {}
    if auth.type == "basic":
        pair = f"{auth.username}:{auth.password or ''}".encode()
        return url, {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    if auth.type == "bearer":
        return url, {"Authorization": f"Bearer {auth.token}"}
    if auth.type == "header":
        return url, {str(auth.name): str(auth.value)}
    if auth.type == "query":
        return str(httpx.URL(url).copy_merge_params({str(auth.name): str(auth.value)})), {}
    if auth.type == "on_behalf":
        return url, {str(auth.header): str(auth.value or "")}
    token = tokens.token(auth, timeout=timeout, allow_private=allow_private, fresh=fresh_token)
    return url, {"Authorization": f"Bearer {token}"}


def forwarded_value(auth: WebhookAuth, headers: dict[str, Any]) -> WebhookAuth:
    """on_behalf: the submitting request's header value, as the auth to store."""
    wanted = str(auth.header).lower()
    value = next((str(v) for k, v in headers.items() if k.lower() == wanted), None)
    if value is None:
        from baton.errors import InvalidRequestError

        raise InvalidRequestError(
            f"webhook.auth.header: the request has no {auth.header} header to forward",
            field="webhook.auth.header",
        )
    return auth.model_copy(update={"value": value})
