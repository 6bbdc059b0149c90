"""`baton`: run the local stack, issue API keys, submit and follow jobs."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from baton_dev import logs

if TYPE_CHECKING:
    from baton_dev.client import BatonClient
    from baton_dev.target import Target

app = typer.Typer(help="Baton: asynchronous LLM jobs on AWS serverless.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
logger = logging.getLogger("baton.cli")

# The user interface: results and JSON on stdout, progress and errors on stderr.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="BATON_API_KEY",
        show_envvar=True,
        help="API key (from `baton keys create`).",
        show_default=False,
    ),
]
StateDirOption = Annotated[Path, typer.Option(help="State of a running `baton dev` (where its dev.json is).")]
ApiUrlOption = Annotated[
    str | None,
    typer.Option(help="Base URL of the API (default: the local stack's).", show_default=False),
]


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="Port of the local API.")] = 3000,
    template: Annotated[Path, typer.Option(help="SAM template to run.")] = Path("template.yaml"),
    state_dir: Annotated[Path, typer.Option(help="Where runtime state and logs go.")] = Path(".baton"),
    log_level: Annotated[str, typer.Option(help="Log level of the runtime.")] = "INFO",
) -> None:
    """Run the whole stack locally (API on http://127.0.0.1:PORT) until Ctrl-C or SIGTERM."""
    from baton_dev.runtime.local import LocalRuntime, RuntimeOptions

    logs.configure(log_level)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runtime = LocalRuntime(RuntimeOptions(template=template, port=port, state_dir=state_dir))
    try:
        runtime.start()
        stop.wait()
    finally:
        runtime.stop()


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to.")],
    stack: Annotated[str | None, typer.Option(help="Deployed stack to read the table from.")] = None,
    state_dir: Annotated[Path, typer.Option(help="State of a running `baton dev`.")] = Path(".baton"),
) -> None:
    """Issue an API key; prints {"tenant", "api_key", "webhook_secret"} as one JSON object."""
    from botocore.exceptions import BotoCoreError, ClientError

    from baton_dev.target import TargetError, resolve_target

    try:
        target = resolve_target(stack=stack, state_dir=state_dir)
        issued = target.tenants().create_api_key(tenant)
    except TargetError as error:
        _fail(str(error))
    except ValueError as error:
        _fail(f"invalid tenant {tenant!r}: {error}")
    except (BotoCoreError, ClientError) as error:
        _fail(f"AWS error: {error}" + ("" if stack else " (is `baton dev` still running?)"))
    typer.echo(
        json.dumps(
            {"tenant": issued.tenant, "api_key": issued.api_key, "webhook_secret": issued.webhook_secret}
        )
    )


# -- jobs --------------------------------------------------------------------------------------------


@app.command()
def submit(
    prompt: Annotated[str | None, typer.Option(help="The prompt (with --file: default summarize).")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            exists=True,
            dir_okay=False,
            readable=True,
            help="A document (PDF, text, Markdown, HTML) to upload and attach to the job.",
        ),
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option(envvar="BATON_TENANT", help="Your tenant: documents go under documents/<tenant>/."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name (default: the API's).")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Also push the result to this URL.")] = None,
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", help="k=v, echoed back with the job; repeatable.")
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Idempotency-Key header.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job live until it finishes.")] = False,
    wait_timeout: Annotated[float, typer.Option(help="Give up following after this many seconds.")] = 600.0,
    bucket: Annotated[
        str | None, typer.Option(help="Bucket for --file (default: the local stack's).", show_default=False)
    ] = None,
    api_key: ApiKeyOption = None,
    state_dir: StateDirOption = Path(".baton"),
    api_url: ApiUrlOption = None,
) -> None:
    """Submit a job; prints the 202 answer, or with --wait follows it and prints the result."""
    from baton_dev.client import upload_document

    if prompt is None and file is None:
        _fail("give --prompt TEXT, --file PATH, or both")
    body: dict[str, Any] = {"input": {"prompt": "Summarize this document." if prompt is None else prompt}}
    if model:
        body["model"] = model
    if webhook_url:
        body["webhook"] = {"url": webhook_url}
    if metadata:
        body["metadata"] = _parse_metadata(metadata)
    client, target = _client(api_key, state_dir, api_url)
    with client:
        if file is not None:
            if not tenant:
                _fail("--file needs --tenant (the tenant your API key belongs to) or BATON_TENANT")
            bucket = bucket or (target.bucket if target else None)
            if not bucket:
                _fail("--file needs a bucket: run against a local stack (--state-dir) or pass --bucket")
            try:
                document_id = upload_document(
                    target, bucket=bucket, tenant=tenant, filename=file.name, data=file.read_bytes()
                )
            except Exception as error:  # boto3 raises many kinds; the user needs the message only
                _fail(f"upload of {file} to s3://{bucket} failed: {error}")
            err.print(f"uploaded {escape(file.name)} as document [bold]{escape(document_id)}[/bold]")
            body["document"] = {"id": document_id}
        status, answer = _call(lambda: client.submit(body, idempotency_key=idempotency_key))
        if not wait:
            out.print_json(data=answer)
            return
        job = answer if status == 200 else _follow(client, str(answer["id"]), wait_timeout)
    _print_outcome(job)
    raise typer.Exit(0 if job["status"] == "completed" else 1)


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(help="The job id (job_...).")],
    wait: Annotated[
        float | None, typer.Option(help="Long-poll up to N seconds for a change first.", show_default=False)
    ] = None,
    api_key: ApiKeyOption = None,
    state_dir: StateDirOption = Path(".baton"),
    api_url: ApiUrlOption = None,
) -> None:
    """Print a job as JSON."""
    client, _ = _client(api_key, state_dir, api_url)
    with client:
        job = _call(lambda: client.get(job_id, wait=wait))
    out.print_json(data=job)


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job id (job_...).")],
    api_key: ApiKeyOption = None,
    state_dir: StateDirOption = Path(".baton"),
    api_url: ApiUrlOption = None,
) -> None:
    """Cancel a job that has not finished; prints it. A finished job cannot be cancelled (exit 1)."""
    from baton_dev.client import BatonApiError

    client, _ = _client(api_key, state_dir, api_url)
    with client:
        try:
            job = client.cancel(job_id)
        except BatonApiError as error:
            if error.status == 409:
                _fail(f"conflict: {error.message} (a finished job cannot be cancelled)")
            _api_failure(error)
        except Exception as error:
            _api_failure(error)
    out.print_json(data=job)


