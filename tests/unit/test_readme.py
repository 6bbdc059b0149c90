"""The README's code layout names every module there is (a new module without a line in the README
is how a README drifts from the code)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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
