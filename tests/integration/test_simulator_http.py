"""The model simulator over HTTP, driven by the official openai client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from baton_dev.simulator import ModelSimulator, SimulatorConfig, count_tokens

pytestmark = pytest.mark.integration

MODEL = "baton-local"
PROMPT = (
    "Summarize the report in 2 sentences\n"
    "Document:\n"
    "Revenue grew 12% in the third quarter, driven by strong cloud revenue. "
    "The office plants were watered. "
    "Management expects cloud revenue growth to continue next quarter."
)
CALCULATOR: Any = {
    "type": "function",
    "function": {
        "name": "calculator",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}


@pytest.fixture
def sim() -> Iterator[ModelSimulator]:
    config = SimulatorConfig(
        models=(MODEL, "other-model"), latency_ms=0, ms_per_token=0, context_window=200, retry_after_s=2
    )
    with ModelSimulator(config) as simulator:
        yield simulator


@pytest.fixture
def client(sim: ModelSimulator) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0, timeout=10) as c:
        yield c


def sim_url(sim: ModelSimulator, path: str) -> str:
    return f"http://127.0.0.1:{sim.port}{path}"


def ask(client: openai.OpenAI, content: str, **kwargs: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(  # type: ignore[call-overload]
        model=MODEL, messages=[{"role": "user", "content": content}], **kwargs
    )


def test_models_list_and_health(sim: ModelSimulator, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL, "other-model"]
    assert client.models.retrieve("other-model").id == "other-model"
    assert sim.base_url == f"http://127.0.0.1:{sim.port}/v1"
    assert httpx.get(sim_url(sim, "/healthz")).status_code == 200


def test_completion_with_usage(client: openai.OpenAI) -> None:
    response = ask(client, PROMPT)
    content = response.choices[0].message.content or ""
    assert response.id.startswith("chatcmpl-")
    assert response.model == MODEL
    assert response.choices[0].finish_reason == "stop"
    assert content == (
        "Summary (Summarize the report in 2 sentences): "
        "Revenue grew 12% in the third quarter, driven by strong cloud revenue. "
        "Management expects cloud revenue growth to continue next quarter."
    )
    assert response.usage is not None
    assert response.usage.prompt_tokens == count_tokens(PROMPT)
    assert response.usage.completion_tokens == count_tokens(content)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_max_tokens_truncates(client: openai.OpenAI) -> None:
    response = ask(client, PROMPT, max_tokens=5)
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None and response.usage.completion_tokens == 5


def test_same_request_same_answer(client: openai.OpenAI) -> None:
    first, second = ask(client, PROMPT), ask(client, PROMPT)
    other = ask(client, PROMPT + " Costs fell.")
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.id == second.id
    assert other.id != first.id


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    expected = ask(client, PROMPT)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    finish_reasons: list[str] = []
    usage = None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            if chunk.choices[0].finish_reason:
                finish_reasons.append(chunk.choices[0].finish_reason)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == expected.choices[0].message.content
    assert len([p for p in pieces if p]) > 5  # really streamed, not one blob
    assert finish_reasons == ["stop"]
    assert usage is not None and expected.usage is not None
    assert usage.total_tokens == expected.usage.total_tokens


def test_streaming_spreads_latency_over_tokens() -> None:
    config = SimulatorConfig(latency_ms=0, ms_per_token=10)
    with (
        ModelSimulator(config) as sim,
        openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as client,
    ):
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "One two three four five six."}], stream=True
        )
        arrivals: list[float] = []
        start = time.monotonic()
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic() - start)
    # "Summary: One two three four five six." is 9 tokens, 10 ms each.
    assert len(arrivals) == 9
    assert arrivals[-1] - arrivals[0] >= 0.06


def test_tool_call_then_tool_result(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is 12 * (3 + 4)?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[CALCULATOR])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "12 * (3 + 4)"}

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "84"})
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[CALCULATOR])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Based on the tool result (84): What is 12 * (3 + 4)?"


def test_streamed_tool_call(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "add 2 + 2"}],
        tools=[CALCULATOR],
        stream=True,
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        for delta_call in chunk.choices[0].delta.tool_calls or []:
            if delta_call.function is not None:
                name += delta_call.function.name or ""
                arguments += delta_call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert (name, json.loads(arguments), finish) == ("calculator", {"expression": "2 + 2"}, "tool_calls")


def test_json_object(client: openai.OpenAI) -> None:
    response = ask(client, PROMPT, response_format={"type": "json_object"})
    data = json.loads(response.choices[0].message.content or "")
    assert data["keywords"][:3] == ["revenue", "quarter", "cloud"]
    assert data["summary"].startswith("Revenue grew 12%")


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found"


def test_429_directive(sim: ModelSimulator, client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        ask(client, "hello [sim:429]")
    assert info.value.response.headers["retry-after"] == "2"
    assert info.value.response.headers["retry-after-ms"] == "2000"
    assert info.value.code == "rate_limit_exceeded"
    assert sim.request_log()[-1]["fault"] == "429"


def test_503_directive_and_only_first_attempts(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        ask(client, "hello [sim:503]")
    assert info.value.status_code == 503
    with pytest.raises(openai.InternalServerError):
        ask(client, "flaky [sim:503x1]")
    assert ask(client, "flaky [sim:503x1]").choices[0].message.content == "Summary: flaky"


def test_context_length(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, "short [sim:context_length]")
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, "word " * 250)
    assert info.value.code == "context_length_exceeded"
    assert "maximum context length is 200 tokens" in info.value.message
    assert "resulted in 250 tokens" in info.value.message


def test_slow_directive(sim: ModelSimulator, client: openai.OpenAI) -> None:
    start = time.monotonic()
    response = ask(client, "Take your time. [sim:slow=200]")
    assert time.monotonic() - start >= 0.2
    assert response.choices[0].message.content == "Summary: Take your time."
    assert sim.request_log()[-1]["fault"] == "slow"


def test_runtime_faults_and_http_control(sim: ModelSimulator, client: openai.OpenAI) -> None:
    sim.set_faults(rate_500=1.0)
    with pytest.raises(openai.InternalServerError) as info:
        ask(client, "hello")
    assert info.value.status_code == 500
    answer = httpx.post(sim_url(sim, "/_sim/faults"), json={"rate_500": 0})
    assert answer.status_code == 200 and answer.json()["rate_500"] == 0
    assert ask(client, "hello").choices[0].finish_reason == "stop"
    assert httpx.post(sim_url(sim, "/_sim/faults"), json={"nope": 1}).status_code == 400
    with pytest.raises(ValueError, match="rate_429"):
        sim.set_faults(rate_429=2)


def test_random_faults_are_reproducible() -> None:
    def statuses() -> list[int]:
        config = SimulatorConfig(latency_ms=0, ms_per_token=0, rate_429=0.5, seed=3)
        with ModelSimulator(config) as sim, httpx.Client(base_url=sim.base_url) as http:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            return [http.post("/chat/completions", json=body).status_code for _ in range(12)]

    first = statuses()
    assert first == statuses()
    assert set(first) == {200, 429}


def test_malformed_json_is_400(sim: ModelSimulator) -> None:
    response = httpx.post(
        sim.base_url + "/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert sim.request_log()[-1]["status"] == 400


def test_request_log(sim: ModelSimulator, client: openai.OpenAI) -> None:
    ask(client, PROMPT, extra_headers={"X-Baton-Job-Id": "job-123", "X-Baton-Step-Key": "infer#1"})
    with pytest.raises(openai.RateLimitError):
        ask(client, "x [sim:429]", extra_headers={"X-Baton-Job-Id": "job-456"})
    log = sim.request_log()
    assert [(e["job_id"], e["step_key"], e["status"], e["fault"]) for e in log] == [
        ("job-123", "infer#1", 200, None),
        ("job-456", None, 429, "429"),
    ]
    assert log[0]["path"] == "/v1/chat/completions"
    assert log[0]["model"] == MODEL
    assert log[0]["prompt_tokens"] == count_tokens(PROMPT)
    assert log[0]["completion_tokens"] > 0
    assert isinstance(log[0]["ts"], float)
    assert httpx.get(sim_url(sim, "/_sim/requests")).json() == log


def test_stop_closes_the_port() -> None:
    with ModelSimulator(SimulatorConfig(latency_ms=0)) as sim:
        url = sim_url(sim, "/healthz")
        assert httpx.get(url).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)