@app.command()
def demo(
    state_dir: Annotated[Path, typer.Option(help="Where the demo's stack keeps its state and logs.")] = Path(
        ".baton/demo"
    ),
    port: Annotated[int, typer.Option(help="Port of the demo's API (0: a free one).")] = 0,
    template: Annotated[Path, typer.Option(help="SAM template to run.")] = Path("template.yaml"),
    timeout: Annotated[float, typer.Option(help="Seconds the jobs get to finish.")] = 120.0,
    log_level: Annotated[str, typer.Option(help="Log level of the demo's own logs.")] = "WARNING",
) -> None:
    """Start the local stack, submit four kinds of jobs, follow them live and verify a webhook."""
    from baton_dev.demo import DemoOptions, run_demo

    logs.configure(log_level)
    code = run_demo(DemoOptions(state_dir=state_dir, port=port, template=template, timeout=timeout))
    raise typer.Exit(code)


# -- helpers -----------------------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    err.print(f"[red]{escape(message)}[/red]")
    raise typer.Exit(1)


def _api_failure(error: Exception) -> NoReturn:
    from baton_dev.client import BatonApiError

    if isinstance(error, BatonApiError):
        field = f" ({error.field})" if error.field else ""
        _fail(f"{error.error_type}: {error.message}{field}")
    _fail(str(error))


def _call[T](action: Callable[[], T]) -> T:
    """Run one API call; any client error becomes a red line and exit code 1, never a traceback."""
    from baton_dev.client import BatonClientError

    try:
        return action()
    except BatonClientError as error:
        _api_failure(error)


def _client(api_key: str | None, state_dir: Path, api_url: str | None) -> tuple[BatonClient, Target | None]:
    from baton_dev.client import BatonClient
    from baton_dev.target import TargetError, resolve_target

    if not api_key:
        _fail("no API key: pass --api-key or set BATON_API_KEY (create one with `baton keys create`)")
    target: Target | None
    try:
        target = resolve_target(state_dir=state_dir)
    except TargetError:
        if api_url is None:
            _fail(
                f"no running local stack ({state_dir / 'dev.json'} missing): "
                "start `baton dev` (or pass --state-dir), or pass --api-url"
            )
        target = None
    except (OSError, ValueError, KeyError) as error:
        _fail(f"unreadable state in {state_dir}: {error}")
    url = api_url or (target.api_url if target else None)
    assert url is not None
    return BatonClient(url, api_key), target


def _parse_metadata(pairs: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"--metadata {pair!r}: expected KEY=VALUE")
        parsed[key] = value
    return parsed


def _follow(client: BatonClient, job_id: str, timeout: float) -> dict[str, Any]:
    """Long-poll the job (GET ?wait=10) with a live progress bar until it is terminal."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from baton_dev.client import TERMINAL_STATUSES

    started = time.monotonic()
    columns = (
        SpinnerColumn(finished_text="[green]✓[/green]"),
        TextColumn("[bold]{task.description}[/bold]"),
        TextColumn("{task.fields[status]:<10} {task.fields[step]:<8}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(job_id, total=100, status="pending", step="-")
        job: dict[str, Any] = {"id": job_id, "status": "pending"}
        try:
            while True:
                remaining = timeout - (time.monotonic() - started)
                if remaining <= 0:
                    progress.stop()
                    _fail(
                        f"{job_id} is still {job.get('status')} after {timeout:g}s; "
                        f"it keeps running: `baton status {job_id}`"
                    )
                poll = min(10.0, max(1.0, remaining))
                job = _call(lambda: client.get(job_id, wait=poll))  # noqa: B023 (called at once)
                done = job.get("status") in TERMINAL_STATUSES
                progress.update(
                    task,
                    completed=100 if done else int(job.get("progress") or 0),
                    status=str(job.get("status")),
                    step=str(job.get("current_step") or "-"),
                )
                if done:
                    return job
        except KeyboardInterrupt:
            progress.stop()
            _fail(f"stopped following; {job_id} keeps running: `baton status {job_id}`")


def _print_outcome(job: dict[str, Any]) -> None:
    job_status = job.get("status")
    colour = "green" if job_status == "completed" else "red"
    err.print(f"[{colour}]{escape(str(job.get('id')))}: {escape(str(job_status))}[/{colour}]")
    result = job.get("result") or {}
    if result.get("text") is not None:
        out.print(escape(str(result["text"])))
    if result.get("result_url"):
        err.print(f"full result: {escape(str(result['result_url']))}")
    error = job.get("error")
    if error:
        err.print(f"[red]{escape(str(error.get('type')))}: {escape(str(error.get('message')))}[/red]")
    usage = job.get("usage") or {}
    timings = job.get("timings") or {}
    if usage or timings:
        err.print(
            f"[dim]tokens {usage.get('prompt_tokens')} in / {usage.get('completion_tokens')} out; "
            f"total {timings.get('total_ms')} ms[/dim]"
        )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
