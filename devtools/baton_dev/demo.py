"""`baton demo`: the whole product in under a minute, from a fresh clone.

Starts `baton dev` in a subprocess, issues an API key, then runs four kinds of jobs through it and
follows them live: (a) a prompt, (b) a PDF dropped into the bucket under uploads/<tenant>/, (c) a
prompt whose result is pushed to a signed webhook, (d) a prompt over an uploaded Markdown document.
Exits 0 only when every job completed and the webhook arrived with a valid signature.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from rich import box
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from baton_dev.client import (
    TERMINAL_STATUSES,
    BatonApiError,
    BatonClient,
    BatonClientError,
    s3_client,
    upload_document,
)
from baton_dev.launcher import LaunchedStack, StackConfig, StackStartError
from baton_dev.samples import SAMPLE_MARKDOWN, sample_report_pdf
from baton_dev.target import Target, resolve_target
from baton_dev.webhook_receiver import WebhookEvent, WebhookReceiver

logger = logging.getLogger("baton.demo")

TENANT: Final = "demo"
# A deadline, not a speed goal: on a loaded 2-core machine moto alone has taken 70 s to start.
STARTUP_TIMEOUT_S: Final = 240.0
STOP_TIMEOUT_S: Final = 10.0
POLL_WAIT_S: Final = 5.0
RESULT_PREVIEW_CHARS: Final = 300
PDF_KEY: Final = f"uploads/{TENANT}/incident-review.pdf"
WAITING_FOR_INGEST: Final = "waiting for ingest"
PDF_PROMPT: Final = "Summarize the incident review and list the action items."
ARTICLE: Final = (
    "The James Webb Space Telescope, launched on 25 December 2021, is the largest optical telescope "
    "in space. Its 6.5-metre primary mirror is made of 18 gold-coated beryllium segments that "
    "unfolded after launch. Webb observes mainly in the infrared, which lets it see through dust "
    "clouds and detect light from galaxies formed a few hundred million years after the Big Bang. "
    "To stay cold enough for infrared work, it orbits the Sun near the second Lagrange point, about "
    "1.5 million kilometres from Earth, behind a five-layer sunshield the size of a tennis court. "
    "In its first years it has measured the atmospheres of exoplanets, found carbon dioxide on a "
    "gas giant for the first time, and photographed some of the most distant galaxies ever seen."
)
WEBHOOK_PROMPT: Final = (
    "Write a two-sentence status update for the on-call channel: the settlement queue backlog of "
    "380,000 messages drained in three hours after the consumer cap was raised from 20 to 80, and "
    "no settlement missed its banking cut-off. Autoscaling on queue age ships next week."
)
MARKDOWN_PROMPT: Final = "List what is new and what was fixed in this release, as short bullet points."


@dataclass(frozen=True)
class DemoOptions:
    state_dir: Path = Path(".baton/demo")
    port: int = 0
    template: Path = Path("template.yaml")
    timeout: float = 120.0


@dataclass
class DemoJob:
    """One demo job and what the demo last saw of it (updated by its poller thread)."""

    label: str
    kind: str
    job_id: str | None = None
    submitted_at: float = 0.0
    finished_at: float | None = None
    job: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # e.g. "waiting for ingest", or the last polling error
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def status(self) -> str:
        return str(self.job.get("status") or ("submitting" if self.job_id is None else "pending"))

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def elapsed(self, now: float) -> float:
        if not self.submitted_at:
            return 0.0
        return (self.finished_at or now) - self.submitted_at


class DemoError(Exception):
    """A step of the demo failed; the message says which and what to look at."""


# -- the local stack ---------------------------------------------------------------------------------


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(the log is empty)"
    except OSError:
        return "(no log)"


def demo_stack(options: DemoOptions) -> LaunchedStack:
    """The demo's own `baton dev` (its output in <state_dir>/dev.log). It runs in the developer's
    environment (a real model set with OPENAI_BASE_URL, say) but records itself in its own state
    file: it must not replace the user's record of `baton dev`."""
    return LaunchedStack(
        StackConfig(
            template=options.template,
            state_dir=options.state_dir,
            port=options.port,
            inherit_environment=True,
            user_state_file=options.state_dir / "dev.json",
        )
    )


