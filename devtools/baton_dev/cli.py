"""`baton`: run the local stack, issue API keys, submit and follow jobs."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, cast, overload

import typer
from rich.console import Console
from rich.markup import escape

from baton_dev import logs

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

    from baton.tenants import TenantStore
    from baton_dev.client import BatonClient
    from baton_dev.dlq import DeadLetterQueue
    from baton_dev.target import Target

app = typer.Typer(help="Baton: asynchronous LLM jobs on AWS serverless.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
dlq_app = typer.Typer(
    help="Archived dead letters of the job steps, and the dead-letter queues that keep theirs.",
    no_args_is_help=True,
)
app.add_typer(dlq_app, name="dlq")
batch_app = typer.Typer(help="Submit many requests at once (JSONL, one job per line).", no_args_is_help=True)
app.add_typer(batch_app, name="batch")
review_app = typer.Typer(
    help="Jobs a guard stopped (needs_review): list, approve, reject.", no_args_is_help=True
)
app.add_typer(review_app, name="review")
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
StateDirOption = Annotated[
    Path | None,
    typer.Option(
        help="State of a running `baton dev` (where its dev.json is; default: the stack `baton dev` "
        "recorded for you in $BATON_STATE or ~/.local/state/baton/dev.json, from any directory).",
        show_default=False,
    ),
]
TemplateOption = Annotated[
    Path | None,
    typer.Option(
        help="SAM template to run (default: ./template.yaml, else this checkout's).", show_default=False
    ),
]
ApiUrlOption = Annotated[
    str | None,
    typer.Option(help="Base URL of the API (default: the local stack's).", show_default=False),
]


class LongDocument(StrEnum):
    """parameters.long_document (the contract's values)."""

    map_reduce = "map_reduce"
    truncate = "truncate"
    fail = "fail"


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="Port of the local API.")] = 3000,
    template: TemplateOption = None,
    state_dir: Annotated[Path, typer.Option(help="Where runtime state and logs go.")] = Path(".baton"),
    log_level: Annotated[str, typer.Option(help="Log level of the runtime.")] = "INFO",
    parameter_overrides: Annotated[
        list[str] | None,
        typer.Option(help="Template parameter Key=Value, like `sam deploy` (repeatable)."),
    ] = None,
    schedule_every: Annotated[
        float | None, typer.Option(help="Run scheduled functions every N seconds instead of their rate().")
    ] = None,
    stack_name: Annotated[str, typer.Option(help="Local stack name (reused if it exists).")] = "baton-local",
    allow_undeployable_parameters: Annotated[
        bool,
        typer.Option(
            help="Start even with parameter values `sam deploy` would refuse (a fault drill's short "
            "timeouts), with a warning."
        ),
    ] = False,
) -> None:
    """Run the whole stack locally (API on http://127.0.0.1:PORT) until Ctrl-C or SIGTERM."""
    if not _port_free(port):
        _fail(f"port {port} is in use (another `baton dev`?): choose another with `baton dev --port N`")
    from baton_dev.launcher import StackConfig, run_in_process
    from baton_dev.runtime.template import TemplateError
    from baton_dev.state import remove_state, user_state_file, write_state

    logs.configure(log_level)
    parameters: dict[str, str] = {}
    for item in parameter_overrides or []:
        for pair in item.split():
            key, sep, value = pair.partition("=")
            if not sep or not key:
                _fail(f"--parameter-overrides expects Key=Value, got {pair!r}")
            parameters[key] = value.strip('"')
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    config = StackConfig(
        template=_template(template),
        port=port,
        state_dir=state_dir,
        parameters=parameters,
        schedule_every_s=schedule_every,
        stack_name=stack_name,
        allow_undeployable_parameters=allow_undeployable_parameters,
    )
    record = user_state_file()
    try:
        with run_in_process(config) as runtime:
            # Also where every other command looks by default, so they work from any directory.
            write_state(record, runtime.state())
            stop.wait()
    except TemplateError as error:
        _fail(str(error))
    finally:
        remove_state(record, os.getpid())


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to.")],
    stack: Annotated[str | None, typer.Option(help="Deployed stack to read the table from.")] = None,
    state_dir: StateDirOption = None,
) -> None:
    """Issue an API key; prints {"tenant", "api_key", "webhook_secret"} as one JSON object."""
    with _tenant_store(stack, state_dir) as tenants:
        try:
            issued = tenants.create_api_key(tenant)
        except ValueError as error:
            _fail(f"invalid tenant {tenant!r}: {error}")
    typer.echo(
        json.dumps(
            {"tenant": issued.tenant, "api_key": issued.api_key, "webhook_secret": issued.webhook_secret}
        )
    )


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str, typer.Option(help="Tenant whose keys to list.")],
    stack: Annotated[str | None, typer.Option(help="Deployed stack to read the table from.")] = None,
    state_dir: StateDirOption = None,
) -> None:
    """The tenant's API keys (ids, never the keys) as JSON lines: key_id, created_at, revoked_at."""
    from baton.clock import iso_from_ms

    with _tenant_store(stack, state_dir) as tenants:
        keys = tenants.list_keys(tenant)
    for key in keys:
        revoked = iso_from_ms(key.revoked_ms) if key.revoked_ms is not None else None
        created = iso_from_ms(key.created_ms)
        typer.echo(json.dumps({"key_id": key.key_id, "created_at": created, "revoked_at": revoked}))


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `baton keys list`).")],
    stack: Annotated[str | None, typer.Option(help="Deployed stack to read the table from.")] = None,
    state_dir: StateDirOption = None,
) -> None:
    """Revoke an API key: requests with it answer 401 once the authorizer's cached answer expires
    (ReauthorizeEvery, 300 s)."""
    with _tenant_store(stack, state_dir) as tenants:
        key = tenants.revoke_key(key_id)
    typer.echo(json.dumps({"key_id": key.key_id, "revoked": True}))


