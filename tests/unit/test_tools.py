"""Built-in tools (baton.tools): the calculator, the document reader, the clock and the call runner."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict

from baton.errors import InvalidRequestError
from baton.tools import (
    MAX_RESULT_CHARS,
    TOOLS,
    Tool,
    ToolContext,
    expand_tools,
    run_tool_calls,
    runs_builtin_tools,
    tool_definitions,
)

NOW = datetime(2025, 3, 14, 9, 30, 5, tzinfo=UTC)  # a Friday; US daylight saving time began on March 9

DOCUMENT = (
    "Quarterly report\n\n"
    "Revenue grew by 12% to 4.2 million euros.\n"
    "Costs stayed flat.\n\n"
    "The Board approved a new REVENUE target.\n\n"
    "Outlook: stable."
)


def context(document: str | None = DOCUMENT, now: datetime = NOW) -> ToolContext:
    return ToolContext(tenant_id="acme", job_id="job_1", document_text=document, now=now)


def call(name: str, arguments: Any, call_id: str = "call_1") -> dict[str, Any]:
    encoded = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": encoded}}


def run(name: str, arguments: Any, ctx: ToolContext | None = None) -> str:
    """The content of the one tool message answering one call."""
    [message] = run_tool_calls([call(name, arguments)], ctx or context())
    assert message["role"] == "tool"
    assert message["tool_call_id"] == "call_1"
    content = message["content"]
    assert isinstance(content, str)
    return content


def calc(expression: str) -> str:
    return run("calculator", {"expression": expression})


# --- calculator ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("10 - 4 - 3", "3"),  # left-associative
        ("2 ** 3 ** 2", "512"),  # right-associative
        ("-2 ** 2", "-4"),  # ** binds tighter than unary minus
        ("-(3 - 5)", "2"),
        ("+4", "4"),
        ("7 / 2", "3.5"),
        ("7 // 2", "3"),
        ("-7 // 2", "-4"),
        ("7 % 3", "1"),
        ("2 ** -1", "0.5"),
        ("0.1 + 0.2", "0.30000000000000004"),
        ("1.5e3 * 2", "3000.0"),
        ("  3 +\t4  ", "7"),
        ("2 ** 1000", str(2**1000)),  # the exponent cap itself is allowed, computed exactly
    ],
)
def test_calculator_evaluates_arithmetic_with_python_precedence(expression: str, expected: str) -> None:
    assert calc(expression) == expected


@pytest.mark.parametrize("expression", ["1 / 0", "1 // 0", "5 % 0", "0 ** -1", "1.5 / (2 - 2)"])
def test_calculator_reports_division_by_zero(expression: str) -> None:
    assert calc(expression) == "error: division by zero"


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os')", "function calls are not allowed"),
        ("__import__('os').system('true')", "not allowed"),
        ("abs(-1)", "function calls are not allowed"),
        ("x + 1", "names are not allowed ('x')"),
        ("inf", "names are not allowed ('inf')"),
        ("(1).real", "attribute access is not allowed"),
        ("().__class__", "attribute access is not allowed"),
        ("1 / 0 + y", "names are not allowed ('y')"),  # checked before anything is evaluated
        ("1 < 2", "comparisons"),
        ("1 and 2", "comparisons"),
        ("~1", "operator Invert is not allowed"),
        ("6 & 3", "operator BitAnd is not allowed"),
        ("'a' * 3", "only numbers are allowed, not str"),
        ("True + 1", "only numbers are allowed, not bool"),
        ("1j", "only numbers are allowed, not complex"),
        ("[1] * 3", "List is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("1 +", "cannot parse"),
        ("1; 2", "cannot parse"),
    ],
)
def test_calculator_rejects_anything_but_arithmetic(expression: str, reason: str) -> None:
    result = calc(expression)

    assert result.startswith("error: ")
    assert reason in result


def test_calculator_never_runs_the_code_it_refuses(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    expression = f"open({str(target)!r}, 'w')"
    assert len(expression) <= 200

    assert calc(expression) == "error: function calls are not allowed"
    assert not target.exists()


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("2 ** 10 ** 10", "the exponent is too large (at most 1000)"),
        ("2 ** 1001", "the exponent is too large"),
        ("2 ** -1001", "the exponent is too large"),
        ("99 ** 999", "the result is too large"),
        ("(10 ** 999) * (10 ** 999)", "the result is too large"),
        ("(2 ** 1000) ** 1000", "the result is too large"),  # the exponent is allowed, not the result
        ("10 ** 1000 / 3", "the result is too large"),
        ("1.5 * 10 ** 999", "the result is too large"),
        ("1e308 * 10", "the result is too large"),
        ("1e300 ** 2", "the result is too large"),
        ("1e999", "the result is too large"),
        ("(-8) ** 0.5", "the result is not a real number"),
    ],
)
def test_calculator_refuses_huge_or_unreal_results(expression: str, reason: str) -> None:
    result = calc(expression)

    assert result.startswith("error: ")
    assert reason in result


def test_calculator_caps_the_expression_length() -> None:
    assert calc("1+" * 99 + "1") == "100"  # 199 characters: fine

    result = calc("1+" * 100 + "1")  # 201 characters

    assert result.startswith("error: invalid arguments for 'calculator': expression:")
    assert "200 characters" in result


# --- read_document_section ----------------------------------------------------------------------


def test_document_section_by_offset_reads_the_range_and_says_where_it_is() -> None:
    result = run("read_document_section", {"start": 18, "length": 40})

    assert result == f"[characters 18-58 of {len(DOCUMENT)}]\n{DOCUMENT[18:58]}"
    assert DOCUMENT[18:58].startswith("Revenue grew")


def test_document_section_defaults_to_the_first_2000_characters() -> None:
    document = "".join(str(i % 10) for i in range(5000))

    result = run("read_document_section", {}, context(document))

    assert result == f"[characters 0-2000 of 5000]\n{document[:2000]}"


def test_document_section_stops_at_the_end_of_the_document() -> None:
    result = run("read_document_section", {"start": len(DOCUMENT) - 7, "length": 8000})

    assert result == f"[characters {len(DOCUMENT) - 7}-{len(DOCUMENT)} of {len(DOCUMENT)}]\nstable."


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ({"start": 10_000}, f"start 10000 is past the end of the document ({len(DOCUMENT)} characters)"),
        ({"start": -1}, "start:"),
        ({"length": 8001}, "length:"),
        ({"length": 0}, "length:"),
        ({"query": "revenue", "start": 0}, "either 'query' or 'start'/'length'"),
        ({"query": "   "}, "'query' must not be blank"),
        ({"query": ""}, "query:"),
    ],
)
def test_document_section_rejects_bad_ranges(arguments: dict[str, Any], reason: str) -> None:
    result = run("read_document_section", arguments)

    assert result.startswith("error: ")
    assert reason in result


def test_document_section_by_query_returns_matching_paragraphs_case_insensitively() -> None:
    first = DOCUMENT.index("Revenue grew")
    second = DOCUMENT.index("The Board")
    first_paragraph = "Revenue grew by 12% to 4.2 million euros.\nCosts stayed flat."
    second_paragraph = "The Board approved a new REVENUE target."

    result = run("read_document_section", {"query": "revenue"})

    assert result == (
        f"[characters {first}-{first + len(first_paragraph)}]\n{first_paragraph}\n\n"
        f"[characters {second}-{second + len(second_paragraph)}]\n{second_paragraph}"
    )
    assert DOCUMENT[first : first + len(first_paragraph)] == first_paragraph  # offsets are readable
    assert "Outlook" not in result
    assert "Quarterly" not in result


def test_document_section_query_treats_the_query_as_text_not_a_pattern() -> None:
    assert "4.2 million" in run("read_document_section", {"query": "4.2 MILLION"})
    assert run("read_document_section", {"query": "4.2.*"}) == (
        "no paragraph of the document contains '4.2.*'"
    )


def test_document_section_query_without_a_match_says_so() -> None:
    assert run("read_document_section", {"query": "dividend"}) == (
        "no paragraph of the document contains 'dividend'"
    )


def test_document_section_query_shows_a_window_around_the_match_in_a_long_paragraph() -> None:
    document = "a" * 5000 + " NEEDLE " + "b" * 5000

    result = run("read_document_section", {"query": "needle"}, context(document))

    assert len(result) <= 2000
    assert "NEEDLE" in result
    header, excerpt = result.split("\n", 1)
    start, end = (int(n) for n in header.removeprefix("[characters ").removesuffix("]").split("-"))
    assert document[start:end] == excerpt
    assert start > 0 and end < len(document)


def test_document_section_query_keeps_to_2000_characters_and_counts_what_it_left_out() -> None:
    paragraphs = [f"Paragraph {i} mentions the budget. " + "x" * 300 for i in range(20)]
    document = "\n\n".join(paragraphs)

    result = run("read_document_section", {"query": "budget"}, context(document))

    assert len(result) <= 2000
    assert "Paragraph 0 mentions" in result
    assert "Paragraph 19 mentions" not in result
    shown = result.count("mentions the budget")
    assert result.endswith(f"[{20 - shown} more matching paragraph(s) not shown; read them by offset]")


def test_document_section_without_a_document_is_an_error() -> None:
    assert run("read_document_section", {}, context(None)) == "error: this job has no document"
    assert run("read_document_section", {"query": "x"}, context(None)) == "error: this job has no document"
    assert run("read_document_section", {}, context("")) == "error: this job's document contains no text"


# --- current_time -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({}, "2025-03-14T09:30:05+00:00 (UTC, Friday)"),
        ({"timezone": "UTC"}, "2025-03-14T09:30:05+00:00 (UTC, Friday)"),
        ({"timezone": "Europe/Paris"}, "2025-03-14T10:30:05+01:00 (Europe/Paris, Friday)"),
        ({"timezone": "America/New_York"}, "2025-03-14T05:30:05-04:00 (America/New_York, Friday)"),
        ({"timezone": "Pacific/Kiritimati"}, "2025-03-14T23:30:05+14:00 (Pacific/Kiritimati, Friday)"),
        ({"timezone": "Pacific/Pago_Pago"}, "2025-03-13T22:30:05-11:00 (Pacific/Pago_Pago, Thursday)"),
    ],
)
def test_current_time_uses_the_injected_clock_and_the_timezone(
    arguments: dict[str, Any], expected: str
) -> None:
    assert run("current_time", arguments) == expected


@pytest.fixture
def far_from_utc() -> Iterator[None]:
    """The process's local time zone is not UTC, so a naive clock taken as local time shows."""
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = previous
        time.tzset()