# -- following jobs ----------------------------------------------------------------------------------


def _follow(client: BatonClient, job: DemoJob, deadline: float, stop: threading.Event) -> None:
    """Long-poll one job (GET ?wait=) until it is terminal, the deadline passes or `stop` is set.
    An upload's job does not exist until the ingest function made it: 404 means "not yet" here."""
    assert job.job_id is not None
    errors = 0
    while not stop.is_set() and time.monotonic() < deadline:
        wait = max(1.0, min(POLL_WAIT_S, deadline - time.monotonic()))
        try:
            seen = client.get(job.job_id, wait=wait)
        except BatonApiError as error:
            if error.status == 404 and not job.job:
                with job.lock:
                    job.note = WAITING_FOR_INGEST
                stop.wait(0.2)
                continue
            errors += 1
            with job.lock:
                job.note = f"{error.error_type}: {error.message}"
        except BatonClientError as error:
            errors += 1
            with job.lock:
                job.note = str(error)
        else:
            errors = 0
            with job.lock:
                job.job = seen
                job.note = ""
                if job.terminal:
                    job.finished_at = time.monotonic()
                    return
            continue
        if errors >= 5:
            logger.warning("giving up on %s after %d errors", job.job_id, errors)
            return
        stop.wait(0.5)


_STATUS_STYLE: Final = {
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "needs_review": "yellow",
    "processing": "cyan",
}


