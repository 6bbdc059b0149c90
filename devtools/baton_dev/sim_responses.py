"""The simulator's Responses API (`/v1/responses`): create (in the background or not), retrieve,
cancel, and webhooks signed per Standard Webhooks, as OpenAI's background mode works.

A request body is translated to the chat shape the simulator already answers (`build_reply`), so
both APIs give the same deterministic answers, tool calls and faults. A background response is
`in_progress` until its simulated latency has passed (divided by `time_scale`: a model that
thinks for ten minutes can take ten seconds), then `completed`; a `response.completed` (or
`response.cancelled`) event goes to the configured webhook URL, carrying only the id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

logger = logging.getLogger("baton.simulator")

TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})
# A receiver gets 30 s (a cold function on a loaded machine can take 10), then up to 4 retries.
WEBHOOK_ATTEMPTS = 5
WEBHOOK_RETRY_S = 1.0
WEBHOOK_TIMEOUT_S = 30.0


class ResponsesRequestError(ValueError):
    """A body the Responses API refuses (400), naming the parameter."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _text_of(content: Any) -> str | list[dict[str, Any]]:
    """Responses content parts (input_text / output_text) as chat content."""
    if isinstance(content, str) or content is None:
        return content or ""
    if not isinstance(content, list):
        raise ResponsesRequestError("Invalid content: expected a string or an array of parts.", "input")
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
    return parts


def chat_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The chat completion request equivalent to a Responses API request body."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise ResponsesRequestError("'input' must be a non-empty string or array.", "input")
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ResponsesRequestError(f"Invalid input[{index}]: expected an object.", f"input[{index}]")
        kind = item.get("type", "message")
        if kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
            }
            if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": item.get("call_id"), "content": item.get("output")}
            )
        elif kind == "message" and isinstance(item.get("role"), str):
            messages.append({"role": item["role"], "content": _text_of(item.get("content"))})
        else:
            raise ResponsesRequestError(
                f"Invalid input[{index}]: unsupported item {kind!r}.", f"input[{index}]"
            )
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise ResponsesRequestError("Invalid 'tools': expected an array.", "tools")
        chat["tools"] = [
            {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}
            for tool in tools
            if isinstance(tool, Mapping) and tool.get("type") == "function"
        ]
    text_format = (body.get("text") or {}).get("format") if isinstance(body.get("text"), Mapping) else None
    if isinstance(text_format, Mapping):
        if text_format.get("type") == "json_schema":
            spec = {k: v for k, v in text_format.items() if k != "type"}
            chat["response_format"] = {"type": "json_schema", "json_schema": spec}
        elif text_format.get("type") == "json_object":
            chat["response_format"] = {"type": "json_object"}
    max_output = body.get("max_output_tokens")
    if max_output is not None:
        if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 1:
            raise ResponsesRequestError(
                "Invalid 'max_output_tokens': expected an integer >= 1.", "max_output_tokens"
            )
        chat["max_tokens"] = max_output
    if body.get("temperature") is not None:
        chat["temperature"] = body["temperature"]
    return chat


def _item_id(prefix: str, seed: str) -> str:
    return prefix + hashlib.sha1(seed.encode(), usedforsecurity=False).hexdigest()[:24]


@dataclass
class SimResponse:
    """One response the simulator holds, with when its answer is ready (monotonic seconds)."""

    id: str
    model: str
    background: bool
    created_at: int
    started: float
    ready_at: float
    content: str | None
    finish_reason: str
    tool_calls: list[dict[str, Any]]
    prompt_tokens: int
    completion_tokens: int
    job_id: str | None = None
    status: str = "in_progress"
    output_tokens_at_end: int | None = None
    timer: threading.Timer | None = field(default=None, repr=False)

    def current_status(self, now: float) -> str:
        if self.status == "in_progress" and now >= self.ready_at:
            return "incomplete" if self.finish_reason == "length" else "completed"
        return self.status

    def body(self, now: float) -> dict[str, Any]:
        status = self.current_status(now)
        output: list[dict[str, Any]] = []
        usage: dict[str, Any] | None = None
        if status in ("completed", "incomplete"):
            if self.tool_calls:
                for call in self.tool_calls:
                    output.append(
                        {
                            "type": "function_call",
                            "id": _item_id("fc_", call["id"]),
                            "call_id": call["id"],
                            "name": call["function"]["name"],
                            "arguments": call["function"]["arguments"],
                            "status": "completed",
                        }
                    )
            else:
                output.append(
                    {
                        "type": "message",
                        "id": _item_id("msg_", self.id),
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": self.content or "", "annotations": []}],
                    }
                )
            usage = _usage(self.prompt_tokens, self.completion_tokens)
        elif status == "cancelled":
            usage = _usage(self.prompt_tokens, self.output_tokens_at_end or 0)
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": self.background,
            "model": self.model,
            "output": output,
            "usage": usage,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "metadata": {},
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