@contextmanager
def _tenant_store(stack: str | None, state_dir: Path | None) -> Iterator[TenantStore]:
    """The tenants of the running `baton dev` (or of `--stack`); an unknown key or an AWS error
    ends the command with one line."""
    from botocore.exceptions import BotoCoreError, ClientError

    from baton_dev.target import TargetError, resolve_target

    try:
        yield resolve_target(stack=stack, state_dir=state_dir).tenants()
    except TargetError as error:
        _fail(str(error))
    except LookupError as error:
        _fail(str(error.args[0]))
    except (BotoCoreError, ClientError) as error:
        _fail(f"AWS error: {error}" + ("" if stack else " (is `baton dev` still running?)"))


@keys_app.command("rotate-webhook-secret")
def keys_rotate_webhook_secret(
    api_key: ApiKeyOption = None,
    state_dir: StateDirOption = None,
    api_url: ApiUrlOption = None,
) -> None:
    """New webhook secret for your API key's tenant; the previous one keeps signing (beside it)
    until previous_valid_until. Prints {"webhook_secret", "previous_valid_until"}."""
    client, _ = _client(api_key, state_dir, api_url)
    with client:
        rotated = _call(client.rotate_webhook_secret)
    typer.echo(json.dumps(rotated))


@app.command()
def url(
    stack: Annotated[
        str | None, typer.Option(help="A deployed stack (its ApiUrl output) instead.", show_default=False)
    ] = None,
    state_dir: StateDirOption = None,
) -> None:
    """Print the API's base URL: the running `baton dev`'s, or a deployed stack's `--stack`."""
    from botocore.exceptions import BotoCoreError, ClientError

    from baton_dev.target import TargetError, resolve_target

    try:
        target = resolve_target(stack=stack, state_dir=state_dir)
    except TargetError as error:
        _fail(str(error))
    except (BotoCoreError, ClientError) as error:
        _fail(f"AWS error reading stack {stack}: {error}")
    typer.echo(target.api_url.rstrip("/"))


