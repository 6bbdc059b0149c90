"""Pure text functions of the model simulator (no network)."""

from __future__ import annotations

import json

import pytest

from baton_dev.simulator import (
    Directives,
    SimulatorConfig,
    build_reply,
    choose_tool_call,
    count_tokens,
    extract_sentences,
    find_arithmetic_expression,
    keywords,
    parse_directives,
    split_instruction,
    split_sentences,
    stream_pieces,
    summarize,
    truncate_tokens,
)

REPORT = """Quarterly Report

Revenue grew 12% in the third quarter, driven by strong cloud revenue.
The weather in the head office was pleasant all quarter.
The cloud division signed three new enterprise customers for cloud storage.
Office plants were watered on schedule.
Management expects cloud revenue growth to continue next quarter."""

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate arithmetic",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "limit": {"type": "integer"},
                "exact": {"type": "boolean"},
                "optional_note": {"type": "string"},
            },
            "required": ["query", "limit", "exact"],
        },
    },
}


def chat(content: str, **extra: object) -> dict[str, object]:
    return {"model": "baton-local", "messages": [{"role": "user", "content": content}], **extra}


# -- tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", 0), ("hello", 1), ("Hello, world!", 4), ("  a  b\n c ", 3), ("x=1+2", 5), ("don't", 3)],
)
def test_count_tokens(text: str, expected: int) -> None:
    assert count_tokens(text) == expected


def test_truncate_tokens_cuts_after_n_tokens() -> None:
    assert truncate_tokens("one two, three four", 3) == ("one two,", True)
    assert truncate_tokens("one two", 2) == ("one two", False)
    assert truncate_tokens("one two", 5) == ("one two", False)


def test_stream_pieces_join_back_to_the_text() -> None:
    text = "Summary (Do it):\n- First one.  Second, two!"
    pieces = stream_pieces(text)
    assert "".join(pieces) == text
    assert len(pieces) == count_tokens(text)


# -- sentences and summaries ------------------------------------------------------------------


def test_split_sentences_handles_blocks_wraps_and_bullets() -> None:
    text = "First sentence here. Second one\ncontinues on the next line!\n\n- bullet item\n- another item"
    assert split_sentences(text) == [
        "First sentence here.",
        "Second one continues on the next line!",
        "bullet item",
        "another item",
    ]


def test_extract_sentences_prefers_frequent_words_and_keeps_order() -> None:
    picked = extract_sentences(REPORT, 3)
    assert picked == [
        "Revenue grew 12% in the third quarter, driven by strong cloud revenue.",
        "The cloud division signed three new enterprise customers for cloud storage.",
        "Management expects cloud revenue growth to continue next quarter.",
    ]


def test_extract_sentences_respects_count_and_token_budget() -> None:
    assert len(extract_sentences(REPORT, 1)) == 1
    assert len(extract_sentences(REPORT, 2)) == 2
    # A budget too small for two sentences still yields the best one.
    assert len(extract_sentences(REPORT, 3, token_budget=15)) == 1


def test_summarize_echoes_instruction_and_summarizes_document_part() -> None:
    prompt = "Summarize the report in 2 bullets\nDocument:\n" + REPORT
    out = summarize(prompt)
    lines = out.splitlines()
    assert lines[0] == "Summary (Summarize the report in 2 bullets):"
    assert len(lines) == 3
    assert all(line.startswith("- ") for line in lines[1:])
    assert "cloud" in out
    assert "Summarize the report" not in "\n".join(lines[1:])


def test_summarize_without_instruction_and_determinism() -> None:
    out = summarize(REPORT)
    assert out.startswith("Summary: ")
    assert out == summarize(REPORT)
    assert summarize("") == "Summary: (no text to summarize)"


def test_split_instruction() -> None:
    assert split_instruction("What changed?\nDocument: The price rose.") == (
        "What changed?",
        "The price rose.",
    )
    assert split_instruction("Explain this:\nCats sleep.") == ("Explain this:", "Cats sleep.")
    assert split_instruction("Cats sleep. Dogs bark.") == (None, "Cats sleep. Dogs bark.")


def test_keywords_by_frequency_without_stopwords() -> None:
    assert keywords(REPORT, 3) == ["cloud", "revenue", "quarter"]
    assert "the" not in keywords(REPORT, 10)


# -- replies ---------------------------------------------------------------------------------


def test_build_reply_usage_and_truncation() -> None:
    body = chat("Summarize in 3 sentences\nDocument:\n" + REPORT)
    full = build_reply(body)
    assert full.finish_reason == "stop"
    assert full.prompt_tokens == count_tokens(body["messages"][0]["content"])  # type: ignore[index]
    assert full.completion_tokens == count_tokens(full.content or "")
    short = build_reply({**body, "max_tokens": 8})
    assert short.finish_reason == "length"
    assert short.completion_tokens == 8
    assert (full.content or "").startswith(short.content or "<none>")


