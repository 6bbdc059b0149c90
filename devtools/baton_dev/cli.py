"""`baton`: run the local stack, issue API keys, submit and follow jobs."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from baton_dev import logs

app = typer.Typer(help="Baton: asynchronous LLM jobs on AWS serverless.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
logger = logging.getLogger("baton.cli")


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
    from baton_dev.target import resolve_target

    target = resolve_target(stack=stack, state_dir=state_dir)
    issued = target.tenants().create_api_key(tenant)
    typer.echo(
        json.dumps(
            {"tenant": issued.tenant, "api_key": issued.api_key, "webhook_secret": issued.webhook_secret}
        )
    )


def main() -> None:
    app()
