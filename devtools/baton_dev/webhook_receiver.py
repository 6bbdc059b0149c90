"""A local Standard Webhooks receiver for demos and tests: verifies and records every delivery."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple

from standardwebhooks import Webhook

logger = logging.getLogger("baton.webhooks.receiver")

__all__ = ["Refusal", "WebhookEvent", "WebhookReceiver"]

MAX_BODY_BYTES = 10 * 1024 * 1024


class WebhookEvent(NamedTuple):
    """One delivery the receiver answered (2xx when verified, 401 when not)."""

    webhook_id: str
    verified: bool
    payload: Any  # the parsed JSON body; None when it was not JSON
    headers: dict[str, str] = {}  # noqa: RUF012 - lower-cased names; never mutated
    path: str = ""  # with the query string


@dataclass(frozen=True)
class Refusal:
    """One way to fail a delivery: a status (with headers), answered `delay_s` late (a delay beyond
    the sender's timeout makes it a timeout)."""

    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


class WebhookReceiver:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port) in a daemon thread.

    Every POST is checked with `standardwebhooks.Webhook(secret).verify`: valid ones get 204,
    invalid ones 401; both are recorded in `events`. With `fail_first=N` the first N deliveries
    are answered `fail_status` (503 by default, with `fail_headers`, e.g. a Retry-After) and
    counted in `failed_ids` (their times in `failed_at`), not `events`, so senders' retries can be
    tested; `fail_first=-1` fails every delivery (a receiver that stays down, or 410 Gone).
    With `refuse_each`, every webhook id is refused that way on its first attempts, one refusal
    per attempt in order, then accepted (a flaky receiver, whatever the number of events).
    """

    def __init__(
        self,
        secret: str,
        fail_first: int = 0,
        *,
        fail_status: int = 503,
        fail_headers: dict[str, str] | None = None,
        refuse_each: Sequence[Refusal] = (),
    ) -> None:
        self._webhook = Webhook(secret)
        self._fail_remaining = fail_first
        self._fail_status = fail_status
        self._fail_headers = dict(fail_headers or {})
        self._refuse_each = tuple(refuse_each)
        self._seen: Counter[str] = Counter()  # requests per webhook id
        self._lock = threading.Condition()
        self._events: list[WebhookEvent] = []
        self.failed_ids: list[str] = []
        self.failed_at: list[float] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("%s " + format, self.address_string(), *args)

            def do_POST(self) -> None:
                receiver._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )
        self._thread.start()
        logger.info("webhook receiver listening on %s", self.url)

    # -- public -------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks"

    @property
    def events(self) -> list[WebhookEvent]:
        with self._lock:
            return list(self._events)

    def wait_until(
        self, predicate: Callable[[list[WebhookEvent]], bool], timeout: float
    ) -> list[WebhookEvent]:
        """Block until `predicate(events)` holds; TimeoutError when it still does not after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self._events):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"webhook condition not met after {timeout:g}s ({len(self._events)} events)"
                    )
                self._lock.wait(remaining)
            return list(self._events)

    def wait_for(self, count: int, timeout: float) -> list[WebhookEvent]:
        """Block until at least `count` deliveries were answered; TimeoutError otherwise."""
        return self.wait_until(lambda events: len(events) >= count, timeout)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        logger.info("webhook receiver on port %d stopped", self.port)

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- request handling ---------------------------------------------------------------------------
    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._answer(request, 413)
            return
        body = request.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in request.headers.items()}
        webhook_id = headers.get("webhook-id", "")
        try:
            self._webhook.verify(body, headers)
            verified = True
        except Exception as error:  # a verification failure, or headers too malformed to check
            logger.warning("webhook %r failed verification: %s", webhook_id, error)
            verified = False
        delay_s = 0.0
        with self._lock:
            extra: dict[str, str] = {}
            self._seen[webhook_id] += 1
            refusal = (
                self._refuse_each[self._seen[webhook_id] - 1]
                if self._seen[webhook_id] <= len(self._refuse_each)
                else None
            )
            if refusal is None and self._fail_remaining != 0:
                self._fail_remaining -= 1 if self._fail_remaining > 0 else 0
                refusal = Refusal(self._fail_status, self._fail_headers)
            if refusal is not None:
                self.failed_ids.append(webhook_id)
                self.failed_at.append(time.time())
                self._lock.notify_all()
                status, extra, delay_s = refusal.status, refusal.headers, refusal.delay_s
            else:
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = None
                self._events.append(WebhookEvent(webhook_id, verified, payload, headers, request.path))
                self._lock.notify_all()
                status = 204 if verified else 401
        if delay_s:
            time.sleep(delay_s)  # this request's own thread: a late answer, not a stalled receiver
        logger.info("webhook %r (verified=%s) answered %d", webhook_id, verified, status)
        self._answer(request, status, extra)

    def wait_failed(self, count: int, timeout: float) -> list[float]:
        """Block until at least `count` deliveries were refused; their times (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.failed_at) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(self.failed_at)} refused deliveries after {timeout:g}s")
                self._lock.wait(remaining)
            return list(self.failed_at)

    @staticmethod
    def _answer(request: BaseHTTPRequestHandler, status: int, headers: dict[str, str] | None = None) -> None:
        request.send_response(status)
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.send_header("Content-Length", "0")
        request.end_headers()
