"""Functions run as Lambda runs them: `python -m awslambdaric` processes against a local Runtime
API, one invocation at a time per process, with Lambda's environment and import path only."""

from __future__ import annotations

import json
import os
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from baton_dev.runtime.functions import Credentials, LocalFunction
from baton_dev.runtime.template import FunctionSpec

from .conftest import ROOT

pytestmark = pytest.mark.integration

HANDLER = textwrap.dedent(
    """
    import importlib
    import os
    import sys
    import time

    from aws_lambda_powertools.event_handler import APIGatewayRestResolver

    app = APIGatewayRestResolver()
    STARTED = time.time()
    # Probed at init (not part of an invocation's timeout): what this process can import.
    PROBED = ["boto3", "botocore", "awslambdaric", "aws_lambda_powertools", "baton"]
    PROBED += ["baton_dev", "moto", "pytest"]


    @app.get("/echo/<name>")
    def echo(name: str) -> dict:
        first = app.current_event.headers["x-caller"]
        time.sleep(0.2)  # let the other invocations run meanwhile
        return {"name": name, "first": first, "then": app.current_event.headers["x-caller"]}


    def importable(name):
        try:
            importlib.import_module(name)
        except ImportError:
            return False
        return True


    IMPORTABLE = {name: importable(name) for name in PROBED}


    def lambda_handler(event, context):
        action = event.get("action")
        if action == "describe":
            print("describing", context.aws_request_id)
            return {
                "pid": os.getpid(),
                "environ": dict(os.environ),
                "path": sys.path,
                "importable": IMPORTABLE,
                "remaining_ms": context.get_remaining_time_in_millis(),
                "request_id": context.aws_request_id,
                "function_arn": context.invoked_function_arn,
            }
        if action == "sleep":
            time.sleep(event["seconds"])
            return {"pid": os.getpid()}
        if action == "crash":
            os._exit(3)
        if action == "raise":
            raise ValueError("bad input")
        if "Records" in event:
            time.sleep(0.2)
            return {"pid": os.getpid(), "id": event["Records"][0]["id"]}
        return app.resolve(event, context)
    """
)
CREDENTIALS = Credentials("AKIDEXAMPLE", "secret-example", "token-example")


@pytest.fixture
def function(tmp_path: Path) -> Iterator[LocalFunction]:
    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text(HANDLER)
    yield from _function(tmp_path, code, timeout=3)


def _function(tmp_path: Path, code: Path, *, timeout: int) -> Iterator[LocalFunction]:
    spec = FunctionSpec(
        logical_id="EchoFunction",
        code_dir=code,
        handler="app.lambda_handler",
        timeout=timeout,
        memory_mb=256,
        environment={},
        layers=(ROOT / "layers" / "baton",),
    )
    function = LocalFunction(
        spec,
        {"POWERTOOLS_SERVICE_NAME": "echo", "FROM_TEMPLATE": "yes"},
        "us-east-1",
        credentials=lambda: CREDENTIALS,
        log_dir=tmp_path / "logs",
    )
    function.load()
    try:
        yield function
    finally:
        function.close()


def _invoke(function: LocalFunction, event: dict[str, Any]) -> Any:
    outcome = function.invoke(event)
    assert outcome.ok, outcome.error
    return outcome.result