def test_build_reply_reads_content_parts() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Cats purr loudly. Cats nap."}]}],
    }
    assert build_reply(body).content == "Summary: Cats purr loudly. Cats nap."


def test_build_reply_json_object() -> None:
    reply = build_reply(chat(REPORT, response_format={"type": "json_object"}))
    data = json.loads(reply.content or "")
    assert set(data) == {"summary", "keywords"}
    assert data["keywords"][:3] == ["cloud", "revenue", "quarter"]
    assert "cloud revenue" in data["summary"]


def test_build_reply_json_schema_follows_properties() -> None:
    schema = {
        "type": "object",
        "properties": {"summary": {"type": "string"}, "sentiment": {"enum": ["positive", "negative"]}},
        "required": ["summary", "sentiment"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    data = json.loads(build_reply(chat(REPORT, response_format=fmt)).content or "")
    assert data["sentiment"] == "positive"
    assert "cloud" in data["summary"]


# -- tools -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What is 12 * (3 + 4)?", "12 * (3 + 4)"),
        ("compute (2+3)*4.5 - 1. thanks", "(2+3)*4.5 - 1"),
        ("Summarize in 3 bullets.", None),
        ("no numbers here", None),
    ],
)
def test_find_arithmetic_expression(text: str, expected: str | None) -> None:
    assert find_arithmetic_expression(text) == expected


def test_tool_choice_prefers_calculator_for_arithmetic() -> None:
    assert choose_tool_call([SEARCH, CALCULATOR], "What is 6 * 7?") == ("calculator", {"expression": "6 * 7"})


def test_tool_choice_first_tool_with_required_args() -> None:
    name, args = choose_tool_call([SEARCH, CALCULATOR], "Find reports about cloud revenue") or ("", {})
    assert name == "search_docs"
    assert args == {"query": "find reports cloud", "limit": 1, "exact": True}


def test_tool_choice_none_and_forced() -> None:
    assert choose_tool_call([SEARCH], "hello", "none") is None
    forced = {"type": "function", "function": {"name": "calculator"}}
    assert choose_tool_call([SEARCH, CALCULATOR], "plain words", forced) == (
        "calculator",
        {"expression": "plain words"},
    )


def test_build_reply_tool_round_trip() -> None:
    body = chat("What is 12 * (3 + 4)?", tools=[SEARCH, CALCULATOR])
    first = build_reply(body)
    assert first.content is None
    assert first.finish_reason == "tool_calls"
    call = first.tool_calls[0]
    assert call["id"].startswith("call_")
    assert call["id"] == build_reply(body).tool_calls[0]["id"]
    assert json.loads(call["function"]["arguments"]) == {"expression": "12 * (3 + 4)"}

    messages = [
        *body["messages"],  # type: ignore[misc]
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "84"},
    ]
    second = build_reply({**body, "messages": messages})
    assert second.finish_reason == "stop"
    assert second.tool_calls == []
    assert second.content == "Based on the tool result (84): What is 12 * (3 + 4)?"


# -- directives and config -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", Directives()),
        ("x [sim:429] y", Directives(fault="429")),
        ("[SIM:503]", Directives(fault="503")),
        ("[sim:500x2]", Directives(fault="500", times=2)),
        ("[sim:slow=250]", Directives(fault="slow", slow_ms=250.0)),
        ("[sim:slow]", Directives(fault="slow")),
        ("[sim:context_length]", Directives(fault="context_length")),
        ("[sim:slow=10] then [sim:503]", Directives(fault="503")),
        ("[sim:404]", Directives()),
    ],
)
def test_parse_directives(text: str, expected: Directives) -> None:
    assert parse_directives(text) == expected


def test_directives_are_not_part_of_the_answer() -> None:
    assert build_reply(chat("Cats purr. [sim:slow=5]")).content == "Summary: Cats purr."


def test_config_from_env_and_validation() -> None:
    env = {
        "BATON_SIM_LATENCY_MS": "0",
        "BATON_SIM_RATE_429": "0.25",
        "BATON_SIM_CONTEXT_WINDOW": "100",
        "BATON_SIM_SEED": "7",
        "BATON_SIM_MODELS": "a, b,",
    }
    config = SimulatorConfig.from_env(env)
    assert (config.latency_ms, config.rate_429, config.context_window, config.seed) == (0.0, 0.25, 100, 7)
    assert config.models == ("a", "b")
    assert SimulatorConfig.from_env({}) == SimulatorConfig()
    with pytest.raises(ValueError, match="BATON_SIM_RATE_500"):
        SimulatorConfig.from_env({"BATON_SIM_RATE_500": "often"})
    with pytest.raises(ValueError, match="rate_503"):
        SimulatorConfig(rate_503=1.5)
