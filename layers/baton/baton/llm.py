"""The model call, through the official openai client against any OpenAI-compatible endpoint."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.parameters import get_secret

from baton.errors import ModelError, StaleWriteError
from baton.records import Usage
from baton.settings import Settings

if TYPE_CHECKING:
    import openai

# `openai` is imported on first use, not at import: only the infer function calls the model, and
# importing the client costs every other function ~0.4 s of cold start (bench/cold_start.py).

# Leave the function this long after the model call to record the result and hand it on.
SAFETY_MARGIN_SECONDS = 5.0
MIN_MODEL_TIMEOUT_SECONDS = 1.0


@dataclass
class Completion:
    text: str | None
    finish_reason: str | None
    tool_calls: list[dict[str, Any]] | None
    usage: Usage = field(default_factory=Usage)
    # The answer's HTTP headers (x-ratelimit-*: what the provider limiter learns from).
    headers: dict[str, str] = field(default_factory=dict)


class CallCancelled(StaleWriteError):
    """The job was cancelled while its model call streamed: the stream was closed (the provider
    stops generating) and `completion` holds what was received, usage counted from it. Stale
    work wherever it is not handled (a long document's chunk): dropped, never retried."""

    def __init__(self, completion: Completion) -> None:
        super().__init__("the job was cancelled during the model call")
        self.completion = completion


class IncompleteStreamError(RuntimeError):
    """A streamed answer ended without a finish_reason: malformed or cut off, not an answer."""


# How often a streamed call asks whether its job was cancelled (the contract says every 2 s).
CANCEL_CHECK_SECONDS = 2.0


def model_timeout(settings: Settings, remaining_ms: int) -> float:
    """The model call's timeout always stays below the function's remaining time."""
    budget = remaining_ms / 1000 - SAFETY_MARGIN_SECONDS
    if budget < MIN_MODEL_TIMEOUT_SECONDS:
        raise ModelError(
            "not enough time left in this invocation to call the model", retryable=True, type_="timeout"
        )
    return min(settings.model_timeout_seconds, budget)


def _api_key(settings: Settings) -> str:
    if settings.openai_api_key:
        return settings.openai_api_key
    if settings.openai_api_key_secret_arn:
        return str(get_secret(settings.openai_api_key_secret_arn, max_age=300))
    # Local OpenAI-compatible servers (the simulator, Ollama, vLLM...) accept any key.
    return "not-needed"


def endpoint_problem(settings: Settings) -> str | None:
    """Why no model call can work with this configuration (None: it may). Checked before each
    call, so the job fails at once with `model_not_configured` instead of retrying a request that
    cannot be sent (an empty base URL) or that api.openai.com must refuse (no key)."""
    base_url = settings.openai_base_url
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        return (
            f"OPENAI_BASE_URL is {base_url!r}, not an http(s) URL: set the LlmEndpoint parameter "
            "to an OpenAI-compatible base URL, or leave it empty (then the variable must be unset)"
        )
    if base_url is None and not (settings.openai_api_key or settings.openai_api_key_secret_arn):
        return (
            "no model endpoint configured: LlmEndpoint is empty (api.openai.com) and there is no API "
            "key; set LlmApiKeySecretArn, or LlmEndpoint for a keyless OpenAI-compatible server"
        )
    return None


def load_client_library() -> None:
    """Import the openai client and the resources a call uses now, during the function's init.

    `import openai` builds hundreds of pydantic models: seconds of CPU, many more on a busy cold
    machine. Imported lazily inside the first invocation, that time is charged to the function's
    timeout: under load every fresh environment timed out on its first batch, was replaced by
    another fresh one, and never finished a call. Only the functions that call the model load it
    (the API and the others never pay for it)."""
    import openai
    import openai.lib.streaming.chat  # a streamed call's accumulator

    # The client imports each resource on first use: touch the ones a call uses, on a client
    # that never sends anything (the real one needs the API key from Secrets Manager).
    unused = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1", max_retries=0)
    _ = (unused.chat.completions.with_raw_response, unused.responses.with_raw_response, unused.webhooks)
    unused.close()


@cache
def _client(base_url: str | None, api_key: str) -> openai.OpenAI:
    import openai

    # Retries belong to SQS (visibility timeout, redrive), not to a loop inside one invocation.
    return openai.OpenAI(base_url=base_url or None, api_key=api_key, max_retries=0)


def complete(
    settings: Settings,
    *,
    model: str,
    messages: list[dict[str, Any]],
    parameters: dict[str, Any],
    timeout: float,
    extra_headers: dict[str, str] | None = None,
    cancelled: Callable[[], bool] | None = None,
    prompt_tokens_estimate: int = 0,
) -> Completion:
    """One chat completion. With `cancelled`, the call is streamed and that check runs every
    CANCEL_CHECK_SECONDS: once it says yes the stream is closed and CallCancelled raised."""
    problem = endpoint_problem(settings)
    if problem is not None:
        raise ModelError(problem, retryable=False, type_="model_not_configured")
    request: dict[str, Any] = {"model": model, "messages": messages}
    for name in ("temperature", "max_tokens", "response_format", "tools"):
        if parameters.get(name) is not None:
            request[name] = parameters[name]
    if cancelled is not None:
        return _streamed(
            settings, model, request, timeout, extra_headers or {}, cancelled, prompt_tokens_estimate
        )
    with provider_errors(model, timeout):
        raw = _client(settings.openai_base_url, _api_key(settings)).chat.completions.with_raw_response.create(
            **request, timeout=timeout, extra_headers=extra_headers or {}
        )
        response = raw.parse()
    choice = response.choices[0]
    tool_calls = (
        [call.model_dump(mode="json") for call in choice.message.tool_calls]
        if choice.message.tool_calls
        else None
    )
    usage = Usage()
    if response.usage is not None:
        usage = Usage(
            prompt_tokens=response.usage.prompt_tokens,
            completion_tokens=response.usage.completion_tokens,
            total_tokens=response.usage.total_tokens,
        )
    return Completion(
        text=choice.message.content,
        finish_reason=choice.finish_reason,
        tool_calls=tool_calls,
        usage=usage,
        headers=dict(raw.headers),
    )


class _StreamedAnswer:
    """A streamed chat completion put back together chunk by chunk."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.pieces = 0  # content or argument pieces received: about one token each

    def add(self, chunk: Any) -> None:
        if chunk.usage is not None:
            self.usage = Usage(
                prompt_tokens=chunk.usage.prompt_tokens,
                completion_tokens=chunk.usage.completion_tokens,
                total_tokens=chunk.usage.total_tokens,
            )
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                self.text.append(delta.content)
                self.pieces += 1
            for call in delta.tool_calls or []:
                slot = self.calls.setdefault(
                    call.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                )
                if call.id:
                    slot["id"] = call.id
                if call.function is not None:
                    if call.function.name:
                        slot["function"]["name"] += call.function.name
                    if call.function.arguments:
                        slot["function"]["arguments"] += call.function.arguments
                        self.pieces += 1
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason

    def completion(self, headers: dict[str, str], prompt_tokens_estimate: int) -> Completion:
        usage = self.usage
        if usage is None:  # cut short (or a server without stream usage): count what arrived
            usage = Usage(
                prompt_tokens=prompt_tokens_estimate,
                completion_tokens=self.pieces,
                total_tokens=prompt_tokens_estimate + self.pieces,
            )
        calls = [self.calls[index] for index in sorted(self.calls)]
        return Completion(
            text="".join(self.text) if self.text else None,
            finish_reason=self.finish_reason,
            tool_calls=calls or None,
            usage=usage,
            headers=headers,
        )


def _streamed(
    settings: Settings,
    model: str,
    request: dict[str, Any],
    timeout: float,
    extra_headers: dict[str, str],
    cancelled: Callable[[], bool],
    prompt_tokens_estimate: int,
) -> Completion:
    answer = _StreamedAnswer()
    stop = threading.Event()
    closed_for_cancel = threading.Event()
    started = time.monotonic()
    with provider_errors(model, timeout):
        raw = _client(settings.openai_base_url, _api_key(settings)).chat.completions.with_raw_response.create(
            **request,
            stream=True,
            stream_options={"include_usage": True},
            timeout=timeout,
            extra_headers=extra_headers,
        )
        stream = raw.parse()
        headers = dict(raw.headers)
        connection = raw.http_response.extensions.get("network_stream")
        sock = connection.get_extra_info("socket") if connection is not None else None

        def hang_up() -> None:
            # Closing the response alone does not wake a read blocked on a silent model (a long
            # time to first token): shutting the socket down does, and the provider sees the
            # client gone. Then the response is closed for the connection pool.
            if sock is not None:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            stream.close()

        def watch() -> None:
            # Closing the response from here unblocks the reading thread at once.
            while not stop.wait(CANCEL_CHECK_SECONDS):
                timed_out = time.monotonic() - started > timeout
                if timed_out or cancelled():
                    if not timed_out:
                        closed_for_cancel.set()
                    hang_up()
                    return

        watcher = threading.Thread(target=watch, name="cancel-watch", daemon=True)
        watcher.start()
        try:
            for chunk in stream:
                answer.add(chunk)
        except Exception:
            if not closed_for_cancel.is_set():
                if time.monotonic() - started > timeout:
                    raise timeout_error(timeout) from None
                raise
        finally:
            stop.set()
            stream.close()
    if closed_for_cancel.is_set():
        raise CallCancelled(answer.completion(headers, prompt_tokens_estimate))
    if answer.finish_reason is None:
        if time.monotonic() - started > timeout:  # the watcher hung up on a call past its time
            raise timeout_error(timeout)
        # Never a silent truncation: a stream that stops without saying why (a body that is not a
        # stream, a connection cut) is not an answer. Raised like a crash, so the message is retried
        # and, if it keeps happening, dead-lettered with its job failed.
        raise IncompleteStreamError(
            f"the model's stream ended without a finish_reason after {answer.pieces} pieces"
        )
    return answer.completion(headers, prompt_tokens_estimate)


def timeout_error(timeout: float) -> ModelError:
    """A model call past its time: retryable, typed `timeout` (from the client or the stream's watcher)."""
    return ModelError(f"model call timed out after {timeout:.0f}s", retryable=True, type_="timeout")


@contextmanager
def provider_errors(model: str, timeout: float) -> Iterator[None]:
    """The openai client's exceptions as ModelError: retryable or not, typed for the job's error."""
    import openai

    try:
        yield
    except openai.APITimeoutError as error:
        raise timeout_error(timeout) from error
    except openai.APIConnectionError as error:
        raise ModelError(
            f"cannot reach the model endpoint: {error}", retryable=True, type_="model_unavailable"
        ) from error
    except openai.RateLimitError as error:
        raise ModelError(
            "the model provider is rate limiting",
            retryable=True,
            type_="rate_limited",
            retry_after=retry_after_seconds(error.response.headers),
            headers=dict(error.response.headers),
        ) from error
    except openai.InternalServerError as error:
        raise ModelError(
            f"the model endpoint failed ({error.status_code})",
            retryable=True,
            type_="model_unavailable",
            retry_after=retry_after_seconds(error.response.headers),
        ) from error
    except openai.NotFoundError as error:
        raise ModelError(f"unknown model {model!r}", retryable=False, type_="invalid_model") from error
    except openai.BadRequestError as error:
        code = getattr(error, "code", None) or "invalid_request"
        kind = "context_length_exceeded" if code == "context_length_exceeded" else "model_rejected_request"
        raise ModelError(_provider_message(error), retryable=False, type_=kind) from error
    except openai.APIStatusError as error:
        retryable = error.status_code >= 500 or error.status_code == 408
        raise ModelError(
            f"the model endpoint answered {error.status_code}", retryable=retryable, type_="model_error"
        ) from error


def retry_after_seconds(headers: Any) -> float | None:
    """Retry-After (seconds; `retry-after-ms` when the provider sends it, as OpenAI does)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue  # an HTTP date: rare from model providers; fall back to our backoff
    return None


def _provider_message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if message:
            return str(message)[:500]
    return str(error)[:500]
