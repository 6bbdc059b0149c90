"""Documents longer than the model's context: chunking, and map-reduce through the infer queue."""

from __future__ import annotations

import itertools
import json
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from baton import chunking
from baton.clock import now_ms
from baton.errors import ModelError
from baton.llm import Completion
from baton.models import StageCommand
from baton.records import Usage
from baton.settings import get_settings
from baton.store import JobStore
from baton.wiring import infer_stage

from .test_infer_handler import FakeModel, delayed_messages, model, provider_item  # noqa: F401 (the fixture)

if TYPE_CHECKING:
    from conftest import AwsStack, LoadedFunction

CONTEXT = "2048"  # tokens: room for ~6,700 characters of text per call with max_tokens 100
SENTENCE = "The quarterly logistics review found that shipping delays fell by a third. "


def load_infer(aws: AwsStack) -> LoadedFunction:
    # Chunk calls go through the provider limiter: a known, high limit, as the infer fixture sets
    # (learned limits send the first calls one probe at a time, deferring the rest).
    return aws.load("InferFunction", MODEL_CONTEXT_TOKENS=CONTEXT, BATON_PROVIDER_RPM="60000")


def test_split_covers_the_text_in_overlapping_chunks_that_fit() -> None:
    text = "".join(f"Sentence number {i} is here. " for i in range(2000))
    spans = chunking.split(text, 5000)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (start, end), (next_start, _) in itertools.pairwise(spans):
        assert end - start <= 5000
        assert start < next_start < end  # overlap, and always forward
        assert end - next_start <= 5000 * chunking.OVERLAP + 1
    assert all(text[end - 2 : end] == ". " for _, end in spans[:-1])  # cut at a sentence break


def test_group_packs_consecutive_sizes() -> None:
    assert chunking.group([3, 3, 3, 3, 3], 7) == [[0, 1], [2, 3], [4]]
    assert chunking.group([9, 1], 7) == [[0], [1]]


def test_budget_leaves_room_for_prompt_answer_and_margin() -> None:
    budget = chunking.Budget(context_tokens=10_000, prompt_tokens=500, answer_tokens=1000)
    assert budget.text_tokens == 9000 - 500 - 1000 - chunking.FRAMING_TOKENS
    assert budget.text_chars == budget.text_tokens * chunking.CHARS_PER_TOKEN


