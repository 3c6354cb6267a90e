"""``taskframe -A proj revoke ID`` and ``taskframe -A proj dlq list|show|replay|purge``.

Dead letters are kept per source queue (``-Q``, default: the default queue). ``list`` prints
one line per message (dead-letter id, time, task and id, reason); ``show`` prints the reason,
exception, traceback and the message's arguments; ``replay`` puts messages back on their queue
(``retries`` was reset when they were parked, so a replayed task gets its full retry budget);
``purge`` deletes them.
"""

from __future__ import annotations

from datetime import datetime, timezone

import click

from taskframe.brokers.base import DeadLetter
from taskframe.cli_support import app_from_context

__all__ = ["dlq", "revoke"]

SHOW_LIMIT = 100_000


@click.command()
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, help="Also stop the task if it is running.")
@click.option(
    "-s",
    "--signal",
    "signal_name",
    default="SIGTERM",
    show_default=True,
    help="Signal sent to the process running it, with --terminate.",
)
@click.pass_context
def revoke(
    ctx: click.Context, task_ids: tuple[str, ...], terminate: bool, signal_name: str
) -> None:
    """Do not run tasks TASK_IDS (kept across worker restarts)."""
    app = app_from_context(ctx)
    app.control.revoke(list(task_ids), terminate=terminate, signal=signal_name)
    action = "revoked and terminated" if terminate else "revoked"
    click.echo(f"{len(task_ids)} task{'s' if len(task_ids) != 1 else ''} {action}.")


@click.group()
def dlq() -> None:
    """Inspect, replay or purge dead-lettered messages."""


def _queue_option(function: click.decorators.FC) -> click.decorators.FC:
    return click.option("-Q", "--queue", help="Source queue (default: the default queue).")(
        function
    )


def _queue(ctx: click.Context, queue: str | None) -> str:
    name: str = queue or app_from_context(ctx).conf.task_default_queue
    return name


def _when(parked: DeadLetter) -> str:
    return datetime.fromtimestamp(parked.failed_at, tz=timezone.utc).isoformat(timespec="seconds")


@dlq.command("list")
@_queue_option
@click.option("--limit", type=int, default=100, show_default=True)
@click.pass_context
def list_command(ctx: click.Context, queue: str | None, limit: int) -> None:
    """One line per dead letter: id, time, task[task id], reason."""
    name = _queue(ctx, queue)
    parked = app_from_context(ctx).broker.dead_letters(name, limit=limit)
    for item in parked:
        headers = item.message.headers
        click.echo(
            f"{item.id}  {_when(item)}  {headers.get('task', '?')}[{headers.get('id', '?')}]  "
            f"{item.reason}"
        )
    click.echo(f"{len(parked)} dead letter{'s' if len(parked) != 1 else ''} in {name}.", err=True)


@dlq.command()
@click.argument("dead_letter_id")
@_queue_option
@click.pass_context
def show(ctx: click.Context, dead_letter_id: str, queue: str | None) -> None:
    """Everything about one dead letter (by its id from ``list``, or its task id)."""
    name = _queue(ctx, queue)
    for item in app_from_context(ctx).broker.dead_letters(name, limit=SHOW_LIMIT):
        headers = item.message.headers
        if dead_letter_id in (item.id, headers.get("id")):
            click.echo(f"dead letter: {item.id} (queue {name}, at {_when(item)})")
            click.echo(f"task:        {headers.get('task', '?')}[{headers.get('id', '?')}]")
            click.echo(f"reason:      {item.reason}")
            click.echo(
                f"retries:     {headers.get('x-dead-letter-retries', headers.get('retries'))}"
            )
            click.echo(f"args:        {headers.get('argsrepr', '?')}")
            click.echo(f"kwargs:      {headers.get('kwargsrepr', '?')}")
            click.echo(f"exception:   {headers.get('x-dead-letter-exception') or '-'}")
            trace = headers.get("x-dead-letter-traceback")
            if trace:
                click.echo(f"traceback:\n{trace.rstrip()}")
            return
    raise click.ClickException(f"no dead letter {dead_letter_id!r} in queue {name}")


@dlq.command()
@click.argument("ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter of the queue.")
@_queue_option
@click.pass_context
def replay(ctx: click.Context, ids: tuple[str, ...], replay_all: bool, queue: str | None) -> None:
    """Put dead letters IDS (or --all) back on their queue."""
    if not ids and not replay_all:
        raise click.UsageError("name dead-letter ids to replay, or pass --all")
    name = _queue(ctx, queue)
    count = app_from_context(ctx).broker.replay_dead_letters(name, None if replay_all else ids)
    click.echo(f"Replayed {count} message{'s' if count != 1 else ''} to {name}.")


@dlq.command()
@_queue_option
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def purge(ctx: click.Context, queue: str | None, force: bool) -> None:
    """Delete every dead letter of the queue."""
    name = _queue(ctx, queue)
    if not force:
        click.confirm(f"Delete every dead letter of {name}?", abort=True)
    count = app_from_context(ctx).broker.purge_dead_letters(name)
    click.echo(f"Purged {count} dead letter{'s' if count != 1 else ''} from {name}.")
