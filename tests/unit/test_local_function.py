"""The local runtime runs concurrent invocations of one function like Lambda: each in an execution
environment of its own, so handlers' per-invocation globals never mix between invocations."""

from __future__ import annotations

import json
import textwrap
import threading
from pathlib import Path
from typing import Any

from baton_dev.runtime.functions import LocalFunction
from baton_dev.runtime.template import FunctionSpec

HANDLER = textwrap.dedent(
    """
    import time

    from aws_lambda_powertools.event_handler import APIGatewayRestResolver

    app = APIGatewayRestResolver()
    last_event = {}  # per-invocation state in a module global, as BatchProcessor keeps its records


    @app.get("/echo/<name>")
    def echo(name: str) -> dict:
        first = app.current_event.headers["x-caller"]
        time.sleep(0.05)  # let the other invocations run meanwhile
        return {"name": name, "first": first, "then": app.current_event.headers["x-caller"]}


    def lambda_handler(event, context):
        if "Records" in event:
            last_event["id"] = event["Records"][0]["id"]
            time.sleep(0.05)
            return {"id": last_event["id"]}
        return app.resolve(event, context)
    """
)


def _function(tmp_path: Path) -> LocalFunction:
    (tmp_path / "app.py").write_text(HANDLER)
    spec = FunctionSpec(
        logical_id="EchoFunction",
        code_dir=tmp_path,
        handler="app.lambda_handler",
        timeout=10,
        memory_mb=128,
        environment={},
    )
    function = LocalFunction(spec, {"POWERTOOLS_SERVICE_NAME": "echo"}, "us-east-1")
    function.load()
    return function


def _api_event(caller: str) -> dict[str, Any]:
    return {
        "resource": "/echo/{name}",
        "path": f"/echo/{caller}",
        "httpMethod": "GET",
        "headers": {"x-caller": caller},
        "multiValueHeaders": {"x-caller": [caller]},
        "queryStringParameters": None,
        "pathParameters": {"name": caller},
        "requestContext": {"path": f"/echo/{caller}", "stage": "test"},
        "body": None,
        "isBase64Encoded": False,
    }


def _concurrently(function: LocalFunction, events: list[dict[str, Any]]) -> list[Any]:
    results: list[Any] = [None] * len(events)

    def call(index: int) -> None:
        outcome = function.invoke(events[index])
        assert outcome.ok, outcome.error
        results[index] = outcome.result

    threads = [threading.Thread(target=call, args=(index,)) for index in range(len(events))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_concurrent_api_invocations_each_see_their_own_request(tmp_path: Path) -> None:
    function = _function(tmp_path)
    callers = [f"caller{index}" for index in range(8)]

    results = _concurrently(function, [_api_event(caller) for caller in callers])

    for caller, result in zip(callers, results, strict=True):
        assert result["statusCode"] == 200
        assert json.loads(result["body"]) == {"name": caller, "first": caller, "then": caller}


def test_concurrent_invocations_get_separate_environments_that_are_reused_when_idle(tmp_path: Path) -> None:
    function = _function(tmp_path)
    events = [{"Records": [{"id": f"message{index}"}]} for index in range(6)]

    results = _concurrently(function, events)

    assert [result["id"] for result in results] == [f"message{index}" for index in range(6)]
    created = function.environments
    assert 2 <= created <= 6  # one per invocation running at the same time, at most
    _concurrently(function, events[:1])
    assert function.environments == created  # an idle environment is warm: no new cold start