@pytest.mark.usefixtures("far_from_utc")
def test_current_time_treats_a_naive_clock_as_utc() -> None:
    naive = context(now=datetime(2025, 7, 1, 12, 0, 0))

    assert run("current_time", {"timezone": "Europe/Paris"}, naive) == (
        "2025-07-01T14:00:00+02:00 (Europe/Paris, Tuesday)"
    )


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime", "Europe"])
def test_current_time_with_an_unknown_timezone_is_an_error(zone: str) -> None:
    assert run("current_time", {"timezone": zone}) == (
        f"error: unknown timezone {zone!r}; use an IANA name such as 'Europe/Paris'"
    )


# --- run_tool_calls -----------------------------------------------------------------------------


def test_run_tool_calls_answers_every_call_in_order_with_its_id() -> None:
    calls = [
        call("calculator", {"expression": "6 * 7"}, "call_a"),
        call("current_time", {}, "call_b"),
        call("read_document_section", {"query": "outlook"}, "call_c"),
    ]

    messages = run_tool_calls(calls, context())

    assert [message["tool_call_id"] for message in messages] == ["call_a", "call_b", "call_c"]
    assert all(
        message["role"] == "tool" and set(message) == {"role", "tool_call_id", "content"}
        for message in messages
    )
    assert messages[0]["content"] == "42"
    assert messages[1]["content"] == "2025-03-14T09:30:05+00:00 (UTC, Friday)"
    assert messages[2]["content"].endswith("Outlook: stable.")


