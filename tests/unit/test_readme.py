"""The README stays true to the code: its code layout names every module there is, and every
```bash block that runs `baton` or `curl` is either run by tests/e2e/test_readme_examples.py or
says why not (tests/readme.py). Both are how a README drifts unnoticed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.readme import README, readme_blocks, runs_baton_or_curl

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = re.compile(r"^```\n(template\.yaml .*?)^```$", re.MULTILINE | re.DOTALL)


def layout() -> str:
    match = LAYOUT.search((ROOT / "README.md").read_text())
    assert match, "README.md has no code-layout block starting with template.yaml"
    return match.group(1)


@pytest.mark.parametrize(
    "package", ["layers/baton/baton", "devtools/baton_dev", "devtools/baton_dev/runtime"]
)
def test_the_readme_layout_names_every_module(package: str) -> None:
    modules = {path.stem for path in (ROOT / package).glob("*.py") if path.stem != "__init__"}
    listed = set(re.findall(r"\w+", layout()))
    assert modules - listed == set(), f"add them to the code layout in README.md ({package})"


def test_the_readme_layout_names_every_function() -> None:
    functions = {path.parent.name for path in (ROOT / "functions").glob("*/app.py")}
    match = re.search(r"functions/\{([\w,]+)\}/app\.py", layout())
    assert match, "README.md's code layout lists functions/{...}/app.py"
    assert set(match.group(1).split(",")) == functions


def test_every_readme_block_that_runs_baton_or_curl_is_run_or_says_why() -> None:
    unmarked = [
        str(block)
        for block in readme_blocks(README.read_text())
        if block.kind is None and runs_baton_or_curl(block)
    ]
    assert unmarked == [], (
        "mark each <!-- example --> (tests/e2e/test_readme_examples.py runs it) "
        "or <!-- no-example: reason -->; see tests/readme.py"
    )


def test_the_block_parser_sees_markers_options_and_unmarked_blocks() -> None:
    text = (
        "<!-- example expect=' 202 ' expect-any='a|b' -->\n```bash\necho 202\n```\n\n"
        "<!-- no-example: long-running -->\n```bash\n./baton dev\n```\n\n```bash\ncurl x\n```\n"
    )
    first, second, third = readme_blocks(text)
    assert (first.kind, first.code, first.expect, first.expect_any) == (
        "example",
        "echo 202\n",
        [" 202 "],
        [["a", "b"]],
    )
    assert (second.kind, third.kind, third.line) == ("no-example", None, 11)
    assert runs_baton_or_curl(third) and runs_baton_or_curl(second) and not runs_baton_or_curl(first)
