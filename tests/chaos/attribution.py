"""Why a step's model call was paid for twice: the evidence the chaos run must find for it.

A paid answer followed by another one for the same step is a duplicate paid call. In sync mode the
only accepted cause is the runtime's SIGKILL: an answer logged by the simulator inside the kill
window may have died with its worker. In background mode (Responses API) the create is the paid
call, and the provider has no idempotency key and no lookup for a create: a worker that ends
between the create and the write of the response id leaves a response no retry can find, so the
retry pays for another. That residual create -> id-write window is accepted only with evidence
from the infer function's own log (baton/background.py writes these lines):

* "background response created, storing its id" (response id, function_request_id): the create's
  answer reached the worker;
* "background response stored": the id's write landed (then a second create is a bug, whatever
  the timing);
* "creating a background response" then no "created" line, and that invocation's timeout, or
  "background create timed out ...": the create's answer never reached the worker;
* `<timestamp> <request id> Task timed out after N seconds` (the local runtime writes Lambda's
  line): the function's timeout ended that invocation.

A duplicate is attributed to the SIGKILL (`KILLED`), to an invocation's timeout before its id write
(`TIMED_OUT`) or to a create whose answer never reached its worker (`CREATE_LOST`); with no
such evidence it is `UNEXPLAINED`, and the run fails.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

CREATING = "creating a background response"
CREATED = "background response created, storing its id"
STORED = "background response stored"
CREATE_TIMED_OUT = "background create timed out"
FINISHED = "background response finished"  # `by`: "poll" or "webhook:<event id>"
# The local runtime's (and Lambda's) line when the function's timeout ends an invocation.
_TIMEOUT_LINE = re.compile(r"^(?P<ts>\S+Z) (?P<request_id>[0-9a-f-]{36}) Task timed out after ")
_STAMP = re.compile(r'"timestamp": ?"(?P<ts>[^"]+)"')
_REQUEST = re.compile(r'"function_request_id": ?"(?P<id>[^"]+)"')
_WANTED = (CREATING, CREATED, STORED, CREATE_TIMED_OUT, FINISHED, "Task timed out after ", "deferred")
# A create timed out at the client no more than this after the simulator answered it (the client
# would have read an earlier answer), and at most this long before (the client's own timeout).
CREATE_LOST_AFTER_S = 2.0
CREATE_LOST_BEFORE_S = 30.0
NOT_ENOUGH_TIME = "not enough time left in this invocation to create a response"


class Cause(StrEnum):
    KILLED = "killed by the SIGKILL before its id write"
    TIMED_OUT = "invocation timed out before its id write"
    CREATE_LOST = "create's answer never reached its worker (a timeout)"
    UNEXPLAINED = "unexplained"


WINDOW_HITS = frozenset({Cause.TIMED_OUT, Cause.CREATE_LOST})


@dataclass(frozen=True)
class Created:
    request_id: str
    at: float
    step_key: str


@dataclass
class InferLog:
    """What the infer function's log says about background creates and timed-out invocations."""

    created: dict[str, Created] = field(default_factory=dict)  # response id -> its worker
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)  # response id -> the line
    create_timeouts: list[tuple[str, float]] = field(default_factory=list)  # (step key, when)
    creating: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # step -> (when, worker)
    timed_out: dict[str, float] = field(default_factory=dict)  # request id -> when
    last_line: dict[str, float] = field(default_factory=dict)  # request id -> its last line
    deferred_for_time: int = 0  # creates left to a fresh invocation (too little time for the write)
    finished_by: Counter[str] = field(default_factory=Counter)  # "poll" / "webhook": what resumed


@dataclass(frozen=True)
class Duplicate:
    step_key: str
    at: float  # the simulator's clock: when the earlier, unused create was answered
    response_id: str | None
    cause: Cause
    evidence: str


def _timestamp(value: str) -> float:
    """Powertools' "2026-12-01 21:09:29,707+0000" or Lambda's "2026-12-01T21:08:52.185Z"."""
    text = value.replace(",", ".").replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", text):
        text = f"{text[:-2]}:{text[-2:]}"
    return datetime.fromisoformat(text).timestamp()


def read_infer_log(lines: Iterable[str]) -> InferLog:
    log = InferLog()
    for line in lines:
        stamp, request = _STAMP.search(line), _REQUEST.search(line)
        if stamp is not None and request is not None:  # any line: when its invocation was last alive
            with suppress(ValueError):
                at = _timestamp(stamp["ts"])
                log.last_line[request["id"]] = max(at, log.last_line.get(request["id"], at))
        if not any(marker in line for marker in _WANTED):
            continue
        timeout = _TIMEOUT_LINE.match(line)
        if timeout is not None:
            log.timed_out[timeout["request_id"]] = _timestamp(timeout["ts"])
            continue
        try:
            entry = json.loads(line)
            at = _timestamp(str(entry["timestamp"]))
        except (ValueError, KeyError, TypeError):
            continue
        if not isinstance(entry, dict):
            continue
        message = str(entry.get("message", ""))
        request_id = str(entry.get("function_request_id") or "")
        response_id = entry.get("response_id")
        if message == CREATING:
            log.creating.setdefault(str(entry.get("step_key") or ""), []).append((at, request_id))
        elif message == CREATED and isinstance(response_id, str):
            log.created[response_id] = Created(request_id, at, str(entry.get("step_key") or ""))
        elif message == STORED and isinstance(response_id, str):
            log.stored[response_id] = entry
        elif message.startswith(CREATE_TIMED_OUT):
            log.create_timeouts.append((str(entry.get("step_key") or ""), at))
        elif message == FINISHED:
            log.finished_by[str(entry.get("by") or "poll").split(":")[0]] += 1
        elif message == "model call deferred" and str(entry.get("reason", "")).startswith(NOT_ENOUGH_TIME):
            log.deferred_for_time += 1
    return log