def test_run_tool_calls_is_deterministic() -> None:
    calls = [call("calculator", {"expression": "2 ** 0.5"}), call("read_document_section", {"query": "re"})]

    assert run_tool_calls(calls, context()) == run_tool_calls(calls, context())


def test_unknown_tool_is_an_error_naming_it() -> None:
    assert run("rm_rf", {}) == (
        "error: unknown tool 'rm_rf'; available: calculator, read_document_section, current_time"
    )


@pytest.mark.parametrize("arguments", ['{"expression": "1 + 1"', "not json", "{'expression': '1'}"])
def test_arguments_that_are_not_json_are_an_error(arguments: str) -> None:
    assert run("calculator", arguments) == "error: the arguments for 'calculator' are not valid JSON"


@pytest.mark.parametrize("arguments", ["[1, 2]", '"1 + 1"', "42", "null"])
def test_arguments_that_are_not_an_object_are_an_error(arguments: str) -> None:
    assert run("calculator", arguments) == "error: the arguments for 'calculator' must be a JSON object"


def test_empty_arguments_mean_no_arguments() -> None:
    assert run("current_time", "") == "2025-03-14T09:30:05+00:00 (UTC, Friday)"


def test_arguments_already_decoded_are_accepted() -> None:
    tool_call = {
        "id": "c",
        "type": "function",
        "function": {"name": "calculator", "arguments": {"expression": "2+2"}},
    }

    assert run_tool_calls([tool_call], context())[0]["content"] == "4"


