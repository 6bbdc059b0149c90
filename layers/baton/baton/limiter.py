"""The provider limiter: every infer invocation shares one pace per (endpoint, model) in DynamoDB.

Requests and tokens per minute are paced as GCRA (virtual scheduling, the token bucket stated as
a "theoretical arrival time"): each call reserves the next slot, `interval` after the previous
one, so calls are spread evenly over the minute instead of spending its budget in the first
second (providers enforce per-minute limits over shorter windows too). One item per
(endpoint, model) holds both paces; a reservation is one optimistic conditional write (a lost
race answers with the item as it now is, so the retry needs no read).

- A call whose slot is near waits for it in the function (at most `MAX_WAIT_IN_FUNCTION_S`); a
  later slot is kept in the command, which goes back to its queue delayed until then (Deferred):
  no function is paid to wait, and no attempt is spent.
- Tokens are reserved at the estimate (prompt + max_tokens) and settled with the real usage.
- Limits come from the template (ProviderRequestsPerMinute / ProviderTokensPerMinute) or, when
  those are 0, from the provider's `x-ratelimit-*` headers: until the first answer teaches them,
  one probe call goes out at a time. A 429 or `remaining: 0` blocks every caller until the reset.
- Fairness: a tenant holds at most `TenantMaxInFlight` leases (reserved or calling); a lease
  expires on its own, so one held by a crashed invocation comes back.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from baton.aws import client, from_dynamo, to_dynamo
from baton.errors import BatonError

logger = Logger(child=True)

# Pace a little under the limit: calls leave on their slot but reach the provider with jitter,
# and a provider counting over a short sliding window refuses two calls that arrive too close.
PACE_FRACTION = 0.97
MAX_WAIT_IN_FUNCTION_S = 1.0
# A slot later than this is not reserved: SQS delays a message 900 s at most.
MAX_RESERVE_AHEAD_S = 840.0
# A reserved slot this late (the delayed message came back late) is still used: later, it is
# given up and the call reserves again rather than crowd the calls slotted after it.
LATE_SLOT_GRACE_MS = 2_000
PROBE_LEASE_MS = 30_000
LEARNED_CACHE_MS = 30_000
RACE_RETRIES = 12
DEFAULT_COMPLETION_TOKENS = 1_024  # reserved when a job does not cap max_tokens; settled after
CHARS_PER_TOKEN = 4


class Deferred(BatonError):
    """No capacity now: the command goes back to its queue, delayed; not a failure, not an attempt.
    `slot_ms`: the reserved slot it keeps (None: it reserves again when it comes back)."""

    type = "deferred"
    retryable = True

    def __init__(self, reason: str, *, delay_s: float, slot_ms: int | None = None) -> None:
        super().__init__(reason)
        self.delay_s = delay_s
        self.slot_ms = slot_ms

    @property
    def delay_seconds(self) -> int:
        """SQS DelaySeconds (whole seconds, 900 at most); never later than the slot."""
        return max(0, min(900, math.floor(self.delay_s)))


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int = 0  # 0: none known
    tokens_per_minute: int = 0


@dataclass(frozen=True)
class Ticket:
    """Admission to call the model at `slot_ms` with `tokens` reserved."""

    provider: str
    slot_ms: int
    tokens: int
    limits: Limits
    lease_tenant: str | None = None
    lease_id: str | None = None
    probe: bool = False


@dataclass(frozen=True)
class RateLimitHeaders:
    """What an OpenAI-style answer says about its limits (every field optional)."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None
    retry_after_s: float | None = None

    @classmethod
    def parse(cls, headers: Mapping[str, str] | None) -> RateLimitHeaders:
        if not headers:
            return cls()
        lower = {name.lower(): value for name, value in headers.items()}

        def number(name: str) -> int | None:
            try:
                return int(float(lower[name]))
            except (KeyError, ValueError):
                return None

        retry_after = None
        if "retry-after-ms" in lower:
            retry_after = _float(lower["retry-after-ms"], scale=0.001)
        if retry_after is None and "retry-after" in lower:
            retry_after = _float(lower["retry-after"])
        return cls(
            limit_requests=number("x-ratelimit-limit-requests"),
            limit_tokens=number("x-ratelimit-limit-tokens"),
            remaining_requests=number("x-ratelimit-remaining-requests"),
            remaining_tokens=number("x-ratelimit-remaining-tokens"),
            reset_requests_s=parse_duration(lower.get("x-ratelimit-reset-requests")),
            reset_tokens_s=parse_duration(lower.get("x-ratelimit-reset-tokens")),
            retry_after_s=retry_after,
        )

    @property
    def teaches_limits(self) -> bool:
        return self.limit_requests is not None or self.limit_tokens is not None


