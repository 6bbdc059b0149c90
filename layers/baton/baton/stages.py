"""One factory for the SQS-fed stage handlers: each functions/<name>/app.py only declares its stage.

Every such handler is the same machine: Powertools parses each record into a pydantic model, runs
the step once per idempotency key, classifies failures through the retry policy (SQS-native
backoff, give up after max attempts) and answers ReportBatchItemFailures, so one bad record never
redelivers its batch.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import (
    AsyncBatchProcessor,
    BatchProcessor,
    EventType,
    async_process_partial_response,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from baton.idempotency import idempotency_prefix, persistence_layer
from baton.limiter import Deferred
from baton.retries import Failure, RetryPolicy
from baton.settings import get_settings

StepResult = dict[str, Any]
# asyncio's default executor has min(32, cores + 4) threads: 6 on a 2-vCPU function, fewer than a
# batch of 10. The records of a concurrent batch wait on I/O, not on CPU: a thread each (threads
# start on demand), up to the template's largest InferBatchSize.
MAX_CONCURRENT_RECORDS = 100
_record_threads = ThreadPoolExecutor(max_workers=MAX_CONCURRENT_RECORDS, thread_name_prefix="record")

LambdaHandler = Callable[[dict[str, Any], LambdaContext], PartialItemFailureResponse]


def sqs_stage_handler[RecordT: SqsRecordModel, PayloadT: BaseModel](
    stage: str,
    *,
    record_model: type[RecordT],
    payload: Callable[[RecordT], PayloadT],
    work: Callable[[PayloadT, LambdaContext], StepResult],
    idempotency: IdempotencyConfig | None,
    give_up: Callable[[PayloadT], Callable[[Failure, int], None] | None] | None = None,
    concurrent: bool = False,
    defer: Callable[[PayloadT, Deferred], StepResult] | None = None,
) -> LambdaHandler:
    """The Lambda handler of an SQS-fed stage.

    - `payload(record)`: what the step acts on (the command, the lifecycle event's detail...); the
      idempotency key is computed from it, never from the SQS message, so a duplicated or
      redelivered message finds the stored outcome;
    - `work(payload, context)`: the step, in the domain (baton.execution...);
    - `idempotency`: the Powertools config keying the step (None: idempotent by construction);
    - `give_up(payload)`: what ends the job (or batch) when the step cannot succeed (None, or
      None for this payload: nothing to end);
    - `concurrent`: the batch's records run at once (Powertools' async batch processing, each
      record's blocking work in its own thread: boto3 and the openai client block), each with its
      own idempotency record, retry policy and partial-failure result, each recording its outcome
      as soon as it has one. For steps that wait on I/O (the model call); the others stay serial;
    - `defer(payload, deferred)`: what to do when the step raises Deferred (the provider has no
      capacity yet): re-send the payload delayed; the record itself succeeds.
    """
    settings = get_settings()
    logger = Logger()
    tracer = Tracer()
    metrics = Metrics()
    retries = RetryPolicy.from_settings(settings)

    def run(payload: PayloadT, context: LambdaContext) -> StepResult:
        return work(payload, context)

    step = run
    if idempotency is not None:
        step = idempotent_function(
            data_keyword_argument="payload",
            persistence_store=persistence_layer(settings),
            config=idempotency,
            key_prefix=idempotency_prefix(stage),
        )(run)

    @tracer.capture_method
    def record_handler(record: RecordT, lambda_context: LambdaContext) -> StepResult:
        data = payload(record)

        def attempt() -> StepResult:
            try:
                return step(payload=data, context=lambda_context)
            except Deferred as deferred:
                # Not a failure (no idempotency record was kept): the step waits for capacity in
                # a delayed copy of its message, and this one is done.
                if defer is None:
                    raise
                return defer(data, deferred)

        return retries.run(
            record,
            attempt,
            stage=stage,
            give_up=give_up(data) if give_up is not None else None,
        )

    def same_step(record: RecordT) -> str:
        """Copies of one message (SQS may deliver a message twice, even in one batch) run one after
        another, as in a serial batch: the second finds the first's idempotency record rather
        than racing it to the in-progress write."""
        return payload(record).model_dump_json()

    def concurrent_handler() -> Callable[[RecordT, LambdaContext], Awaitable[StepResult]]:
        turns: dict[str, asyncio.Lock] = {}

        async def async_record_handler(record: RecordT, lambda_context: LambdaContext) -> StepResult:
            # Each thread runs in a copy of this context (as asyncio.to_thread does): logger keys follow.
            call = contextvars.copy_context().run
            async with turns.setdefault(same_step(record), asyncio.Lock()):
                return await asyncio.get_running_loop().run_in_executor(
                    _record_threads, call, record_handler, record, lambda_context
                )

        return async_record_handler

    def process(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
        if concurrent:
            return async_process_partial_response(
                event=event,
                record_handler=concurrent_handler(),
                processor=AsyncBatchProcessor(event_type=EventType.SQS, model=record_model),
                context=context,
            )
        return process_partial_response(
            event=event,
            record_handler=record_handler,
            processor=BatchProcessor(event_type=EventType.SQS, model=record_model),
            context=context,
        )

    @logger.inject_lambda_context
    @metrics.log_metrics
    @tracer.capture_lambda_handler
    def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
        if idempotency is not None:
            idempotency.register_lambda_context(context)
        return process(event, context)

    return lambda_handler