@pytest.mark.parametrize(
    ("name", "arguments", "where"),
    [
        ("calculator", {"expression": 5}, "expression: Input should be a valid string"),
        ("calculator", {}, "expression: Field required"),
        ("calculator", {"expression": "1", "mode": "x"}, "mode: Extra inputs are not permitted"),
        ("read_document_section", {"start": "10"}, "start: Input should be a valid integer"),
        ("read_document_section", {"start": 1.5}, "start: Input should be a valid integer"),
        ("read_document_section", {"length": True}, "length: Input should be a valid integer"),
        ("current_time", {"timezone": ["UTC"]}, "timezone: Input should be a valid string"),
    ],
)
def test_arguments_of_the_wrong_type_are_an_error_naming_the_field(
    name: str, arguments: dict[str, Any], where: str
) -> None:
    result = run(name, arguments)

    assert result.startswith(f"error: invalid arguments for '{name}': ")
    assert where in result


@pytest.mark.parametrize(
    ("tool_call", "content"),
    [
        ("not a call", "error: a tool call must be an object"),
        ({"id": "c", "type": "retrieval", "function": {}}, "error: unsupported tool call type 'retrieval'"),
        ({"id": "c", "type": "function"}, "error: the tool call has no function name"),
        (
            {"id": "c", "type": "function", "function": {"name": 3}},
            "error: the tool call has no function name",
        ),
    ],
)
def test_malformed_tool_calls_are_answered_not_raised(tool_call: Any, content: str) -> None:
    [message] = run_tool_calls([tool_call], context())

    assert message["content"] == content


def test_a_call_without_an_id_is_answered_with_an_empty_id() -> None:
    [message] = run_tool_calls(
        [{"function": {"name": "calculator", "arguments": '{"expression": "1"}'}}], context()
    )

    assert message == {"role": "tool", "tool_call_id": "", "content": "1"}


class _NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _tool(name: str, handler: Any) -> Tool[Any]:
    return Tool(
        name=name,
        description="test tool",
        arguments=_NoArgs,
        handler=handler,
    )


