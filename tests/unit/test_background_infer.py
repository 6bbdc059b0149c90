"""InferenceMode=background in the infer stage, with baton.responses replaced by a fake provider:
a retry after a crash finds the stored response instead of paying for another, and a cancel
reaches the provider."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

import baton.background
import baton.responses
from baton.responses import ResponseState
from baton.store import JobStore
from tests.unit.test_infer_handler import ANSWER, accept

if TYPE_CHECKING:
    from conftest import AwsStack, LoadedFunction


@dataclass
class FakeProvider:
    """Background responses: created in progress; `done` makes every retrieve find the answer."""

    created: list[dict[str, Any]] = field(default_factory=list)
    retrieved: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    done: bool = False

    def prepare(self, settings: Any) -> None:
        """No client to import: the fake is the provider."""

    def create_background(self, settings: Any, **request: Any) -> ResponseState:
        self.created.append(request)
        return ResponseState(f"resp_{len(self.created)}", "in_progress", headers={})

    def retrieve(self, settings: Any, response_id: str, *, model: str) -> ResponseState:
        self.retrieved.append(response_id)
        if self.done:
            return ResponseState(response_id, "completed", completion=ANSWER)
        return ResponseState(response_id, "in_progress")

    def cancel(self, settings: Any, response_id: str, *, model: str) -> ResponseState:
        self.cancelled.append(response_id)
        return ResponseState(response_id, "cancelled")


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> FakeProvider:
    fake = FakeProvider()
    for name in ("prepare", "create_background", "retrieve", "cancel"):
        monkeypatch.setattr(baton.responses, name, getattr(fake, name))
    return fake


@pytest.fixture
def background_infer(aws: AwsStack) -> LoadedFunction:
    # Polls without delay, so each is received at once (the schedule itself: test_responses_mapping).
    return aws.load(
        "InferFunction",
        BATON_PROVIDER_RPM="60000",
        BATON_INFERENCE_MODE="background",
        BATON_BACKGROUND_POLL_SCHEDULE="0s",
    )


def test_a_retry_after_a_crash_finds_the_stored_response_instead_of_paying_again(
    aws: AwsStack,
    api: LoadedFunction,
    background_infer: LoadedFunction,
    provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = accept(aws, api)
    event = aws.take_event("InferQueue")
    schedule = baton.background.BackgroundInference._schedule_poll

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the worker died after storing the response id")

    monkeypatch.setattr(baton.background.BackgroundInference, "_schedule_poll", crash)
    point = JobStore.point_to_response
    monkeypatch.setattr(JobStore, "point_to_response", crash)  # nor the webhook's pointer
    with pytest.raises(BatchProcessingError):  # the record failed: SQS redelivers the command
        background_infer(event)
    stored = JobStore(aws.jobs_table).get("acme", job_id)
    assert stored.provider_call is not None and stored.provider_call.response_id == "resp_1"
    assert JobStore(aws.jobs_table).job_of_response("resp_1") is None

    monkeypatch.setattr(baton.background.BackgroundInference, "_schedule_poll", schedule)
    monkeypatch.setattr(JobStore, "point_to_response", point)
    provider.done = True
    assert background_infer(event) == {"batchItemFailures": []}
    assert len(provider.created) == 1  # one paid call
    assert provider.retrieved == ["resp_1"]
    # The retry that found the id wrote the pointer its worker missed: webhooks find the job again.
    assert JobStore(aws.jobs_table).job_of_response("resp_1") == ("acme", job_id)
    job = JobStore(aws.jobs_table).get("acme", job_id)
    assert job.status.value == "completed"
    assert job.result is not None and job.result.text == ANSWER.text
    assert job.usage.total_tokens == ANSWER.usage.total_tokens


def test_polls_until_done_then_a_late_poll_finds_the_job_advanced(
    aws: AwsStack, api: LoadedFunction, background_infer: LoadedFunction, provider: FakeProvider
) -> None:
    job_id = accept(aws, api)
    assert background_infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}
    poll = aws.take_event("InferQueue")
    command = json.loads(poll["Records"][0]["body"])
    assert command["poll"] == 1
    assert background_infer(poll) == {"batchItemFailures": []}  # still in progress: poll 2 queued
    second = aws.take_event("InferQueue")
    assert json.loads(second["Records"][0]["body"])["poll"] == 2
    provider.done = True
    assert background_infer(second) == {"batchItemFailures": []}
    assert JobStore(aws.jobs_table).get("acme", job_id).status.value == "completed"
    late = dict(command, poll=7, wake="webhook:evt_1")
    assert background_infer({"Records": [aws.sqs_record(json.dumps(late))]}) == {"batchItemFailures": []}
    assert len(provider.created) == 1 and provider.cancelled == []


def test_cancelling_the_job_cancels_the_provider_response(
    aws: AwsStack, api: LoadedFunction, background_infer: LoadedFunction, provider: FakeProvider
) -> None:
    job_id = accept(aws, api)
    assert background_infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}
    aws.receive("InferQueue")  # the first poll, if already visible: the cancel must not need it
    cancelled = api(aws.api_event("api-cancel-job.json", job_id=job_id))
    assert cancelled["statusCode"] == 200, cancelled["body"]
    wake = aws.take_event("InferQueue")
    assert json.loads(wake["Records"][0]["body"])["wake"] == "cancel"
    assert background_infer(wake) == {"batchItemFailures": []}
    assert provider.cancelled == ["resp_1"]
    job = JobStore(aws.jobs_table).get("acme", job_id)
    assert job.status.value == "cancelled"
    assert job.provider_call is not None and job.provider_call.cancelled


def test_a_background_response_holds_its_tenants_in_flight_slot_until_its_step_ends(
    aws: AwsStack, api: LoadedFunction, provider: FakeProvider
) -> None:
    """TenantMaxInFlight counts background responses the provider is working on, not only the
    create call: with a cap of 1, a second job waits (deferred) until the first one's answer."""
    from baton.limiter import Limits, ProviderLimiter

    infer = aws.load(
        "InferFunction",
        BATON_PROVIDER_RPM="60000",
        BATON_INFERENCE_MODE="background",
        BATON_BACKGROUND_POLL_SCHEDULE="0s",
        BATON_TENANT_MAX_IN_FLIGHT="1",
    )
    limiter = ProviderLimiter(aws.limiter_table, configured=Limits(60000, 0), tenant_max_in_flight=1)
    first = accept(aws, api)
    assert infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}
    poll = aws.take_event("InferQueue")
    [lease] = limiter.leases("acme")
    assert lease.startswith(first) and len(provider.created) == 1

    accept(aws, api)
    assert infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}  # deferred, not failed
    assert len(provider.created) == 1  # the cap held: no second response while the first runs

    provider.done = True
    assert infer(poll) == {"batchItemFailures": []}
    assert JobStore(aws.jobs_table).get("acme", first).status.value == "completed"
    assert limiter.leases("acme") == {}  # the step ended: the slot is free for the waiting job


