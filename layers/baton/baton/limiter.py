"""The provider limiter: every infer invocation shares one pace per (endpoint, model) in DynamoDB.

Two stages, both GCRA (virtual scheduling: the token bucket stated as a "theoretical arrival
time", each booking one atomic conditional update, no read):

- The queue (one pace per tenant and provider): a call that finds no capacity now books its turn
  there and waits for it in a delayed message (Deferred keeps the turn in the command), asked back
  RETURN_LEAD_S before it: no function is paid to wait long, no attempt is spent, and the call is
  back, ready, when its turn comes, though a busy stack returns delayed messages seconds late.
  One tenant's backlog books its own queue, so another tenant's call, with an empty queue, is
  next. A turn is an estimate of when the provider will have room: tokens are queued at the usage
  the provider's answers have shown (a learned ratio of used to reserved tokens), not at the worst
  case.
- The send pace (one per provider, shared by every tenant): the calls actually sent, spaced evenly
  (providers enforce a per-minute limit over shorter windows too: no burst beyond one call). A
  call back before its turn waits in the function (WaitInFunction) until BOOK_AHEAD_S before it,
  then books its send slot, not before its turn, and sleeps until the slot: a few calls wait
  ready at the pace, and each is sent at its slot. A slot up to MAX_WAIT_IN_FUNCTION_S away is
  waited for in the function (an SQS round trip is whole seconds, many more on a busy stack, and
  a slot nobody is there for is lost); a later one defers the call to just before it. A turn that
  came back late uses the next free send slot, so capacity a late message left idle is used by
  whoever is ready, and the late call never goes to the back of the queue. Late calls shift the
  pace for good, so a backlog's calls hold slots up to MAX_WAIT_IN_FUNCTION_S ahead. A tenant with
  nothing queued jumps them: its call takes the first booked slot far enough away for the moved
  calls to learn of it (they read the pace again CONFIRM_BEFORE_MS before their slots: that lead
  plus the jump's own write), and the calls booked at or after it move one slot later, so another
  tenant's call is sent within that guard + one slot of arriving, however long the first
  tenant's backlog, and the provider's windows hold no more calls than before. One jump is ahead
  at a time; a second one, and a token-limited provider's calls, take the slot right after the
  last booked one (a tenant other than the last booker's may, even beyond MAX_WAIT_IN_FUNCTION_S).
  (Booking only a free pace, which would make the wait one slot, was measured: goodput fell from
  83 % to 55 % of R; see the README.)
- Tokens are booked at what the call is expected to use: its prompt plus the answer tokens the
  model's answers have used so far (a moving average, at most `max_tokens`), and settled with the
  real usage. A provider admits a call at its ceiling (prompt + `max_tokens`) into its window's
  token budget beside the calls before it at their use, so the pace leaves that headroom: it runs
  at T x (1 - ceiling / window budget), the window budget learned from the answers'
  `x-ratelimit-remaining-tokens` (a minute's T until an answer has shown it).
- Limits come from the template (ProviderRequestsPerMinute / ProviderTokensPerMinute) or, when
  those are 0, from the provider's `x-ratelimit-*` headers: until the first answer teaches them,
  one probe call goes out at a time. A 429 or `remaining: 0` blocks every caller until the reset
  (as the provider states it: from when the call was sent, not rounded up).
- Fairness: besides the jumps, a tenant has at most `TenantMaxInFlight` calls in flight (leases,
  taken at admission, held through the wait for the send slot); a lease expires on its own, so
  one held by a crashed invocation comes back. A call whose turn came while its tenant holds every
  lease takes a new turn at the end of its tenant's queue.
"""

from __future__ import annotations

