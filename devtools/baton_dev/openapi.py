"""`make openapi`: write the API's OpenAPI document (generated from functions/api/app.py) into the
repo, where clients and reviewers read it. tests/unit/test_openapi.py fails when it drifts."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
API_MODULE = ROOT / "functions" / "api" / "app.py"
DOCUMENT = ROOT / "docs" / "openapi.json"


def load_api(module_file: Path = API_MODULE) -> ModuleType:
    """Import the API handler as Lambda does (module `app`); it builds its routes at import."""
    # Importing creates boto3 clients (never called here): a region is all they need.
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    spec = importlib.util.spec_from_file_location("app", module_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def document(api: ModuleType) -> str:
    from baton.openapi import openapi_info

    text: str = api.app.get_openapi_json_schema(**openapi_info())
    return text + "\n"


def main() -> int:
    DOCUMENT.parent.mkdir(parents=True, exist_ok=True)
    DOCUMENT.write_text(document(load_api()))
    sys.stderr.write(f"wrote {DOCUMENT.relative_to(ROOT)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
