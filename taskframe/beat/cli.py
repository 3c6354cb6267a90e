"""What ``taskframe -A proj beat`` does, callable from Python; the click shell lives in cli.py.

``beat_command`` runs beat in the foreground until SIGINT/SIGTERM (the lease is released on the
way out), or with ``list_only`` prints each entry with its last due time and next run time and
returns. ``format_entries`` is the ``--list`` table on its own, for tests and other front ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import click

from taskframe.beat.scheduler import EntryInfo, Scheduler
from taskframe.beat.service import Service, finalize_app
from taskframe.beat.store import open_store
from taskframe.cli_support import setup_logging

__all__ = ["beat", "beat_command", "format_entries", "list_entries"]


def list_entries(app: Any, schedule_file: str | None = None) -> list[EntryInfo]:
    """The app's entries with their next run times, read from the beat store."""
    finalize_app(app)
    store = open_store(app, schedule_file)
    try:
        return Scheduler(app, store).entry_infos()
    finally:
        store.close()


def format_entries(infos: Sequence[EntryInfo]) -> str:
    """A plain table: name, task, schedule, last due time, next run time."""
    header = ("NAME", "TASK", "SCHEDULE", "LAST DUE", "NEXT RUN")
    rows = [
        (
            info.name,
            info.task,
            info.schedule,
            info.last_run.isoformat(timespec="seconds") if info.last_run else "-",
            info.next_run.isoformat(timespec="seconds"),
        )
        for info in infos
    ]
    if not rows:
        return "no periodic tasks in beat_schedule"
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    )


def beat_command(
    app: Any,
    schedule_file: str | None = None,
    max_interval: float | None = None,
    loglevel: str = "INFO",
    list_only: bool = False,
    echo: Callable[[str], None] = click.echo,
) -> int:
    """Run beat (or list its entries with ``list_only``); returns the exit code.

    ``schedule_file`` is ``-s/--schedule``: None means "not given", so a Redis broker keeps
    its Redis store; a path selects the SQLite store at that path.
    """
    if list_only:
        echo(format_entries(list_entries(app, schedule_file)))
        return 0
    setup_logging(loglevel, None)
    service = Service(app, schedule_filename=schedule_file, max_interval=max_interval)
    if threading.current_thread() is threading.main_thread():

        def stop(signum: int, frame: FrameType | None) -> None:
            service.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    echo(f"taskframe beat: store {type(service.store).__name__}, Ctrl-C to stop")
    service.start()
    return 0


@click.command()
@click.option("-s", "--schedule", "schedule_file", help="SQLite file keeping beat's state.")
@click.option("--max-interval", type=float, help="Longest sleep between checks, in seconds.")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("--list", "list_only", is_flag=True, help="Print entries and next run times.")
@click.pass_context
def beat(
    ctx: click.Context,
    /,
    schedule_file: str | None,
    max_interval: float | None,
    loglevel: str,
    list_only: bool,
) -> None:
    """Run the periodic task scheduler."""
    from taskframe.cli_support import app_from_context

    app = app_from_context(ctx)
    ctx.exit(beat_command(app, schedule_file, max_interval, loglevel, list_only))