import math
import random
import re
import time
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
# How long a call may wait in its function for its send slot. Far cheaper than a deferral: an SQS
# round trip is whole seconds, and seconds more on a busy stack (measured: a 1 s deferral came back
# 13-19 s later in a burst of 600), and a call not there at its slot loses that slot for good.
MAX_WAIT_IN_FUNCTION_S = 4.5
# A call waiting for its turn in a delayed message asks to come back this long before it (and up
# to a second more: delays are whole seconds): the time from the message's due time to the limiter
# (a poll, an invocation, the step's first reads). So a few calls wait, ready, at the pace.
RETURN_LEAD_S = 3.0
# A call books its send slot at most this long before its turn (it waits for that moment in the
# function): the send pace is booked no further ahead than this (plus what lateness shifted), so
# another tenant's call, which takes the slot right after the last booked one, is not kept longer.
BOOK_AHEAD_S = 1.0
# A tenant with nothing queued (its call's turn is now) takes the first send slot booked far
# enough ahead, and the backlog's calls booked at or after it move one slot later: they read the
# pace again CONFIRM_BEFORE_MS before their slots (an answer not back by the slot is not waited
# for), so the jump's write must land before that: the slot is at least CONFIRM_BEFORE_MS + the
# write's time away, the write taken to last as long as the jump's read just before it, plus
# JUMP_WRITE_MARGIN_MS. (A fixed 350 ms guard, sized for the local stack's slowest calls, was most
# of another tenant's wait: at the jumps the write took a few ms.) An AWS call from a busy 256 MB
# function takes 0.1-0.3 s on a loaded local stack, a few ms at other times and on AWS. At most one
# jump is ahead at a time, so a stream of other tenants' calls cannot hold a backlog's calls in
# their functions.
CONFIRM_BEFORE_MS = 200
JUMP_WRITE_MARGIN_MS = 50
# A call booked at least this far ahead of its slot may be jumped (the least a jump's guard is), so
# it reads its slot again before it leaves.
CONFIRM_AHEAD_MS = CONFIRM_BEFORE_MS + JUMP_WRITE_MARGIN_MS
# Jumps are kept this long in the provider item (a call moved by them reads them before it leaves).
JUMPS_KEPT_MS = 60_000
# A turn later than this is not queued: SQS delays a message 900 s at most.
MAX_RESERVE_AHEAD_S = 840.0
# How much one answer moves the learned answer tokens (a moving average).
ANSWER_TOKENS_WEIGHT = 0.2
PROBE_LEASE_MS = 30_000
# While the first call teaches the limits, the others wait in their functions this long at most,
# asking again every PROBE_POLL_MS: a probe answers in a model call's time, and a deferral comes
# back whole seconds later (many more on a busy stack), losing those seconds of a burst.
PROBE_WAIT_IN_FUNCTION_S = 3.0
PROBE_POLL_MS = 400
LEARNED_CACHE_MS = 30_000
TOKEN_STATS = ("answer_tokens", "token_window")  # what answers have shown about tokens
RACE_RETRIES = 12
DEFAULT_COMPLETION_TOKENS = 1_024  # reserved when a job does not cap max_tokens; settled after
CHARS_PER_TOKEN = 4


class Deferred(BatonError):
    """No capacity now: the command goes back to its queue, delayed; not a failure, not an attempt.
    `slot_ms`: its turn, kept in the command (None: it queues again when it comes back)."""

    type = "deferred"
    retryable = True

    def __init__(self, reason: str, *, delay_s: float, slot_ms: int | None = None) -> None:
        super().__init__(reason)
        self.delay_s = delay_s
        self.slot_ms = slot_ms

    @property
    def delay_seconds(self) -> int:
        """SQS DelaySeconds (whole seconds, 900 at most); never later than the turn."""
        return max(0, min(900, math.floor(self.delay_s)))


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int = 0  # 0: none known
    tokens_per_minute: int = 0


class WaitInFunction(Exception):
    """Not yet: the call's turn (`turn_ms`, booked) is near, at most MAX_WAIT_IN_FUNCTION_S away;
    wait in the function until `until_ms` (BOOK_AHEAD_S before it) and ask again with that turn
    (cheaper than a deferral, and ready at its turn). `turn_ms` None: no turn booked yet (the
    limits are being learned by a probe that should answer within a moment)."""

    def __init__(self, turn_ms: int | None, until_ms: int) -> None:
        super().__init__(turn_ms, until_ms)
        self.turn_ms = turn_ms
        self.until_ms = until_ms


class _Busy(Exception):
    """The send pace is booked beyond the caller's latest acceptable slot."""

    def __init__(self, next_free_ms: int) -> None:
        super().__init__(next_free_ms)
        self.next_free_ms = next_free_ms


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
    queue: str | None = None  # the tenant's queue it took its turn in
    # Tokens: `tokens` is what the pace booked (expected x scale); settled at used x scale.
    ceiling: int = 0  # prompt + the most the answer may take: what the provider admits it at
    prompt_tokens: int = 0  # the ceiling less the answer's cap (0: no learnable answer part)
    token_scale: float = 1.0  # the headroom factor (>= 1) the pace books the tokens at
    # Booked far enough ahead that another tenant's call may take its slot: read the pace again
    # CONFIRM_BEFORE_MS before it (ProviderLimiter.confirmed_slot); the request pace's end right
    # after the booking (a jump made later saw an end at least this far).
    confirm: bool = False
    pace_end_ms: int = 0


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


