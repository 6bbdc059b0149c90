"""Baton's local model simulator: a deterministic OpenAI-compatible HTTP server.

This is *not* a language model. It is what Baton talks to when no real provider is configured,
so that the whole stack (extraction, inference, tool rounds, retries, webhooks) can be exercised
offline and reproducibly. Its answers are derived from the input so a demo still shows real work:

* text answers are extractive summaries of the last user message (the document part when the
  prompt has an instruction followed by a ``Document:`` line), prefixed with a short echo of the
  instruction;
* ``response_format`` ``json_object`` / ``json_schema`` gives ``{"summary", "keywords"}`` (or an
  object shaped by the given JSON schema);
* with ``tools``, the first round answers with a ``tool_calls`` message (a calculator-like tool
  when the prompt holds an arithmetic expression), the round after the tool result answers text;
* faults are injected by directives in the user text (``[sim:429]``, ``[sim:500]``,
  ``[sim:503]``, ``[sim:slow=MS]``, ``[sim:context_length]``, ``[sim:malformed]`` (a 200 whose body is
  not a completion: the worker crashes on it); an ``xN`` suffix such as
  ``[sim:503x2]`` fails only the first N attempts of the same request) or at random with seeded,
  reproducible probabilities;
* a provider's rate limits: with ``rate_limit_rpm`` and/or ``rate_limit_tpm`` set, requests
  beyond them (counted over a sliding window of ``rate_limit_window_s``; tokens at prompt +
  max_tokens, then at the real usage) answer 429 with ``Retry-After`` / ``retry-after-ms`` saying
  when capacity frees; every answer carries OpenAI's ``x-ratelimit-limit|remaining|reset-
  requests|tokens`` headers.

Endpoints: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions`` (also
streaming), ``POST /v1/responses`` (``background: true`` too), ``GET /v1/responses/{id}``,
``POST /v1/responses/{id}/cancel`` (baton_dev.sim_responses), ``GET /_sim/requests`` (``DELETE``
clears it), ``GET /_sim/responses``, ``GET /_sim/webhooks``, ``GET|POST /_sim/faults``,
``GET /healthz``. ``time_scale`` (``BATON_SIM_TIME_SCALE``) divides every simulated latency.

Run standalone with ``python -m baton_dev.simulator --port 8099``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Self, cast
from urllib.parse import urlsplit

from baton_dev.sim_responses import (
    ResponsesRequestError,
    ResponseStore,
    SimResponse,
    chat_body,
    new_response_id,
)

logger = logging.getLogger("baton.simulator")

__all__ = [
    "Directives",
    "ModelSimulator",
    "SimReply",
    "SimulatorConfig",
    "SlidingWindowLimiter",
    "build_reply",
    "choose_tool_call",
    "content_text",
    "count_prompt_tokens",
    "count_tokens",
    "extract_sentences",
    "fill_schema",
    "find_arithmetic_expression",
    "keywords",
    "main",
    "parse_directives",
    "request_digest",
    "split_instruction",
    "split_sentences",
    "stream_pieces",
    "summarize",
    "truncate_tokens",
]

DEFAULT_MODEL = "baton-local"
DEFAULT_SENTENCES = 3
MAX_LOG_ENTRIES = 10_000
OWNED_BY = "baton-simulator"
SYSTEM_FINGERPRINT = "fp_baton_sim"

# Fields that ``set_faults`` / ``POST /_sim/faults`` may change at runtime.
FAULT_FIELDS = (
    "rate_429",
    "retry_after_s",
    "rate_500",
    "rate_503",
    "rate_slow",
    "slow_ms",
    "seed",
    "latency_ms",
    "ms_per_token",
    "rate_limit_rpm",
    "rate_limit_tpm",
    "rate_limit_window_s",
    "time_scale",
    "webhook_url",
)
# SimulatorConfig field -> the BATON_SIM_* variable that sets it (`from_env`, `to_env`).
_FLOAT_VARIABLES = {
    "latency_ms": "BATON_SIM_LATENCY_MS",
    "ms_per_token": "BATON_SIM_MS_PER_TOKEN",
    "rate_429": "BATON_SIM_RATE_429",
    "retry_after_s": "BATON_SIM_RETRY_AFTER_S",
    "rate_500": "BATON_SIM_RATE_500",
    "rate_503": "BATON_SIM_RATE_503",
    "rate_slow": "BATON_SIM_RATE_SLOW",
    "slow_ms": "BATON_SIM_SLOW_MS",
    "rate_limit_rpm": "BATON_SIM_RATE_LIMIT_RPM",
    "rate_limit_tpm": "BATON_SIM_RATE_LIMIT_TPM",
    "rate_limit_window_s": "BATON_SIM_RATE_LIMIT_WINDOW_S",
    "time_scale": "BATON_SIM_TIME_SCALE",
}
_INT_VARIABLES = {"context_window": "BATON_SIM_CONTEXT_WINDOW", "seed": "BATON_SIM_SEED"}
_WEBHOOK_URL_VARIABLE = "BATON_SIM_WEBHOOK_URL"
_MODELS_VARIABLE = "BATON_SIM_MODELS"
_RATE_FIELDS = ("rate_429", "rate_500", "rate_503", "rate_slow")
_NON_NEGATIVE_FIELDS = (
    "latency_ms",
    "ms_per_token",
    "retry_after_s",
    "slow_ms",
    "rate_limit_rpm",
    "rate_limit_tpm",
)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class SimulatorConfig:
    """Behaviour of the simulator. Rates are probabilities in [0, 1]; times are in ms unless noted."""

    models: tuple[str, ...] = (DEFAULT_MODEL,)
    latency_ms: float = 150
    ms_per_token: float = 2.0
    context_window: int = 32768
    rate_429: float = 0.0
    retry_after_s: float = 1.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_slow: float = 0.0
    slow_ms: float = 5000
    seed: int = 0
    # A provider's request rate limit: beyond rate_limit_rpm requests per minute (0: unlimited),
    # enforced over a sliding window of rate_limit_window_s seconds (providers enforce per-minute
    # limits over shorter periods too), requests answer 429 with the Retry-After until a slot frees.
    rate_limit_rpm: float = 0.0
    # Tokens per minute (0: unlimited), over the same window. A request counts its prompt tokens
    # plus its max_tokens when it is admitted (as OpenAI estimates), refused ones count nothing.
    rate_limit_tpm: float = 0.0
    rate_limit_window_s: float = 60.0
    # Simulated time runs this many times faster than the clock: every latency is divided by it,
    # so a model that thinks for minutes can be exercised in seconds.
    time_scale: float = 1.0
    # Where background responses' webhooks go (Standard Webhooks, signed with the simulator's
    # webhook secret); "" sends none.
    webhook_url: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            self.models = tuple(m.strip() for m in self.models.split(",") if m.strip())
        self.models = tuple(self.models)
        if not self.models:
            raise ValueError("models: at least one model name is required")
        for name in _RATE_FIELDS:
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: must be a probability in [0, 1], got {value}")
            setattr(self, name, value)
        for name in _NON_NEGATIVE_FIELDS:
            value = float(getattr(self, name))
            if value < 0 or math.isnan(value):
                raise ValueError(f"{name}: must be >= 0, got {value}")
            setattr(self, name, value)
        self.rate_limit_window_s = float(self.rate_limit_window_s)
        if not self.rate_limit_window_s > 0:
            raise ValueError(f"rate_limit_window_s: must be > 0, got {self.rate_limit_window_s}")
        self.time_scale = float(self.time_scale)
        if not self.time_scale > 0:
            raise ValueError(f"time_scale: must be > 0, got {self.time_scale}")
        if int(self.context_window) < 1:
            raise ValueError(f"context_window: must be >= 1, got {self.context_window}")
        self.context_window = int(self.context_window)
        self.seed = int(self.seed)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SimulatorConfig:
        """Build a config from ``BATON_SIM_*`` variables; unset variables keep their defaults."""
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        for attr, var in _FLOAT_VARIABLES.items():
            raw = env.get(var, "").strip()
            if raw:
                try:
                    kwargs[attr] = float(raw)
                except ValueError:
                    raise ValueError(f"{var}: expected a number, got {raw!r}") from None
        for attr, var in _INT_VARIABLES.items():
            raw = env.get(var, "").strip()
            if raw:
                try:
                    kwargs[attr] = int(raw)
                except ValueError:
                    raise ValueError(f"{var}: expected an integer, got {raw!r}") from None
        if env.get(_WEBHOOK_URL_VARIABLE, "").strip():
            kwargs["webhook_url"] = env[_WEBHOOK_URL_VARIABLE].strip()
        models = env.get(_MODELS_VARIABLE, "").strip()
        if models:
            kwargs["models"] = tuple(m.strip() for m in models.split(",") if m.strip())
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise ValueError(f"BATON_SIM_* configuration: {exc}") from None

    def to_env(self) -> dict[str, str]:
        """The ``BATON_SIM_*`` variables that make `from_env` build this config again (how a
        launched `baton dev` gets its simulator's settings)."""
        env = {var: repr(float(getattr(self, attr))) for attr, var in _FLOAT_VARIABLES.items()}
        env.update({var: str(int(getattr(self, attr))) for attr, var in _INT_VARIABLES.items()})
        env[_MODELS_VARIABLE] = ",".join(self.models)
        if self.webhook_url:
            env[_WEBHOOK_URL_VARIABLE] = self.webhook_url
        return env

    def faults(self) -> dict[str, Any]:
        """The fields that can be changed at runtime, with their current values."""
        return {name: getattr(self, name) for name in FAULT_FIELDS}

    def requests_per_window(self) -> int:
        """Requests admitted per sliding window (0: no limit)."""
        if self.rate_limit_rpm <= 0:
            return 0
        return max(1, math.floor(self.rate_limit_rpm * self.rate_limit_window_s / 60))

    def tokens_per_window(self) -> int:
        """Tokens admitted per sliding window (0: no limit)."""
        if self.rate_limit_tpm <= 0:
            return 0
        return max(1, math.floor(self.rate_limit_tpm * self.rate_limit_window_s / 60))


class SlidingWindowLimiter:
    """At most `limit` admitted units (requests, or tokens) in any `window_s` seconds; refused
    ones are not counted."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._admitted: deque[list[float]] = deque()  # [admitted at, weight]
        self._used = 0
        self._lock = threading.Lock()

    def acquire(self, limit: int, window_s: float, weight: int = 1) -> float | None:
        """None when admitted; otherwise the seconds until enough frees (for Retry-After)."""
        wait = self.wait_s(limit, window_s, weight)
        if wait is None and limit > 0:
            self.admit(weight)
        return wait

    def settle(self, entry: list[float], weight: int) -> None:
        """Count an admitted entry at its real weight (tokens: the usage, once known)."""
        with self._lock:
            if any(admitted is entry for admitted in self._admitted):
                self._used += weight - int(entry[1])
                entry[1] = weight

    def wait_s(self, limit: int, window_s: float, weight: int = 1) -> float | None:
        """None if `weight` fits now, else the seconds until it would (without admitting it)."""
        if limit <= 0:
            return None
        now = self._clock()
        with self._lock:
            self._expire(now, window_s)
            if self._used + weight <= limit:
                return None
            freed = 0
            for admitted_at, admitted in self._admitted:
                freed += int(admitted)
                if self._used - freed + weight <= limit:
                    return max(0.001, admitted_at + window_s - now)
            return max(0.001, window_s)  # larger than the whole window's budget

    def admit(self, weight: int = 1) -> list[float]:
        entry = [self._clock(), weight]
        with self._lock:
            self._admitted.append(entry)
            self._used += weight
        return entry

    def state(self, limit: int, window_s: float) -> tuple[int, float]:
        """(remaining now, seconds until the oldest admitted unit leaves the window)."""
        now = self._clock()
        with self._lock:
            self._expire(now, window_s)
            reset = self._admitted[0][0] + window_s - now if self._admitted else 0.0
            return max(0, limit - self._used), max(0.0, reset)

    def _expire(self, now: float, window_s: float) -> None:
        while self._admitted and self._admitted[0][0] <= now - window_s:
            self._used -= int(self._admitted.popleft()[1])


def openai_duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format: `250ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    if minutes:
        return f"{int(minutes)}m{rest:.0f}s"
    return f"{rest:.3g}s"


# --------------------------------------------------------------------------------------------
# Text processing (pure, deterministic)
# --------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_WORD_RE = re.compile(r"\w+")
_DIRECTIVE_RE = re.compile(
    r"\[sim:(?P<kind>429|500|503|context_length|malformed|slow)(?:=(?P<ms>\d+(?:\.\d+)?))?(?:x(?P<times>\d+))?\]",
    re.IGNORECASE,
)
_DOCUMENT_MARKER_RE = re.compile(r"^[ \t]*document[ \t]*:[ \t]*", re.IGNORECASE | re.MULTILINE)
_BULLET_RE = re.compile(r"^\s*(?:[-*+\u2022]|\d{1,3}[.)])\s+")
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+")
_COUNT_RE = re.compile(
    r"\b(\d{1,2}|one|two|three|four|five|six|seven|eight|nine|ten)\s+(?:[a-z-]+\s+)?"
    r"(?:bullets?|bullet points?|sentences?|points?|lines?|items?)\b",
    re.IGNORECASE,
)
_NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}
_INSTRUCTION_START_RE = re.compile(
    r"^(?:summari[sz]e|explain|describe|list|extract|give|write|classify|translate|answer|tell|"
    r"identify|find|what|who|how|why|when|where|which|is|are|does|do|can|please)\b",
    re.IGNORECASE,
)
_ARITH_CANDIDATE_RE = re.compile(r"[\d(][\d\s+\-*/().]*")
_ARITH_OP_RE = re.compile(r"[\d.)]\s*[-+*/]\s*[(\d.]")
_CALCULATOR_NAME_RE = re.compile(r"calc|arith|math", re.IGNORECASE)

_STOPWORDS_TEXT = """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each either else
    ever every few for from further had has have having he her here hers herself him himself his
    how however i if in into is it its itself just let like may me might more most much must my
    myself no nor not now of off on once only or other our ours ourselves out over own per please
    same shall she should so some such than that the their theirs them themselves then there
    these they this those through thus to too under until up upon us use used using very via was
    we were what when where whether which while who whom whose why will with within without
    would yet you your yours yourself yourselves s t d ll m re ve
"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


def count_tokens(text: str) -> int:
    """Deterministic token count: words and single punctuation marks (``\\w+|[^\\w\\s]``)."""
    return len(_TOKEN_RE.findall(text))


def truncate_tokens(text: str, max_tokens: int) -> tuple[str, bool]:
    """Cut ``text`` after its first ``max_tokens`` tokens; returns (text, truncated)."""
    if max_tokens < 0:
        max_tokens = 0
    end = None
    for i, match in enumerate(_TOKEN_RE.finditer(text)):
        if i == max_tokens:
            return text[: end or 0].rstrip(), True
        end = match.end()
    return text, False


def content_text(content: Any) -> str:
    """Text of an OpenAI message ``content``: a string or a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and part.get("type") in ("text", "input_text"):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
        return "\n".join(parts)
    return ""


def message_text(message: Mapping[str, Any]) -> str:
    """All text of one message, tool-call names and arguments included (for token counting)."""
    pieces = [content_text(message.get("content"))]
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        for call in tool_calls:
            if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping):
                fn = call["function"]
                pieces.append(str(fn.get("name") or ""))
                pieces.append(str(fn.get("arguments") or ""))
    return "\n".join(p for p in pieces if p)


def count_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(count_tokens(message_text(m)) for m in messages)


def strip_directives(text: str) -> str:
    return _DIRECTIVE_RE.sub("", text)


@dataclass(frozen=True)
class Directives:
    """Fault directives found in a prompt."""

    fault: str | None = None  # "429" | "500" | "503" | "context_length" | "slow" | None
    slow_ms: float | None = None  # from [sim:slow=MS]; None means "the configured slow_ms"
    times: int | None = None  # from an "xN" suffix: only the first N attempts fail


def parse_directives(text: str) -> Directives:
    """Find ``[sim:...]`` directives. Errors win over slowness, in the order 429, 500, 503,
    context_length; ``[sim:slow=MS]`` applies only when no error directive is present."""
    found: dict[str, re.Match[str]] = {}
    for match in _DIRECTIVE_RE.finditer(text):
        found.setdefault(match.group("kind").lower(), match)
    for kind in ("429", "500", "503", "context_length", "malformed", "slow"):
        if kind in found:
            match = found[kind]
            ms = match.group("ms")
            times = match.group("times")
            return Directives(
                fault=kind,
                slow_ms=float(ms) if ms is not None and kind == "slow" else None,
                times=int(times) if times is not None else None,
            )
    return Directives()


def split_instruction(text: str) -> tuple[str | None, str]:
    """Split a prompt into (instruction, document).

    Baton sends the prompt, then a line starting ``Document:`` followed by the document text.
    Without that marker, a short first line that reads like a question or an instruction
    (ends with ``?`` or ``:``, or starts with a verb such as "Summarize") followed by more text
    is taken as the instruction. Otherwise the whole text is the document.
    """
    marker = _DOCUMENT_MARKER_RE.search(text)
    if marker is not None:
        instruction = text[: marker.start()].strip()
        document = text[marker.end() :].strip()
        return (instruction or None), document
    stripped = text.strip()
    first, sep, rest = stripped.partition("\n")
    first = first.strip()
    rest = rest.strip()
    if sep and rest and len(first) <= 300:
        looks_like = first.endswith(("?", ":")) or _INSTRUCTION_START_RE.match(first) is not None
        if looks_like:
            return first, rest
    return None, stripped


def split_sentences(text: str) -> list[str]:
    """Sentences of a text: blocks are separated by blank lines, lines inside a block are
    joined (hard-wrapped text), bullet items start a new segment, and segments are split after
    ``.``, ``!`` or ``?``."""
    sentences: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        segments: list[str] = []
        current: list[str] = []
        for line in block.splitlines():
            if not line.strip():
                continue
            if _BULLET_RE.match(line):
                if current:
                    segments.append(" ".join(current))
                current = [_BULLET_RE.sub("", line, count=1).strip()]
            else:
                current.append(line.strip())
        if current:
            segments.append(" ".join(current))
        for segment in segments:
            for sentence in _SENTENCE_SPLIT_RE.split(segment):
                sentence = " ".join(sentence.split())
                if sentence and _WORD_RE.search(sentence):
                    sentences.append(sentence)
    return sentences


def _content_words(text: str) -> list[str]:
    return [
        w
        for w in (m.group(0).lower() for m in _WORD_RE.finditer(text))
        if w not in STOPWORDS and len(w) > 1 and not w.isdigit() and not w.startswith("_")
    ]


def keywords(text: str, n: int = 5) -> list[str]:
    """The ``n`` most frequent non-stopword words, ties broken by first occurrence."""
    words = _content_words(text)
    counts = Counter(words)
    first_seen: dict[str, int] = {}
    for i, w in enumerate(words):
        first_seen.setdefault(w, i)
    ranked = sorted(counts, key=lambda w: (-counts[w], first_seen[w]))
    return ranked[:n]


def extract_sentences(
    text: str, max_sentences: int = DEFAULT_SENTENCES, token_budget: int | None = None
) -> list[str]:
    """Pick the best sentences of ``text`` and return them in their original order.

    A sentence scores the sum of the frequencies (across the whole text) of its non-stopword
    words, divided by the square root of their number; very short sentences (headings) come
    last. At most ``max_sentences`` are picked and, given a ``token_budget``, only as many as fit
    in it (always at least one).
    """
    sentences = split_sentences(text)
    if not sentences:
        return []
    freq = Counter(_content_words(text))
    top = max(freq.values()) if freq else 1

    def score(sentence: str) -> float:
        words = _content_words(sentence)
        if not words:
            return 0.0
        return sum(freq[w] / top for w in words) / math.sqrt(len(words))

    ranked = sorted(
        range(len(sentences)),
        key=lambda i: (len(_WORD_RE.findall(sentences[i])) < 4, -score(sentences[i]), i),
    )
    chosen: list[int] = []
    used = 0
    for i in ranked:
        if len(chosen) >= max(1, max_sentences):
            break
        tokens = count_tokens(sentences[i])
        if chosen and token_budget is not None and used + tokens > token_budget:
            continue
        chosen.append(i)
        used += tokens
    return [sentences[i] for i in sorted(chosen)]


def requested_count(instruction: str | None) -> int | None:
    """ "Summarize in 3 bullets" -> 3."""
    if not instruction:
        return None
    match = _COUNT_RE.search(instruction)
    if match is None:
        return None
    raw = match.group(1).lower()
    value = _NUMBER_WORDS.get(raw) or int(raw)
    return max(1, min(value, 20))


def _echo(instruction: str, limit: int = 80) -> str:
    text = " ".join(instruction.split()).rstrip(":").strip()
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + "..."


def _format_sentences(sentences: Sequence[str], bullets: bool) -> str:
    if not sentences:
        return "(no text to summarize)"
    if bullets:
        return "\n".join(f"- {s}" for s in sentences)
    return " ".join(sentences)


def _summary_prefix(instruction: str | None) -> str:
    return f"Summary ({_echo(instruction)}): " if instruction else "Summary: "


def summarize(text: str, max_sentences: int | None = None, *, token_budget: int | None = None) -> str:
    """Extractive summary of a prompt, as the simulator answers it.

    The document part (after a ``Document:`` line, or after a leading question/instruction line)
    is summarized; the answer starts with a short echo of the instruction, e.g.
    ``"Summary (Summarize the report in 3 bullets):\\n- ...``. ``max_sentences`` defaults to the
    count the instruction asks for ("in 3 bullets") or 3. ``token_budget`` bounds the whole
    answer's length in tokens when choosing sentences (it does not truncate).
    """
    text = strip_directives(text)
    instruction, document = split_instruction(text)
    n = max_sentences or requested_count(instruction) or DEFAULT_SENTENCES
    prefix = _summary_prefix(instruction)
    budget = None if token_budget is None else max(1, token_budget - count_tokens(prefix))
    sentences = extract_sentences(document, n, budget)
    bullets = bool(instruction) and "bullet" in (instruction or "").lower()
    body = _format_sentences(sentences, bullets)
    if bullets and sentences:
        return prefix.rstrip() + "\n" + body
    return prefix + body


# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------


def find_arithmetic_expression(text: str) -> str | None:
    """The longest arithmetic expression (digits, ``+ - * / ( ) .``) in ``text``, if any."""
    best: str | None = None
    for match in _ARITH_CANDIDATE_RE.finditer(strip_directives(text)):
        expr = match.group(0).strip()
        expr = expr.rstrip(" +-*/(.").strip()
        expr = expr.lstrip(" )").strip()
        while expr.count("(") > expr.count(")") and expr.startswith("("):
            expr = expr[1:].strip()
        while expr.count(")") > expr.count("(") and expr.endswith(")"):
            expr = expr[:-1].strip()
        if expr.count("(") != expr.count(")"):
            continue
        if not _ARITH_OP_RE.search(expr):
            continue
        if best is None or len(expr) > len(best):
            best = expr
    return best


def _tool_function(tool: Any) -> Mapping[str, Any] | None:
    if not isinstance(tool, Mapping):
        return None
    fn = tool.get("function")
    if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
        return fn
    return None


def _schema_type(schema: Mapping[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        return str(kinds[0]) if kinds else None
    if isinstance(kind, str):
        return kind
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list):
            for option in options:
                if isinstance(option, Mapping) and option.get("type") != "null":
                    return _schema_type(option)
    if "properties" in schema:
        return "object"
    return None


def fill_schema(
    schema: Mapping[str, Any],
    *,
    text: str,
    words: Sequence[str],
    name: str = "",
    required_only: bool = True,
    depth: int = 0,
) -> Any:
    """A deterministic value matching a JSON schema: strings from ``text`` (or the keywords for
    keyword-like names and tool arguments), integers/numbers 1, booleans true, arrays of
    keywords, objects filled recursively (only required properties when ``required_only``)."""
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "const" in schema:
        return schema["const"]
    kind = _schema_type(schema)
    lowered = name.lower()
    if kind == "string":
        if required_only or any(k in lowered for k in ("keyword", "tag", "topic", "query", "term")):
            return " ".join(words[:3]) or name or "text"
        return text
    if kind == "integer":
        return 1
    if kind == "number":
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        items = schema.get("items")
        if isinstance(items, Mapping) and _schema_type(items) in ("object", "integer", "number", "boolean"):
            if depth >= 4:
                return []
            return [fill_schema(items, text=text, words=words, required_only=required_only, depth=depth + 1)]
        return list(words)
    if kind == "object":
        if depth >= 4:
            return {}
        props = schema.get("properties")
        if not isinstance(props, Mapping):
            return {}
        required = schema.get("required")
        names = list(props) if not required_only else [r for r in (required or []) if r in props]
        return {
            prop: fill_schema(
                props[prop] if isinstance(props[prop], Mapping) else {},
                text=text,
                words=words,
                name=prop,
                required_only=required_only,
                depth=depth + 1,
            )
            for prop in names
        }
    return text if not required_only else (" ".join(words[:3]) or "text")


def choose_tool_call(
    tools: Sequence[Any], prompt: str, tool_choice: Any = None
) -> tuple[str, dict[str, Any]] | None:
    """Pick the tool to call and its arguments, or None when no call should be made.

    A forced ``tool_choice`` ({"type": "function", "function": {"name": ...}}) wins; "none"
    means no call. Otherwise a calculator-like tool (name containing calc/arith/math) is chosen
    when the prompt holds an arithmetic expression (arguments ``{"expression": ...}``), else the
    first tool, with arguments built from its schema's required properties.
    """
    functions = [fn for fn in (_tool_function(t) for t in tools) if fn is not None]
    if not functions or tool_choice == "none":
        return None
    prompt = strip_directives(prompt)
    forced: Mapping[str, Any] | None = None
    if isinstance(tool_choice, Mapping):
        wanted = tool_choice.get("function")
        wanted_name = wanted.get("name") if isinstance(wanted, Mapping) else tool_choice.get("name")
        forced = next((fn for fn in functions if fn["name"] == wanted_name), None)
    expression = find_arithmetic_expression(prompt)
    if forced is None and expression is not None:
        calculator = next((fn for fn in functions if _CALCULATOR_NAME_RE.search(fn["name"])), None)
        if calculator is not None:
            return calculator["name"], {_expression_param(calculator): expression}
    chosen = forced or functions[0]
    if expression is not None and _CALCULATOR_NAME_RE.search(chosen["name"]):
        return chosen["name"], {_expression_param(chosen): expression}
    params = chosen.get("parameters")
    words = keywords(prompt, 5)
    args = fill_schema(params, text=prompt, words=words) if isinstance(params, Mapping) else {}
    return chosen["name"], args if isinstance(args, dict) else {}


def _expression_param(fn: Mapping[str, Any]) -> str:
    """ "expression", unless the tool's schema names its (first string) parameter differently."""
    params = fn.get("parameters")
    props = params.get("properties") if isinstance(params, Mapping) else None
    if not isinstance(props, Mapping) or not props or "expression" in props:
        return "expression"
    required = params.get("required") if isinstance(params, Mapping) else None
    for name in list(required or []) + list(props):
        prop = props.get(name)
        if isinstance(prop, Mapping) and _schema_type(prop) == "string":
            return str(name)
    return "expression"


# --------------------------------------------------------------------------------------------
# Replies
# --------------------------------------------------------------------------------------------


@dataclass
class SimReply:
    """What the simulated model answers to one chat completion request."""

    content: str | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def request_digest(body: Mapping[str, Any]) -> str:
    """SHA-1 of the canonical JSON of a request body (stable across key order)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha1(canonical.encode("utf-8"), usedforsecurity=False).hexdigest()


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    for message in reversed(messages):
        text = content_text(message.get("content"))
        if text:
            return text
    return ""


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is not None:
            return int(value)
    return None


def _json_format(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The response_format when it asks for JSON, else None."""
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") in ("json_object", "json_schema"):
        return fmt
    return None


def _json_content(fmt: Mapping[str, Any], summary: str, words: list[str]) -> str:
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if isinstance(schema, Mapping) and isinstance(schema.get("properties"), Mapping):
            props = schema["properties"]
            obj = fill_schema(schema, text=summary, words=words, required_only=False)
            if isinstance(obj, dict):
                if "summary" in props:
                    obj["summary"] = summary
                if "keywords" in props:
                    obj["keywords"] = words
                return json.dumps(obj, ensure_ascii=False)
    return json.dumps({"summary": summary, "keywords": words}, ensure_ascii=False)


def build_reply(body: Mapping[str, Any], digest: str | None = None) -> SimReply:
    """The deterministic answer to a chat completion request body (already validated)."""
    messages: list[Mapping[str, Any]] = [m for m in body.get("messages") or [] if isinstance(m, Mapping)]
    digest = digest or request_digest(body)
    prompt_tokens = count_prompt_tokens(messages)
    max_tokens = _max_tokens(body)
    user_text = strip_directives(_last_user_text(messages))
    last_role = messages[-1].get("role") if messages else None
    tools = body.get("tools")

    if isinstance(tools, list) and tools and last_role != "tool":
        choice = choose_tool_call(tools, user_text, body.get("tool_choice"))
        if choice is not None:
            name, args = choice
            call_id = "call_" + hashlib.sha1(f"{digest}:0".encode(), usedforsecurity=False).hexdigest()[:24]
            arguments = json.dumps(args, ensure_ascii=False)
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            return SimReply(
                content=None,
                finish_reason="tool_calls",
                prompt_tokens=prompt_tokens,
                completion_tokens=count_tokens(name) + count_tokens(arguments),
                tool_calls=[call],
            )

    instruction, document = split_instruction(user_text)
    n = requested_count(instruction) or DEFAULT_SENTENCES
    words = keywords(document, 5)
    fmt = _json_format(body)

    if last_role == "tool":
        results: list[str] = []
        for message in reversed(messages):
            if message.get("role") != "tool":
                break
            results.append(" ".join(content_text(message.get("content")).split()))
        result = "; ".join(reversed(results))
        if len(result) > 200:
            result = result[:200].rsplit(" ", 1)[0] + "..."
        prefix = f"Based on the tool result ({result}): "
        budget = None if max_tokens is None else max(1, max_tokens - count_tokens(prefix))
        text = prefix + _format_sentences(extract_sentences(user_text, n, budget), bullets=False)
        content = _json_content(fmt, text, words) if fmt else text
    elif fmt is not None:
        overhead = count_tokens(json.dumps({"summary": "", "keywords": words}))
        budget = None if max_tokens is None else max(1, max_tokens - overhead)
        sentences = extract_sentences(document, n, budget)
        summary = _format_sentences(sentences, bullets=False)
        content = _json_content(fmt, summary, words)
    else:
        content = summarize(user_text, n, token_budget=max_tokens)

    finish_reason = "stop"
    if max_tokens is not None:
        content, truncated = truncate_tokens(content, max_tokens)
        if truncated:
            finish_reason = "length"
    return SimReply(
        content=content,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=count_tokens(content),
    )


def stream_pieces(text: str) -> list[str]:
    """``text`` cut into one piece per token (whitespace kept), so pieces join back to ``text``."""
    ends = [m.end() for m in _TOKEN_RE.finditer(text)]
    if not ends:
        return [text] if text else []
    pieces: list[str] = []
    start = 0
    for end in ends[:-1]:
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Admitted:
    body: dict[str, Any]
    model: str
    prompt_tokens: int
    limit_headers: dict[str, str]
    token_entry: list[float] | None
    digest: str
    fault: str | None
    slow_ms: float | None


class _ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        fault: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.fault = fault
        self.headers = dict(headers or {})
        self.prompt_tokens = 0  # for the request log, once the prompt was counted

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _fault_error(fault: str, config: SimulatorConfig, prompt_tokens: int) -> _ApiError:
    if fault == "429":
        seconds = config.retry_after_s
        return _ApiError(
            429,
            "Rate limit reached for requests (simulated by Baton's model simulator). "
            f"Please try again in {seconds:g}s.",
            type_="rate_limit_exceeded",
            code="rate_limit_exceeded",
            fault="429",
            headers={
                "Retry-After": f"{seconds:g}",
                "retry-after-ms": str(round(seconds * 1000)),
                "x-ratelimit-remaining-requests": "0",
            },
        )
    if fault == "500":
        return _ApiError(
            500,
            "The server had an error while processing your request (simulated). Sorry about that!",
            type_="server_error",
            fault="500",
        )
    if fault == "503":
        return _ApiError(
            503,
            "The engine is currently overloaded, please try again later (simulated).",
            type_="server_error",
            code="service_unavailable",
            fault="503",
        )
    tokens = max(prompt_tokens, config.context_window + 1)
    return _ApiError(
        400,
        f"This model's maximum context length is {config.context_window} tokens. "
        f"However, your messages resulted in {tokens} tokens.",
        param="messages",
        code="context_length_exceeded",
        fault="context_length",
    )


def _rate_limit_error(
    seconds: float, config: SimulatorConfig, kind: str, headers: dict[str, str]
) -> _ApiError:
    limit = config.rate_limit_rpm if kind == "requests" else config.rate_limit_tpm
    return _ApiError(
        429,
        f"Rate limit reached for {kind}: limit {limit:g} per minute "
        f"(simulated by Baton's model simulator). Please try again in {seconds:.3f}s.",
        type_=kind,
        code="rate_limit_exceeded",
        fault="rate_limit",
        headers={
            **headers,
            "Retry-After": str(math.ceil(seconds)),
            "retry-after-ms": str(math.ceil(seconds * 1000)),
        },
    )


def _validate_chat_body(body: Any, config: SimulatorConfig) -> tuple[dict[str, Any], str, list[Any]]:
    if not isinstance(body, dict):
        raise _ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _ApiError(400, "You must provide a model parameter.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _ApiError(400, "'messages' must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _ApiError(
                400,
                f"Invalid message at messages[{i}]: expected an object with a role.",
                param=f"messages[{i}]",
            )
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise _ApiError(400, f"Invalid '{key}': expected an integer >= 1.", param=key)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _ApiError(400, "Invalid 'tools': expected an array.", param="tools")
    if model not in config.models:
        raise _ApiError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    return body, model, messages


# --------------------------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], simulator: ModelSimulator) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.simulator = simulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can hang
        # offline; the name is not needed.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints tracebacks to stderr; clients dropping keep-alive connections are normal.
        exc = sys.exception()
        if isinstance(exc, (ConnectionError, TimeoutError)):
            logger.debug("simulator: connection from %s closed: %r", client_address, exc)
        else:
            logger.error("simulator: error serving %s", client_address, exc_info=exc)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "BatonModelSimulator/1.0"
    sys_version = ""
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    timeout = 300  # idle keep-alive connections are closed after this many seconds

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def sim(self) -> ModelSimulator:
        return cast(_Server, self.server).simulator

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            raw = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self._send_json(400, _ApiError(400, "Could not read the request body.").body())
            return
        try:
            self._route(method, path, raw)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            logger.exception("simulator: unexpected error handling %s %s", method, path)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send_json(500, _ApiError(500, "Internal simulator error.", type_="server_error").body())

    def _route(self, method: str, path: str, raw: bytes) -> None:
        api_path = path[3:] if path.startswith("/v1/") else path
        if api_path == "/chat/completions":
            if method == "POST":
                self._chat_completions(path, raw)
            else:
                self._method_not_allowed(method, path)
        elif api_path == "/responses":
            if method == "POST":
                self._responses_create(path, raw)
            else:
                self._method_not_allowed(method, path)
        elif api_path.startswith("/responses/"):
            self._responses_item(method, path, api_path[len("/responses/") :])
        elif api_path == "/models":
            if method == "GET":
                self._models(path)
            else:
                self._method_not_allowed(method, path)
        elif api_path.startswith("/models/") and method == "GET":
            self._model(path, api_path[len("/models/") :])
        elif path == "/healthz":
            self._send_json(200, {"status": "ok", "simulator": True, "models": list(self.sim.config.models)})
        elif path == "/_sim/requests":
            if method == "DELETE":
                self.sim.clear_request_log()
                self._send_json(200, [])
            else:
                self._send_json(200, self.sim.request_log())
        elif path == "/_sim/responses" and method == "GET":
            self._send_json(200, self.sim.responses.listing())
        elif path == "/_sim/webhooks" and method == "GET":
            self._send_json(200, self.sim.responses.webhooks())
        elif path == "/_sim/faults":
            if method == "POST":
                self._set_faults(raw)
            else:
                self._send_json(200, self.sim.config.faults())
        else:
            err = _ApiError(404, f"Unknown request URL: {method} {path}.", code="unknown_url")
            self._send_json(404, err.body())

    def _method_not_allowed(self, method: str, path: str) -> None:
        err = _ApiError(405, f"Method {method} is not allowed for {path}.", code="method_not_allowed")
        self._send_json(405, err.body())

    def _log(
        self,
        path: str,
        model: str | None,
        status: int,
        fault: str | None,
        prompt: int,
        completion: int,
        *,
        response_id: str | None = None,
    ) -> None:
        self.sim._record(
            {
                **({"response_id": response_id} if response_id else {}),  # a create: what it made
                "ts": time.time(),
                "path": path,
                "model": model,
                "status": status,
                "fault": fault,
                "job_id": self.headers.get("X-Baton-Job-Id"),
                "step_key": self.headers.get("X-Baton-Step-Key"),
                "prompt_tokens": prompt,
                "completion_tokens": completion,
            }
        )

    # -- endpoints ---------------------------------------------------------------------------

    def _models(self, path: str) -> None:
        created = self.sim.created
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": OWNED_BY}
            for m in self.sim.config.models
        ]
        self._log(path, None, 200, None, 0, 0)
        self._send_json(200, {"object": "list", "data": data})

    def _model(self, path: str, model: str) -> None:
        if model in self.sim.config.models:
            self._log(path, model, 200, None, 0, 0)
            self._send_json(
                200, {"id": model, "object": "model", "created": self.sim.created, "owned_by": OWNED_BY}
            )
            return
        err = _ApiError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
        self._log(path, model, 404, None, 0, 0)
        self._send_json(404, err.body())

    def _set_faults(self, raw: bytes) -> None:
        try:
            changes = json.loads(raw or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of fault fields")
            self.sim.set_faults(**changes)
        except (ValueError, TypeError) as exc:
            self._send_json(400, _ApiError(400, f"Invalid faults: {exc}").body())
            return
        self._send_json(200, self.sim.config.faults())

    def _admitted(self, parsed: Any, config: SimulatorConfig) -> _Admitted:
        """A chat-shaped request validated, counted against the rate limits and given its fault
        (an error fault raised as _ApiError carrying the prompt's tokens for the log)."""
        body, model, messages = _validate_chat_body(parsed, config)
        prompt_tokens = count_prompt_tokens(messages)
        try:
            limit_headers, token_entry = self.sim._admit(
                config, prompt_tokens + int(body.get("max_tokens") or 0)
            )
            digest = request_digest(body)
            fault, slow_ms = self.sim._decide_fault(config, _last_user_text(messages), prompt_tokens, digest)
            if fault is not None and fault not in {"slow", "malformed"}:
                raise _fault_error(fault, config, prompt_tokens)
        except _ApiError as err:
            err.prompt_tokens = prompt_tokens
            raise
        return _Admitted(body, model, prompt_tokens, limit_headers, token_entry, digest, fault, slow_ms)

    def _chat_completions(self, path: str, raw: bytes) -> None:
        sim = self.sim
        config = sim.config  # one consistent snapshot for this request
        model: str | None = None
        try:
            try:
                parsed = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise _ApiError(
                    400,
                    "We could not parse the JSON body of your request. "
                    "(HINT: This likely means you aren't using your HTTP library correctly.)",
                ) from None
            if isinstance(parsed, dict) and isinstance(parsed.get("model"), str):
                model = parsed["model"]
            admitted = self._admitted(parsed, config)
        except _ApiError as err:
            self._log(path, model, err.status, err.fault, err.prompt_tokens, 0)
            self._send_json(err.status, err.body(), err.headers)
            return
        body, model, prompt_tokens = admitted.body, admitted.model, admitted.prompt_tokens
        limit_headers, token_entry, digest = admitted.limit_headers, admitted.token_entry, admitted.digest
        fault, slow_ms = admitted.fault, admitted.slow_ms

        if fault == "malformed":
            # A 200 whose body is not a chat completion: the client chokes on it, every time (a
            # poison prompt that crashes the worker, for DLQ drills).
            self._log(path, model, 200, fault, prompt_tokens, 0)
            self._send_json(200, {"object": "chat.completion", "choices": "not-a-list"}, {})
            return
        reply = build_reply(body, digest)
        if token_entry is not None:
            sim._token_limiter.settle(token_entry, reply.prompt_tokens + reply.completion_tokens)
        if slow_ms and not body.get("stream"):
            sim._sleep(slow_ms / 1000)
        response_id = f"chatcmpl-{digest[:24]}"
        created = int(time.time())
        headers = {
            "x-request-id": f"req_{digest[:24]}",
            "openai-model": model,
            "openai-processing-ms": "0",
            **limit_headers,
        }
        if body.get("stream"):
            # A streamed answer's headers go out at once; the model's slowness delays its first token.
            first_delay_s = (slow_ms or 0) / 1000
            self._stream(
                path, model, body, reply, response_id, created, fault, config, headers, first_delay_s
            )
            return
        sim._sleep((config.latency_ms + config.ms_per_token * reply.completion_tokens) / 1000)
        message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        payload = {
            "id": response_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}
            ],
            "usage": reply.usage,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        self._log(path, model, 200, fault, reply.prompt_tokens, reply.completion_tokens)
        self._send_json(200, payload, headers)

    def _responses_create(self, path: str, raw: bytes) -> None:
        """POST /v1/responses: the same answer as the equivalent chat completion; with
        `background: true` it answers at once (in_progress) and finishes after the latency."""
        sim = self.sim
        config = sim.config
        model: str | None = None
        try:
            try:
                parsed = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise _ApiError(400, "We could not parse the JSON body of your request.") from None
            if not isinstance(parsed, dict):
                raise _ApiError(400, "The request body must be a JSON object.")
            if isinstance(parsed.get("model"), str):
                model = parsed["model"]
            if parsed.get("stream"):
                raise _ApiError(400, "The simulator does not stream /v1/responses.", param="stream")
            try:
                chat = chat_body(parsed)
            except ResponsesRequestError as error:
                raise _ApiError(400, str(error), param=error.param) from None
            admitted = self._admitted(chat, config)
        except _ApiError as err:
            self._log(path, model, err.status, err.fault, err.prompt_tokens, 0)
            self._send_json(err.status, err.body(), err.headers)
            return
        body, model, prompt_tokens = admitted.body, admitted.model, admitted.prompt_tokens
        limit_headers, token_entry, digest = admitted.limit_headers, admitted.token_entry, admitted.digest
        fault, slow_ms = admitted.fault, admitted.slow_ms
        if fault == "malformed":
            self._log(path, model, 200, fault, prompt_tokens, 0)
            self._send_json(200, {"object": "response", "output": "not-a-list"}, {})
            return
        reply = build_reply(body, digest)
        if token_entry is not None:
            sim._token_limiter.settle(token_entry, reply.prompt_tokens + reply.completion_tokens)
        latency_s = (
            config.latency_ms + config.ms_per_token * reply.completion_tokens + (slow_ms or 0)
        ) / 1000
        now = time.monotonic()
        background = bool(parsed.get("background"))
        response = SimResponse(
            id=new_response_id(digest),
            model=model,
            background=background,
            created_at=int(time.time()),
            started=now,
            ready_at=now + latency_s / config.time_scale,
            content=reply.content,
            finish_reason=reply.finish_reason,
            tool_calls=reply.tool_calls,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            job_id=self.headers.get("X-Baton-Job-Id"),
        )
        headers = {"x-request-id": f"req_{digest[:24]}", "openai-model": model, **limit_headers}
        # The create is the paid call: logged once, whether it answers now or in the background.
        self._log(
            path, model, 200, fault, reply.prompt_tokens, reply.completion_tokens, response_id=response.id
        )
        sim.responses.add(response)
        if not background:
            sim._sleep(latency_s)
        self._send_json(200, response.body(time.monotonic()), headers)

    def _responses_item(self, method: str, path: str, rest: str) -> None:
        """GET /v1/responses/{id} and POST /v1/responses/{id}/cancel (neither is a paid call)."""
        response_id, _, action = rest.partition("/")
        if method == "GET" and not action:
            view = self.sim.responses.view(response_id)
            if view is None:
                err = _ApiError(404, f"No response found with id '{response_id}'.", param="response_id")
                self._send_json(404, err.body())
                return
            self._send_json(200, view)
        elif method == "POST" and action == "cancel":
            status, body = self.sim.responses.cancel(response_id)
            self._send_json(status, body)
        else:
            self._method_not_allowed(method, path)

    def _stream(
        self,
        path: str,
        model: str,
        body: Mapping[str, Any],
        reply: SimReply,
        response_id: str,
        created: int,
        fault: str | None,
        config: SimulatorConfig,
        headers: Mapping[str, str],
        first_delay_s: float = 0.0,
    ) -> None:
        options = body.get("stream_options")
        include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
        logged = False

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": response_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if include_usage:
                out["usage"] = None
            return out

        def events() -> Iterator[tuple[dict[str, Any], float]]:
            """(chunk, seconds to wait before sending it)."""
            per_token = config.ms_per_token / 1000
            if reply.tool_calls:
                calls: list[dict[str, Any]] = []
                first: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls}
                for i, call in enumerate(reply.tool_calls):
                    fn = call["function"]
                    calls.append(
                        {
                            "index": i,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": fn["name"], "arguments": ""},
                        }
                    )
                yield chunk(first), config.latency_ms / 1000 + first_delay_s
                for i, call in enumerate(reply.tool_calls):
                    arguments = call["function"]["arguments"]
                    delta = {"tool_calls": [{"index": i, "function": {"arguments": arguments}}]}
                    yield chunk(delta), per_token * count_tokens(arguments)
            else:
                yield (
                    chunk({"role": "assistant", "content": "", "refusal": None}),
                    config.latency_ms / 1000 + first_delay_s,
                )
                for piece in stream_pieces(reply.content or ""):
                    yield chunk({"content": piece}), per_token
            yield chunk({}, reply.finish_reason), 0.0
            if include_usage:
                final = chunk({})
                final["choices"] = []
                final["usage"] = reply.usage
                yield final, 0.0

        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            for event, delay in events():
                if delay > 0:
                    self.sim._sleep(delay)
                self._write_chunk(b"data: " + json.dumps(event, ensure_ascii=False).encode("utf-8") + b"\n\n")
            # Record before the terminating event so a client that has read [DONE] sees the entry.
            self._log(path, model, 200, fault, reply.prompt_tokens, reply.completion_tokens)
            logged = True
            done = b"data: [DONE]\n\n"
            # The last event and the end of the chunked body go out in one write.
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            if not logged:
                self._log(
                    path, model, 200, fault or "disconnected", reply.prompt_tokens, reply.completion_tokens
                )