def long_job(aws: AwsStack, api: LoadedFunction, chars: int, **parameters: Any) -> str:
    text = (SENTENCE * (chars // len(SENTENCE) + 1))[: chars - 1] + "."
    boto3.client("s3").put_object(
        Bucket=aws.bucket, Key="documents/acme/long.txt", Body=text.encode(), ContentType="text/plain"
    )
    body = {
        "input": {"prompt": "Summarize the review."},
        "document": {"id": "long.txt"},
        "parameters": {"max_tokens": 100, **parameters},
    }
    response = api(aws.api_event("api-create-job.json", body=body, drop_headers=("Idempotency-Key",)))
    assert response["statusCode"] == 202, response["body"]
    return str(json.loads(response["body"])["id"])


def queued_commands(aws: AwsStack) -> tuple[list[StageCommand], dict[str, Any] | None]:
    messages = aws.receive("InferQueue")
    commands = [StageCommand.model_validate_json(message["Body"]) for message in messages]
    return commands, aws.sqs_event("InferQueue", messages) if messages else None


def run_infer_until_idle(aws: AwsStack, infer: LoadedFunction) -> list[list[StageCommand]]:
    """Each round: what the queue holds, one message per invocation (a batch's records run
    concurrently, and in-process moto is not safe for concurrent writes to one item)."""
    rounds: list[list[StageCommand]] = []
    while True:
        messages = aws.receive("InferQueue")
        if not messages:
            return rounds
        rounds.append([StageCommand.model_validate_json(message["Body"]) for message in messages])
        for message in messages:
            assert infer(aws.sqs_event("InferQueue", [message])) == {"batchItemFailures": []}


def test_map_reduce_answers_each_chunk_then_combines_once(
    aws: AwsStack,
    api: LoadedFunction,
    model: FakeModel,  # noqa: F811
) -> None:
    extract = aws.load("ExtractFunction", MODEL_CONTEXT_TOKENS=CONTEXT)
    infer = load_infer(aws)
    job_id = long_job(aws, api, 30_000)
    extract(aws.take_event("ExtractQueue"))
    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.document is not None and record.document.chars == 30_000
    chunks = record.document.chunks
    assert chunks >= 5 and record.chunk_levels == [chunks]

    rounds = run_infer_until_idle(aws, infer)
    # Round 1: one command per chunk; round 2: the job's own combining call, once.
    assert sorted(c.chunk for c in rounds[0]) == list(range(chunks))  # type: ignore[type-var]
    assert [(c.chunk, c.level) for c in rounds[1]] == [(None, 0)]
    assert len(rounds) == 2
    assert len(model.calls) == chunks + 1
    limit = chunking.Budget(int(CONTEXT), chunking.estimate_tokens("Summarize the review."), 100).text_chars
    for call in model.calls:
        # No call carries more document text than fits, framing aside.
        assert len(call["messages"][-1]["content"]) <= limit + 400
    # A batch's chunk calls run concurrently, in any order: each part is framed as such once.
    framings = [call["messages"][0]["content"] for call in model.calls[:chunks]]
    for part in range(1, chunks + 1):
        assert sum(f"part {part} of {chunks}" in framing for framing in framings) == 1

    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.status.value == "completed"
    assert record.usage.total_tokens == 19 * (chunks + 1)
    view = record.public_view()
    assert view["document"] == {"id": "long.txt", "chars": 30_000, "chunks": chunks, "truncated": False}


def test_answers_too_long_to_combine_at_once_make_a_tree(
    aws: AwsStack,
    api: LoadedFunction,
    model: FakeModel,  # noqa: F811
) -> None:
    model.answer = Completion(
        text="x" * 2500, finish_reason="stop", tool_calls=None, usage=Usage(total_tokens=1)
    )
    extract = aws.load("ExtractFunction", MODEL_CONTEXT_TOKENS=CONTEXT)
    infer = load_infer(aws)
    job_id = long_job(aws, api, 30_000)
    extract(aws.take_event("ExtractQueue"))
    rounds = run_infer_until_idle(aws, infer)
    levels = [sorted({c.level for c in commands if c.chunk is not None}) for commands in rounds]
    assert levels[0] == [0] and levels[1] == [1]  # answers combined in groups, then again
    assert rounds[-1][0].chunk is None
    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.status.value == "completed"
    assert len(record.chunk_levels) >= 2 and record.chunk_levels[1] < record.chunk_levels[0]


def test_a_redelivered_chunk_neither_calls_the_model_again_nor_counts_twice(
    aws: AwsStack,
    api: LoadedFunction,
    model: FakeModel,  # noqa: F811
) -> None:
    extract = aws.load("ExtractFunction", MODEL_CONTEXT_TOKENS=CONTEXT)
    load_infer(aws)
    job_id = long_job(aws, api, 30_000)
    extract(aws.take_event("ExtractQueue"))
    commands, _ = queued_commands(aws)
    first = commands[0]
    infer = infer_stage(get_settings())  # the infer function's settings (its environment is applied)
    infer.run(first, remaining_ms=60_000)
    infer.run(first, remaining_ms=60_000)  # the same command again (its idempotency record lost)
    assert len(model.calls) == 1
    item = boto3.client("dynamodb").get_item(
        TableName=aws.jobs_table, Key={"pk": {"S": "TENANT#acme"}, "sk": {"S": f"JOB#{job_id}"}}
    )["Item"]
    assert item["chunks_answered_0"]["NS"] == ["0"]


def test_cancel_stops_the_remaining_chunks(
    aws: AwsStack,
    api: LoadedFunction,
    model: FakeModel,  # noqa: F811
) -> None:
    extract = aws.load("ExtractFunction", MODEL_CONTEXT_TOKENS=CONTEXT)
    infer = load_infer(aws)
    job_id = long_job(aws, api, 30_000)
    extract(aws.take_event("ExtractQueue"))
    JobStore(aws.jobs_table).cancel("acme", job_id)
    run_infer_until_idle(aws, infer)
    assert model.calls == []
    assert JobStore(aws.jobs_table).get("acme", job_id).status.value == "cancelled"


@pytest.mark.parametrize(
    ("strategy", "status", "error_type"),
    [("truncate", "completed", None), ("fail", "failed", "document_too_long")],
)
def test_truncate_says_so_and_fail_refuses(
    aws: AwsStack,
    api: LoadedFunction,
    model: FakeModel,  # noqa: F811
    strategy: str,
    status: str,
    error_type: str | None,
) -> None:
    extract = aws.load("ExtractFunction", MODEL_CONTEXT_TOKENS=CONTEXT)
    infer = load_infer(aws)
    job_id = long_job(aws, api, 30_000, long_document=strategy)
    extract(aws.take_event("ExtractQueue"))
    run_infer_until_idle(aws, infer)
    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert record.status.value == status
    if error_type:
        assert record.error is not None and record.error.type == error_type
        assert "30000 characters" in record.error.message
        assert model.calls == []
    else:
        assert record.document is not None and record.document.truncated
        [call] = model.calls
        assert len(call["messages"][0]["content"]) < 8_000


def test_chunk_calls_go_through_the_provider_limiter(
    aws: AwsStack,
    api: LoadedFunction,
    model: FakeModel,  # noqa: F811
) -> None:
    """A 429 on a chunk call blocks the limiter for every caller and defers the chunk's command
    (a delayed copy, no attempt spent, the job still open), as for any model call."""
    extract = aws.load("ExtractFunction", MODEL_CONTEXT_TOKENS=CONTEXT)
    infer = load_infer(aws)
    job_id = long_job(aws, api, 30_000)
    extract(aws.take_event("ExtractQueue"))
    chunks = JobStore(aws.jobs_table).get("acme", job_id).chunk_levels[0]
    # Longer than MAX_WAIT_IN_FUNCTION_S: the others are deferred rather than waiting in the function.
    model.answer = ModelError(
        "rate limited", retryable=True, type_="rate_limited", retry_after=10.0, headers={"retry-after": "10"}
    )
    messages = aws.receive("InferQueue")
    assert len(messages) == chunks
    assert all(StageCommand.model_validate_json(m["Body"]).chunk is not None for m in messages)
    before_ms = now_ms()
    for message in messages:  # one at a time (in-process moto: no concurrent writes to one item)
        assert infer(aws.sqs_event("InferQueue", [message])) == {"batchItemFailures": []}
    assert provider_item(aws)["blocked_until"] >= before_ms + 10_000
    assert len(model.calls) == 1  # the first chunk's 429 blocks the provider for the others
    assert delayed_messages(aws, "InferQueue") == chunks
    record = JobStore(aws.jobs_table).get("acme", job_id)
    assert not record.is_terminal and record.chunk_levels == [chunks]
