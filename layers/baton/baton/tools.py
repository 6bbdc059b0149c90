"""Safe built-in tools that Baton runs on the model's behalf in a job's `tool` step.

In an agent loop the model answers with OpenAI `tool_calls`; `run_tool_calls` executes the ones
that name a built-in and returns one OpenAI `tool` message per call, for the next inference.
Nothing here raises for bad input from the model: an unknown tool, arguments that are not JSON,
arguments of the wrong shape or a failing tool all become a content string starting with
`error: `, which the model reads and can recover from. Every tool is pure and deterministic:
its inputs are the arguments and a `ToolContext` (the clock is injected through `now`).
"""

from __future__ import annotations

import ast
import copy
import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from functools import cached_property
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from baton.errors import InvalidRequestError

__all__ = [
    "MAX_RESULT_CHARS",
    "TOOLS",
    "Tool",
    "ToolContext",
    "ToolError",
    "expand_tools",
    "run_tool_calls",
    "runs_builtin_tools",
    "tool_definitions",
]

MAX_RESULT_CHARS: Final = 16_000
MAX_CALLS_PER_TURN: Final = 16
_TRUNCATION_MARK: Final = "\n[truncated]"


@dataclass(frozen=True)
class ToolContext:
    """What a tool may know about the job it runs for. `now` should be timezone-aware (naive = UTC)."""

    tenant_id: str
    job_id: str
    document_text: str | None
    now: datetime


class ToolError(Exception):
    """A tool cannot answer these arguments; the message is shown to the model after `error: `."""


_ARGUMENTS = ConfigDict(extra="forbid", strict=True)


def openai_parameters(arguments: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema a model sees for a tool: its argument model's own, so what the model is
    told and what `Tool.run` accepts cannot drift apart. Pydantic's titles are dropped (noise in
    the prompt); `extra="forbid"` already gives `additionalProperties: false`. Not strict mode
    (`Tool.definition`): optional arguments stay optional, as the models declare them."""
    return _without_titles(arguments.model_json_schema())


def _without_titles(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_without_titles(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: (
            # Under "properties" the keys are argument names (one may be called "title").
            {name: _without_titles(value) for name, value in item.items()}
            if key == "properties"
            else _without_titles(item)
        )
        for key, item in schema.items()
        if key != "title"
    }


@dataclass(frozen=True)
class Tool[A: BaseModel]:
    """A built-in tool: `arguments` validates the model's arguments and is the JSON schema the
    model sees (`parameters`), one source for both."""

    name: str
    description: str
    arguments: type[A]
    handler: Callable[[A, ToolContext], str]

    @cached_property
    def parameters(self) -> dict[str, Any]:
        return openai_parameters(self.arguments)

    def definition(self) -> dict[str, Any]:
        """The OpenAI `tools` entry for this tool."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": copy.deepcopy(self.parameters),
                # Said, not left to the endpoint: strict mode wants every argument required (these
                # have optional ones), and the Responses API (background mode) is strict unless told.
                "strict": False,
            },
        }

    def run(self, args: dict[str, Any], ctx: ToolContext) -> str:
        """Validate `args` and run the tool; invalid arguments and `ToolError` become error text."""
        try:
            parsed = self.arguments.model_validate(args)
        except ValidationError as error:
            return f"error: invalid arguments for '{self.name}': {_describe(error)}"
        try:
            return self.handler(parsed, ctx)
        except ToolError as error:
            return f"error: {error}"