def test_a_tool_that_raises_becomes_an_error_message_without_internals() -> None:
    def explode(args: _NoArgs, ctx: ToolContext) -> str:
        raise RuntimeError("secret internal detail")

    [message] = run_tool_calls([call("explode", {})], context(), tools={"explode": _tool("explode", explode)})

    assert message["content"] == "error: tool 'explode' failed unexpectedly"


def test_results_are_capped_at_16000_characters() -> None:
    big = _tool("big", lambda args, ctx: "y" * 50_000)
    exact = _tool("exact", lambda args, ctx: "z" * MAX_RESULT_CHARS)
    registry = {"big": big, "exact": exact}

    capped, untouched = run_tool_calls([call("big", {}), call("exact", {})], context(), tools=registry)

    assert MAX_RESULT_CHARS == 16_000
    assert len(capped["content"]) == MAX_RESULT_CHARS
    assert capped["content"].endswith("\n[truncated]")
    assert capped["content"].startswith("y" * 1000)
    assert untouched["content"] == "z" * MAX_RESULT_CHARS


def test_calls_beyond_max_calls_are_answered_but_not_run() -> None:
    ran: list[int] = []

    def count(args: _NoArgs, ctx: ToolContext) -> str:
        ran.append(1)
        return "ran"

    calls = [call("count", {}, f"call_{i}") for i in range(5)]

    messages = run_tool_calls(calls, context(), max_calls=3, tools={"count": _tool("count", count)})

    assert len(ran) == 3
    assert [message["tool_call_id"] for message in messages] == [f"call_{i}" for i in range(5)]
    assert [message["content"] for message in messages[:3]] == ["ran"] * 3
    assert messages[3]["content"] == "error: too many tool calls in one turn; only the first 3 were run"


def test_default_max_calls_is_16() -> None:
    calls = [call("calculator", {"expression": str(i)}, f"call_{i}") for i in range(17)]

    messages = run_tool_calls(calls, context())

    assert messages[15]["content"] == "15"
    assert messages[16]["content"].startswith("error: too many tool calls")


def test_a_custom_registry_hides_the_built_ins_it_leaves_out() -> None:
    [message] = run_tool_calls([call("calculator", {"expression": "1"})], context(), tools={})

    assert message["content"].startswith("error: unknown tool 'calculator'")


# --- tool_definitions ---------------------------------------------------------------------------


def test_tool_definitions_are_openai_function_tools() -> None:
    definitions = tool_definitions()

    assert [d["function"]["name"] for d in definitions] == [
        "calculator",
        "read_document_section",
        "current_time",
    ]
    for definition in definitions:
        assert set(definition) == {"type", "function"}
        assert definition["type"] == "function"
        function = definition["function"]
        assert set(function) == {"name", "description", "parameters", "strict"}
        assert function["strict"] is False  # optional arguments: not strict mode, on either API
        assert isinstance(function["description"], str) and function["description"]
        assert function["parameters"]["type"] == "object"
        assert function["parameters"]["additionalProperties"] is False
        json.dumps(definition)  # serialisable as a request body


def test_tool_definitions_describe_exactly_the_arguments_each_tool_accepts() -> None:
    for name, tool in TOOLS.items():
        parameters = tool_definitions([name])[0]["function"]["parameters"]

        assert set(parameters["properties"]) == set(tool.arguments.model_fields), name
        required = {field for field, info in tool.arguments.model_fields.items() if info.is_required()}
        assert set(parameters.get("required", [])) == required, name


def _titles_dropped(schema: dict[str, Any]) -> dict[str, Any]:
    dropped: dict[str, Any] = json.loads(
        json.dumps(schema), object_hook=lambda node: {k: v for k, v in node.items() if k != "title"}
    )
    return dropped


@pytest.mark.parametrize("name", list(TOOLS))
def test_each_tool_advertises_its_argument_models_own_schema(name: str) -> None:
    """One source: the schema the model sees is the argument model's, not a hand-written copy."""
    tool = TOOLS[name]
    assert all(field != "title" for field in tool.arguments.model_fields)  # _titles_dropped's premise
    advertised = tool_definitions([name])[0]["function"]["parameters"]

    assert advertised == _titles_dropped(tool.arguments.model_json_schema())
    assert advertised["additionalProperties"] is False
    assert all(prop.get("description") for prop in advertised["properties"].values()), name