class ResponseStore:
    """The responses the simulator made, their timers and the webhooks they send."""

    def __init__(self, config: Callable[[], Any], clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._responses: dict[str, SimResponse] = {}
        self._webhooks: list[dict[str, Any]] = []
        self.webhook_secret: str | None = None

    def add(self, response: SimResponse) -> None:
        with self._lock:
            self._responses[response.id] = response
        if response.background:
            delay = max(0.0, response.ready_at - self._clock())
            response.timer = threading.Timer(delay, self._finish, args=(response.id,))
            response.timer.daemon = True
            response.timer.start()

    def get(self, response_id: str) -> SimResponse | None:
        with self._lock:
            return self._responses.get(response_id)

    def view(self, response_id: str) -> dict[str, Any] | None:
        response = self.get(response_id)
        return None if response is None else response.body(self._clock())

    def cancel(self, response_id: str) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body): a background response not yet finished becomes cancelled, with the
        output tokens generated so far; cancelling a cancelled one again answers it unchanged."""
        now = self._clock()
        with self._lock:
            response = self._responses.get(response_id)
            if response is None:
                return 404, _error(f"No response found with id '{response_id}'.", "response_id")
            if not response.background:
                return 400, _error("Only responses created with background=true can be cancelled.", None)
            status = response.current_status(now)
            if status in TERMINAL and status != "cancelled":
                return 400, _error(f"Cannot cancel a response with status '{status}'.", None)
            if status != "cancelled":
                response.status = "cancelled"
                span = max(response.ready_at - response.started, 1e-9)
                done = min(1.0, max(0.0, (now - response.started) / span))
                response.output_tokens_at_end = int(response.completion_tokens * done)
                if response.timer is not None:
                    response.timer.cancel()
                notify = True
            else:
                notify = False
        if notify:
            self._send_webhook_later(response_id, "response.cancelled")
        return 200, response.body(now)

    def listing(self) -> list[dict[str, Any]]:
        now = self._clock()
        with self._lock:
            return [
                {"id": r.id, "status": r.current_status(now), "job_id": r.job_id, "background": r.background}
                for r in self._responses.values()
            ]

    def webhooks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._webhooks]

    def stop(self) -> None:
        with self._lock:
            responses = list(self._responses.values())
        for response in responses:
            if response.timer is not None:
                response.timer.cancel()

    # -- completion and webhooks -------------------------------------------------------------
    def _finish(self, response_id: str) -> None:
        response = self.get(response_id)
        if response is None or response.status != "in_progress":
            return
        status = response.current_status(self._clock())
        self._send_webhook(response_id, f"response.{status}")

    def _send_webhook_later(self, response_id: str, event_type: str) -> None:
        threading.Thread(
            target=self._send_webhook, args=(response_id, event_type), daemon=True, name="sim-webhook"
        ).start()

    def _send_webhook(self, response_id: str, event_type: str) -> None:
        config = self._config()
        url = getattr(config, "webhook_url", "")
        secret = self.webhook_secret
        if not url or not secret:
            return
        event_id = f"evt_{uuid.uuid4().hex}"
        payload = json.dumps(
            {
                "id": event_id,
                "object": "event",
                "created_at": int(time.time()),
                "type": event_type,
                "data": {"id": response_id},
            }
        )
        entry: dict[str, Any] = {"event_id": event_id, "type": event_type, "response_id": response_id}
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            now = datetime.now(tz=UTC)
            headers = {
                "webhook-id": event_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": Webhook(secret).sign(event_id, now, payload),
                "content-type": "application/json",
            }
            try:
                answer = httpx.post(url, content=payload, headers=headers, timeout=WEBHOOK_TIMEOUT_S)
                entry.update(status_code=answer.status_code, attempts=attempt)
                if answer.status_code < 300:
                    break
            except httpx.HTTPError as error:
                entry.update(status_code=None, error=str(error), attempts=attempt)
            time.sleep(WEBHOOK_RETRY_S * attempt)
        logger.info("simulator webhook %s for %s: %s", event_type, response_id, entry.get("status_code"))
        with self._lock:
            self._webhooks.append(entry)


def _error(message: str, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}


def new_response_id(digest: str) -> str:
    # Unique per create (the same request twice is two paid responses), traceable to its request.
    return f"resp_{digest[:12]}{uuid.uuid4().hex[:20]}"