@app.command()
def stats(
    since: Annotated[
        str, typer.Option(help="Window: metrics stamped this recently (30s, 10m, 2h, 1d).")
    ] = "10m",
    state_dir: StateDirOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")] = False,
) -> None:
    """The local stack's metrics (the EMF lines its functions log, as CloudWatch gets them): count,
    sum, p50, p95 and max per metric and dimension set."""
    from rich.table import Table

    from baton_dev.state import read_state, user_state_file
    from baton_dev.stats import parse_duration, read_series

    try:
        window_s = parse_duration(since)
    except ValueError as error:
        _fail(f"--since: {error}")
    state_file = state_dir / "dev.json" if state_dir is not None else user_state_file()
    try:
        state = read_state(state_file)
    except (OSError, ValueError) as error:
        _fail(f"unreadable state of the local stack: {error}")
    if state is not None and state.get("logs"):
        log_dir = Path(str(state["logs"]))
    elif state_dir is not None:  # a stopped stack's logs stay behind
        log_dir = state_dir / "logs"
    else:
        _fail(f"no running local stack ({state_file} missing): start `baton dev`, or pass --state-dir")
    if not log_dir.is_dir():
        _fail(f"no function logs in {log_dir}")
    since_ms = (time.time() - window_s) * 1000
    summaries = [series.summary() for series in read_series(log_dir, since_ms)]
    if json_output:
        out.print_json(data={"since_s": window_s, "logs": str(log_dir), "metrics": summaries})
        return
    if not summaries:
        err.print(f"no metrics in the last {since} ({log_dir})")
        return
    table = Table(title=f"metrics of the last {since} ({log_dir})")
    for column in ("metric", "dimensions", "unit", "count", "sum", "p50", "p95", "max"):
        table.add_column(
            column, justify="right" if column in {"count", "sum", "p50", "p95", "max"} else "left"
        )
    for summary in summaries:
        dimensions = ", ".join(f"{name}={value}" for name, value in summary["dimensions"].items())
        table.add_row(
            summary["metric"],
            escape(dimensions),
            summary["unit"],
            str(summary["count"]),
            *(f"{summary[figure]:.6g}" for figure in ("sum", "p50", "p95", "max")),
        )
    out.print(table)


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
            help="A document (txt, md, csv, json, html, pdf, docx; 25 MiB at most) to upload and attach.",
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name (default: the API's).")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Also push the result to this URL.")] = None,
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", help="k=v, echoed back with the job; repeatable.")
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Idempotency-Key header.")] = None,
    long_document: Annotated[
        LongDocument | None,
        typer.Option(help="A document over the model's context: map_reduce (default), truncate or fail."),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job live until it finishes.")] = False,
    wait_timeout: Annotated[float, typer.Option(help="Give up following after this many seconds.")] = 600.0,
    api_key: ApiKeyOption = None,
    state_dir: StateDirOption = None,
    api_url: ApiUrlOption = None,
) -> None:
    """Submit a job; prints the 202 answer, or with --wait follows it and prints the result."""
    if prompt is None and file is None:
        _fail("give --prompt TEXT, --file PATH, or both")
    body: dict[str, Any] = {"input": {"prompt": "Summarize this document." if prompt is None else prompt}}
    if model:
        body["model"] = model
    if webhook_url:
        body["webhook"] = {"url": webhook_url}
    if metadata:
        body["metadata"] = _parse_metadata(metadata)
    if long_document is not None:
        body["parameters"] = {"long_document": long_document.value}
    client, _ = _client(api_key, state_dir, api_url)
    with client:
        if file is not None:
            # Through the documents API: a presigned PUT, so no AWS credentials are needed.
            document_id = _call(lambda: client.upload(file.name, file.read_bytes()))
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
    state_dir: StateDirOption = None,
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
    state_dir: StateDirOption = None,
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
    template: TemplateOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds the jobs get to finish.")] = 120.0,
    log_level: Annotated[str, typer.Option(help="Log level of the demo's own logs.")] = "WARNING",
) -> None:
    """Start the local stack, submit four kinds of jobs, follow them live and verify a webhook."""
    from baton_dev.demo import DemoOptions, run_demo

    logs.configure(log_level)
    options = DemoOptions(state_dir=state_dir, port=port, template=_template(template), timeout=timeout)
    code = run_demo(options)
    raise typer.Exit(code)


# -- dead-letter queues ------------------------------------------------------------------------------