_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """OpenAI's reset durations: `6m0s`, `1s`, `250ms`, `1h2m3.5s`; a bare number is seconds."""
    if not text:
        return None
    text = text.strip()
    plain = _float(text)
    if plain is not None:
        return plain
    parts = list(_DURATION.finditer(text))
    if not parts or "".join(part.group(0) for part in parts) != text:
        return None
    return sum(float(part["value"]) * _UNIT_SECONDS[part["unit"]] for part in parts)


def _float(text: str, *, scale: float = 1.0) -> float | None:
    try:
        return max(0.0, float(text) * scale)
    except ValueError:
        return None


def estimate_tokens(messages: list[dict[str, Any]], max_tokens: int | None) -> int:
    """What to reserve before the call: the prompt (about 4 characters a token) plus the most the
    answer may take. Settled with the real usage after the call."""
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif content is not None:
            chars += len(str(content))
        if message.get("tool_calls"):
            chars += len(str(message["tool_calls"]))
    return math.ceil(chars / CHARS_PER_TOKEN) + (max_tokens or DEFAULT_COMPLETION_TOKENS)


def provider_key(endpoint: str | None, model: str) -> str:
    return f"provider#{endpoint or 'https://api.openai.com/v1'}#{model}"


class ProviderLimiter:
    def __init__(
        self,
        table_name: str,
        *,
        configured: Limits,
        tenant_max_in_flight: int = 0,
    ) -> None:
        self.table_name = table_name
        self.configured = configured
        self.tenant_max_in_flight = tenant_max_in_flight
        self._tenant_items: set[str] = set()
        self._learned_cache: dict[str, tuple[Limits, bool, int]] = {}

    @property
    def _ddb(self) -> Any:
        return client("dynamodb")

    # -- admission ---------------------------------------------------------------------------
    def admit(
        self,
        provider: str,
        *,
        tenant_id: str,
        lease_id: str,
        tokens: int,
        now_ms: int,
        held_slot_ms: int | None = None,
        lease_ms: int,
    ) -> Ticket:
        """A ticket to call at its slot, or Deferred. `held_slot_ms`: the slot this command
        reserved before it was delayed; `lease_ms`: how long the call may take at most."""
        lease_tenant = None
        if self.tenant_max_in_flight > 0:
            slot_hint = held_slot_ms if held_slot_ms is not None else now_ms
            self._lease(tenant_id, lease_id, expires_ms=max(slot_hint, now_ms) + lease_ms, now_ms=now_ms)
            lease_tenant = tenant_id
        try:
            if held_slot_ms is not None and held_slot_ms >= now_ms - LATE_SLOT_GRACE_MS:
                limits = (
                    self.configured if self.configured != Limits() else self._limits(self._read(provider))
                )
                return Ticket(provider, held_slot_ms, tokens, limits, lease_tenant, lease_id)
            slot_ms, limits, probe = self._reserve(provider, tokens=tokens, now_ms=now_ms)
        except Deferred:
            # Deferred without a slot: it holds no lease while it waits, so the tenant's other
            # work, and other tenants, go first.
            if lease_tenant is not None:
                self.release_lease(lease_tenant, lease_id)
            raise
        wait_s = (slot_ms - now_ms) / 1000
        if wait_s > MAX_WAIT_IN_FUNCTION_S:
            # The slot is kept (in the delayed command) and so is the lease, until the call.
            if lease_tenant is not None:
                self._lease(tenant_id, lease_id, expires_ms=slot_ms + lease_ms, now_ms=now_ms)
            raise Deferred("waiting for its slot at the provider", delay_s=wait_s, slot_ms=slot_ms)
        return Ticket(provider, slot_ms, tokens, limits, lease_tenant, lease_id, probe)

    def _reserve(self, provider: str, *, tokens: int, now_ms: int) -> tuple[int, Limits, bool]:
        limits, learned = self._known_limits(provider, now_ms)
        if limits == Limits() and not learned:
            return self._probe(provider, now_ms), limits, True
        request_cost = _interval_ms(limits.requests_per_minute)
        token_cost = tokens * _interval_ms(limits.tokens_per_minute)
        # The request pace is booked even without a request limit (cost 0): a 429's block lives in it.
        slot = self._book(provider, "request_tat", request_cost, now_ms)
        if token_cost:
            slot = max(slot, self._book(provider, "token_tat", token_cost, now_ms))
        if slot - now_ms > MAX_RESERVE_AHEAD_S * 1000:
            self._update(provider, sets={}, adds={"request_tat": -math.floor(request_cost)})
            if token_cost:
                self._update(provider, sets={}, adds={"token_tat": -math.floor(token_cost)})
            raise Deferred(
                "the provider's limit is booked further ahead than a delay reaches",
                delay_s=MAX_RESERVE_AHEAD_S * random.uniform(0.5, 1.0),
            )
        return slot, limits, False

    def _book(self, provider: str, pace: str, cost: float, now_ms: int) -> int:
        """Book the next `cost` ms of a pace; its start is the slot. One atomic update when the pace
        is busy (its next free time is ahead of now: add the cost) or idle (start it now): no
        read, and concurrent bookings never conflict, DynamoDB serializes them."""
        names = {"#pace": pace}
        for _ in range(RACE_RETRIES):
            try:
                answer = self._ddb.update_item(
                    TableName=self.table_name,
                    Key=to_dynamo({"pk": provider}),
                    UpdateExpression="SET #pace = #pace + :cost",
                    ConditionExpression="#pace >= :now",
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=to_dynamo({":cost": math.ceil(cost), ":now": now_ms}),
                    ReturnValues="ALL_NEW",
                )
                item = from_dynamo(answer["Attributes"])
                self._remember(provider, item, now_ms)
                return int(item[pace]) - math.ceil(cost)
            except ClientError as error:
                if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
            try:
                answer = self._ddb.update_item(
                    TableName=self.table_name,
                    Key=to_dynamo({"pk": provider}),
                    UpdateExpression="SET #pace = :next",
                    ConditionExpression="attribute_not_exists(#pace) OR #pace < :now",
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=to_dynamo({":next": now_ms + math.ceil(cost), ":now": now_ms}),
                    ReturnValues="ALL_NEW",
                )
                self._remember(provider, from_dynamo(answer["Attributes"]), now_ms)
                return now_ms
            except ClientError as error:
                if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
        raise Deferred("the provider limiter is contended", delay_s=random.uniform(1.0, 3.0))

    def _probe(self, provider: str, now_ms: int) -> int:
        """Nothing known yet: one probe call at a time until an answer teaches the limits."""
        item = self._read(provider)
        for _ in range(RACE_RETRIES):
            if item.get("learned"):
                raise Deferred("the provider's limits were just learned", delay_s=0.0)
            if int(item.get("probe_until", 0)) > now_ms:
                raise Deferred("learning the provider's limits from a first call", delay_s=1.0)
            slot = max(now_ms, int(item.get("request_tat", 0)))
            written = self._write_if_unchanged(provider, item, {"probe_until": slot + PROBE_LEASE_MS})
            if written is None:
                return slot
            item = written
        raise Deferred("the provider limiter is contended", delay_s=random.uniform(1.0, 3.0))

    def _known_limits(self, provider: str, now_ms: int) -> tuple[Limits, bool]:
        """(limits, whether known): the configured ones, or those learned (cached for a while in
        this process; every booking refreshes them)."""
        if self.configured != Limits():
            return self.configured, True
        cached = self._learned_cache.get(provider)
        if cached is None or now_ms - cached[2] > LEARNED_CACHE_MS or not cached[1]:
            self._remember(provider, self._read(provider), now_ms)
            cached = self._learned_cache[provider]
        return cached[0], cached[1]

    def _remember(self, provider: str, item: dict[str, Any], now_ms: int) -> None:
        learned = Limits(int(item.get("learned_rpm", 0)), int(item.get("learned_tpm", 0)))
        self._learned_cache[provider] = (learned, bool(item.get("learned")), now_ms)

    # -- after the call ----------------------------------------------------------------------
    def settle(
        self, ticket: Ticket, *, used_tokens: int | None, headers: RateLimitHeaders, now_ms: int
    ) -> None:
        """Return what the estimate over-reserved (or charge what it missed), learn the limits the
        answer states, and block every caller when it says nothing is left. One write at most."""
        try:
            sets: dict[str, Any] = self._learned(ticket, headers)
            adds: dict[str, Any] = {}
            token_interval = _interval_ms(ticket.limits.tokens_per_minute)
            if used_tokens is not None and token_interval and used_tokens != ticket.tokens:
                adds["token_tat"] = math.floor((used_tokens - ticket.tokens) * token_interval)
            if sets or adds:
                self._update(ticket.provider, sets=sets, adds=adds)
            block = _exhausted_until(headers, now_ms)
            if block:
                self._block(ticket.provider, block)
        finally:
            self.release(ticket)

    def rate_limited(self, ticket: Ticket, *, headers: RateLimitHeaders, now_ms: int) -> float:
        """The provider answered 429: every caller waits for its Retry-After (or reset). Returns
        the seconds this command waits before it reserves again."""
        waits = (headers.retry_after_s, headers.reset_requests_s, headers.reset_tokens_s)
        wait_s = max((w for w in waits if w), default=1.0)
        try:
            sets = self._learned(ticket, headers)
            if sets:
                self._update(ticket.provider, sets=sets, adds={})
            self._block(ticket.provider, now_ms + math.ceil(wait_s * 1000))
        finally:
            self.release(ticket)
        return wait_s

    def _block(self, provider: str, until_ms: int) -> None:
        """Nobody's slot starts before `until_ms`: the request pace moves there (if not later)."""
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_dynamo({"pk": provider}),
                UpdateExpression="SET request_tat = :until, blocked_until = :until",
                ConditionExpression="attribute_not_exists(request_tat) OR request_tat < :until",
                ExpressionAttributeValues=to_dynamo({":until": until_ms}),
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    def abandon(self, ticket: Ticket) -> None:
        """The call failed before the provider counted it (or it is unknown whether it did): the
        reserved tokens come back, a probe lets the next caller probe, the lease is released."""
        try:
            sets: dict[str, Any] = {"probe_until": 0} if ticket.probe else {}
            adds: dict[str, Any] = {}
            token_interval = _interval_ms(ticket.limits.tokens_per_minute)
            if token_interval:
                adds["token_tat"] = -math.floor(ticket.tokens * token_interval)
            if sets or adds:
                self._update(ticket.provider, sets=sets, adds=adds)
        finally:
            self.release(ticket)

    def _learned(self, ticket: Ticket, headers: RateLimitHeaders) -> dict[str, Any]:
        """The item changes that what the answer states about the limits calls for."""
        if self.configured != Limits():
            return {}
        sets: dict[str, Any] = {"probe_until": 0} if ticket.probe else {}
        stated = Limits(
            headers.limit_requests or ticket.limits.requests_per_minute,
            headers.limit_tokens or ticket.limits.tokens_per_minute,
        )
        if ticket.probe or stated != ticket.limits:
            sets.update(
                learned=True,
                learned_rpm=stated.requests_per_minute,
                learned_tpm=stated.tokens_per_minute,
            )
            logger.info("provider limits learned", extra={"provider": ticket.provider, "limits": str(stated)})
        return sets

    def release(self, ticket: Ticket) -> None:
        if ticket.lease_tenant is not None and ticket.lease_id is not None:
            self.release_lease(ticket.lease_tenant, ticket.lease_id)

    # -- tenant leases -----------------------------------------------------------------------
    def _lease(self, tenant_id: str, lease_id: str, *, expires_ms: int, now_ms: int) -> None:
        """Hold one of the tenant's `tenant_max_in_flight` leases (again, if it holds it already)."""
        key = tenant_key(tenant_id)
        self._ensure_tenant_item(key)
        for purge in (False, True):
            if purge and not self._purge_expired(key, now_ms):
                break
            try:
                self._ddb.update_item(
                    TableName=self.table_name,
                    Key=to_dynamo({"pk": key}),
                    UpdateExpression="SET leases.#lease = :expires",
                    ConditionExpression="size(leases) < :cap OR attribute_exists(leases.#lease)",
                    ExpressionAttributeNames={"#lease": lease_id},
                    ExpressionAttributeValues=to_dynamo(
                        {":expires": expires_ms, ":cap": self.tenant_max_in_flight}
                    ),
                )
                return
            except ClientError as error:
                if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
        raise Deferred(
            f"tenant {tenant_id} has {self.tenant_max_in_flight} model calls in flight (TenantMaxInFlight)",
            delay_s=random.uniform(1.0, 4.0),
        )

    def release_lease(self, tenant_id: str, lease_id: str) -> None:
        self._ddb.update_item(
            TableName=self.table_name,
            Key=to_dynamo({"pk": tenant_key(tenant_id)}),
            UpdateExpression="REMOVE leases.#lease",
            ExpressionAttributeNames={"#lease": lease_id},
        )

    def leases(self, tenant_id: str) -> dict[str, int]:
        answer = self._ddb.get_item(
            TableName=self.table_name, Key=to_dynamo({"pk": tenant_key(tenant_id)}), ConsistentRead=True
        )
        item = from_dynamo(answer.get("Item") or {})
        return {name: int(expiry) for name, expiry in (item.get("leases") or {}).items()}

    def _ensure_tenant_item(self, key: str) -> None:
        if key in self._tenant_items:
            return
        try:
            self._ddb.put_item(
                TableName=self.table_name,
                Item=to_dynamo({"pk": key, "leases": {}}),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
        self._tenant_items.add(key)

    def _purge_expired(self, key: str, now_ms: int) -> bool:
        """Drop the leases whose holders died (expired); True if any was dropped."""
        answer = self._ddb.get_item(
            TableName=self.table_name, Key=to_dynamo({"pk": key}), ConsistentRead=True
        )
        leases = from_dynamo(answer.get("Item") or {}).get("leases") or {}
        expired = [name for name, expiry in leases.items() if int(expiry) <= now_ms]
        if not expired:
            return False
        names = {f"#l{i}": name for i, name in enumerate(expired)}
        values = {f":e{i}": leases[name] for i, name in enumerate(expired)}
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_dynamo({"pk": key}),
                UpdateExpression="REMOVE " + ", ".join(f"leases.#l{i}" for i in range(len(expired))),
                # Only if none was renewed meanwhile (a renewed lease has a new expiry).
                ConditionExpression=" AND ".join(f"leases.#l{i} = :e{i}" for i in range(len(expired))),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=to_dynamo(values),
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
        logger.info("expired tenant leases returned", extra={"tenant_key": key, "leases": len(expired)})
        return True

    # -- the provider item -------------------------------------------------------------------
    def state(self, provider: str) -> dict[str, Any]:
        """The provider's item as stored (numbers as int): for `baton` tooling and tests."""
        return {
            name: int(value) if isinstance(value, Decimal) else value
            for name, value in self._read(provider).items()
        }

    def _limits(self, item: dict[str, Any]) -> Limits:
        if self.configured.requests_per_minute or self.configured.tokens_per_minute:
            return self.configured
        return Limits(int(item.get("learned_rpm", 0)), int(item.get("learned_tpm", 0)))

    def _read(self, provider: str) -> dict[str, Any]:
        answer = self._ddb.get_item(
            TableName=self.table_name, Key=to_dynamo({"pk": provider}), ConsistentRead=True
        )
        return from_dynamo(answer.get("Item") or {})

    def _write_if_unchanged(
        self, provider: str, item: dict[str, Any], changes: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Apply `changes` if nobody wrote since `item` was read; else the item as it is now."""
        version = int(item.get("version", 0))
        values = {**changes, "version": version + 1}
        names = {f"#{name}": name for name in values}
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_dynamo({"pk": provider}),
                UpdateExpression="SET " + ", ".join(f"#{name} = :{name}" for name in values),
                ConditionExpression=(
                    "attribute_not_exists(#version)" if version == 0 else "#version = :expected"
                ),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=to_dynamo(
                    {**{f":{name}": value for name, value in values.items()}}
                    | ({":expected": version} if version else {})
                ),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            old: dict[str, Any] = error.response.get("Item") or {}  # type: ignore[assignment]
            return from_dynamo(old) if old else self._read(provider)
        return None

    def _update(self, provider: str, *, sets: dict[str, Any], adds: dict[str, Any]) -> None:
        """Unconditional: settling and blocking commute with reservations (ADD, or a later time)."""
        values = {**sets, **adds}
        names = {f"#{name}": name for name in values}
        parts = []
        if sets:
            parts.append("SET " + ", ".join(f"#{name} = :{name}" for name in sets))
        if adds:
            parts.append("ADD " + ", ".join(f"#{name} :{name}" for name in adds))
        self._ddb.update_item(
            TableName=self.table_name,
            Key=to_dynamo({"pk": provider}),
            UpdateExpression=" ".join(parts),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=to_dynamo({f":{name}": value for name, value in values.items()}),
        )


def tenant_key(tenant_id: str) -> str:
    return f"tenant#{tenant_id}"


def _interval_ms(per_minute: int) -> float:
    """Milliseconds between two units (requests or tokens) at the paced rate; 0: no limit."""
    if per_minute <= 0:
        return 0.0
    return 60_000 / (per_minute * PACE_FRACTION)


def _exhausted_until(headers: RateLimitHeaders, now_ms: int) -> int | None:
    """The answer says a budget is spent: nobody calls before it resets."""
    until = None
    if headers.remaining_requests == 0 and headers.reset_requests_s:
        until = now_ms + math.ceil(headers.reset_requests_s * 1000)
    if headers.remaining_tokens == 0 and headers.reset_tokens_s:
        tokens_until = now_ms + math.ceil(headers.reset_tokens_s * 1000)
        until = max(until or 0, tokens_until)
    return until
