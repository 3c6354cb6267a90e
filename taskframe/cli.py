"""The ``taskframe`` command: a thin click shell over the Python API.

Subcommands live beside what they drive (``taskframe.worker.cli``); this module holds the
group, its shared options, and the small commands ``call``, ``result`` and ``purge``.
"""

from __future__ import annotations

import json
from typing import Any

import click

from taskframe.cli_support import app_from_context, mask_url
from taskframe.exceptions import TaskframeError

__all__ = ["main", "run"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-A", "--app", "app_name", metavar="MODULE[:ATTR]", help="The app to use.")
@click.option("-b", "--broker", help="Broker URL (overrides the app's broker_url).")
@click.option("--result-backend", help="Result backend URL (overrides result_backend).")
@click.pass_context
def main(
    ctx: click.Context, app_name: str | None, broker: str | None, result_backend: str | None
) -> None:
    """taskframe: run workers and send or inspect tasks of a Celery-compatible app."""
    ctx.ensure_object(dict)
    ctx.obj["app_name"] = app_name
    ctx.obj["broker"] = broker
    ctx.obj["result_backend"] = result_backend


@main.command()
@click.argument("name")
@click.option("-a", "--args", "args_json", default="[]", help="Positional arguments as JSON.")
@click.option("-k", "--kwargs", "kwargs_json", default="{}", help="Keyword arguments as JSON.")
@click.option("--countdown", type=float)
@click.option("--eta", help="ISO-8601 time to run at.")
@click.option("--expires", type=float, help="Seconds after which the task is not run.")
@click.option("-Q", "--queue")
@click.option("--priority", type=int)
@click.pass_context
def call(
    ctx: click.Context, /, name: str, args_json: str, kwargs_json: str, **options: Any
) -> None:
    """Send task NAME and print its id."""
    from datetime import datetime

    app = app_from_context(ctx)
    try:
        args = json.loads(args_json)
        kwargs = json.loads(kwargs_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--args/--kwargs must be JSON: {exc}") from exc
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise click.BadParameter("--args must be a JSON list and --kwargs a JSON object")
    eta = datetime.fromisoformat(options.pop("eta")) if options.get("eta") else None
    options.pop("eta", None)
    sent = {key: value for key, value in options.items() if value is not None}
    result = app.send_task(name, args, kwargs, eta=eta, **sent)
    click.echo(result.id)


@main.command()
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="Wait until the task is done.")
@click.option("--timeout", type=float, help="Seconds to wait with --wait.")
@click.pass_context
def result(ctx: click.Context, /, task_id: str, wait: bool, timeout: float | None) -> None:
    """Print the state and value of task TASK_ID."""
    app = app_from_context(ctx)
    outcome = app.AsyncResult(task_id)
    if wait:
        outcome.get(timeout=timeout, propagate=False)
    state = outcome.state
    value = outcome.info
    click.echo(f"{state} {value!r}" if value is not None else state)


@main.command()
@click.option("-Q", "--queues", help="Comma-separated queues (default: the default queue).")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def purge(ctx: click.Context, /, queues: str | None, force: bool) -> None:
    """Delete every waiting message from the queues."""
    app = app_from_context(ctx)
    names = [q for q in (queues or app.conf.task_default_queue).split(",") if q]
    if not force:
        click.confirm(
            f"Delete all waiting messages from {', '.join(names)} at {mask_url(app.broker_url)}?",
            abort=True,
        )
    removed = sum(app.broker.purge(name) for name in names)
    click.echo(f"Purged {removed} message{'s' if removed != 1 else ''} from {', '.join(names)}.")


def run() -> None:
    """Entry point that turns taskframe errors into one clear line and exit status 1."""
    try:
        main(standalone_mode=True)
    except TaskframeError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(1) from exc


def _register_subcommands() -> None:
    from taskframe.worker.admin_cli import dlq, revoke
    from taskframe.worker.cli import worker

    main.add_command(worker)
    main.add_command(revoke)
    main.add_command(dlq)

    from taskframe.beat.cli import beat

    main.add_command(beat)


_register_subcommands()
