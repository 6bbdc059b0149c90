"""Documents longer than the model's context: map-reduce through the infer queue, or cut, or refuse.

`parameters.long_document`:
- `map_reduce` (default): the text is split into chunks that fit the context (`chunking`), one
  infer command per chunk goes through the infer queue (so each call is limited, retried and
  idempotent like any other), and each answered chunk adds itself to a set on the job item in
  DynamoDB. The chunk that completes the set combines: if the answers fit one call, the job's
  own infer command runs with them in place of the document; if not, they are grouped into the
  next level's chunks (a tree of combines) and fanned out again.
- `truncate`: the text is cut to what fits, and `document.truncated` says so.
- `fail`: the job fails with `document_too_long`.

S3 layout: chunks/<tenant>/<job>/<level>-<chunk>.txt (what a chunk call reads) and
chunks/<tenant>/<job>/<level>-<chunk>.answer.json (its answer and usage; a redelivered chunk
whose answer is stored does not call the model again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from baton import chunking
from baton.errors import DocumentTooLongError
from baton.lifecycle import command_for
from baton.models import StageCommand, Step
from baton.records import DocumentInfo, JobRecord, Usage

if TYPE_CHECKING:
    from baton.blobs import BlobStore
    from baton.lifecycle import StageQueues
    from baton.model_calls import ModelCalls
    from baton.settings import Settings
    from baton.store import JobStore

logger = Logger(child=True)

MAP_REDUCE = "map_reduce"
TRUNCATE = "truncate"
FAIL = "fail"
# Below this much room for text per call, splitting would make thousands of tiny calls: the
# prompt and answer themselves are too big for the context.
MIN_CHUNK_CHARS = 2_000


def chunk_key(tenant_id: str, job_id: str, level: int, chunk: int) -> str:
    return f"chunks/{tenant_id}/{job_id}/{level}-{chunk}.txt"


def answer_key(tenant_id: str, job_id: str, level: int, chunk: int) -> str:
    return f"chunks/{tenant_id}/{job_id}/{level}-{chunk}.answer.json"


def request_text(record: JobRecord) -> str:
    """The job's own input, as text (what every chunk call repeats)."""
    job_input = record.request["input"]
    if "prompt" in job_input:
        return str(job_input["prompt"])
    return json.dumps(job_input["messages"], separators=(",", ":"))


def budget(settings_context_tokens: int, record: JobRecord) -> chunking.Budget:
    parameters = record.request.get("parameters", {})
    return chunking.Budget(
        context_tokens=settings_context_tokens,
        prompt_tokens=chunking.estimate_tokens(request_text(record)),
        answer_tokens=parameters.get("max_tokens") or chunking.DEFAULT_ANSWER_TOKENS,
    )


@dataclass(frozen=True)
class Plan:
    """What extract decided: the text to store (cut when truncated), the document as the job
    view shows it, and the level-0 chunk spans (empty when one call suffices)."""

    text: str
    document: DocumentInfo
    spans: list[tuple[int, int]]


def plan(record: JobRecord, text: str, *, context_tokens: int, document_id: str | None) -> Plan:
    """Raises DocumentTooLongError for `fail`, or when even one chunk has no room."""
    room = budget(context_tokens, record)
    info = DocumentInfo(id=document_id, chars=len(text))
    if room.fits(text):
        return Plan(text=text, document=info, spans=[])
    strategy = record.request.get("parameters", {}).get("long_document") or MAP_REDUCE
    too_long = (
        f"the document is {len(text)} characters (about {chunking.estimate_tokens(text)} tokens); "
        f"with the prompt and a {room.answer_tokens}-token answer, one call to this model "
        f"({context_tokens} tokens of context) has room for {room.text_chars} characters"
    )
    if room.text_chars < MIN_CHUNK_CHARS:
        raise DocumentTooLongError(f"{too_long}: shorten the prompt or max_tokens")
    if strategy == FAIL:
        raise DocumentTooLongError(f"{too_long} (long_document: fail)")
    if strategy == TRUNCATE:
        cut = text[: room.text_chars].rstrip()
        return Plan(text=cut, document=info.model_copy(update={"truncated": True}), spans=[])
    spans = chunking.split(text, room.text_chars)
    return Plan(text=text, document=info.model_copy(update={"chunks": len(spans)}), spans=spans)


# -- extract side -------------------------------------------------------------------------------
def fan_out_level0(
    blobs: BlobStore, queues: StageQueues, record: JobRecord, text: str, spans: list[tuple[int, int]]
) -> None:
    for index, (start, end) in enumerate(spans):
        key = chunk_key(record.tenant_id, record.job_id, 0, index)
        blobs.write(key, text[start:end].encode(), content_type="text/plain; charset=utf-8")
    _send(queues, record, level=0, count=len(spans))


def _send(queues: StageQueues, record: JobRecord, *, level: int, count: int) -> None:
    commands = [command_for(record, Step.INFER, chunk=index, level=level) for index in range(count)]
    queues.send_many(Step.INFER, commands)


