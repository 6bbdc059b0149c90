"""The simulator's Responses API (/v1/responses) over HTTP, driven by the official openai client:
background create, retrieve, cancel, and webhooks the openai client itself verifies."""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from baton_dev.simulator import ModelSimulator, SimulatorConfig

pytestmark = pytest.mark.integration

MODEL = "baton-local"
SECRET = "whsec_" + base64.b64encode(b"simulator-test-secret-0123456789").decode()
CALCULATOR: Any = {
    "type": "function",
    "name": "calculator",
    "parameters": {
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
    },
}


class Receiver:
    """Collects the webhooks the simulator posts (body and headers), answering 200."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[bytes, dict[str, str]]] = queue.Queue()
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                events.put((body, dict(self.headers.items())))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def next(self, timeout_s: float = 10) -> tuple[bytes, dict[str, str]]:
        return self.events.get(timeout=timeout_s)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture
def sim(receiver: Receiver) -> Iterator[ModelSimulator]:
    # 60 simulated seconds per second: the 30 s model below answers in half a second.
    config = SimulatorConfig(models=(MODEL,), latency_ms=0, ms_per_token=0, time_scale=60)
    with ModelSimulator(config) as simulator:
        simulator.set_webhook(receiver.url, SECRET)
        yield simulator


@pytest.fixture
def client(sim: ModelSimulator) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=sim.base_url, api_key="x", max_retries=0, timeout=10, webhook_secret=SECRET
    ) as c:
        yield c


def wait_status(client: openai.OpenAI, response_id: str, wanted: str, timeout_s: float = 10) -> Any:
    deadline = time.monotonic() + timeout_s
    response = client.responses.retrieve(response_id)
    while response.status != wanted and time.monotonic() < deadline:
        time.sleep(0.05)
        response = client.responses.retrieve(response_id)
    assert response.status == wanted, response
    return response


def test_background_response_finishes_after_its_scaled_latency_and_signs_its_webhook(
    client: openai.OpenAI, receiver: Receiver, sim: ModelSimulator
) -> None:
    created = client.responses.create(
        model=MODEL,
        input="Summarize in 1 sentence\nDocument:\nThe cat sat on the mat. The dog barked. [sim:slow=30000]",
        background=True,
    )
    assert created.status == "in_progress"
    assert created.output == []
    # The paid create's log entry names the response it made (the chaos suite attributes with it).
    [logged] = [entry for entry in sim.request_log() if entry["path"].endswith("/responses")]
    assert logged["response_id"] == created.id and logged["status"] == 200
    done = wait_status(client, created.id, "completed")
    assert done.output_text
    assert done.usage is not None and done.usage.output_tokens > 0
    body, headers = receiver.next()
    event = client.webhooks.unwrap(body, headers)  # raises unless signed with SECRET
    assert event.type == "response.completed"
    assert event.data.id == created.id


def test_a_tampered_webhook_does_not_verify(client: openai.OpenAI, receiver: Receiver) -> None:
    created = client.responses.create(model=MODEL, input="Say something short.", background=True)
    body, headers = receiver.next()
    assert json.loads(body)["data"]["id"] == created.id
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body.replace(created.id.encode(), b"resp_other"), headers)


def test_cancel_stops_a_background_response_and_counts_tokens_so_far(
    client: openai.OpenAI, receiver: Receiver
) -> None:
    created = client.responses.create(
        model=MODEL, input="Describe the sea at length. [sim:slow=600000]", background=True
    )
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(created.id).status == "cancelled"
    body, headers = receiver.next()
    assert client.webhooks.unwrap(body, headers).type == "response.cancelled"
    # A finished response cannot be cancelled.
    finished = client.responses.create(model=MODEL, input="Say hi.", background=True)
    wait_status(client, finished.id, "completed")
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(finished.id)


def test_tools_instructions_and_json_format_map_like_chat(client: openai.OpenAI) -> None:
    called = client.responses.create(model=MODEL, input="What is 6 * 7?", tools=[CALCULATOR])
    assert called.status == "completed"
    calls = [item for item in called.output if item.type == "function_call"]
    assert calls and calls[0].name == "calculator"
    follow_up = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "What is 6 * 7?"},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": "calculator",
                "arguments": calls[0].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "42"},
        ],
        tools=[CALCULATOR],
    )
    assert "42" in follow_up.output_text
    as_json = client.responses.create(
        model=MODEL,
        instructions="You answer in JSON.",
        input="Summarize: the sky is blue. Grass is green.",
        text={"format": {"type": "json_object"}},
    )
    assert set(json.loads(as_json.output_text)) == {"summary", "keywords"}


def test_unknown_response_answers_404_and_a_paid_call_is_logged_once(
    client: openai.OpenAI, sim: ModelSimulator
) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_missing")
    created = client.responses.create(model=MODEL, input="Say hi.", background=True)
    wait_status(client, created.id, "completed")
    assert [entry["path"] for entry in sim.request_log()] == ["/v1/responses"]
