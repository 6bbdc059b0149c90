"""A batch and a long document among the chaos run's jobs (issue 12).

Submitted when the run starts, so the runtime's SIGKILL finds the batch slicing or counting and the
document's chunks in flight. What they must show at the end:

* the batch ends `completed`, its `request_counts` add up to its lines, and `output.jsonl` +
  `errors.jsonl` hold every `custom_id` exactly once (lost lines: 0, lines twice: 0); its poison
  line fails as `dead_lettered`, its plain lines complete;
* the long document (over twice the simulator's context) completes by map-reduce: more than one
  chunk, no model call over the context, each chunk (step `job:version:level:chunk`) paid once
  outside the kill window.

The jobs they make are not the run's own specs: `job_ids` names them so the main analysis does not
count them as foreign.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from baton.batches import line_job_id
from baton.intake import keyed_job_id
from baton_dev.client import BATCH_TERMINAL_STATUSES as BATCH_TERMINAL
from baton_dev.client import TERMINAL_STATUSES as JOB_TERMINAL

if TYPE_CHECKING:
    from .harness import ChaosStack

# Twice the simulator's default context (32,768 tokens at ~4 characters each) and then some.
LONG_DOCUMENT_CHARS = 300_000
POISON_LINE = "poison"


@dataclass
class SideResults:
    """What the side work left behind, read back before the runtime stops."""

    batch: dict[str, Any] | None = None
    output: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    long_job: dict[str, Any] | None = None
    job_ids: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


class SideWork:
    def __init__(self, stack: ChaosStack, *, lines: int, tenant: str) -> None:
        self.stack = stack
        self.tenant = tenant
        self.custom_ids = [f"line-{index}" for index in range(lines - 1)] + [POISON_LINE]
        self.batch_id: str | None = None
        self.long_key = f"chaos-long-{uuid.uuid4().hex[:12]}"
        self.long_job_id = keyed_job_id(tenant, self.long_key)
        self.results = SideResults()

    def _lines(self) -> list[dict[str, Any]]:
        lines = []
        for index, custom_id in enumerate(self.custom_ids):
            if custom_id == POISON_LINE:
                prompt = "[sim:malformed] Summarize the poisoned line."
            else:
                # Some lines meet faults of their own besides the simulator's random ones.
                directive = ("", "[sim:429x2] ", "[sim:503x1] ")[index % 3]
                prompt = f"{directive}Summarize batch line {custom_id}: the depot shipped {index} crates."
            lines.append({"custom_id": custom_id, "input": {"prompt": prompt}})
        return lines

    # -- submit ------------------------------------------------------------------------------
    def submit(self, client: httpx.Client, deadline: float) -> None:
        """POST the batch and the long document's job (both retried through the runtime's kill)."""
        body = {"requests": self._lines(), "metadata": {"chaos_kind": "batch"}}
        created = self._post(client, "/v1/batches", body, {}, deadline)
        self.batch_id = str(created["id"])
        document_id = self._upload(client, deadline)
        job = {
            "input": {"prompt": "Which depot shipped the most crates, and when?"},
            "document": {"id": document_id},
            "metadata": {"chaos_kind": "long_document"},
        }
        accepted = self._post(client, "/v1/jobs", job, {"Idempotency-Key": self.long_key}, deadline)
        if accepted["id"] != self.long_job_id:
            self.results.problems.append(f"long document job is {accepted['id']}, not {self.long_job_id}")

    def _upload(self, client: httpx.Client, deadline: float) -> str:
        sentences = []
        for day in range(1, 100_000):
            sentences.append(f"Day {day}: depot {day % 17} shipped {day * 7 % 1000} crates to the coast.")
            if sum(len(s) + 1 for s in sentences) > LONG_DOCUMENT_CHARS:
                break
        data = "\n".join(sentences).encode()
        created = self._post(client, "/v1/documents", {"filename": "ledger.txt"}, {}, deadline)
        upload = created["upload"]
        answer = httpx.request(upload["method"], upload["url"], content=data, headers=upload["headers"])
        answer.raise_for_status()
        return str(created["id"])

    @staticmethod
    def _post(
        client: httpx.Client, path: str, body: dict[str, Any], headers: dict[str, str], deadline: float
    ) -> dict[str, Any]:
        while time.monotonic() < deadline:
            try:
                answer = client.post(path, json=body, headers=headers)
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            if answer.status_code >= 500 or answer.status_code in {409, 429}:
                time.sleep(1.0)
                continue
            answer.raise_for_status()
            created: dict[str, Any] = answer.json()
            return created
        raise TimeoutError(f"POST {path} not accepted before the deadline")

    # -- wait and read back ------------------------------------------------------------------
    def done(self, client: httpx.Client) -> bool:
        try:
            batch = client.get(f"/v1/batches/{self.batch_id}")
            job = client.get(f"/v1/jobs/{self.long_job_id}")
        except httpx.TransportError:
            return False
        if batch.status_code != 200 or job.status_code != 200:
            return False
        return batch.json()["status"] in BATCH_TERMINAL and job.json()["status"] in JOB_TERMINAL

    def wait(self, client: httpx.Client, deadline: float) -> None:
        while time.monotonic() < deadline and not self.done(client):
            time.sleep(1.0)

    def read_back(self, client: httpx.Client) -> SideResults:
        results = self.results
        if self.batch_id is None:
            results.problems.append("the chaos batch was never accepted")
            return results
        batch = client.get(f"/v1/batches/{self.batch_id}").json()
        results.batch = batch
        for name, target in (("output_url", results.output), ("errors_url", results.errors)):
            if batch.get(name):
                text = httpx.get(batch[name], timeout=30).text
                target.extend(json.loads(raw) for raw in text.splitlines() if raw.strip())
        entries = results.output + results.errors
        # Every line's job id, from the batch and its custom_id: a batch that did not finish (no
        # output file yet) still has its lines' jobs named, not counted as strangers.
        batch_id = self.batch_id
        results.job_ids = {line_job_id(self.tenant, batch_id, custom_id) for custom_id in self.custom_ids}
        results.job_ids |= {str(entry["job_id"]) for entry in entries if entry["job_id"]}
        results.job_ids.add(self.long_job_id)
        long_job = client.get(f"/v1/jobs/{self.long_job_id}")
        results.long_job = long_job.json() if long_job.status_code == 200 else None
        return results

    # -- analysis ----------------------------------------------------------------------------
    def analyse(
        self,
        chat: Sequence[Mapping[str, Any]],
        paid_by_step: Mapping[str, list[float]],
        kill_window: tuple[float, float],
        context_window: int,
    ) -> tuple[list[tuple[str, str]], list[str]]:
        results = self.results
        problems = list(results.problems)
        batch = results.batch or {}
        counts = batch.get("request_counts") or {}
        listed = Counter(str(entry["custom_id"]) for entry in results.output + results.errors)
        lost = [custom_id for custom_id in self.custom_ids if custom_id not in listed]
        twice = sorted(custom_id for custom_id, n in listed.items() if n > 1)
        strangers = sorted(set(listed) - set(self.custom_ids))
        if batch.get("status") != "completed":
            problems.append(f"batch {self.batch_id} ended {batch.get('status')}, not completed")
        if lost or twice or strangers:
            problems.append(
                f"batch lines: {len(lost)} lost {lost[:8]}, {len(twice)} twice {twice[:8]}, "
                f"{len(strangers)} not ours {strangers[:8]}"
            )
        ended = sum(int(counts.get(name, 0)) for name in ("completed", "failed", "cancelled"))
        if counts.get("total") != len(self.custom_ids) or ended != len(self.custom_ids):
            problems.append(f"batch request_counts {counts} for {len(self.custom_ids)} lines")
        poison = [entry for entry in results.errors if entry["custom_id"] == POISON_LINE]
        if not poison or (poison[0].get("error") or {}).get("type") != "dead_lettered":
            problems.append(f"the batch's poison line ended {poison[:1]}, not dead_lettered")
        failed_plain = [
            f"{entry['custom_id']} {(entry.get('error') or {}).get('type')}"
            for entry in results.errors
            if entry["custom_id"] != POISON_LINE
        ]

        long_job = results.long_job or {}
        document = long_job.get("document") or {}
        if long_job.get("status") != "completed":
            problems.append(f"long document job ended {long_job.get('status')}: {long_job.get('error')}")
        if int(document.get("chunks") or 0) < 2 or document.get("truncated"):
            problems.append(f"long document not answered by map-reduce: document {document}")
        mine = [entry for entry in chat if entry.get("job_id") == self.long_job_id]
        over = [
            entry
            for entry in mine
            if entry.get("fault") == "context_length" or int(entry.get("prompt_tokens") or 0) > context_window
        ]
        if over:
            problems.append(f"{len(over)} long-document model call(s) over the context")
        largest = max((int(entry.get("prompt_tokens") or 0) for entry in mine), default=0)
        start, end = kill_window
        chunk_steps = {
            step: stamps
            for step, stamps in paid_by_step.items()
            if step.startswith(f"{self.long_job_id}:") and step.count(":") == 3
        }
        twice_outside = [
            step
            for step, stamps in chunk_steps.items()
            for earlier in sorted(stamps)[:-1]
            if not start <= earlier <= end
        ]
        twice_inside = sum(len(stamps) - 1 for stamps in chunk_steps.values()) - len(twice_outside)
        if twice_outside:
            problems.append(f"{len(twice_outside)} chunk call(s) paid twice outside the kill window")
        figures = [
            (
                "batch",
                f"{self.batch_id} {batch.get('status')}: {len(self.custom_ids)} lines, counts {counts}",
            ),
            (
                "batch lines lost / twice",
                f"{len(lost)} / {len(twice)} ({len(results.output)} in output, {len(results.errors)} in "
                f"errors; failed besides the poison line: {failed_plain or 'none'})",
            ),
            (
                "long document",
                f"{long_job.get('status')}: {document.get('chars')} chars in {document.get('chunks')} "
                f"chunks, {len(mine)} model calls, max prompt {largest} of {context_window} tokens",
            ),
            (
                "duplicate paid chunk calls outside / inside the kill window",
                f"{len(twice_outside)} / {twice_inside} ({len(chunk_steps)} chunk steps)",
            ),
        ]
        return figures, problems
