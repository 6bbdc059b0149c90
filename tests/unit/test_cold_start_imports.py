"""The openai client is imported in a model-calling function's init, never inside an invocation.

`import openai` is seconds of CPU on a busy cold machine. Done lazily in the first invocation it was
charged to the function's timeout: under load every fresh infer environment timed out on its first
batch and was replaced by another fresh one (a chaos run at 2,000 jobs finished 66 in 25 minutes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import baton.llm

if TYPE_CHECKING:
    from conftest import AwsStack

LAYER = Path(__file__).resolve().parents[2] / "layers" / "baton"

PROBE = """
import json, sys
import baton.wiring
light = not any(name == "openai" or name.startswith("openai.") for name in sys.modules)
from baton import llm
llm.load_client_library()
loaded = set(sys.modules)
import openai
client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1", max_retries=0)
client.chat.completions.with_raw_response, client.responses.with_raw_response, client.webhooks
late = sorted(name for name in set(sys.modules) - loaded if name.startswith("openai"))
print(json.dumps({"light": light, "late": late}))
"""


def test_loading_the_client_library_leaves_nothing_for_a_call_to_import() -> None:
    # A fresh interpreter: this test process imported openai long ago.
    answer = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(LAYER), "PATH": "/usr/bin:/bin"},
    )
    result = json.loads(answer.stdout.strip().splitlines()[-1])
    assert result["light"], "importing baton.wiring alone pulled in openai: every function would pay for it"
    assert result["late"] == [], f"a model call would still import {result['late']} inside its invocation"


@pytest.mark.parametrize(
    ("function", "loads_client"),
    [
        ("InferFunction", True),
        ("ProviderWebhookFunction", True),
        ("ApiFunction", False),
        ("IngestFunction", False),
    ],
)
def test_only_the_model_calling_functions_load_the_client_in_init(
    aws: AwsStack, monkeypatch: pytest.MonkeyPatch, function: str, loads_client: bool
) -> None:
    loads: list[bool] = []
    monkeypatch.setattr(baton.llm, "load_client_library", lambda: loads.append(True))
    aws.load(function)
    assert bool(loads) is loads_client