def _bounds(prop: dict[str, Any]) -> list[Any]:
    """Values at and just past each bound the property's schema states, and of the wrong types."""
    values: list[Any] = [None, True, 1, "1", [], {}]
    for option in prop.get("anyOf", [prop]):
        if "minLength" in option:
            values += ["x" * option["minLength"], "x" * (option["minLength"] - 1)]
        if "maxLength" in option:
            values += ["x" * option["maxLength"], "x" * (option["maxLength"] + 1)]
        if "minimum" in option:
            values += [option["minimum"], option["minimum"] - 1]
        if "maximum" in option:
            values += [option["maximum"], option["maximum"] + 1]
    return values


@pytest.mark.parametrize("name", list(TOOLS))
def test_the_advertised_schema_accepts_exactly_what_the_tool_accepts(name: str) -> None:
    """Every argument object at a bound of the advertised schema (or past it, of a wrong type,
    with an unknown key, without a required key) is valid for the schema exactly when the tool
    runs it rather than answering `invalid arguments`."""
    tool = TOOLS[name]
    schema = tool_definitions([name])[0]["function"]["parameters"]
    validator = Draft202012Validator(schema)
    required = {key: "1" for key in schema.get("required", [])}
    candidates: list[dict[str, Any]] = [dict(required), {**required, "unexpected": 1}]
    if required:
        candidates.append({})
    for key, prop in schema["properties"].items():
        candidates += [{**required, key: value} for value in _bounds(prop)]
    verdicts = []
    for arguments in candidates:
        advertised_valid = validator.is_valid(arguments)
        answer = tool.run(arguments, context())
        assert advertised_valid is not answer.startswith("error: invalid arguments"), (arguments, answer)
        verdicts.append(advertised_valid)
    assert True in verdicts and False in verdicts  # both sides of every bound were tried


def test_tool_definitions_select_by_name_in_the_given_order() -> None:
    names = [d["function"]["name"] for d in tool_definitions(["current_time", "calculator", "current_time"])]

    assert names == ["current_time", "calculator"]
    assert tool_definitions([]) == []


def test_tool_definitions_refuse_unknown_names() -> None:
    with pytest.raises(InvalidRequestError, match="unknown built-in tool"):
        tool_definitions(["calculator", "shell"])


def test_tool_definitions_are_copies_the_caller_may_change() -> None:
    tool_definitions()[0]["function"]["parameters"]["properties"].clear()

    assert "expression" in tool_definitions(["calculator"])[0]["function"]["parameters"]["properties"]


# --- a job's tools ------------------------------------------------------------------------------

CLIENT_TOOL = {
    "type": "function",
    "function": {"name": "lookup_order", "description": "d", "parameters": {"type": "object"}},
}


def test_expand_tools_replaces_built_in_names_and_keeps_client_tools() -> None:
    expanded = expand_tools(["calculator", CLIENT_TOOL, "current_time"])

    assert expanded == [*tool_definitions(["calculator"]), CLIENT_TOOL, *tool_definitions(["current_time"])]


def test_expand_tools_refuses_unknown_built_in_names() -> None:
    with pytest.raises(InvalidRequestError, match="'shell'"):
        expand_tools(["shell"])


def test_runs_builtin_tools_only_when_every_call_names_a_built_in() -> None:
    builtin = call("calculator", {"expression": "1"})
    client = call("lookup_order", {"id": 7})

    assert runs_builtin_tools([builtin, call("current_time", {})]) is True
    assert runs_builtin_tools([builtin, client]) is False  # the client's tool: the calls are the result
    assert runs_builtin_tools([client]) is False
    assert runs_builtin_tools([]) is False
    assert runs_builtin_tools([{"id": "c", "type": "function"}]) is False
    assert runs_builtin_tools([builtin], tools={}) is False