def _describe(error: ValidationError) -> str:
    parts = []
    for detail in error.errors(include_url=False):
        where = ".".join(str(part) for part in detail["loc"])
        message = str(detail["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


# --- calculator ---------------------------------------------------------------------------------

MAX_EXPRESSION_CHARS: Final = 200
MAX_EXPONENT: Final = 1000
MAX_RESULT_DIGITS: Final = 1000
_MAX_MAGNITUDE: Final = 10**MAX_RESULT_DIGITS
_TOO_LARGE: Final = (
    f"the result is too large (integers are limited to {MAX_RESULT_DIGITS} digits, decimals to about 1.8e308)"
)

type Number = int | float

_BINARY_OPERATORS: Final[dict[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPERATORS: Final[dict[type[ast.unaryop], Callable[[Any], Any]]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
_ALLOWED_NODES: Final = (
    ast.Expression,
    ast.Constant,
    ast.BinOp,
    ast.UnaryOp,
    *_BINARY_OPERATORS,
    *_UNARY_OPERATORS,
)


class CalculatorArgs(BaseModel):
    model_config = _ARGUMENTS

    expression: str = Field(
        min_length=1, max_length=MAX_EXPRESSION_CHARS, description="For example '(17 + 3) * 2 ** 10 / 7'."
    )


def _reject(node: ast.AST) -> ToolError:
    match node:
        case ast.Name(id=name):
            return ToolError(f"names are not allowed ('{name}'); use numbers only")
        case ast.Call():
            return ToolError("function calls are not allowed")
        case ast.Attribute():
            return ToolError("attribute access is not allowed")
        case ast.Compare() | ast.BoolOp():
            return ToolError("comparisons and boolean operators are not allowed")
        case ast.operator() | ast.unaryop():
            return ToolError(f"operator {type(node).__name__} is not allowed")
        case _:
            return ToolError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def _checked(value: Any) -> Number:
    if isinstance(value, complex):
        raise ToolError("the result is not a real number")
    if isinstance(value, float) and math.isnan(value):
        raise ToolError("the result is not a number")
    if (isinstance(value, float) and math.isinf(value)) or abs(value) > _MAX_MAGNITUDE:
        raise ToolError(_TOO_LARGE)
    return value


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"the exponent is too large (at most {MAX_EXPONENT})")
    # Refuse before computing: an int power can take long to build even below the exponent cap.
    if (
        isinstance(base, int)
        and abs(base) > 1
        and exponent > 0
        and exponent * math.log10(abs(base)) > MAX_RESULT_DIGITS + 1
    ):
        raise ToolError(_TOO_LARGE)
    return _checked(base**exponent)


def _evaluate(node: ast.AST) -> Number:
    match node:
        case ast.Expression(body=body):
            return _evaluate(body)
        case ast.Constant(value=value) if isinstance(value, int | float) and not isinstance(value, bool):
            return _checked(value)
        case ast.UnaryOp(op=op, operand=operand):
            return _checked(_UNARY_OPERATORS[type(op)](_evaluate(operand)))
        case ast.BinOp(left=left, op=ast.Pow(), right=right):
            return _power(_evaluate(left), _evaluate(right))
        case ast.BinOp(left=left, op=op, right=right):
            return _checked(_BINARY_OPERATORS[type(op)](_evaluate(left), _evaluate(right)))
        case ast.Constant(value=value):
            raise ToolError(f"only numbers are allowed, not {type(value).__name__}")
    raise _reject(node)


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression without `eval`; raise `ToolError` when it cannot."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise ToolError(f"cannot parse {expression!r} as an arithmetic expression") from None
    for node in ast.walk(tree):  # the whole tree first: a name is refused even after a 1/0
        if not isinstance(node, _ALLOWED_NODES):
            raise _reject(node)
    try:
        result = _evaluate(tree)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError(_TOO_LARGE) from None
    except RecursionError:
        raise ToolError("the expression is nested too deeply") from None
    return str(result)


def _calculator(args: CalculatorArgs, ctx: ToolContext) -> str:
    return calculate(args.expression)


# --- read_document_section ----------------------------------------------------------------------

DEFAULT_SECTION_CHARS: Final = 2000
MAX_SECTION_CHARS: Final = 8000
MAX_QUERY_RESULT_CHARS: Final = 2000
_PARAGRAPH_BREAK: Final = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_BLOCK_SEPARATOR: Final = "\n\n"
_OMISSION_RESERVE: Final = 80  # room kept for the "[n more ...]" note
_MIN_EXCERPT_CHARS: Final = 80


class DocumentSectionArgs(BaseModel):
    model_config = _ARGUMENTS

    start: int = Field(0, ge=0, description="Character offset to start reading at.")
    length: int = Field(
        DEFAULT_SECTION_CHARS, ge=1, le=MAX_SECTION_CHARS, description="Number of characters to read."
    )
    query: str | None = Field(
        None, min_length=1, max_length=200, description="Text to look for; use instead of start/length."
    )

    @model_validator(mode="after")
    def _one_mode(self) -> DocumentSectionArgs:
        if self.query is not None and {"start", "length"} & self.model_fields_set:
            raise ValueError("give either 'query' or 'start'/'length', not both")
        if self.query is not None and not self.query.strip():
            raise ValueError("'query' must not be blank")
        return self


def _paragraphs(text: str) -> list[tuple[int, str]]:
    """(offset, paragraph) for each blank-line-separated block of `text`, without surrounding space."""
    found = []
    position = 0
    for separator in [*_PARAGRAPH_BREAK.finditer(text), None]:
        end = separator.start() if separator else len(text)
        block = text[position:end]
        stripped = block.strip()
        if stripped:
            found.append((position + len(block) - len(block.lstrip()), stripped))
        if separator:
            position = separator.end()
    return found


def _excerpt_header(start: int, end: int, total: int | None = None) -> str:
    of_total = f" of {total}" if total is not None else ""
    return f"[characters {start}-{end}{of_total}]\n"


def _section(text: str, start: int, length: int) -> str:
    if start >= len(text):
        raise ToolError(f"start {start} is past the end of the document ({len(text)} characters)")
    end = min(start + length, len(text))
    return _excerpt_header(start, end, len(text)) + text[start:end]


def _search(text: str, query: str) -> str:
    pattern = re.compile(re.escape(query.strip()), re.IGNORECASE)
    matches = [
        (offset, paragraph, found.start())
        for offset, paragraph in _paragraphs(text)
        if (found := pattern.search(paragraph))
    ]
    if not matches:
        return f"no paragraph of the document contains {query.strip()!r}"
    blocks: list[str] = []
    used = 0
    for shown, (offset, paragraph, hit) in enumerate(matches):
        separator = len(_BLOCK_SEPARATOR) if blocks else 0
        reserve = _OMISSION_RESERVE if shown < len(matches) - 1 else 0
        room = MAX_QUERY_RESULT_CHARS - used - separator - reserve
        widest_header = _excerpt_header(offset + len(paragraph), offset + len(paragraph))
        size = min(len(paragraph), room - len(widest_header))
        if size < min(len(paragraph), _MIN_EXCERPT_CHARS):
            remaining = len(matches) - shown
            blocks.append(f"[{remaining} more matching paragraph(s) not shown; read them by offset]")
            break
        # A paragraph too long for the room left is shown as a window around the match.
        first = max(0, min(hit - size // 2, len(paragraph) - size))
        block = _excerpt_header(offset + first, offset + first + size) + paragraph[first : first + size]
        blocks.append(block)
        used += separator + len(block)
    return _BLOCK_SEPARATOR.join(blocks)


def _read_document_section(args: DocumentSectionArgs, ctx: ToolContext) -> str:
    if ctx.document_text is None:
        raise ToolError("this job has no document")
    if not ctx.document_text:
        raise ToolError("this job's document contains no text")
    if args.query is not None:
        return _search(ctx.document_text, args.query)
    return _section(ctx.document_text, args.start, args.length)


# --- current_time -------------------------------------------------------------------------------


class CurrentTimeArgs(BaseModel):
    model_config = _ARGUMENTS

    timezone: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="IANA timezone name such as 'Europe/Paris'; default UTC.",
    )


def _current_time(args: CurrentTimeArgs, ctx: ToolContext) -> str:
    name = args.timezone or "UTC"
    try:
        # UTC needs no tz database, so the default works wherever the database is missing.
        zone: tzinfo = UTC if name == "UTC" else ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolError(f"unknown timezone {name!r}; use an IANA name such as 'Europe/Paris'") from None
    now = ctx.now if ctx.now.tzinfo else ctx.now.replace(tzinfo=UTC)
    local = now.astimezone(zone)
    return f"{local.isoformat(timespec='seconds')} ({name}, {local.strftime('%A')})"


# --- registry -----------------------------------------------------------------------------------

TOOLS: Final[dict[str, Tool[Any]]] = {
    tool.name: tool
    for tool in (
        Tool(
            name="calculator",
            description=(
                "Evaluate an arithmetic expression exactly: numbers, + - * / // % **, unary minus "
                "and parentheses. No variables or functions."
            ),
            arguments=CalculatorArgs,
            handler=_calculator,
        ),
        Tool(
            name="read_document_section",
            description=(
                "Read the job's document: either `length` characters from character offset `start`, "
                "or, with `query`, the paragraphs that contain that text (case-insensitive). "
                "Each excerpt starts with its character range."
            ),
            arguments=DocumentSectionArgs,
            handler=_read_document_section,
        ),
        Tool(
            name="current_time",
            description="The current date and time, in UTC or in the given IANA timezone.",
            arguments=CurrentTimeArgs,
            handler=_current_time,
        ),
    )
}


def tool_definitions(names: list[str] | None = None) -> list[dict[str, Any]]:
    """OpenAI `tools` entries for the named built-ins (all of them by default), in that order."""
    selected = list(TOOLS) if names is None else list(dict.fromkeys(names))
    unknown = [name for name in selected if name not in TOOLS]
    if unknown:
        raise InvalidRequestError(
            f"unknown built-in tool(s): {', '.join(map(repr, unknown))}; available: {', '.join(TOOLS)}"
        )
    return [TOOLS[name].definition() for name in selected]


def expand_tools(tools: list[dict[str, Any] | str]) -> list[dict[str, Any]]:
    """A job's `parameters.tools` as the model endpoint wants them: each built-in's name replaced
    by its definition, the client's own OpenAI tool definitions passed through unchanged."""
    return [tool_definitions([tool])[0] if isinstance(tool, str) else tool for tool in tools]


def runs_builtin_tools(
    tool_calls: list[dict[str, Any]], tools: Mapping[str, Tool[Any]] | None = None
) -> bool:
    """Whether Baton should run these calls itself: there are some, and every one names a built-in.
    Otherwise (a call to one of the client's own tools) the calls are the job's result."""
    registry = TOOLS if tools is None else tools
    return bool(tool_calls) and all(
        isinstance(call, dict)
        and call.get("type", "function") == "function"
        and isinstance(call.get("function"), dict)
        and call["function"].get("name") in registry
        for call in tool_calls
    )


# --- running the model's calls ------------------------------------------------------------------


def _cap(content: str) -> str:
    if len(content) <= MAX_RESULT_CHARS:
        return content
    return content[: MAX_RESULT_CHARS - len(_TRUNCATION_MARK)] + _TRUNCATION_MARK


def _run_one(call: Any, ctx: ToolContext, tools: Mapping[str, Tool[Any]]) -> str:
    if not isinstance(call, dict):
        return "error: a tool call must be an object"
    if call.get("type", "function") != "function":
        return f"error: unsupported tool call type {call.get('type')!r}"
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        return "error: the tool call has no function name"
    name: str = function["name"]
    tool = tools.get(name)
    if tool is None:
        return f"error: unknown tool {name!r}; available: {', '.join(tools)}"
    raw = function.get("arguments")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        args: Any = {}
    elif isinstance(raw, str):
        try:
            args = json.loads(raw)
        except (ValueError, RecursionError):
            return f"error: the arguments for {name!r} are not valid JSON"
    else:
        args = raw
    if not isinstance(args, dict):
        return f"error: the arguments for {name!r} must be a JSON object"
    try:
        result = tool.run(args, ctx)
    except Exception:
        return f"error: tool {name!r} failed unexpectedly"
    return result if isinstance(result, str) else f"error: tool {name!r} returned no text"


def run_tool_calls(
    tool_calls: list[dict[str, Any]],
    ctx: ToolContext,
    *,
    max_calls: int = MAX_CALLS_PER_TURN,
    tools: Mapping[str, Tool[Any]] | None = None,
) -> list[dict[str, Any]]:
    """One OpenAI `tool` message per call, in order; never raises for anything the model sent.

    Calls beyond `max_calls` are not run but still answered (the next request must answer every
    `tool_call_id`). `tools` replaces the built-in registry, e.g. to offer only some of them.
    """
    registry = TOOLS if tools is None else tools
    messages = []
    for index, call in enumerate(tool_calls):
        call_id = call.get("id") if isinstance(call, dict) else None
        call_id = call_id if isinstance(call_id, str) else ""
        if index >= max_calls:
            content = f"error: too many tool calls in one turn; only the first {max_calls} were run"
        else:
            content = _run_one(call, ctx, registry)
        messages.append(
            {
                "role": "tool",
                "tool_call_id": call_id,
                "content": _cap(content),
            }
        )
    return messages
