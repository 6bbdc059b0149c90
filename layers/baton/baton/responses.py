"""The model call through OpenAI's Responses API in background mode: create (answers at once with
an id), retrieve (one GET), cancel. Chat-shaped messages, tools and response_format map onto it,
and a finished response maps back onto the same Completion a chat completion gives, so the rest
of the pipeline (tool loop, guards, usage) is one code path for both modes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from baton.errors import ModelError
from baton.llm import Completion, _api_key, _client, endpoint_problem, provider_errors
from baton.records import Usage
from baton.settings import Settings

if TYPE_CHECKING:
    from openai.types.responses import Response

# A response in one of these states is still being worked on by the provider.
PENDING = frozenset({"queued", "in_progress"})
# Provider calls that are not the model call itself (retrieve, cancel) are short.
CONTROL_TIMEOUT_S = 20.0


class BackgroundUnsupported(Exception):
    """The provider (or this model) has no background responses: the caller falls back to sync."""


@dataclass(frozen=True)
class ResponseState:
    response_id: str
    status: str
    # Set once the response finished (completed or incomplete): what the model answered.
    completion: Completion | None = None
    error: str | None = None
    headers: dict[str, str] | None = None

    @property
    def pending(self) -> bool:
        return self.status in PENDING


def _content(content: Any, *, output: bool) -> Any:
    """Chat content (a string or text parts) as Responses content."""
    if not isinstance(content, list):
        return content if content is not None else ""
    kind = "output_text" if output else "input_text"
    return [
        {"type": kind, "text": part.get("text", "")}
        for part in content
        if isinstance(part, dict) and part.get("type") == "text"
    ]


def input_items(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages (with the agent loop's tool calls and results) as Responses input items."""
    items: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "tool":
            content = message.get("content")
            output = content if isinstance(content, str) else json.dumps(content)
            items.append(
                {"type": "function_call_output", "call_id": message.get("tool_call_id"), "output": output}
            )
            continue
        if role == "assistant" and message.get("tool_calls"):
            if message.get("content"):
                items.append({"role": "assistant", "content": _content(message["content"], output=True)})
            for call in message["tool_calls"]:
                function = call.get("function") or {}
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call.get("id"),
                        "name": function.get("name"),
                        "arguments": function.get("arguments") or "",
                    }
                )
            continue
        items.append({"role": role, "content": _content(message.get("content"), output=role == "assistant")})
    return items


def request_body(model: str, messages: list[dict[str, Any]], parameters: dict[str, Any]) -> dict[str, Any]:
    """The Responses API request for a chat-shaped call (the job's parameters as chat names them)."""
    body: dict[str, Any] = {"model": model, "input": input_items(messages)}
    if parameters.get("temperature") is not None:
        body["temperature"] = parameters["temperature"]
    if parameters.get("max_tokens") is not None:
        body["max_output_tokens"] = parameters["max_tokens"]
    response_format = parameters.get("response_format")
    if response_format and response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema") or {}
        body["text"] = {"format": {"type": "json_schema", **spec}}
    elif response_format and response_format.get("type") == "json_object":
        body["text"] = {"format": {"type": "json_object"}}
    tools = parameters.get("tools")
    if tools:
        body["tools"] = [
            {"type": "function", **(tool.get("function") or {})}
            for tool in tools
            if tool.get("type") == "function"
        ]
    return body