def _table(jobs: list[DemoJob], now: float, remaining: float) -> Table:
    """The live view; fits an 80-column terminal (full job ids are in the log lines and results)."""
    done = sum(job.terminal for job in jobs)
    table = Table(
        title=f"Baton demo: {done}/{len(jobs)} jobs finished"
        + ("" if done == len(jobs) else f" (deadline in {max(0.0, remaining):.0f}s)"),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
    )
    table.add_column("job", no_wrap=True)
    table.add_column("id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("step", no_wrap=True)
    table.add_column("progress", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    for job in jobs:
        with job.lock:
            status = job.status
            progress = 100 if job.terminal else int(job.job.get("progress") or 0)
            step = str(job.job.get("current_step") or ("ingest" if job.note == WAITING_FOR_INGEST else "-"))
            job_id = (job.job_id or "-")[:12]
            elapsed = job.elapsed(now)
        table.add_row(
            f"{job.label} {job.kind}",
            job_id,
            Text(status, style=_STATUS_STYLE.get(status, "")),
            step,
            _bar_text(progress),
            f"{elapsed:.1f}s",
        )
    return table


def _bar_text(progress: int, width: int = 12) -> Text:
    filled = round(width * progress / 100)
    text = Text("━" * filled, style="green" if progress >= 100 else "magenta")
    text.append("━" * (width - filled), style="grey23")
    text.append(f" {progress:>3d}%")
    return text


# -- the demo ----------------------------------------------------------------------------------------


class Demo:
    def __init__(self, options: DemoOptions, console: Console) -> None:
        self.options = options
        self.console = console
        self.started = self.jobs_started = time.monotonic()
        self.stack = demo_stack(options)
        self.jobs: list[DemoJob] = []
        self.failures: list[str] = []

    def say(self, message: str) -> None:
        # Log lines never wrap mid-id: the terminal folds them if it must.
        self.console.print(f"[dim]{time.monotonic() - self.started:5.1f}s[/dim] {message}", soft_wrap=True)

    def run(self) -> int:
        if not self.options.template.exists():
            self.console.print(
                f"[red]{escape(str(self.options.template))} not found: run `baton demo` from the "
                "root of the Baton repository (or pass --template)[/red]"
            )
            return 1
        receiver: WebhookReceiver | None = None
        try:
            self.say(
                f"Starting the local stack: [bold]baton dev[/bold] on port {self.stack.port} "
                f"(moto + model simulator + API; log: {escape(str(self.stack.log_path))})"
            )
            self.stack.spawn()
            # Import the domain helpers (openai, powertools: seconds) while the stack boots.
            threading.Thread(target=importlib.import_module, args=("baton.intake",), daemon=True).start()
            try:
                self.stack.wait_ready(STARTUP_TIMEOUT_S)
                target = resolve_target(state_dir=self.options.state_dir)
            except StackStartError as error:
                self.console.print(f"[red]{escape(str(error))}[/red]")
                self.console.print(
                    Panel(
                        escape(_log_tail(self.stack.log_path)),
                        title=f"last lines of {escape(str(self.stack.log_path))}",
                    )
                )
                return 1
            self.say(f"Local stack ready: API [bold]{escape(target.api_url)}[/bold]")
            # --timeout is the jobs' time: a slow start of the stack must not eat into it.
            self.jobs_started = time.monotonic()
            issued = target.tenants().create_api_key(TENANT)
            self.say(f"Created an API key for tenant [bold]{TENANT}[/bold] ({issued.api_key[:10]}...)")
            receiver = WebhookReceiver(issued.webhook_secret)
            self.say(f"Webhook receiver listening on {receiver.url} (verifies Standard Webhooks signatures)")
            with BatonClient(target.api_url, issued.api_key) as client:
                webhook_job = self._submit_all(client, target, receiver)
                self._follow_all(client)
            self._check_jobs()
            self._check_webhook(receiver, webhook_job)
            self._report(receiver, webhook_job)
        except KeyboardInterrupt:
            self.console.print("[yellow]interrupted[/yellow]")
            return 130
        except (DemoError, BatonClientError) as error:
            self.console.print(f"[red]demo failed: {escape(str(error))}[/red]")
            self.console.print(f"The local stack's log is in {escape(str(self.stack.log_path))}")
            return 1
        except Exception as error:  # boto3 and friends: a clear line for the user, details in the log
            logger.debug("demo failed", exc_info=True)
            self.console.print(f"[red]demo failed: {type(error).__name__}: {escape(str(error))}[/red]")
            self.console.print(f"The local stack's log is in {escape(str(self.stack.log_path))}")
            return 1
        finally:
            if receiver is not None:
                receiver.stop()
            self.say("Stopping the local stack (SIGTERM)")
            if not self.stack.stop(STOP_TIMEOUT_S):
                logger.warning("`baton dev` did not stop in %.0fs; killed it", STOP_TIMEOUT_S)
            self.say("Local stack stopped")
        return self._verdict()

    # -- submitting --------------------------------------------------------------------------------
    def _submit_all(self, client: BatonClient, target: Target, receiver: WebhookReceiver) -> DemoJob:
        from baton.intake import upload_job_id

        bucket = target.bucket
        if not bucket:
            raise DemoError("the local stack did not report its bucket (dev.json has no 'bucket')")
        s3 = s3_client(target)

        prompt_job = self._add("(a)", "prompt")
        self._submit(client, prompt_job, {"input": {"prompt": f"Summarize in two sentences:\n\n{ARTICLE}"}})

        pdf_job = self._add("(b)", "PDF upload")
        put = s3.put_object(
            Bucket=bucket,
            Key=PDF_KEY,
            Body=sample_report_pdf(),
            ContentType="application/pdf",
            Metadata={"prompt": PDF_PROMPT},
        )
        pdf_job.job_id = upload_job_id(bucket, PDF_KEY, str(put["ETag"]))
        pdf_job.submitted_at = time.monotonic()
        pdf_job.note = WAITING_FOR_INGEST
        self.say(
            f"(b) uploaded s3://{bucket}/{PDF_KEY} with a prompt in its metadata; "
            f"the ingest function will make it job {pdf_job.job_id}"
        )

        webhook_job = self._add("(c)", "prompt+webhook")
        self._submit(
            client,
            webhook_job,
            {
                "input": {"prompt": WEBHOOK_PROMPT},
                "webhook": {"url": receiver.url},
                "metadata": {"demo": "webhook"},
            },
        )

        doc_job = self._add("(d)", "Markdown doc")
        document_id = upload_document(
            target,
            bucket=bucket,
            tenant=TENANT,
            filename="release-notes.md",
            data=SAMPLE_MARKDOWN.encode(),
            content_type="text/markdown; charset=utf-8",
            s3=s3,
        )
        self.say(f"(d) uploaded release-notes.md as document {document_id}")
        self._submit(client, doc_job, {"input": {"prompt": MARKDOWN_PROMPT}, "document": {"id": document_id}})
        return webhook_job

    def _add(self, label: str, kind: str) -> DemoJob:
        job = DemoJob(label=label, kind=kind)
        self.jobs.append(job)
        return job

    def _submit(self, client: BatonClient, job: DemoJob, body: dict[str, Any]) -> None:
        job.submitted_at = time.monotonic()
        status, accepted = client.submit(body)
        job.job_id = str(accepted["id"])
        self.say(
            f"{job.label} POST /v1/jobs ({job.kind}) -> {status}, job {job.job_id}, "
            f"delivery: {accepted.get('delivery')}"
        )

    # -- following ---------------------------------------------------------------------------------
    def _follow_all(self, client: BatonClient) -> None:
        deadline = self.jobs_started + self.options.timeout
        stop = threading.Event()
        threads = [
            threading.Thread(target=_follow, args=(client, job, deadline, stop), daemon=True, name=job.label)
            for job in self.jobs
        ]
        for thread in threads:
            thread.start()
        interactive = self.console.is_terminal
        seen: dict[str, tuple[str, str]] = {}
        try:
            with Live(
                _table(self.jobs, time.monotonic(), deadline - time.monotonic()),
                console=self.console,
                refresh_per_second=8,
            ) as live:
                while any(thread.is_alive() for thread in threads):
                    now = time.monotonic()
                    live.update(_table(self.jobs, now, deadline - now))
                    if not interactive:
                        self._log_transitions(seen)
                    time.sleep(0.125)
                live.update(_table(self.jobs, time.monotonic(), deadline - time.monotonic()))
                if not interactive:
                    self._log_transitions(seen)
            if not interactive:
                self.console.line()
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=POLL_WAIT_S + 5)

    def _log_transitions(self, seen: dict[str, tuple[str, str]]) -> None:
        """Without a terminal the live table shows only at the end: say each change as a line."""
        for job in self.jobs:
            with job.lock:
                state = (job.status, str(job.job.get("current_step") or "-"))
            if job.job and seen.get(job.label) != state:
                seen[job.label] = state
                self.say(f"{job.label} {job.job_id}: {state[0]} (step {state[1]})")

    # -- checking and reporting --------------------------------------------------------------------
    def _check_jobs(self) -> None:
        for job in self.jobs:
            source_key = (job.job.get("metadata") or {}).get("source_key")
            if job.kind == "PDF upload" and job.job and source_key != PDF_KEY:
                self.failures.append(
                    f"job {job.label} {job.job_id}: metadata.source_key is {source_key!r}, not {PDF_KEY!r}"
                )
            if job.status == "completed":
                continue
            if not job.job and job.note == WAITING_FOR_INGEST:
                detail = (
                    "the ingest function never created the job upload_job_id(bucket, key, ETag) "
                    f"predicts, in {self.options.timeout:.0f}s"
                )
            elif not job.terminal:
                detail = f"still {job.status} after {self.options.timeout:.0f}s"
                if job.note:
                    detail += f" ({job.note})"
            else:
                error = job.job.get("error") or {}
                detail = f"{job.status}: {error.get('type')}: {error.get('message')}"
            self.failures.append(f"job {job.label} {job.kind} {job.job_id}: {detail}")

    def _check_webhook(self, receiver: WebhookReceiver, webhook_job: DemoJob) -> WebhookEvent | None:
        if webhook_job.status != "completed":
            self.failures.append(f"webhook for job (c): not checked, the job is {webhook_job.status}")
            return None
        remaining = max(15.0, self.options.timeout - (time.monotonic() - self.jobs_started))
        try:
            events = receiver.wait_until(
                lambda events: any(_event_job_id(event) == webhook_job.job_id for event in events),
                timeout=remaining,
            )
        except TimeoutError:
            self.failures.append(
                f"webhook for job (c) {webhook_job.job_id}: none arrived in {remaining:.0f}s"
            )
            return None
        event = next(event for event in events if _event_job_id(event) == webhook_job.job_id)
        if not event.verified:
            self.failures.append(f"webhook for job (c) {event.webhook_id}: the signature did not verify")
        return event

    def _report(self, receiver: WebhookReceiver, webhook_job: DemoJob) -> None:
        self.console.rule("Results")
        for job in self.jobs:
            self._report_job(job)
        self.console.rule("Webhook deliveries")
        events = receiver.events
        if not events:
            self.console.print("no webhook deliveries arrived")
        for event in events:
            payload = event.payload if isinstance(event.payload, dict) else {}
            mark = "[green]verified ✓[/green]" if event.verified else "[red]NOT verified ✗[/red]"
            self.console.print(
                f"webhook-id [bold]{escape(event.webhook_id)}[/bold]  "
                f"type {escape(str(payload.get('type')))}  "
                f"job {escape(str(_event_job_id(event)))}  signature {mark}"
            )
        self.console.print(
            "[dim]Answers come from Baton's local model SIMULATOR (deterministic extractive summaries, "
            "not a language model). To use a real provider, set OPENAI_BASE_URL, OPENAI_API_KEY and "
            "BATON_MODEL before `baton dev` / `baton demo` "
            "(OpenAI, vLLM, Ollama, LM Studio, LiteLLM...).[/dim]"
        )

    def _report_job(self, job: DemoJob) -> None:
        view = job.job
        status = job.status
        style = _STATUS_STYLE.get(status, "")
        lines: list[str] = []
        result = view.get("result") or {}
        text = str(result.get("text") or "")
        if text:
            preview = (
                text if len(text) <= RESULT_PREVIEW_CHARS else text[:RESULT_PREVIEW_CHARS].rstrip() + "…"
            )
            lines.append(escape(preview))
        error = view.get("error")
        if error:
            lines.append(f"[red]{escape(str(error.get('type')))}: {escape(str(error.get('message')))}[/red]")
        usage = view.get("usage") or {}
        timings = view.get("timings") or {}
        if usage:
            lines.append(
                f"[dim]usage: {usage.get('prompt_tokens')} prompt + {usage.get('completion_tokens')} "
                f"completion = {usage.get('total_tokens')} tokens[/dim]"
            )
        if timings:
            parts = ", ".join(
                f"{name.removesuffix('_ms')} {value} ms"
                for name, value in timings.items()
                if value is not None
            )
            lines.append(f"[dim]timings: {parts}[/dim]")
        title = (
            f"{job.label} {job.kind} · {job.job_id} · [{style}]{status}[/{style}]"
            if style
            else (f"{job.label} {job.kind} · {job.job_id} · {status}")
        )
        self.console.print(Panel("\n".join(lines) or "(no result)", title=title, title_align="left"))

    def _verdict(self) -> int:
        total = time.monotonic() - self.started
        if self.failures:
            self.console.print(f"[red bold]Demo FAILED after {total:.1f}s:[/red bold]")
            for failure in self.failures:
                self.console.print(f"[red]  - {escape(failure)}[/red]")
            self.console.print(f"The local stack's log is in {escape(str(self.stack.log_path))}")
            return 1
        self.console.print(
            f"[green bold]Demo passed in {total:.1f}s[/green bold]: {len(self.jobs)} jobs completed and the "
            "webhook for job (c) arrived with a verified signature."
        )
        self.console.print(
            "Next: run [bold]./baton dev[/bold] in one terminal and the README's examples (API reference, "
            "CLI) in another, at the repository's root."
        )
        return 0


def _event_job_id(event: WebhookEvent) -> str | None:
    payload = event.payload if isinstance(event.payload, dict) else {}
    data = payload.get("data")
    return str(data.get("id")) if isinstance(data, dict) and data.get("id") else None


def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    """Run the demo; returns the process exit code (0 only if everything worked)."""
    return Demo(options, console or Console()).run()
