"""Deploy rehearsal: the built artifact (.aws-sam/build, what `sam deploy` ships) runs on the local
runtime - every function from its built folder, the layer from its built python/ (its native
extensions swapped for this machine's builds of the same versions), under its own role with IAM
enforced - and a prompt job and a document job complete. A dependency missing from the layer or a
developer package imported by Lambda code fails here."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from baton_dev.launcher import LaunchedStack, StackConfig
from tests.integration.conftest import wait_for_terminal

# A first start also installs this machine's builds of the layer's native extensions.
pytestmark = pytest.mark.timeout(900)
START_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def built_stack(build_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LaunchedStack]:
    # The built artifact's folder, as `sam build` left it: its template names the built code.
    config = StackConfig(
        template=build_dir, state_dir=tmp_path_factory.mktemp("rehearsal"), stack_name="baton-rehearsal"
    )
    with LaunchedStack(config).start(START_TIMEOUT_S) as stack:
        yield stack


def test_the_built_artifact_runs_a_prompt_job_and_a_document_job(
    built_stack: LaunchedStack, build_dir: Path
) -> None:
    state_dir = built_stack.state_dir
    # The runtime ran what was built, not the source tree.
    for function in built_stack.state["functions"]:
        assert (build_dir / function).is_dir()
    assert built_stack.state["iam_enforced"]
    issued = built_stack.create_api_key("rehearsal")
    document_id = f"{uuid.uuid4().hex}-notes.md"
    built_stack.aws("s3").put_object(
        Bucket=built_stack.state["bucket"],
        Key=f"documents/{issued['tenant']}/{document_id}",
        Body=b"# Release notes\n\nThe rehearsal ships the built layer and every built function.\n",
        ContentType="text/markdown",
    )
    with httpx.Client(
        base_url=built_stack.api_url, headers={"Authorization": f"Bearer {issued['api_key']}"}, timeout=40
    ) as api:
        prompt = api.post("/v1/jobs", json={"input": {"prompt": "Summarize: the artifact runs."}})
        assert prompt.status_code == 202, prompt.text
        document = api.post(
            "/v1/jobs", json={"input": {"prompt": "What does it ship?"}, "document": {"id": document_id}}
        )
        assert document.status_code == 202, document.text
        prompt_job = wait_for_terminal(api, prompt.json()["id"], timeout_s=120)
        document_job = wait_for_terminal(api, document.json()["id"], timeout_s=120)

    logs = "\n".join(path.read_text(errors="replace")[-2000:] for path in (state_dir / "logs").glob("*.log"))
    assert prompt_job["status"] == "completed", (prompt_job, logs)
    assert document_job["status"] == "completed", (document_job, logs)
    assert "built layer" in document_job["result"]["text"]  # the document reached the model
    assert document_job["timings"]["extract_ms"] is not None