def test_cancelling_a_batch_cancels_its_lines_provider_responses(
    aws: AwsStack, api: LoadedFunction, background_infer: LoadedFunction, provider: FakeProvider
) -> None:
    from tests.unit.test_batches import batch_event, line
    from tests.unit.test_documents import call

    batch = aws.load("BatchFunction")
    _, created = call(api, batch_event(aws, "POST", body={"requests": [line("a"), line("b")]}))
    assert batch(aws.take_event("BatchQueue")) == {"batchItemFailures": []}  # the lines' jobs
    assert background_infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}
    assert len(provider.created) == 2  # both lines' responses are in flight at the provider
    aws.receive("InferQueue")  # their first polls: the cancel must not need them

    status, _ = call(api, batch_event(aws, "DELETE", batch_id=created["id"]))
    assert status == 200
    assert batch(aws.take_event("BatchQueue")) == {"batchItemFailures": []}  # the cancel slice
    wakes = aws.take_event("InferQueue")
    assert {json.loads(r["body"])["wake"] for r in wakes["Records"]} == {"cancel"}
    assert background_infer(wakes) == {"batchItemFailures": []}
    assert sorted(provider.cancelled) == ["resp_1", "resp_2"]


def test_no_response_is_created_without_time_left_to_store_its_id(
    aws: AwsStack, api: LoadedFunction, background_infer: LoadedFunction, provider: FakeProvider
) -> None:
    """A create whose worker the function's timeout kills before the id's write is paid for again
    by the retry: an invocation without time for the create and ID_WRITE_RESERVE_S after it leaves
    the create to a fresh invocation (deferred: not a failure, no attempt spent)."""
    import dataclasses
    import time

    from baton.background import CREATE_TIMEOUT_MIN_S, ID_WRITE_RESERVE_S

    job_id = accept(aws, api)
    event = aws.take_event("InferQueue")
    too_short = int(ID_WRITE_RESERVE_S + CREATE_TIMEOUT_MIN_S) - 1
    nearly_over = dataclasses.replace(background_infer, timeout_s=too_short)
    assert nearly_over(event) == {"batchItemFailures": []}
    assert provider.created == []
    deadline = time.monotonic() + 30
    while not (copies := aws.receive("InferQueue")):  # the deferred copy, after its short delay
        assert time.monotonic() < deadline, "the deferred command never came back"
        time.sleep(0.2)
    assert background_infer(aws.sqs_event("InferQueue", copies)) == {"batchItemFailures": []}
    assert len(provider.created) == 1
    stored = JobStore(aws.jobs_table).get("acme", job_id).provider_call
    assert stored is not None and stored.response_id == "resp_1"


