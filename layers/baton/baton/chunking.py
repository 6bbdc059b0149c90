"""How much of a document fits one model call, and how a longer one is cut into chunks.

Token counts are estimated, not measured: a real tokenizer (tiktoken) downloads its encodings on
first use and fails offline, and every provider counts differently anyway. English text runs at
about 4 characters per token with OpenAI's encoders; we estimate `ceil(chars / 4)` and keep a
safety margin of the context free, so an estimate that is a little low still fits.

Pure functions: text and numbers in, numbers and spans out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

CHARS_PER_TOKEN: Final = 4
# Share of the context left unused to absorb estimation error (the estimate is not a tokenizer).
SAFETY_MARGIN: Final = 0.10
# Tokens of framing around a chunk ("Part 3 of 12 of the document:" and the message envelope).
FRAMING_TOKENS: Final = 64
# Neighbouring chunks share this share of a chunk, so a sentence cut at a boundary is read whole
# by one of them.
OVERLAP: Final = 0.05
# The answer we reserve room for when the job does not set max_tokens.
DEFAULT_ANSWER_TOKENS: Final = 1024


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class Budget:
    """Room for document text in one call: the context minus the margin, prompt and answer."""

    context_tokens: int
    prompt_tokens: int
    answer_tokens: int

    @property
    def text_tokens(self) -> int:
        usable = int(self.context_tokens * (1 - SAFETY_MARGIN))
        return usable - self.prompt_tokens - self.answer_tokens - FRAMING_TOKENS

    @property
    def text_chars(self) -> int:
        return max(0, self.text_tokens * CHARS_PER_TOKEN)

    def fits(self, text: str) -> bool:
        return len(text) <= self.text_chars


def split(text: str, chunk_chars: int, *, overlap: float = OVERLAP) -> list[tuple[int, int]]:
    """[start, end) spans of at most `chunk_chars` covering `text`, each starting a little before
    the previous one ended. Cuts fall on a paragraph, line, sentence or word break when one is in
    the last fifth of the span, else mid-word."""
    if chunk_chars < 1:
        raise ValueError("chunk_chars must be positive")
    if len(text) <= chunk_chars:
        return [(0, len(text))]
    overlap_chars = int(chunk_chars * overlap)
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end = start + chunk_chars
        if end >= len(text):
            spans.append((start, len(text)))
            return spans
        end = _break_before(text, start + chunk_chars * 4 // 5, end)
        spans.append((start, end))
        # Step back by the overlap, but always forward overall (no chunk twice).
        start = max(start + 1, end - overlap_chars)


def _break_before(text: str, earliest: int, end: int) -> int:
    for separator in ("\n\n", "\n", ". ", " "):
        found = text.rfind(separator, earliest, end)
        if found != -1:
            return found + len(separator)
    return end


def group(sizes: list[int], limit: int) -> list[list[int]]:
    """Consecutive indexes of `sizes` packed into groups whose sizes add up to at most `limit`
    (a single item larger than the limit is a group of its own: the caller checks `limit`)."""
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, size in enumerate(sizes):
        if current and used + size > limit:
            groups.append(current)
            current, used = [], 0
        current.append(index)
        used += size
    if current:
        groups.append(current)
    return groups