# --------------------------------------------------------------------------------------------
# Public server object
# --------------------------------------------------------------------------------------------

_START_WARNING = (
    "Baton's local model SIMULATOR is serving %s. It is NOT a language model: its answers are "
    "deterministic extractive summaries of the input (tool calls and faults are simulated too). "
    "To use a real provider set OPENAI_BASE_URL, OPENAI_API_KEY and BATON_MODEL "
    "(OpenAI, vLLM, Ollama, LM Studio, LiteLLM, llama.cpp server)."
)


class ModelSimulator:
    """A deterministic OpenAI-compatible model server running in a background thread.

    >>> with ModelSimulator(SimulatorConfig(latency_ms=0)) as sim:  # doctest: +SKIP
    ...     client = openai.OpenAI(base_url=sim.base_url, api_key="x")
    """

    def __init__(self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._config = config if config is not None else SimulatorConfig()
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._rng = random.Random(self._config.seed)
        self._log: deque[dict[str, Any]] = deque(maxlen=MAX_LOG_ENTRIES)
        self._attempts: Counter[str] = Counter()
        self._limiter = SlidingWindowLimiter()
        self._token_limiter = SlidingWindowLimiter()
        self._admission = threading.Lock()  # both limits pass, or neither counts
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.created = int(time.time())
        self.responses = ResponseStore(lambda: self.config)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind and serve in a daemon thread; returns self. Calling it twice is harmless."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self._host, self._port), self)
        self._server = server
        self._port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"baton-simulator-{self._port}",
            daemon=True,
        )
        self._thread.start()
        logger.warning(_START_WARNING, self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and interrupt simulated delays."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        self.responses.stop()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- properties --------------------------------------------------------------------------

    @property
    def config(self) -> SimulatorConfig:
        """The current configuration (replaced, never mutated, by ``set_faults``)."""
        with self._lock:
            return self._config

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        host = self._host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}/v1"

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- request log and faults --------------------------------------------------------------

    def request_log(self) -> list[dict[str, Any]]:
        """A copy of the request log (oldest first; the last 10,000 model API requests)."""
        with self._lock:
            return [dict(entry) for entry in self._log]

    def clear_request_log(self) -> None:
        with self._lock:
            self._log.clear()

    def set_faults(self, **changes: Any) -> SimulatorConfig:
        """Change fault fields at runtime (``rate_429``, ``retry_after_s``, ``rate_500``,
        ``rate_503``, ``rate_slow``, ``slow_ms``, ``seed`` re-seeds the generator, and also
        ``latency_ms`` / ``ms_per_token`` / ``rate_limit_rpm`` / ``rate_limit_window_s``).
        Raises ValueError for unknown fields or bad values."""
        unknown = sorted(set(changes) - set(FAULT_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown fault field(s): {', '.join(unknown)}; allowed: {', '.join(FAULT_FIELDS)}"
            )
        with self._lock:
            new = dataclasses.replace(self._config, **changes)
            self._config = new
            if "seed" in changes:
                self._rng = random.Random(new.seed)
        logger.info("simulator faults changed: %s", changes)
        return new

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._log.append(entry)

    def _roll_random_fault(self, config: SimulatorConfig) -> str | None:
        # Always draw four numbers so the sequence only depends on the number of requests.
        with self._lock:
            draws = [self._rng.random() for _ in range(4)]
        for draw, rate, fault in zip(
            draws,
            (config.rate_429, config.rate_500, config.rate_503, config.rate_slow),
            ("429", "500", "503", "slow"),
            strict=True,
        ):
            if draw < rate:
                return fault
        return None

    def _admit(self, config: SimulatorConfig, tokens: int) -> tuple[dict[str, str], list[float] | None]:
        """Count the request against the rate limits, or raise a 429. Returns OpenAI's
        x-ratelimit-* headers (limits per minute; remaining and reset in the enforced window) and
        the token entry, counted at the estimate until `_token_limiter.settle` sets the usage."""
        window = config.rate_limit_window_s
        limits = (
            ("requests", self._limiter, config.requests_per_window(), config.rate_limit_rpm, 1),
            ("tokens", self._token_limiter, config.tokens_per_window(), config.rate_limit_tpm, tokens),
        )
        with self._admission:
            refusals = [
                (wait, kind)
                for kind, limiter, limit, _, weight in limits
                if (wait := limiter.wait_s(limit, window, weight)) is not None
            ]
            entry = None
            if not refusals:
                for kind, limiter, limit, _, weight in limits:
                    if limit > 0:
                        admitted = limiter.admit(weight)
                        entry = admitted if kind == "tokens" else entry
            headers: dict[str, str] = {}
            for kind, limiter, limit, per_minute, _ in limits:
                if limit <= 0:
                    continue
                remaining, reset = limiter.state(limit, window)
                headers[f"x-ratelimit-limit-{kind}"] = f"{per_minute:g}"
                headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
                headers[f"x-ratelimit-reset-{kind}"] = openai_duration(reset)
        if refusals:
            wait, kind = max(refusals)
            raise _rate_limit_error(wait, config, kind, headers)
        return headers, entry

    def _decide_fault(
        self, config: SimulatorConfig, user_text: str, prompt_tokens: int, digest: str
    ) -> tuple[str | None, float | None]:
        """(fault, extra delay in ms): directives, then the context window, then random rates."""
        directives = parse_directives(user_text)
        fault = directives.fault
        if fault is not None and directives.times is not None:
            with self._lock:
                self._attempts[digest] += 1
                attempt = self._attempts[digest]
            if attempt > directives.times:
                fault = None
        slow_ms: float | None = None
        if fault == "slow":
            slow_ms = directives.slow_ms if directives.slow_ms is not None else config.slow_ms
        if fault is None and prompt_tokens > config.context_window:
            fault = "context_length"
        rolled = self._roll_random_fault(config)
        if fault is None and rolled is not None:
            fault = rolled
            if rolled == "slow":
                slow_ms = config.slow_ms
        return fault, slow_ms

    def _sleep(self, seconds: float) -> None:
        """Wait `seconds` of simulated time (the clock's seconds divided by time_scale)."""
        if seconds > 0:
            self._stopping.wait(seconds / self.config.time_scale)

    def set_webhook(self, url: str, secret: str) -> None:
        """Send background responses' webhooks to `url`, signed with `secret` (whsec_...)."""
        self.responses.webhook_secret = secret
        self.set_faults(webhook_url=url)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator in the foreground until Ctrl-C / SIGTERM; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m baton_dev.simulator",
        description="Baton's deterministic OpenAI-compatible model simulator (not a language model). "
        "Defaults come from the BATON_SIM_* environment variables.",
    )
    try:
        defaults = SimulatorConfig.from_env()
    except ValueError as exc:
        parser.error(str(exc))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--models", default=",".join(defaults.models), help="comma-separated model names")
    parser.add_argument("--latency-ms", type=float, default=defaults.latency_ms)
    parser.add_argument("--ms-per-token", type=float, default=defaults.ms_per_token)
    parser.add_argument("--context-window", type=int, default=defaults.context_window)
    parser.add_argument("--rate-429", type=float, default=defaults.rate_429)
    parser.add_argument("--retry-after-s", type=float, default=defaults.retry_after_s)
    parser.add_argument("--rate-500", type=float, default=defaults.rate_500)
    parser.add_argument("--rate-503", type=float, default=defaults.rate_503)
    parser.add_argument("--rate-slow", type=float, default=defaults.rate_slow)
    parser.add_argument("--slow-ms", type=float, default=defaults.slow_ms)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--rate-limit-rpm", type=float, default=defaults.rate_limit_rpm, help="requests/min; 0: unlimited"
    )
    parser.add_argument("--rate-limit-window-s", type=float, default=defaults.rate_limit_window_s)
    parser.add_argument(
        "--time-scale", type=float, default=defaults.time_scale, help="simulated seconds per second"
    )
    parser.add_argument("--webhook-url", default=defaults.webhook_url, help="background responses' webhooks")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)

    try:
        config = SimulatorConfig(
            models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
            latency_ms=args.latency_ms,
            ms_per_token=args.ms_per_token,
            context_window=args.context_window,
            rate_429=args.rate_429,
            retry_after_s=args.retry_after_s,
            rate_500=args.rate_500,
            rate_503=args.rate_503,
            rate_slow=args.rate_slow,
            slow_ms=args.slow_ms,
            seed=args.seed,
            rate_limit_rpm=args.rate_limit_rpm,
            rate_limit_window_s=args.rate_limit_window_s,
            time_scale=args.time_scale,
            webhook_url=args.webhook_url,
        )
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    simulator = ModelSimulator(config, host=args.host, port=args.port)
    if os.environ.get("BATON_SIM_WEBHOOK_SECRET"):
        simulator.responses.webhook_secret = os.environ["BATON_SIM_WEBHOOK_SECRET"]
    try:
        simulator.start()
    except OSError as exc:
        logger.error("cannot serve on %s:%s: %s", args.host, args.port, exc)
        return 1

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    # Handle SIGINT explicitly too: background jobs start with SIGINT ignored.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        logger.info("models: %s; press Ctrl-C to stop", ", ".join(config.models))
        while not done.wait(0.5):
            pass
    finally:
        simulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info("simulator stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