def test_the_response_id_is_stored_before_the_limiter_is_settled_and_the_webhook_pointer_written(
    aws: AwsStack,
    api: LoadedFunction,
    background_infer: LoadedFunction,
    provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between a create and the write of its id nothing else may run: a worker killed there makes
    the retry pay for a second response. The limiter's settle, its lease and the webhook's pointer
    come after the id's write."""
    from baton.limiter import ProviderLimiter

    order: list[str] = []
    store_attach, store_point = JobStore.attach_response, JobStore.point_to_response
    settle, hold = ProviderLimiter.settle, ProviderLimiter.hold_lease

    def spy(name: str, method: Any) -> Any:
        def called(*args: Any, **kwargs: Any) -> Any:
            order.append(name)
            return method(*args, **kwargs)

        return called

    def create(settings: Any, **request: Any) -> ResponseState:
        order.append("create")
        return FakeProvider.create_background(provider, settings, **request)

    monkeypatch.setattr(baton.responses, "create_background", create)
    monkeypatch.setattr(JobStore, "attach_response", spy("store id", store_attach))
    monkeypatch.setattr(JobStore, "point_to_response", spy("pointer", store_point))
    monkeypatch.setattr(ProviderLimiter, "settle", spy("settle", settle))
    monkeypatch.setattr(ProviderLimiter, "hold_lease", spy("lease", hold))
    job_id = accept(aws, api)
    assert background_infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}
    assert order[:2] == ["create", "store id"]
    assert {"settle", "pointer"} <= set(order[2:])
    assert JobStore(aws.jobs_table).job_of_response("resp_1") == ("acme", job_id)


def test_storing_the_same_response_id_again_succeeds_and_another_for_the_step_does_not(
    aws: AwsStack, api: LoadedFunction
) -> None:
    """botocore resends a write whose answer it lost (the write may have landed): the same id
    again is stored, not mistaken for a surplus response (which would be cancelled)."""
    from baton.records import ProviderCall

    job_id = accept(aws, api)
    store = JobStore(aws.jobs_table)
    record = store.get("acme", job_id)
    ours = ProviderCall(mode="background", step=record.step_key, response_id="resp_1", status="queued")
    assert store.attach_response(record, ours)
    assert store.attach_response(record, ours)  # the resent write
    other = ours.model_copy(update={"response_id": "resp_2"})
    assert not store.attach_response(record, other)
    stored = store.get("acme", job_id).provider_call
    assert stored is not None and stored.response_id == "resp_1"


def test_the_time_left_for_a_create_is_counted_after_the_client_is_imported(
    aws: AwsStack,
    api: LoadedFunction,
    background_infer: LoadedFunction,
    provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Importing and building the openai client takes seconds in a cold process on a busy machine:
    time it spends leaves the create less, so the time check comes after it."""
    from baton.background import ID_WRITE_RESERVE_S

    accept(aws, api)
    late_ms = [0]
    clock = baton.background.now_ms
    monkeypatch.setattr(baton.background, "now_ms", lambda: clock() + late_ms[0])

    def slow_import(settings: Any) -> None:
        late_ms[0] = int((background_infer.timeout_s - ID_WRITE_RESERVE_S) * 1000)  # nearly all of it

    monkeypatch.setattr(baton.responses, "prepare", slow_import)
    assert background_infer(aws.take_event("InferQueue")) == {"batchItemFailures": []}  # deferred
    assert provider.created == []
