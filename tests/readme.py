"""The README's ```bash blocks and their markers, for the tests that keep the README's examples true.

A block right after `<!-- example -->` is run by tests/e2e/test_readme_examples.py; options:
`<!-- example expect='TEXT' expect-any='A|B' -->`. A block that is not run says why:
`<!-- no-example: reason -->`. tests/unit/test_readme.py refuses unmarked blocks that run `baton`
or `curl`, so a new example cannot skip the examples test unnoticed.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```bash\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"<!--\s*(?P<kind>example|no-example)(?P<options>[^>]*?)-->\s*$")


@dataclass
class Block:
    line: int
    code: str
    kind: str | None  # "example", "no-example" or None (unmarked)
    expect: list[str] = field(default_factory=list)
    expect_any: list[list[str]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"README.md:{self.line}"


def readme_blocks(text: str) -> list[Block]:
    blocks = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        block = Block(line=line, code=match.group("code"), kind=marker.group("kind") if marker else None)
        if marker and block.kind == "example":
            for option in shlex.split(marker.group("options")):
                name, _, value = option.partition("=")
                if name == "expect":
                    block.expect.append(value)
                elif name == "expect-any":
                    block.expect_any.append(value.split("|"))
                else:
                    raise AssertionError(f"{block}: unknown example option {name!r}")
        blocks.append(block)
    return blocks


def runs_baton_or_curl(block: Block) -> bool:
    return re.search(r"(^|[\s/(])(baton|curl)\s", block.code) is not None
