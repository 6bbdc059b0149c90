"""The Lambda layer ships what its code imports: `sam build` installs layers/baton/requirements.txt."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LAYER = Path(__file__).resolve().parents[2] / "layers" / "baton"
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"aws_lambda_powertools": "aws-lambda-powertools", "pydantic_settings": "pydantic-settings"}
PROVIDED_BY_THE_RUNTIME = {"boto3", "botocore"}


def third_party_imports() -> set[str]:
    found: set[str] = set()
    for path in (LAYER / "baton").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {
        name for name in found if name not in sys.stdlib_module_names and name not in {"baton", "__future__"}
    }


def pinned() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (LAYER / "requirements.txt").read_text().splitlines():
        if line and line[0].isalpha() and "==" in line:
            name, version = line.split(" ")[0].split("==")
            pins[name.lower()] = version
    return pins


def test_every_import_of_the_layer_is_pinned_in_its_requirements() -> None:
    pins = pinned()
    missing = {
        name
        for name in third_party_imports() - PROVIDED_BY_THE_RUNTIME
        if DISTRIBUTIONS.get(name, name).lower() not in pins
    }
    assert missing == set()


def test_layer_pins_agree_with_the_development_lock() -> None:
    lock = {
        line.split("==")[0].lower(): line.split("==")[1].split(" ")[0]
        for line in (LAYER.parents[1] / "requirements.lock").read_text().splitlines()
        if line and line[0].isalpha() and "==" in line
    }
    for name in ("aws-lambda-powertools", "pydantic", "openai", "pypdf", "standardwebhooks", "httpx"):
        assert pinned()[name] == lock[name], name