def queue_key(provider: str, tenant_id: str) -> str:
    """A tenant's queue at one provider."""
    return f"queue#{tenant_id}#{provider}"


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
        self._stats_cache: dict[str, tuple[dict[str, Any], int]] = {}
        # The tenant that last booked each provider's request pace, as this process last saw the
        # item: a tenant seen leading the pace does not read it to look for a jump (its own calls).
        self._last_booker: dict[str, Any] = {}

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
        answer_tokens: int = 0,
        now_ms: int,
        held_slot_ms: int | None = None,
        lease_ms: int,
    ) -> Ticket:
        """A ticket to call at its send slot (at most MAX_WAIT_IN_FUNCTION_S away), WaitInFunction
        (its turn is near, not yet within BOOK_AHEAD_S), or Deferred.
        `tokens`: the call's ceiling (prompt + the answer's cap), `answer_tokens`: that cap (the
        part usage teaches; 0: none). `held_slot_ms`: the turn this command was queued for before
        it was delayed; `lease_ms`: how long the call may take at most."""
        started = time.monotonic()  # a jump counts the real time its own AWS calls took
        limits, known = self._known_limits(provider, now_ms)
        probe = not known
        booked, scale = self._token_booking(provider, limits, tokens, answer_tokens, now_ms)
        turn_ms = now_ms
        jump = False
        if not probe:
            if held_slot_ms is None:
                turn_ms = self._queue(provider, tenant_id, limits, booked, now_ms)
                # Its tenant had nothing queued: it may take a slot ahead of another's backlog.
                jump = turn_ms == now_ms
            else:
                turn_ms = held_slot_ms
            if turn_ms - now_ms > MAX_WAIT_IN_FUNCTION_S * 1000:
                raise Deferred(
                    "waiting for its turn at the provider",
                    delay_s=(turn_ms - now_ms) / 1000 - RETURN_LEAD_S,
                    slot_ms=turn_ms,
                )
            if turn_ms - now_ms > BOOK_AHEAD_S * 1000:
                raise WaitInFunction(turn_ms, turn_ms - math.floor(BOOK_AHEAD_S * 1000))
        lease_tenant = None
        if self.tenant_max_in_flight > 0:
            # The call is sent within MAX_WAIT_IN_FUNCTION_S and takes lease_ms at most.
            expires_ms = now_ms + math.ceil(MAX_WAIT_IN_FUNCTION_S * 1000) + lease_ms
            try:
                self._lease(tenant_id, lease_id, expires_ms=expires_ms, now_ms=now_ms)
            except Deferred as capped:
                if probe:
                    raise Deferred(capped.message, delay_s=capped.delay_s) from None
                # Its turn came while the tenant's other calls hold every lease: it takes a new
                # turn at the end of its tenant's queue instead of asking again within seconds. (A
                # backlog whose turns had passed came back every 1-4 s each, and the receives,
                # failed lease writes and sends slowed the local stack's AWS calls to 0.2-0.5 s:
                # 900-1,800 such deferrals for 300 jobs in the fairness bench.)
                turn = self._queue(provider, tenant_id, limits, booked, now_ms)
                wait_s = max(capped.delay_s, (turn - now_ms) / 1000 - RETURN_LEAD_S)
                raise Deferred(capped.message, delay_s=wait_s, slot_ms=turn) from None
            lease_tenant = tenant_id
        try:
            if probe:
                slot, pace_end = self._probe(provider, now_ms), 0
            else:
                slot, pace_end = self._send_slot(
                    provider,
                    tenant_id,
                    limits,
                    booked,
                    now_ms,
                    turn_ms=turn_ms,
                    jump=jump,
                    started=started,
                )
        except (Deferred, WaitInFunction):
            if lease_tenant is not None:
                self.release_lease(lease_tenant, lease_id)
            raise
        queue = None if probe else queue_key(provider, tenant_id)
        return Ticket(
            provider,
            slot,
            booked,
            limits,
            lease_tenant,
            lease_id,
            probe,
            queue,
            ceiling=tokens,
            prompt_tokens=tokens - answer_tokens if answer_tokens else 0,
            token_scale=scale,
            confirm=not probe and _jumps_apply(limits) and slot - now_ms >= CONFIRM_AHEAD_MS,
            pace_end_ms=pace_end,
        )

    def _token_booking(
        self, provider: str, limits: Limits, ceiling: int, answer_tokens: int, now_ms: int
    ) -> tuple[int, float]:
        """(tokens the paces book for a call, the scale its usage is settled at). The call is
        expected to use its prompt plus the answer tokens answers have shown (its cap until one
        has). The provider admits it at its ceiling into a window's token budget B that holds the
        calls before it at their use, so calls fit only at (B - ceiling) / B of the limit: the
        pace books expected x B / (B - ceiling), never more than the ceiling."""
        if not limits.tokens_per_minute:
            return ceiling, 1.0
        stats = self._stats(provider, now_ms)
        expected = ceiling
        seen = stats.get("answer_tokens")
        if answer_tokens and seen is not None:
            expected = ceiling - answer_tokens + min(answer_tokens, math.ceil(float(seen)))
        window = float(stats.get("token_window") or limits.tokens_per_minute)
        share = 1 - ceiling / window
        if expected <= 0 or share * ceiling <= expected:
            return ceiling, 1.0
        booked = min(ceiling, math.ceil(expected / share))
        return booked, booked / expected

    def _queue(self, provider: str, tenant_id: str, limits: Limits, tokens: int, now_ms: int) -> int:
        """Book the call's turn in its tenant's queue: when the provider should have room for it,
        at the pace its limits allow and the tokens it is expected to use."""
        cost = self._queue_cost(limits, tokens)
        key = queue_key(provider, tenant_id)
        turn, _ = self._book(key, "queue_tat", cost, now_ms)
        if turn - now_ms > MAX_RESERVE_AHEAD_S * 1000:
            self._update(key, sets={}, adds={"queue_tat": -math.ceil(cost)})
            raise Deferred(
                "the provider's limit is booked further ahead than a delay reaches",
                delay_s=MAX_RESERVE_AHEAD_S * random.uniform(0.5, 1.0),
            )
        return turn

    @staticmethod
    def _queue_cost(limits: Limits, tokens: int) -> float:
        """A call's place in the queue (ms): its request, or the tokens the paces book for it."""
        return max(_interval_ms(limits.requests_per_minute), tokens * _interval_ms(limits.tokens_per_minute))

    def _send_slot(
        self,
        provider: str,
        tenant_id: str,
        limits: Limits,
        tokens: int,
        now_ms: int,
        *,
        turn_ms: int,
        jump: bool = False,
        started: float = 0.0,
    ) -> tuple[int, int]:
        """(slot, the request pace's end after it). Book the call's slot in the provider's send
        pace (and its tokens in the token pace), not before its turn, if it is at most
        MAX_WAIT_IN_FUNCTION_S away, or (a tenant other than the last booker's) right after the
        last booked slot if that one is; else Deferred, keeping a turn at the pace's next free slot.

        Not before its turn: a call that came back early (RETURN_LEAD_S) waits for it in the
        function, so the calls ahead of it, late or not, find their slots free, and the pace has
        calls ready at each slot instead of idling until the next one comes back.

        `jump`: its tenant had nothing queued, so it may take the first slot booked far enough
        ahead (see _jump) instead of one behind another tenant's booked calls; `started`: the
        monotonic time `now_ms` was taken at."""
        request_cost = _interval_ms(limits.requests_per_minute)
        if jump and _jumps_apply(limits):
            jumped = self._jump(provider, tenant_id, math.ceil(request_cost), now_ms, since=started)
            if jumped is not None:
                return jumped
        latest_ms = now_ms + math.floor(MAX_WAIT_IN_FUNCTION_S * 1000)
        not_before_ms = max(now_ms, turn_ms)
        token_cost = tokens * _interval_ms(limits.tokens_per_minute)
        try:
            # The request pace is booked even without a request limit (cost 0): a 429's block lives in it.
            request_slot = slot = self._book_provider(
                provider, "request_tat", request_cost, not_before_ms, latest_ms, tenant_id, now_ms
            )
            if token_cost:
                try:
                    slot = max(
                        slot,
                        self._book_provider(
                            provider, "token_tat", token_cost, not_before_ms, latest_ms, tenant_id, now_ms
                        ),
                    )
                except _Busy:
                    self._update(provider, sets={}, adds={"request_tat": -math.ceil(request_cost)})
                    raise
        except _Busy as busy:
            # Its turn is now when the pace frees: back about RETURN_LEAD_S before it (then sent,
            # or waiting in the function for the calls booked before it), not queued again. The
            # return is spread over the wait a function allows: the calls deferred with it do not
            # all come back at once.
            spread_s = random.uniform(0, MAX_WAIT_IN_FUNCTION_S - BOOK_AHEAD_S - 1)
            raise Deferred(
                "waiting for a send slot at the provider",
                delay_s=(busy.next_free_ms - now_ms) / 1000 - RETURN_LEAD_S + spread_s,
                slot_ms=busy.next_free_ms,
            ) from None
        return slot, request_slot + math.ceil(request_cost)

    def _book_provider(
        self,
        provider: str,
        pace: str,
        cost: float,
        start_ms: int,
        latest_ms: int,
        tenant_id: str,
        now_ms: int,
    ) -> int:
        """A slot no earlier than `start_ms` (now, or the call's turn) and no later than `latest_ms`."""
        # A send slot that freed a moment ago is still taken as booked (the call leaves at once,
        # its margin under the limit absorbing the delay): a late call's lateness is not lost.
        slack_ms = math.floor((1 - PACE_FRACTION) * cost)
        slot, item = self._book(
            provider, pace, cost, start_ms, latest_ms=latest_ms, slack_ms=slack_ms, tenant_id=tenant_id
        )
        self._remember(provider, item, now_ms)
        return slot

    def _book(
        self,
        key: str,
        pace: str,
        cost: float,
        now_ms: int,
        *,
        latest_ms: int | None = None,
        slack_ms: int = 0,
        tenant_id: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Book the next `cost` ms of a pace; its start is the slot. (slot, the item as written).
        `now_ms`: the earliest start (now, or a later turn). One atomic update when the pace is
        busy (its next free time is ahead of that, or freed at most `slack_ms` before: add the
        cost) or idle (start it then): no read, and concurrent
        bookings never conflict, DynamoDB serializes them. With `latest_ms`: only a slot no later
        than that, else _Busy. With `tenant_id` (the send paces): a tenant other than the last
        booker's may also take the slot right after the last booked one if that one starts by
        `latest_ms`, so one tenant's backlog, booked up to `latest_ms` ahead, keeps another
        tenant's call one slot more at most."""
        names = {"#pace": pace}
        early_ms = now_ms - slack_ms
        busy_values: dict[str, Any] = {":cost": math.ceil(cost), ":early": early_ms}
        idle_values: dict[str, Any] = {":next": now_ms + math.ceil(cost), ":early": early_ms}
        busy_update, idle_update = "SET #pace = #pace + :cost", "SET #pace = :next"
        busy_condition = "#pace >= :early"
        last_tenant, last_slot = f"{pace}_last_tenant", f"{pace}_last_slot"
        if tenant_id is not None:
            names |= {"#lt": last_tenant, "#ls": last_slot}
            busy_values[":me"] = tenant_id
            idle_values |= {":me": tenant_id, ":now": now_ms}
            # The right-hand #pace is the value before this update: the slot booked.
            busy_update += ", #lt = :me, #ls = #pace"
            idle_update += ", #lt = :me, #ls = :now"
        if latest_ms is not None:
            busy_values[":latest"] = latest_ms
            if tenant_id is None:
                busy_condition += " AND #pace <= :latest"
            else:
                busy_condition += (
                    " AND (#pace <= :latest OR ((attribute_not_exists(#lt) OR #lt <> :me)"
                    " AND #ls <= :latest))"
                )
        for _ in range(RACE_RETRIES):
            try:
                answer = self._ddb.update_item(
                    TableName=self.table_name,
                    Key=to_dynamo({"pk": key}),
                    UpdateExpression=busy_update,
                    ConditionExpression=busy_condition,
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=to_dynamo(busy_values),
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
                item = from_dynamo(answer["Attributes"])
                return int(item[pace]) - math.ceil(cost), item
            except ClientError as error:
                if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
                old = from_dynamo(error.response.get("Item") or {})  # type: ignore[arg-type]
                next_free = int(old.get(pace, 0))
                behind_another = (
                    tenant_id is not None
                    and old.get(last_tenant) != tenant_id
                    and last_slot in old
                    and latest_ms is not None
                    and int(old[last_slot]) <= latest_ms
                )
                if latest_ms is not None and next_free > latest_ms and not behind_another:
                    raise _Busy(next_free) from None
            try:
                answer = self._ddb.update_item(
                    TableName=self.table_name,
                    Key=to_dynamo({"pk": key}),
                    UpdateExpression=idle_update,
                    ConditionExpression="attribute_not_exists(#pace) OR #pace < :early",
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=to_dynamo(idle_values),
                    ReturnValues="ALL_NEW",
                )
                return now_ms, from_dynamo(answer["Attributes"])
            except ClientError as error:
                if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
        raise Deferred("the provider limiter is contended", delay_s=random.uniform(1.0, 3.0))

    def _jump(
        self, provider: str, tenant_id: str, step: int, now_ms: int, *, since: float
    ) -> tuple[int, int] | None:
        """(slot, the pace's end after the jump). Take the first send slot booked far enough
        ahead (CONFIRM_BEFORE_MS + this write's time, taken as the last DynamoDB call's plus
        JUMP_WRITE_MARGIN_MS) and after any 429 block, for a tenant with nothing queued: the calls
        booked at or after it move one slot later (each reads the jumps in confirmed_slot before
        it leaves), and so does the pace's end. One tenant's backlog, booked up to
        MAX_WAIT_IN_FUNCTION_S ahead, keeps another tenant's first call that guard + one slot at
        most, and every window at the provider holds as many calls as before: the jump takes a
        slot of the pace's own grid. None: nothing to jump (the pace is free by then), a jump is
        still ahead, or this tenant booked last (its own calls lead the pace).

        Each jump is kept as {its slot: the pace's end before it}: a call booked before the jump
        has its slot before that end, one booked after it, beyond."""
        if self._last_booker.get(provider) == tenant_id:
            return None
        asked = time.monotonic()
        item = self._read(provider)
        for _ in range(RACE_RETRIES):
            answered = time.monotonic()
            # The guard counts from now, not from when admission began (its writes took time).
            now = now_ms + math.ceil((answered - since) * 1000)
            write_ms = math.ceil((answered - asked) * 1000) + JUMP_WRITE_MARGIN_MS
            earliest = max(now + CONFIRM_BEFORE_MS + write_ms, int(item.get("blocked_until", 0)))
            end = int(item.get("request_tat", 0))
            ahead = (end - earliest) // step  # booked slots: end - k * step, k >= 1
            if (
                ahead < 1
                or int(item.get("request_jump_last", 0)) >= now
                or item.get("request_tat_last_tenant") == tenant_id
            ):
                return None
            slot = end - ahead * step
            jumps = {
                name: tat_before
                for name, tat_before in (item.get("request_jumps") or {}).items()
                if int(name) >= now - JUMPS_KEPT_MS
            } | {str(slot): end}
            asked = time.monotonic()
            try:
                self._ddb.update_item(
                    TableName=self.table_name,
                    Key=to_dynamo({"pk": provider}),
                    UpdateExpression=(
                        "SET request_tat = :moved, request_jump_last = :slot, request_jumps = :jumps"
                    ),
                    # The jumps change only with the pace's end: this reads both as they were.
                    ConditionExpression="request_tat = :end",
                    ExpressionAttributeValues=to_dynamo(
                        {":moved": end + step, ":slot": slot, ":jumps": jumps, ":end": end}
                    ),
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except ClientError as error:
                if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
                item = from_dynamo(error.response.get("Item") or {})  # type: ignore[arg-type]
                continue
            logger.info("send slot taken ahead of a backlog", extra={"provider": provider, "slot_ms": slot})
            return slot, end + step
        return None

    def confirmed_slot(self, ticket: Ticket) -> int:
        """The ticket's send slot as it stands now (one read): one slot later for each jump made
        since it was booked (the pace's end the jump saw was at least the one after the booking)
        at or before it."""
        if not ticket.confirm:
            return ticket.slot_ms
        step = math.ceil(_interval_ms(ticket.limits.requests_per_minute))
        jumps = sorted(
            int(name)
            for name, tat_before in (self._read(ticket.provider).get("request_jumps") or {}).items()
            if int(tat_before) >= ticket.pace_end_ms
        )
        slot = ticket.slot_ms
        for jumped in jumps:
            if jumped <= slot:
                slot += step
        return slot

    def _probe(self, provider: str, now_ms: int) -> int:
        """Nothing known yet: one probe call at a time until an answer teaches the limits."""
        item = self._read(provider)
        for _ in range(RACE_RETRIES):
            if item.get("learned"):
                # Learned between this call's two reads: ask again at once (it reads the limits).
                raise WaitInFunction(None, now_ms)
            probe_until = int(item.get("probe_until", 0))
            if probe_until > now_ms:
                if now_ms - (probe_until - PROBE_LEASE_MS) < PROBE_WAIT_IN_FUNCTION_S * 1000:
                    raise WaitInFunction(None, now_ms + PROBE_POLL_MS)
                raise Deferred("learning the provider's limits from a first call", delay_s=1.0)
            slot = max(now_ms, int(item.get("request_tat", 0)))
            if slot - now_ms > MAX_WAIT_IN_FUNCTION_S * 1000:  # blocked by a 429
                raise Deferred("the provider asked to wait", delay_s=(slot - now_ms) / 1000)
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
        stats: dict[str, Any] = {
            name: item[name] for name in ("answer_tokens", "token_window") if name in item
        }
        self._stats_cache[provider] = (stats, now_ms)
        self._last_booker[provider] = item.get("request_tat_last_tenant")

    def _stats(self, provider: str, now_ms: int) -> dict[str, Any]:
        """What the provider's answers have shown about tokens: `answer_tokens` (what an answer
        uses, a moving average) and `token_window` (the tokens its window admits). Cached for a
        while in this process; every send booking refreshes it."""
        cached = self._stats_cache.get(provider)
        if cached is None or now_ms - cached[1] > LEARNED_CACHE_MS:
            self._remember(provider, self._read(provider), now_ms)
            cached = self._stats_cache[provider]
        return cached[0]

    # -- after the call ----------------------------------------------------------------------
    def settle(
        self,
        ticket: Ticket,
        *,
        used_tokens: int | None,
        headers: RateLimitHeaders,
        now_ms: int,
        sent_ms: int | None = None,
    ) -> None:
        """Settle the booked tokens at the real use (returning what the estimate over-booked, or
        charging what it missed), learn what answers use and the limits the answer states, and
        block every caller when it says nothing is left. One write (two when the answer shows a
        larger token window than known). `sent_ms`: when the call was sent (default now): the
        provider states its resets when it admits the call, so they count from then, not from
        when the answer ended (at the pace the 10th call of a 10-call window reads `remaining: 0`,
        `reset` < one interval: counted from the answer's end, that block pushed the next slot)."""
        try:
            sets: dict[str, Any] = self._learned(ticket, headers)
            adds: dict[str, Any] = {}
            token_interval = _interval_ms(ticket.limits.tokens_per_minute)
            if used_tokens is not None and token_interval and ticket.tokens > 0:
                owed = math.ceil(used_tokens * ticket.token_scale)
                if owed != ticket.tokens:
                    adds["token_tat"] = math.floor((owed - ticket.tokens) * token_interval)
                if ticket.prompt_tokens:
                    sets.update(self._answer_tokens(ticket, used_tokens, now_ms))
            if sets or adds:
                self._update(ticket.provider, sets=sets, adds=adds)
            if token_interval and headers.remaining_tokens is not None and ticket.ceiling:
                self._learn_token_window(ticket.provider, headers.remaining_tokens + ticket.ceiling, now_ms)
            block = _exhausted_until(headers, now_ms if sent_ms is None else sent_ms)
            if block:
                self._block(ticket.provider, block)
        finally:
            self.release(ticket)

    def _answer_tokens(self, ticket: Ticket, used_tokens: int, now_ms: int) -> dict[str, Any]:
        """The moving average of what answers use (the usage beyond the prompt's estimate), from
        this process's last view: concurrent settles may overwrite each other's step, which only
        slows the average down."""
        stats = self._stats(ticket.provider, now_ms)
        seen = max(0, used_tokens - ticket.prompt_tokens)
        before = stats.get("answer_tokens")
        average = seen if before is None else float(before) + ANSWER_TOKENS_WEIGHT * (seen - float(before))
        stats["answer_tokens"] = Decimal(str(round(average, 2)))
        return {"answer_tokens": stats["answer_tokens"]}

    def _learn_token_window(self, provider: str, seen: int, now_ms: int) -> None:
        """An answer's remaining tokens plus what the provider admitted the call at: a lower bound
        of the tokens its window admits (exact when the window held nothing else). Kept at the
        largest seen."""
        stats = self._stats(provider, now_ms)
        if seen <= int(stats.get("token_window") or 0):
            return
        try:
            self._ddb.update_item(
                TableName=self.table_name,
                Key=to_dynamo({"pk": provider}),
                UpdateExpression="SET token_window = :seen",
                ConditionExpression="attribute_not_exists(token_window) OR token_window < :seen",
                ExpressionAttributeValues=to_dynamo({":seen": seen}),
            )
            stats["token_window"] = seen
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    def rate_limited(self, ticket: Ticket, *, headers: RateLimitHeaders, now_ms: int) -> Deferred:
        """The provider answered 429: every caller waits for its Retry-After (or reset), no
        longer: a block rounded up to whole seconds would leave slots unused (a sliding window's
        Retry-After is often a fraction of a second). Returns the deferral of this command: back
        RETURN_LEAD_S before the wait is over (at once, if sooner), its turn then kept (not queued
        again behind the calls booked after it)."""
        waits = (headers.retry_after_s, headers.reset_requests_s, headers.reset_tokens_s)
        wait_s = max((w for w in waits if w), default=1.0)
        try:
            sets = self._learned(ticket, headers)
            if sets:
                self._update(ticket.provider, sets=sets, adds={})
            self._block(ticket.provider, now_ms + math.ceil(wait_s * 1000))
        finally:
            self.release(ticket)
        if ticket.probe:
            return Deferred("the provider answered 429", delay_s=wait_s)
        turn = now_ms + math.ceil(wait_s * 1000)
        return Deferred("the provider answered 429", delay_s=wait_s - RETURN_LEAD_S, slot_ms=turn)

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

    def abandon(self, ticket: Ticket, *, now_ms: int) -> None:
        """The call failed before the provider counted it (or it is unknown whether it did): the
        reserved tokens come back (to the send pace, and its turn's estimate to the tenant's queue),
        a probe lets the next caller probe, the lease is released."""
        try:
            sets: dict[str, Any] = {"probe_until": 0} if ticket.probe else {}
            adds: dict[str, Any] = {}
            token_interval = _interval_ms(ticket.limits.tokens_per_minute)
            if token_interval:
                adds["token_tat"] = -math.floor(ticket.tokens * token_interval)
            if sets or adds:
                self._update(ticket.provider, sets=sets, adds=adds)
            if ticket.queue is not None and token_interval:
                cost = self._queue_cost(ticket.limits, ticket.tokens)
                self._update(ticket.queue, sets={}, adds={"queue_tat": -math.floor(cost)})
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

    def hold_lease(self, ticket: Ticket, *, until_ms: int, now_ms: int) -> None:
        """Keep the ticket's lease past its call until `until_ms`: a background response counts
        against TenantMaxInFlight while the provider works on it (`release_lease` ends it)."""
        if ticket.lease_tenant is not None and ticket.lease_id is not None:
            self._lease(ticket.lease_tenant, ticket.lease_id, expires_ms=until_ms, now_ms=now_ms)

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
        """An item as stored (numbers as int, or float if fractional): for `baton` tooling and tests."""
        return {
            name: (int(value) if value == value.to_integral_value() else float(value))
            if isinstance(value, Decimal)
            else value
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


def _jumps_apply(limits: Limits) -> bool:
    """Jumps move calls on the request pace only: with a token limit a call's place in the token
    pace is its own size, so it queues behind the booked calls as before."""
    return bool(limits.requests_per_minute) and not limits.tokens_per_minute


def _exhausted_until(headers: RateLimitHeaders, now_ms: int) -> int | None:
    """The answer says a budget is spent: nobody calls before it resets."""
    until = None
    if headers.remaining_requests == 0 and headers.reset_requests_s:
        until = now_ms + math.ceil(headers.reset_requests_s * 1000)
    if headers.remaining_tokens == 0 and headers.reset_tokens_s:
        tokens_until = now_ms + math.ceil(headers.reset_tokens_s * 1000)
        until = max(until or 0, tokens_until)
    return until
