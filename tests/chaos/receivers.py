"""The chaos run's webhook receivers and the accounting of every terminal event's delivery (issue 11).

Receivers misbehave the way production ones do: flaky (5xx), slow (answers after the 15 s a
delivery waits), busy (429 with Retry-After), in an outage that outlasts several scheduled
attempts, gone (410), or down for good (nothing listens). Each job with a webhook is given one of
them in turn. After the run, every terminal event must be accounted for by its delivery log: the
outcome its receiver calls for (delivered / failed by 410 / exhausted), each with its reason, and
the receiver's own record agreeing; anything else is a problem that fails the run.
"""

from __future__ import annotations

import socket
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from itertools import pairwise
from typing import Any

from baton_dev.webhook_receiver import Refusal, WebhookEvent, WebhookReceiver

# Baton waits 15 s for a receiver's answer (the contract's "2xx within 15 s").
WEBHOOK_TIMEOUT_S = 15.0
BUSY_RETRY_AFTER_S = 4
OUTAGE_ATTEMPTS = 4
FINAL = frozenset({"delivered", "failed", "exhausted"})


class ReceiverKind(StrEnum):
    FLAKY = "flaky"  # each event: 503, then 500, then accepted
    SLOW = "slow"  # each event: the first answer comes after the delivery gave up waiting
    BUSY = "busy"  # each event: 429 with Retry-After (longer than the schedule's next delay)
    # Each event: refused on its first OUTAGE_ATTEMPTS attempts, then accepted. On the default
    # schedule that is 2 h 35 min down: beyond SQS's 15-minute delay, so the wait took hops.
    OUTAGE = "outage"
    GONE = "gone"  # 410 to every delivery
    DOWN = "down"  # nothing listens: connection refused, for good


REFUSALS: dict[ReceiverKind, tuple[Refusal, ...]] = {
    ReceiverKind.FLAKY: (Refusal(503), Refusal(500)),
    ReceiverKind.SLOW: (Refusal(503, delay_s=WEBHOOK_TIMEOUT_S + 1.5),),
    ReceiverKind.BUSY: (Refusal(429, {"Retry-After": str(BUSY_RETRY_AFTER_S)}),),
    ReceiverKind.OUTAGE: (Refusal(503),) * OUTAGE_ATTEMPTS,
}
# What each receiver's deliveries must end as, and the attempt error its fault must show in the logs.
EXPECTED_STATUS = {
    ReceiverKind.FLAKY: "delivered",
    ReceiverKind.SLOW: "delivered",
    ReceiverKind.BUSY: "delivered",
    ReceiverKind.OUTAGE: "delivered",
    ReceiverKind.GONE: "failed",
    ReceiverKind.DOWN: "exhausted",
}
FAULT_SEEN = {
    ReceiverKind.FLAKY: "http_error",
    ReceiverKind.SLOW: "timeout",
    ReceiverKind.BUSY: "http_error",
    ReceiverKind.OUTAGE: "http_error",
    ReceiverKind.GONE: "gone",
    ReceiverKind.DOWN: "connection_error",
}


