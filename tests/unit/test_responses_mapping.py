"""Chat-shaped calls map onto the Responses API and back (baton.responses), so background mode
keeps messages, tools, response_format and usage the same as sync mode."""

from __future__ import annotations

from typing import Any, cast

from openai._models import construct_type
from openai.types.responses import Response

from baton.responses import completion_of, request_body
from baton.settings import Settings
from baton.tools import expand_tools

CALC: dict[str, Any] = {
    "type": "function",
    "function": {"name": "calculator", "parameters": {"type": "object", "properties": {}}},
}


def built(value: dict[str, Any]) -> Response:
    """A Response as the openai client builds one from the provider's JSON."""
    return cast(Response, construct_type(type_=Response, value=value))


def test_the_agent_loop_conversation_becomes_input_items() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is 6*7?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    body = request_body(
        "m",
        messages,
        {
            "max_tokens": 50,
            "temperature": 0.2,
            "tools": [CALC],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        },
    )
    assert body["input"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "What is 6*7?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "calculator", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
    ]
    assert body["max_output_tokens"] == 50 and body["temperature"] == 0.2
    assert body["tools"] == [
        {"type": "function", "name": "calculator", "parameters": CALC["function"]["parameters"]}
    ]
    assert body["text"] == {"format": {"type": "json_schema", "name": "x", "schema": {}}}


def test_a_finished_response_becomes_the_same_completion_as_chat() -> None:
    text = built(
        {
            "id": "resp_1",
            "object": "response",
            "status": "completed",
            "output": [
                {
                    "type": "message",
                    "id": "msg_1",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "Forty-two.", "annotations": []}],
                }
            ],
            "usage": {"input_tokens": 11, "output_tokens": 5, "total_tokens": 16},
        },
    )
    completion = completion_of(text)
    assert (completion.text, completion.finish_reason, completion.tool_calls) == ("Forty-two.", "stop", None)
    assert completion.usage.model_dump() == {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    call = built(
        {
            "id": "resp_2",
            "object": "response",
            "status": "completed",
            "output": [
                {
                    "type": "function_call",
                    "id": "fc_1",
                    "call_id": "call_9",
                    "name": "calculator",
                    "arguments": "{}",
                }
            ],
        },
    )
    called = completion_of(call)
    assert called.finish_reason == "tool_calls"
    assert called.tool_calls == [
        {"id": "call_9", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}
    ]
    cut = built(
        {
            "id": "r",
            "object": "response",
            "status": "incomplete",
            "output": [],
            "incomplete_details": {"reason": "max_output_tokens"},
        },
    )
    assert completion_of(cut).finish_reason == "length"


def test_the_poll_schedule_grows_then_repeats_its_last_delay() -> None:
    settings = Settings(BATON_BACKGROUND_POLL_SCHEDULE="1s,2s,15m")
    assert [settings.poll_delay(n) for n in (1, 2, 3, 4, 9)] == [1, 2, 900, 900, 900]


def test_built_in_tools_reach_the_responses_api_not_strict() -> None:
    """The Responses API treats a function tool as strict unless told; the built-ins have optional
    arguments, which strict mode refuses, so their definitions say `strict: false`."""
    body = request_body(
        "m", [{"role": "user", "content": "hi"}], {"tools": expand_tools(["read_document_section"])}
    )

    [tool] = body["tools"]
    assert (tool["name"], tool["strict"]) == ("read_document_section", False)
    assert "query" in tool["parameters"]["properties"] and "required" not in tool["parameters"]
