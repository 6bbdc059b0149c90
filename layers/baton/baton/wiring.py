"""Each handler's part, built from the settings: the one place that knows how the parts connect.
The parts receive their collaborators (stores, queues, event publisher, limiter...) and build none,
so a handler holds only what it uses and a test can hand a part anything."""

from __future__ import annotations

from dataclasses import dataclass

from aws_lambda_powertools import Metrics

from baton import llm
from baton.background import BackgroundInference
from baton.batches import BatchService
from baton.blobs import BlobStore
from baton.completions import Completions
from baton.deadletters import DeadLetterHandler
from baton.deliveries import WebhookService
from baton.execution import CommandFence, ExtractStage, InferStage, ToolStage
from baton.failures import JobFailures
from baton.intake import JobIntake
from baton.lifecycle import JobViews, StageQueues, TerminalEvents
from baton.longdocs import LongDocuments
from baton.messaging import EventPublisher
from baton.model_calls import ModelCalls, provider_limiter
from baton.provider_webhooks import ProviderWebhooks
from baton.settings import Settings
from baton.store import JobStore
from baton.sweeper import Sweeper
from baton.tenants import TenantStore


@dataclass(frozen=True)
class _Core:
    """What every part that moves a job needs."""

    store: JobStore
    blobs: BlobStore
    queues: StageQueues
    events: EventPublisher
    terminal: TerminalEvents
    failures: JobFailures

    @property
    def fence(self) -> CommandFence:
        return CommandFence(self.store, self.failures, self.terminal)


def _core(settings: Settings) -> _Core:
    store = JobStore(settings.jobs_table)
    blobs = BlobStore(settings.bucket)
    events = EventPublisher(settings.event_bus)
    terminal = TerminalEvents(events, JobViews(settings, blobs))
    return _Core(
        store=store,
        blobs=blobs,
        queues=StageQueues.from_settings(settings),
        events=events,
        terminal=terminal,
        failures=JobFailures(store, terminal),
    )


def job_intake(settings: Settings) -> JobIntake:
    """The jobs API's and the ingest stage's part."""
    core = _core(settings)
    return JobIntake(
        settings,
        core.store,
        TenantStore(settings.jobs_table),
        core.blobs,
        core.queues,
        core.events,
        core.terminal,
        core.failures,
    )


def job_failures(settings: Settings) -> JobFailures:
    return _core(settings).failures


def extract_stage(settings: Settings) -> ExtractStage:
    core = _core(settings)
    return ExtractStage(settings, core.store, core.blobs, core.queues, core.events, core.fence, core.failures)


def infer_stage(settings: Settings) -> InferStage:
    llm.load_client_library()  # in init, not in the first invocation's timeout
    core = _core(settings)
    model_calls = ModelCalls(settings, core.store, provider_limiter(settings))
    long_documents = LongDocuments(settings, core.store, core.blobs, core.queues, model_calls)
    completions = Completions(
        settings, core.store, core.blobs, core.queues, core.events, core.terminal, long_documents
    )
    background = BackgroundInference(
        settings, core.store, core.queues, model_calls, completions, core.failures
    )
    return InferStage(
        settings,
        core.store,
        core.queues,
        core.fence,
        core.failures,
        model_calls,
        completions,
        long_documents,
        background,
    )


def tool_stage(settings: Settings) -> ToolStage:
    core = _core(settings)
    return ToolStage(core.store, core.blobs, core.queues, core.events, core.fence, core.failures)


def webhook_service(settings: Settings) -> WebhookService:
    """The notify and deliver stages' part (and the API's deliveries)."""
    return WebhookService.from_settings(
        settings, jobs=JobStore(settings.jobs_table), blobs=BlobStore(settings.bucket)
    )


def job_sweeper(settings: Settings) -> Sweeper:
    return Sweeper(job_failures(settings), webhook_service(settings))


def batch_service(settings: Settings) -> BatchService:
    return BatchService(settings, job_intake(settings), webhook_service(settings))


def dead_letter_handler(settings: Settings, metrics: Metrics) -> DeadLetterHandler:
    return DeadLetterHandler(job_failures(settings), batch_service(settings), settings, metrics)


def provider_webhooks(settings: Settings) -> ProviderWebhooks:
    llm.load_client_library()  # webhook verification uses the openai client: load it in init
    return ProviderWebhooks(settings, JobStore(settings.jobs_table), StageQueues.from_settings(settings))