class ChaosReceiver:
    """A webhook receiver of one kind: a verifying HTTP server, or (DOWN) a port where nothing
    listens (bound, never listening, so the port cannot be taken by anything else meanwhile)."""

    def __init__(self, kind: ReceiverKind, secret: str) -> None:
        self.kind = kind
        self.server: WebhookReceiver | None = None
        self._closed_port: socket.socket | None = None
        if kind is ReceiverKind.DOWN:
            self._closed_port = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._closed_port.bind(("127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{self._closed_port.getsockname()[1]}/webhooks"
        elif kind is ReceiverKind.GONE:
            self.server = WebhookReceiver(secret, fail_first=-1, fail_status=410)
            self.url = self.server.url
        else:
            self.server = WebhookReceiver(secret, refuse_each=REFUSALS[kind])
            self.url = self.server.url

    @property
    def events(self) -> list[WebhookEvent]:
        return self.server.events if self.server else []

    @property
    def refused(self) -> list[str]:
        return list(self.server.failed_ids) if self.server else []

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self._closed_port is not None:
            self._closed_port.close()


def start_receivers(kinds: Sequence[ReceiverKind], secret: str) -> list[ChaosReceiver]:
    return [ChaosReceiver(kind, secret) for kind in kinds]


def settled(deliveries: Sequence[Mapping[str, Any]], webhook_id: str) -> bool:
    """The event's delivery has ended (delivered, failed or exhausted): nothing more will happen."""
    return any(d.get("webhook_id") == webhook_id and d.get("status") in FINAL for d in deliveries)


@dataclass
class DeliveryAccount:
    figures: list[tuple[str, str]]
    problems: list[str]
    unaccounted: int


def _at(attempt: Mapping[str, Any]) -> float:
    return datetime.fromisoformat(str(attempt["at"]).replace("Z", "+00:00")).timestamp()


def account_deliveries(
    *,
    events: Mapping[str, tuple[str, ReceiverKind]],  # each terminal event's webhook id -> (job id, receiver)
    logs: Mapping[str, Sequence[Mapping[str, Any]]],  # job id -> GET /v1/jobs/{id}/deliveries data
    received: Iterable[WebhookEvent],  # what the receivers accepted (2xx)
    schedule_len: int,
) -> DeliveryAccount:
    """Every terminal event: exactly one delivery record, ended as its receiver calls for, with the
    reason in its attempts; a `delivered` one was accepted by the receiver, verified."""
    accepted = {event.webhook_id for event in received if event.verified}
    unaccounted: list[str] = []
    problems: list[str] = []
    outcomes: Counter[str] = Counter()
    by_kind: dict[ReceiverKind, Counter[str]] = defaultdict(Counter)
    errors_by_kind: dict[ReceiverKind, Counter[str]] = defaultdict(Counter)
    attempts_total = 0
    for webhook_id, (job_id, kind) in sorted(events.items()):
        records = [d for d in logs.get(job_id, []) if d.get("webhook_id") == webhook_id]
        if len(records) != 1:
            unaccounted.append(f"{webhook_id} ({len(records)} delivery records)")
            continue
        [record] = records
        status = str(record.get("status"))
        attempts = list(record.get("attempts") or [])
        attempts_total += len(attempts)
        outcomes[status] += 1
        by_kind[kind][status] += 1
        for attempt in attempts:
            error = str(attempt.get("error") or "")
            errors_by_kind[kind][error.split(":", 1)[0] or str(attempt.get("status_code"))] += 1
        reason = _unaccounted_reason(kind, status, attempts, webhook_id in accepted, schedule_len)
        if reason:
            unaccounted.append(f"{webhook_id} ({kind.value}: {reason})")
    if unaccounted:
        problems.append(f"{len(unaccounted)} terminal event(s) unaccounted for: {_limit(unaccounted)}")
    for kind, errors in errors_by_kind.items():
        if FAULT_SEEN[kind] not in errors:
            problems.append(f"the {kind.value} receiver's fault never showed in its attempts: {dict(errors)}")
    stopped_by_410 = by_kind.get(ReceiverKind.GONE, Counter())["failed"]
    figures = [
        (
            "deliveries (terminal events with a webhook)",
            f"{len(events)}: delivered {outcomes['delivered']}, exhausted {outcomes['exhausted']}, "
            f"stopped by 410 {stopped_by_410}, pending {outcomes['pending']}; "
            f"{attempts_total} attempts",
        ),
        (
            "deliveries by receiver",
            "; ".join(
                f"{kind.value} " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
                for kind, counts in sorted(by_kind.items())
            )
            or "-",
        ),
        ("terminal events unaccounted for", str(len(unaccounted))),
    ]
    return DeliveryAccount(figures=figures, problems=problems, unaccounted=len(unaccounted))


def _unaccounted_reason(
    kind: ReceiverKind, status: str, attempts: list[dict[str, Any]], accepted: bool, schedule_len: int
) -> str | None:
    expected = EXPECTED_STATUS[kind]
    if status != expected:
        return f"{status} after {len(attempts)} attempts, expected {expected}: {_errors(attempts)}"
    last = attempts[-1] if attempts else {}
    if status == "delivered":
        if not accepted:
            return "logged delivered but its receiver never accepted it"
        if last.get("error") is not None or not 200 <= int(last.get("status_code") or 0) < 300:
            return f"logged delivered without a 2xx last attempt: {_errors(attempts)}"
        for earlier, later in pairwise(attempts):
            waited = _at(later) - _at(earlier)
            if earlier.get("status_code") == 429 and waited < BUSY_RETRY_AFTER_S - 0.5:
                return f"retried {waited:.1f}s after a 429 asking for {BUSY_RETRY_AFTER_S}s"
    elif status == "failed" and (last.get("error") != "gone" or len(attempts) != 1):
        return f"failed without a single 410: {_errors(attempts)}"
    elif status == "exhausted" and (
        len(attempts) != schedule_len + 1 or any(a.get("error") is None for a in attempts)
    ):
        return f"exhausted after {len(attempts)} attempts, not {schedule_len + 1}: {_errors(attempts)}"
    return None


def _errors(attempts: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{a.get('status_code')}/{a.get('error')}" for a in attempts) or "no attempts"


def _limit(items: Sequence[str], n: int = 8) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