@dataclass(frozen=True)
class LongDocuments:
    """The map-reduce half that runs in the infer stage."""

    settings: Settings
    store: JobStore
    blobs: BlobStore
    queues: StageQueues
    model_calls: ModelCalls

    def run_chunk(
        self, command: StageCommand, record: JobRecord, *, invocation_deadline_ms: int
    ) -> dict[str, Any]:
        """One chunk's call (`record`: the job, found runnable for this command)."""
        assert command.chunk is not None
        level, index = command.level, command.chunk
        if level >= len(record.chunk_levels) or index >= record.chunk_levels[level]:
            logger.warning("chunk command outside the job's plan dropped", extra=command.model_dump())
            return {"outcome": "skipped"}
        total = record.chunk_levels[level]
        stored_key = answer_key(record.tenant_id, record.job_id, level, index)
        if not self.blobs.exists(stored_key):
            # Answered before but the invocation died before counting it: never pay twice.
            self._answer(record, command, stored_key, total, invocation_deadline_ms)
        answered = self.store.mark_chunk_answered(record, level=level, chunk=index, total=total)
        if answered < total:
            return {"outcome": "chunk_answered", "level": level, "chunk": index, "answered": answered}
        return self._combine(record, level)

    def _answer(
        self, record: JobRecord, command: StageCommand, key: str, total: int, invocation_deadline_ms: int
    ) -> None:
        index = command.chunk or 0
        text = self.blobs.read_text(chunk_key(record.tenant_id, record.job_id, command.level, index))
        if command.level == 0:
            note = (
                f"(This is part {index + 1} of {total} of a document too long for one call; "
                "answer from this part only, briefly if it holds nothing relevant.)"
            )
        else:
            note = (
                "(The document was too long for one call: below are the answers from consecutive "
                "parts of it. Combine them into one answer.)"
            )
        parameters = record.request.get("parameters", {})
        room = budget(self.settings.model_context_tokens, record)
        request: dict[str, Any] = {"max_tokens": room.answer_tokens}
        if parameters.get("temperature") is not None:
            request["temperature"] = parameters["temperature"]
        messages = self.messages(record, note, text)
        # Through the provider limiter like any model call: no capacity (or a 429) defers the
        # chunk's command (Deferred), its own lease counting against the tenant's calls in flight.
        step_key = f"{record.job_id}:{record.version}:{command.level}:{command.chunk}"
        ticket = self.model_calls.admit(command, record, messages, request, lease_id=step_key)
        completion = self.model_calls.complete(
            record, messages, request, invocation_deadline_ms, ticket, step_key=step_key
        )
        self.blobs.write_json(key, {"text": completion.text or "", "usage": completion.usage.model_dump()})

    def _combine(self, record: JobRecord, level: int) -> dict[str, Any]:
        """Every chunk of `level` is answered: one more level, or the job's own (final) call."""
        answers = self.answers(record, level)
        room = budget(self.settings.model_context_tokens, record)
        joined = _join(answers)
        if room.fits(joined):
            self.queues.schedule(record, Step.INFER)
            return {"outcome": "combining", "level": level, "answers": len(answers)}
        groups = chunking.group([len(answer) + 2 for answer in answers], room.text_chars)
        if len(groups) >= len(answers):
            raise DocumentTooLongError(
                "the answers of the document's parts are too long to combine within the model's "
                "context; lower max_tokens"
            )
        for index, members in enumerate(groups):
            key = chunk_key(record.tenant_id, record.job_id, level + 1, index)
            text = _join([answers[member] for member in members])
            self.blobs.write(key, text.encode(), content_type="text/plain; charset=utf-8")
        levels = [*record.chunk_levels[: level + 1], len(groups)]
        record = self.store.add_chunk_level(record, levels)
        _send(self.queues, record, level=level + 1, count=len(groups))
        return {"outcome": "next_level", "level": level + 1, "chunks": len(groups)}

    def answers(self, record: JobRecord, level: int) -> list[str]:
        return [
            str(self._stored_answer(record, level, index)["text"])
            for index in range(record.chunk_levels[level])
        ]

    def usage(self, record: JobRecord) -> Usage:
        """Tokens of every chunk call of the job (added to the final call's usage)."""
        total = Usage()
        for level, count in enumerate(record.chunk_levels):
            for index in range(count):
                total = total.plus(Usage.model_validate(self._stored_answer(record, level, index)["usage"]))
        return total

    def _stored_answer(self, record: JobRecord, level: int, index: int) -> dict[str, Any]:
        stored: dict[str, Any] = self.blobs.read_json(
            answer_key(record.tenant_id, record.job_id, level, index)
        )
        return stored

    def final_messages(self, record: JobRecord) -> list[dict[str, Any]]:
        level = len(record.chunk_levels) - 1
        note = (
            f"(The document was too long for one call: it was read in {record.chunk_levels[0]} parts; "
            "below are the answers from them, in order. Combine them into one answer.)"
        )
        return self.messages(record, note, _join(self.answers(record, level)))

    @staticmethod
    def messages(record: JobRecord, note: str, text: str) -> list[dict[str, Any]]:
        job_input = record.request["input"]
        if "prompt" in job_input:
            return [{"role": "user", "content": f"{job_input['prompt']}\n\n{note}\nDocument:\n{text}"}]
        messages = [dict(message) for message in job_input["messages"]]
        messages.append({"role": "user", "content": f"{note}\nDocument:\n{text}"})
        return messages


def _join(answers: list[str]) -> str:
    return "\n\n".join(answer.strip() for answer in answers)