def read_infer_log_file(path: Path) -> InferLog:
    if not path.exists():
        return InferLog()
    with path.open(encoding="utf-8", errors="replace") as lines:
        return read_infer_log(lines)


def _attribute_create(
    step_key: str,
    entry: Mapping[str, Any],
    log: InferLog,
    kill_window: tuple[float, float],
    kill_at: float | None,
    invocation_limit_s: float,
    used_create_timeouts: set[int],
) -> Duplicate:
    at = float(entry["ts"])
    response_id = entry.get("response_id")
    start, end = kill_window

    def duplicate(cause: Cause, evidence: str) -> Duplicate:
        return Duplicate(step_key, at, response_id, cause, evidence)

    if response_id is None:
        return duplicate(Cause.UNEXPLAINED, "the simulator's log names no response for this create")
    if response_id in log.stored:
        return duplicate(Cause.UNEXPLAINED, f"{response_id} was stored on the job, yet the step paid again")
    created = log.created.get(response_id)
    if created is not None:
        timed_out_at = log.timed_out.get(created.request_id)
        if timed_out_at is not None and timed_out_at >= created.at:
            return duplicate(
                Cause.TIMED_OUT,
                f"{created.request_id} got {response_id} and timed out {timed_out_at - created.at:.1f}s "
                "later without storing it",
            )
        last = log.last_line.get(created.request_id, created.at)
        if (
            kill_at is not None
            and created.at <= kill_at <= created.at + invocation_limit_s
            and last <= kill_at
        ):
            return duplicate(
                Cause.KILLED,
                f"{created.request_id} got {response_id} {kill_at - created.at:.1f}s before the SIGKILL "
                "and logged nothing after it",
            )
    if start <= at <= end:
        return duplicate(Cause.KILLED, f"answered {at - (kill_at or at):+.1f}s around the kill, never stored")
    if created is None:
        # The worker that sent it: the last one to start a create for this step before the answer.
        senders = [(when, worker) for when, worker in log.creating.get(step_key, []) if when <= at + 0.5]
        if senders:
            sent_at, worker = max(senders)
            timed_out_at = log.timed_out.get(worker)
            if timed_out_at is not None and timed_out_at >= sent_at:
                return duplicate(
                    Cause.CREATE_LOST,
                    f"{worker} sent it and timed out {timed_out_at - at:+.1f}s from the answer, "
                    "before the answer reached it",
                )
        for index, (timed_out_step, when) in enumerate(log.create_timeouts):
            if (
                index not in used_create_timeouts
                and timed_out_step == step_key
                and at - CREATE_LOST_BEFORE_S <= when <= at + CREATE_LOST_AFTER_S
            ):
                used_create_timeouts.add(index)
                return duplicate(
                    Cause.CREATE_LOST,
                    f"the worker's create timed out {when - at:+.1f}s from the simulator's answer",
                )
        return duplicate(Cause.UNEXPLAINED, f"no worker logged {response_id}, no timed-out create")
    return duplicate(
        Cause.UNEXPLAINED,
        f"{created.request_id} got {response_id} but neither timed out nor died with the SIGKILL",
    )


def attribute(
    paid_by_step: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    background: bool,
    log: InferLog | None,
    kill_window: tuple[float, float],
    kill_at: float | None,
    invocation_limit_s: float,
) -> list[Duplicate]:
    """Every paid answer that was followed by another for its step, with its cause.

    `paid_by_step`: the simulator's paid entries per step key. In sync mode the cause is the kill
    window or nothing; in background mode it needs the infer log's evidence (`log`)."""
    duplicates: list[Duplicate] = []
    used_create_timeouts: set[int] = set()
    start, end = kill_window
    for step_key, entries in paid_by_step.items():
        ordered = sorted(entries, key=lambda entry: float(entry["ts"]))
        if background and log is not None:
            # The answer the step used: its stored response (one at most), else the last one.
            used = max(
                range(len(ordered)),
                key=lambda index: (ordered[index].get("response_id") in log.stored, index),
            )
            ordered = [*ordered[:used], *ordered[used + 1 :], ordered[used]]
        for entry in ordered[:-1]:
            at = float(entry["ts"])
            if not background or log is None or not str(entry.get("path", "")).endswith("/responses"):
                inside = start <= at <= end
                duplicates.append(
                    Duplicate(
                        step_key,
                        at,
                        entry.get("response_id"),
                        Cause.KILLED if inside else Cause.UNEXPLAINED,
                        "answered inside the kill window" if inside else "answered outside the kill window",
                    )
                )
                continue
            duplicates.append(
                _attribute_create(
                    step_key, entry, log, kill_window, kill_at, invocation_limit_s, used_create_timeouts
                )
            )
    return duplicates


def store_latencies(log: InferLog) -> tuple[list[float], list[float]]:
    """(create_ms, store_ms) of every stored response: the create's round trip, the id's write."""
    creates = [float(line["create_ms"]) for line in log.stored.values() if "create_ms" in line]
    stores = [float(line["store_ms"]) for line in log.stored.values() if "store_ms" in line]
    return creates, stores