def completion_of(response: Response, headers: dict[str, str] | None = None) -> Completion:
    """A finished response as the Completion a chat completion would give."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in response.output:
        if item.type == "message":
            texts.extend(part.text for part in item.content if part.type == "output_text")
        elif item.type == "function_call":
            calls.append(
                {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
            )
    finish_reason = "stop"
    if calls:
        finish_reason = "tool_calls"
    elif response.status == "incomplete":
        reason = response.incomplete_details.reason if response.incomplete_details else None
        finish_reason = "length" if reason == "max_output_tokens" else "content_filter"
    usage = Usage()
    if response.usage is not None:
        usage = Usage(
            prompt_tokens=response.usage.input_tokens,
            completion_tokens=response.usage.output_tokens,
            total_tokens=response.usage.total_tokens,
        )
    return Completion(
        text="".join(texts) if texts else None,
        finish_reason=finish_reason,
        tool_calls=calls or None,
        usage=usage,
        headers=headers or {},
    )


def _state(response: Response, headers: dict[str, str] | None = None) -> ResponseState:
    status = str(response.status)
    if status in ("completed", "incomplete"):
        return ResponseState(
            response.id, status, completion=completion_of(response, headers), headers=headers
        )
    error = None
    if status == "failed":
        error = response.error.message if response.error else "the provider reports the response failed"
    return ResponseState(response.id, status, error=error, headers=headers)


def _checked(settings: Settings) -> Any:
    problem = endpoint_problem(settings)
    if problem is not None:
        raise ModelError(problem, retryable=False, type_="model_not_configured")
    return _client(settings.openai_base_url, _api_key(settings))


def prepare(settings: Settings) -> None:
    """Build the client now (its API key read from Secrets Manager on first use), so a caller's
    check of its time left does not count that as the create's. The openai library itself is
    imported in the function's init (`llm.load_client_library`, called by `wiring.infer_stage`)."""
    _checked(settings)


def create_background(
    settings: Settings,
    *,
    model: str,
    messages: list[dict[str, Any]],
    parameters: dict[str, Any],
    extra_headers: dict[str, str] | None = None,
    timeout: float = CONTROL_TIMEOUT_S,
) -> ResponseState:
    """Start the model call at the provider; it answers at once with the response's id."""
    import openai

    client = _checked(settings)
    body = request_body(model, messages, parameters)
    try:
        with provider_errors(model, timeout):
            raw = client.responses.with_raw_response.create(
                **body,
                background=True,
                store=True,
                timeout=timeout,
                extra_headers=extra_headers or {},
            )
            response = raw.parse()
    except ModelError as error:
        cause = error.__cause__
        if isinstance(cause, openai.NotFoundError) and not _names_the_model(cause):
            raise BackgroundUnsupported("the endpoint has no /responses") from error
        if isinstance(cause, openai.BadRequestError) and _about_background(cause):
            raise BackgroundUnsupported(str(cause)[:200]) from error
        raise
    return _state(response, dict(raw.headers))


def retrieve(settings: Settings, response_id: str, *, model: str) -> ResponseState:
    """One GET of the response."""
    import openai

    client = _checked(settings)
    try:
        with provider_errors(model, CONTROL_TIMEOUT_S):
            response = client.responses.retrieve(response_id, timeout=CONTROL_TIMEOUT_S)
    except ModelError as error:
        if isinstance(error.__cause__, openai.NotFoundError):
            raise ModelError(
                f"the provider no longer has response {response_id}",
                retryable=False,
                type_="provider_response_lost",
            ) from error
        raise
    return _state(response)


def cancel(settings: Settings, response_id: str, *, model: str) -> ResponseState:
    """Ask the provider to stop generating (no more tokens paid). A response that already
    finished cannot be cancelled: its state is returned instead of an error."""
    import openai

    client = _checked(settings)
    try:
        with provider_errors(model, CONTROL_TIMEOUT_S):
            response = client.responses.cancel(response_id, timeout=CONTROL_TIMEOUT_S)
    except ModelError as error:
        if isinstance(error.__cause__, openai.BadRequestError):
            return retrieve(settings, response_id, model=model)
        raise
    return _state(response)


def _names_the_model(error: Any) -> bool:
    body = error.body if isinstance(error.body, dict) else {}
    code = body.get("code") or (body.get("error") or {}).get("code")
    return code == "model_not_found" or "model" in str(body.get("param") or "")


def _about_background(error: Any) -> bool:
    body = error.body if isinstance(error.body, dict) else {}
    param = body.get("param") or (body.get("error") or {}).get("param")
    return param == "background" or "background" in str(error).lower()