DlqStackOption = Annotated[
    str | None,
    typer.Option(
        help="Deployed stack (its CloudFormation outputs) instead of the local stack.", show_default=False
    ),
]
DlqQueueArgument = Annotated[
    str, typer.Argument(help="The DLQ: logical id (InferDeadLetterQueue), stage (infer), name or URL.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


class RedriveMethod(StrEnum):
    auto = "auto"
    move_task = "move-task"
    receive_send = "receive-send"


@dlq_app.command("list")
def dlq_list(
    stage: Annotated[
        str | None, typer.Argument(help="Only this stage: extract, infer, tool.", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most N, newest first.")] = 20,
    stack: DlqStackOption = None,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """The job steps' archived dead letters, newest first: each one failed its job as dead_lettered."""
    from rich import box
    from rich.table import Table

    from baton_dev.dlq import list_archive

    target, s3 = _dlq_archive(stack, state_dir)
    assert target.bucket is not None
    with _dlq_aws_errors(stack):
        letters = list_archive(s3, target.bucket, stage=stage, limit=limit)
    if json_output:
        typer.echo(json.dumps([letter.model_dump(mode="json") for letter in letters], indent=2))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in ("id", "archived", "job", "tenant", "attempts", "outcome"):
        table.add_column(column, no_wrap=True)
    for letter in letters:
        table.add_row(
            letter.id,
            letter.archived_at,
            letter.job_id or "-",
            letter.tenant_id or "-",
            str(letter.attempts),
            letter.outcome.value,
        )
    out.print(table)
    if not letters:
        err.print("no archived dead letters" + (f" for stage {escape(stage)}" if stage else ""))


@dlq_app.command("queues")
def dlq_queues(
    stack: DlqStackOption = None, state_dir: StateDirOption = None, json_output: JsonOption = False
) -> None:
    """Every dead-letter queue with its source queue, depth and (deployed) oldest message age."""
    import boto3
    from rich import box
    from rich.table import Table

    from baton_dev.dlq import list_dead_letter_queues

    target, sqs = _dlq_target(stack, state_dir)
    # SQS has no attribute for the oldest message's age: CloudWatch has (on AWS, not in emulators).
    cloudwatch = None if target.endpoint_url else boto3.client("cloudwatch", region_name=target.region)
    with _dlq_aws_errors(stack):
        statuses = list_dead_letter_queues(sqs, target.queues, cloudwatch=cloudwatch)
    if json_output:
        typer.echo(json.dumps([status.to_dict() for status in statuses], indent=2))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("DLQ", no_wrap=True)
    table.add_column("source", no_wrap=True)
    table.add_column("visible", justify="right", no_wrap=True)
    table.add_column("in flight", justify="right", no_wrap=True)
    table.add_column("max recv", justify="right", no_wrap=True)
    table.add_column("oldest", justify="right", no_wrap=True)
    for status in statuses:
        table.add_row(
            status.queue.logical_id,
            status.queue.source_logical_id or "-",
            f"[bold red]{status.visible}[/bold red]" if status.visible else "0",
            str(status.in_flight),
            "-" if status.max_receive_count is None else str(status.max_receive_count),
            _age(status.oldest_age_s),
        )
    out.print(table)


@dlq_app.command("show")
def dlq_show(
    queue: DlqQueueArgument,
    max_messages: Annotated[int, typer.Option("--max", min=1, help="Show at most N messages.")] = 10,
    full: Annotated[bool, typer.Option("--full", help="Whole bodies (pretty JSON), not truncated.")] = False,
    stack: DlqStackOption = None,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """An archived dead letter (its id from `baton dlq list` or the job's error), or a DLQ's
    messages, peeked without removing them (ingest, notify: the DLQs that keep their messages).

    SQS has no read-only look: messages are received and made visible again at once, never
    deleted, so each `show` adds 1 to the receive count of every message it prints (harmless on
    a DLQ, which has no redrive policy itself).
    """
    from rich.text import Text

    from baton_dev.dlq import peek

    target, sqs = _dlq_target(stack, state_dir)
    dlq = _dlq_resolve(target, queue, or_archive=True)
    if dlq is None:
        _dlq_show_letter(stack, state_dir, queue, full=full, json_output=json_output)
        return
    with _dlq_aws_errors(stack):
        messages = peek(sqs, dlq.url, max_messages=max_messages)
    if json_output:
        typer.echo(
            json.dumps(
                {
                    "dlq": dlq.logical_id,
                    "url": dlq.url,
                    "messages": [message.to_dict() for message in messages],
                },
                indent=2,
            )
        )
        return
    err.print(
        f"{escape(dlq.logical_id)} (source {escape(dlq.source_logical_id or '-')}): "
        f"{len(messages)} message(s); each `show` adds 1 to their receive count"
    )
    for message in messages:
        sent = message.sent_at.strftime("%Y-%m-%d %H:%M:%SZ") if message.sent_at else "?"
        out.print(
            Text.assemble(
                (message.message_id, "bold"),
                f"  receives {message.receive_count}  sent {sent}  {message.kind}",
                f" {message.detail_type!r}" if message.detail_type else "",
            )
        )
        if message.job_id or message.tenant_id or message.step:
            out.print(
                Text(
                    f"  job {message.job_id or '-'}  tenant {message.tenant_id or '-'}"
                    f"  step {message.step or '-'}"
                )
            )
        out.print(Text(_dlq_body(message.body, full), style="dim"), highlight=False)


@dlq_app.command("redrive")
def dlq_redrive(
    queue: DlqQueueArgument,
    max_messages: Annotated[
        int | None,
        typer.Option("--max", min=1, help="Move at most N messages (uses receive-send).", show_default=False),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Destination queue URL or logical id (default: the DLQ's source).",
            show_default=False,
        ),
    ] = None,
    method: Annotated[
        RedriveMethod,
        typer.Option(help="auto: StartMessageMoveTask, or receive-send where the endpoint lacks it."),
    ] = RedriveMethod.auto,
    wait_timeout: Annotated[float, typer.Option(help="Seconds to wait for a move task to finish.")] = 300.0,
    stack: DlqStackOption = None,
    state_dir: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Move a DLQ's messages back to its source queue (or --to); exit 1 if any could not be moved.

    Given an archived dead letter's id instead: put its command back on its stage's queue, if its
    job still waits for it. A job the dead letter failed is finished and never changes: that is
    refused (exit 1), naming `POST /v1/jobs/{id}/rerun`, which runs it again as a new job."""
    from baton_dev.dlq import DlqError, Method, redrive

    target, sqs = _dlq_target(stack, state_dir)
    dlq = _dlq_resolve(target, queue, or_archive=True)
    if dlq is None:
        _dlq_redrive_letter(stack, state_dir, queue, json_output=json_output)
        return
    destination = target.queues.get(to, to) if to else dlq.source_url
    if not destination:
        _fail(f"{dlq.logical_id} has no source queue ({dlq.source_logical_id or '?'} unknown): pass --to URL")
    with _dlq_aws_errors(stack):
        try:
            result = redrive(
                sqs,
                dlq.url,
                destination,
                max_messages=max_messages,
                method=cast("Method", method.value),
                wait_timeout_s=wait_timeout,
            )
        except DlqError as error:
            _fail(str(error))
    if json_output:
        typer.echo(
            json.dumps({"dlq": dlq.logical_id, "destination": destination, **result.to_dict()}, indent=2)
        )
    else:
        to_name = next((name for name, url in target.queues.items() if url == destination), destination)
        how = result.method + (f" ({result.fallback_reason})" if result.fallback_reason else "")
        out.print(
            f"moved {result.moved} message(s) from {escape(dlq.logical_id)} to {escape(to_name)} "
            f"by {escape(how)}",
            highlight=False,
        )
        if result.task_status and result.task_status != "COMPLETED":
            err.print(f"move task {escape(str(result.task_handle))} is {escape(result.task_status)}")
        if result.failed:
            err.print(f"[red]{result.failed} message(s) not moved; they are still on the DLQ[/red]")
    raise typer.Exit(1 if result.failed or result.task_status == "FAILED" else 0)


def _dlq_target(stack: str | None, state_dir: Path | None) -> tuple[Target, SQSClient]:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from baton_dev.target import TargetError, resolve_target

    try:
        target = resolve_target(stack=stack, state_dir=state_dir)
    except TargetError as error:
        _fail(str(error))
    except (BotoCoreError, ClientError) as error:
        _fail(f"AWS error reading stack {stack}: {error}")
    except (OSError, ValueError, KeyError) as error:
        _fail(f"unreadable state of the local stack: {error}")
    if not any(name.endswith("DeadLetterQueue") for name in target.queues):
        _fail(f"no dead-letter queues found in {f'the outputs of {stack}' if stack else 'the local stack'}")
    target.apply_aws_environment()
    return target, boto3.client("sqs", region_name=target.region, endpoint_url=target.endpoint_url)


@overload
def _dlq_resolve(target: Target, name: str) -> DeadLetterQueue: ...
@overload
def _dlq_resolve(target: Target, name: str, *, or_archive: bool) -> DeadLetterQueue | None: ...
def _dlq_resolve(target: Target, name: str, *, or_archive: bool = False) -> DeadLetterQueue | None:
    """The DLQ `name` names; with `or_archive`, None when it looks like an archived letter's id."""
    from baton_dev.dlq import DlqError, resolve_dead_letter_queue

    try:
        return resolve_dead_letter_queue(target.queues, name)
    except DlqError as error:
        if or_archive and ("/" in name or len(name) >= 32) and "://" not in name:
            return None
        _fail(str(error))


def _dlq_archive(stack: str | None, state_dir: Path | None) -> tuple[Target, S3Client]:
    import boto3

    target, _ = _dlq_target(stack, state_dir)
    if not target.bucket:
        _fail("the stack names no bucket: its dead-letter archive cannot be found")
    return target, boto3.client("s3", region_name=target.region, endpoint_url=target.endpoint_url)


def _dlq_show_letter(
    stack: str | None, state_dir: Path | None, ident: str, *, full: bool, json_output: bool
) -> None:
    from rich.text import Text

    from baton_dev.dlq import DlqError, find_letter

    target, s3 = _dlq_archive(stack, state_dir)
    assert target.bucket is not None
    with _dlq_aws_errors(stack):
        try:
            letter = find_letter(s3, target.bucket, ident)
        except DlqError as error:
            _fail(str(error))
    if json_output:
        typer.echo(letter.model_dump_json(indent=2))
        return
    out.print(Text.assemble((letter.id, "bold"), f"  {letter.outcome.value}  archived {letter.archived_at}"))
    out.print(
        Text(
            f"  job {letter.job_id or '-'}  tenant {letter.tenant_id or '-'}  stage {letter.stage}"
            f"  version {letter.version}  depth {letter.depth}  attempts {letter.attempts}"
            f"  receives {letter.receive_count}  sent {letter.sent_at or '?'}"
        )
    )
    out.print(Text(_dlq_body(letter.body, full), style="dim"), highlight=False)


def _dlq_redrive_letter(stack: str | None, state_dir: Path | None, ident: str, *, json_output: bool) -> None:
    from baton.store import JobStore
    from baton_dev.dlq import DlqError, find_letter, redrive_letter

    target, s3 = _dlq_archive(stack, state_dir)
    assert target.bucket is not None
    target.apply_aws_environment()
    import boto3

    sqs = boto3.client("sqs", region_name=target.region, endpoint_url=target.endpoint_url)
    with _dlq_aws_errors(stack):
        try:
            letter = find_letter(s3, target.bucket, ident)
            destination = redrive_letter(
                letter, jobs=JobStore(target.jobs_table), sqs=sqs, queues=target.queues
            )
        except DlqError as error:
            _fail(str(error))
    if json_output:
        typer.echo(
            json.dumps({"id": letter.id, "job_id": letter.job_id, "destination": destination}, indent=2)
        )
    else:
        out.print(f"redrove {escape(letter.id)} (job {escape(str(letter.job_id))}) to {escape(destination)}")


@contextmanager
def _dlq_aws_errors(stack: str | None) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as error:
        _fail(f"AWS error: {error}" + ("" if stack else " (is `baton dev` still running?)"))


def _dlq_body(body: str, full: bool, limit: int = 200) -> str:
    if full:
        try:
            return "  " + json.dumps(json.loads(body), indent=2).replace("\n", "\n  ")
        except ValueError:
            return "  " + body
    flat = " ".join(body.split())
    return "  " + (flat if len(flat) <= limit else flat[: limit - 1] + "…")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    value = int(seconds)
    for unit, size, next_unit, next_size in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if value >= size:
            return f"{value // size}{unit} {value % size // next_size}{next_unit}"
    return f"{value}s"


# -- review ----------------------------------------------------------------------------------------
@review_app.command("list")
def review_list(
    limit: Annotated[int, typer.Option(min=1, max=100, help="Jobs to show.")] = 20,
    api_key: ApiKeyOption = None,
    state_dir: StateDirOption = None,
    api_url: ApiUrlOption = None,
) -> None:
    """The tenant's jobs waiting for review (newest first): id, why it stopped, depth, tokens."""
    client, _ = _client(api_key, state_dir, api_url)
    with client:
        page = _call(lambda: client.list_jobs(status="needs_review", limit=limit))
    for job in page["data"]:
        error = job.get("error") or {}
        out.print(
            f"{job['id']}  {error.get('type', '?')}  depth {job['depth']}  "
            f"{job['usage']['total_tokens']} tokens  {escape(error.get('message', ''))}"
        )
    if not page["data"]:
        err.print("no jobs waiting for review")


@review_app.command("approve")
def review_approve(
    job_id: Annotated[str, typer.Argument(help="The job id (job_...).")],
    max_depth: Annotated[int | None, typer.Option(help="New tool-hop limit (default: the cap).")] = None,
    max_total_tokens: Annotated[int | None, typer.Option(help="New token budget (default: the cap).")] = None,
    api_key: ApiKeyOption = None,
    state_dir: StateDirOption = None,
    api_url: ApiUrlOption = None,
) -> None:
    """Let a job in needs_review run on (as version + 1); prints it."""
    decision: dict[str, Any] = {"decision": "approve"}
    if max_depth is not None:
        decision["max_depth"] = max_depth
    if max_total_tokens is not None:
        decision["max_total_tokens"] = max_total_tokens
    client, _ = _client(api_key, state_dir, api_url)
    with client:
        job = _call(lambda: client.review(job_id, decision))
    out.print_json(data=job)


@review_app.command("reject")
def review_reject(
    job_id: Annotated[str, typer.Argument(help="The job id (job_...).")],
    reason: Annotated[str | None, typer.Option(help="Why; kept in error.message.")] = None,
    api_key: ApiKeyOption = None,
    state_dir: StateDirOption = None,
    api_url: ApiUrlOption = None,
) -> None:
    """Fail a job in needs_review (error.type review_rejected); prints it."""
    decision: dict[str, Any] = {"decision": "reject", **({"reason": reason} if reason else {})}
    client, _ = _client(api_key, state_dir, api_url)
    with client:
        job = _call(lambda: client.review(job_id, decision))
    out.print_json(data=job)


# -- batches -----------------------------------------------------------------------------------------


@batch_app.command("submit")
def batch_submit(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="JSONL: one request per line."),
    ],
    model: Annotated[str | None, typer.Option(help="Model for every line (default: the API's).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the batch until it finishes.")] = False,
    wait_timeout: Annotated[float, typer.Option(help="Give up following after this many seconds.")] = 3600.0,
    api_key: ApiKeyOption = None,
    state_dir: StateDirOption = None,
    api_url: ApiUrlOption = None,
) -> None:
    """Upload FILE through the documents API and submit it as a batch; prints the batch."""
    client, _ = _client(api_key, state_dir, api_url)
    with client:
        document_id = _call(lambda: client.upload(file.name, file.read_bytes(), "application/x-ndjson"))
        body: dict[str, Any] = {"input_document_id": document_id}
        if model:
            body["model"] = model
        batch = _call(lambda: client.submit_batch(body))
        if wait:
            batch = _follow_batch(client, str(batch["id"]), wait_timeout)
    out.print_json(data=batch)
    if wait and batch["status"] != "completed":
        raise typer.Exit(1)


@batch_app.command("status")
def batch_status(
    batch_id: Annotated[str, typer.Argument(help="The batch id (batch_...).")],
    api_key: ApiKeyOption = None,
    state_dir: StateDirOption = None,
    api_url: ApiUrlOption = None,
) -> None:
    """Print a batch as JSON (output_url / errors_url once it has finished)."""
    client, _ = _client(api_key, state_dir, api_url)
    with client:
        batch = _call(lambda: client.batch(batch_id))
    out.print_json(data=batch)


def _follow_batch(client: BatonClient, batch_id: str, timeout: float) -> dict[str, Any]:
    """Poll the batch with a progress bar of finished lines until it ends."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from baton_dev.client import BATCH_TERMINAL_STATUSES

    started = time.monotonic()
    with Progress(
        TextColumn("[bold]{task.description}[/bold] {task.fields[status]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        task = progress.add_task(batch_id, total=None, status="in_progress")
        while True:
            batch = _call(lambda: client.batch(batch_id))
            counts = batch["request_counts"]
            done = counts["completed"] + counts["failed"] + counts["cancelled"]
            progress.update(task, total=counts["total"], completed=done, status=batch["status"])
            if batch["status"] in BATCH_TERMINAL_STATUSES:
                return batch
            if time.monotonic() - started > timeout:
                progress.stop()
                _fail(
                    f"{batch_id} is still {batch['status']} after {timeout:g}s: "
                    f"`baton batch status {batch_id}`"
                )
            time.sleep(1.0)


# -- helpers -----------------------------------------------------------------------------------------


def _template(template: Path | None) -> Path:
    """The template to run: the one given, else ./template.yaml, else the one of this checkout (so
    that `path/to/baton dev` works from any directory)."""
    if template is not None:
        # A built artifact's folder (`sam build` -> .aws-sam/build) holds its template.
        if template.is_dir():
            template = template / "template.yaml"
        if not template.is_file():
            _fail(f"{template} not found: pass --template PATH of a SAM template")
        return template
    for candidate in (Path("template.yaml"), Path(__file__).resolve().parents[2] / "template.yaml"):
        if candidate.is_file():
            return candidate
    _fail("no template.yaml here: run at the repository's root or pass --template PATH")


def _port_free(port: int) -> bool:
    """Whether the local API could listen on `port` (as its server does: SO_REUSEADDR, loopback)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


def _client(
    api_key: str | None, state_dir: Path | None, api_url: str | None
) -> tuple[BatonClient, Target | None]:
    from baton_dev.client import BatonClient
    from baton_dev.target import TargetError, resolve_target

    if not api_key:
        _fail("no API key: pass --api-key or set BATON_API_KEY (create one with `baton keys create`)")
    target: Target | None
    try:
        target = resolve_target(state_dir=state_dir)
    except TargetError as error:
        if api_url is None:
            _fail(f"{str(error).removesuffix(', or pass --stack NAME')}, or pass --api-url")
        target = None
    except (OSError, ValueError, KeyError) as error:
        _fail(f"unreadable state of the local stack: {error}")
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
    document = job.get("document") or {}
    if document:
        # chunks > 1: answered by map-reduce; truncated: cut to fit (long_document: truncate).
        cut = ", truncated" if document.get("truncated") else ""
        err.print(
            f"[dim]document: {document.get('chars')} characters, {document.get('chunks')} chunk(s){cut}[/dim]"
        )
    usage = job.get("usage") or {}
    timings = job.get("timings") or {}
    if usage or timings:
        err.print(
            f"[dim]tokens {usage.get('prompt_tokens')} in / {usage.get('completion_tokens')} out; "
            f"total {timings.get('total_ms')} ms[/dim]"
        )


def _print_version(requested: bool) -> None:
    if requested:
        from importlib.metadata import version

        typer.echo(f"baton {version('baton')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Baton: asynchronous LLM jobs on AWS serverless."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