def _concurrently(function: LocalFunction, events: list[dict[str, Any]]) -> list[Any]:
    results: list[Any] = [None] * len(events)

    def call(index: int) -> None:
        results[index] = _invoke(function, events[index])

    threads = [threading.Thread(target=call, args=(index,)) for index in range(len(events))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_a_function_sees_lambdas_environment_and_imports_nothing_from_the_dev_venv(
    function: LocalFunction, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON_DEV_ONLY_MARKER", "leaked")
    modules = [
        "boto3",
        "botocore",
        "awslambdaric",
        "aws_lambda_powertools",
        "baton",
        "baton_dev",
        "moto",
        "pytest",
    ]

    seen = _invoke(function, {"action": "describe", "modules": modules})

    assert seen["importable"] == {
        "boto3": True,  # the runtime's own
        "botocore": True,
        "awslambdaric": True,
        "aws_lambda_powertools": True,  # the layer's
        "baton": True,
        "baton_dev": False,  # developer tools stay out
        "moto": False,
        "pytest": False,
    }
    environ = seen["environ"]
    assert "BATON_DEV_ONLY_MARKER" not in environ  # nothing inherited from the runtime's process
    assert environ["FROM_TEMPLATE"] == "yes"
    assert environ["AWS_LAMBDA_FUNCTION_NAME"] == "EchoFunction"
    assert environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert environ["_HANDLER"] == "app.lambda_handler"
    assert environ["LAMBDA_TASK_ROOT"] == str(function.spec.code_dir)
    assert (environ["AWS_ACCESS_KEY_ID"], environ["AWS_SESSION_TOKEN"]) == ("AKIDEXAMPLE", "token-example")
    # Lambda's order: the function's folder, then the layer, then the runtime's packages.
    path = [entry for entry in seen["path"] if entry]
    assert path[0] == str(function.spec.code_dir)
    assert path.index(str(ROOT / "layers" / "baton")) < path.index(str(function.import_path[-1]))
    assert not any(".venv" in entry or "site-packages" in entry for entry in path), path
    # A real LambdaContext, fed by the Runtime API's headers.
    assert 0 < seen["remaining_ms"] <= 3000
    assert seen["function_arn"].endswith(":function:EchoFunction")
    # Its output goes to the function's own log file (what CloudWatch Logs would hold).
    assert f"describing {seen['request_id']}" in (function.log_dir / "EchoFunction.log").read_text()


def test_concurrent_invocations_get_processes_of_their_own_reused_when_warm(function: LocalFunction) -> None:
    callers = [f"caller{index}" for index in range(4)]
    events = [
        {
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
        for caller in callers
    ]

    results = _concurrently(function, events)

    for caller, result in zip(callers, results, strict=True):
        assert result["statusCode"] == 200
        assert json.loads(result["body"]) == {"name": caller, "first": caller, "then": caller}
    created = function.environments
    assert 2 <= created <= 4  # one per invocation running at the same time, at most
    records = _concurrently(function, [{"Records": [{"id": "m1"}]}])
    assert records[0]["id"] == "m1"
    assert function.environments == created  # an idle environment is warm: no new cold start
    assert records[0]["pid"] in function.process_ids()


def test_a_timeout_kills_the_process_and_the_next_invocation_gets_a_new_one(function: LocalFunction) -> None:
    pid = _invoke(function, {"action": "sleep", "seconds": 0})["pid"]

    outcome = function.invoke({"action": "sleep", "seconds": 30})

    assert not outcome.ok
    assert outcome.error == "Task timed out after 3.00 seconds"
    # Lambda's line in the function's log names the invocation the timeout ended.
    log = (function.log_dir / f"{function.name}.log").read_text()
    assert f" {outcome.request_id} Task timed out after 3.00 seconds\n" in log
    assert not _alive(pid)
    assert _invoke(function, {"action": "sleep", "seconds": 0})["pid"] != pid


def test_a_crash_ends_only_that_invocation_and_a_handler_error_keeps_the_process(
    function: LocalFunction,
) -> None:
    pid = _invoke(function, {"action": "sleep", "seconds": 0})["pid"]

    crashed = function.invoke({"action": "crash"})
    assert not crashed.ok
    assert crashed.error is not None and "Runtime exited with exit status 3" in crashed.error
    replacement = _invoke(function, {"action": "sleep", "seconds": 0})["pid"]
    assert replacement != pid

    raised = function.invoke({"action": "raise"})
    assert not raised.ok
    assert raised.error == "ValueError: bad input"
    assert _invoke(function, {"action": "sleep", "seconds": 0})["pid"] == replacement


def test_an_import_error_fails_the_start_with_lambdas_message(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text("import moto  # a developer package Lambda does not have\n")

    with pytest.raises(RuntimeError, match=r"Runtime\.ImportModuleError: Unable to import module 'app'"):
        list(_function(tmp_path, code, timeout=3))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child stays a zombie until reaped; /proc says whether it still runs.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()
