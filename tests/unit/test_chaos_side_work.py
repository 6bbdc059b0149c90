"""The chaos run's batch and long-document checks (tests/chaos/side_work.py): what passes, and what
fails the run (a lost or doubled line, a call over the context, a chunk paid twice)."""

from __future__ import annotations

from typing import Any, cast

from tests.chaos.side_work import POISON_LINE, SideWork

CONTEXT = 32_768
KILL_WINDOW = (100.0, 110.0)


def side_work(lines: int = 4) -> SideWork:
    work = SideWork(cast("Any", None), lines=lines, tenant="chaos")
    work.batch_id = "batch_1"
    results = work.results
    results.batch = {
        "status": "completed",
        "request_counts": {"total": lines, "completed": lines - 1, "failed": 1, "cancelled": 0},
    }
    results.output = [
        {"custom_id": custom_id, "job_id": f"job_{custom_id}", "status": "completed"}
        for custom_id in work.custom_ids
        if custom_id != POISON_LINE
    ]
    results.errors = [
        {"custom_id": POISON_LINE, "job_id": "job_p", "status": "failed", "error": {"type": "dead_lettered"}}
    ]
    results.long_job = {
        "status": "completed",
        "document": {"chars": 300_000, "chunks": 3, "truncated": False},
    }
    return work


def chunk_calls(work: SideWork, stamps: dict[int, list[float]]) -> dict[str, list[float]]:
    return {f"{work.long_job_id}:1:0:{chunk}": times for chunk, times in stamps.items()}


def test_a_clean_run_passes_with_its_figures() -> None:
    work = side_work()
    paid = chunk_calls(work, {0: [50.0], 1: [51.0], 2: [105.0, 120.0]})  # one re-paid inside the window
    chat = [{"job_id": work.long_job_id, "status": 200, "prompt_tokens": 26_000}]
    figures, problems = work.analyse(chat, paid, KILL_WINDOW, CONTEXT)
    assert problems == []
    shown = dict(figures)
    assert shown["batch lines lost / twice"].startswith("0 / 0")
    assert shown["duplicate paid chunk calls outside / inside the kill window"].startswith("0 / 1")


def test_a_lost_line_a_doubled_line_and_wrong_counts_fail() -> None:
    work = side_work()
    work.results.output = [work.results.output[0], work.results.output[0]]  # line-0 twice, line-1/2 lost
    _, problems = work.analyse([], {}, KILL_WINDOW, CONTEXT)
    assert any("2 lost ['line-1', 'line-2'], 1 twice ['line-0']" in problem for problem in problems)


def test_a_call_over_the_context_and_a_chunk_paid_twice_outside_the_window_fail() -> None:
    work = side_work()
    chat = [{"job_id": work.long_job_id, "status": 400, "fault": "context_length", "prompt_tokens": 40_000}]
    paid = chunk_calls(work, {0: [20.0, 30.0]})
    _, problems = work.analyse(chat, paid, KILL_WINDOW, CONTEXT)
    assert "1 long-document model call(s) over the context" in problems
    assert "1 chunk call(s) paid twice outside the kill window" in problems


def test_a_poison_line_that_did_not_dead_letter_and_a_truncated_document_fail() -> None:
    work = side_work()
    work.results.errors[0]["error"] = {"type": "timeout"}
    work.results.long_job = {"status": "completed", "document": {"chunks": 1, "truncated": True}}
    _, problems = work.analyse([], {}, KILL_WINDOW, CONTEXT)
    assert any("poison line" in problem for problem in problems)
    assert any("not answered by map-reduce" in problem for problem in problems)
