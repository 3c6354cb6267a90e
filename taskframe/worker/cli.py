"""``taskframe -A proj worker``: start a worker from the command line.

Process signals, as in Celery: SIGTERM or SIGINT asks for a warm shutdown (a second one, or
SIGQUIT, for a cold shutdown); SIGHUP replaces the pool's child processes once they are idle.
Handlers only set flags: the worker's loop acts on them within a fraction of a second.
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from taskframe.app import Taskframe
from taskframe.cli_support import app_from_context, mask_url, setup_logging
from taskframe.utils.log import TASK_LOGGER_NAME, TaskFormatter

if TYPE_CHECKING:
    from taskframe.worker.consumer import Worker

__all__ = ["banner", "worker"]

logger = logging.getLogger("taskframe.worker")


@click.command()
@click.option(
    "-c",
    "--concurrency",
    type=int,
    help="Child processes, threads or coroutines (default: CPUs; 100 for asyncio).",
)
@click.option(
    "-P",
    "--pool",
    type=click.Choice(["prefork", "threads", "solo", "asyncio"]),
    help="Pool implementation (default: worker_pool, prefork).",
)
@click.option(
    "-Q", "--queues", help="Comma-separated queues to consume (default: the default queue)."
)
@click.option("-X", "--exclude-queues", default="", help="Comma-separated queues not to consume.")
@click.option("-n", "--hostname", help="Node name (default: taskframe@<host>).")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("--prefetch-multiplier", type=int, help="Messages held per process (0: no limit).")
@click.option("--max-tasks-per-child", type=int, help="Recycle a child after this many tasks.")
@click.option("--max-memory-per-child", type=int, help="Recycle a child past this many KiB.")
@click.option("--time-limit", type=float, help="Hard time limit in seconds.")
@click.option("--soft-time-limit", type=float, help="Soft time limit in seconds.")
@click.option(
    "-O",
    "optimization",
    type=click.Choice(["fair", "default"]),
    default="default",
    help="fair: a child gets a task only when it is free (always true here).",
)
@click.option(
    "--shutdown-timeout",
    type=float,
    help="Seconds a warm shutdown waits for running tasks (default: worker_shutdown_timeout, 30).",
)
@click.option("--pidfile", type=click.Path(dir_okay=False))
@click.option("--logfile", type=click.Path(dir_okay=False))
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
@click.option("-B", "--beat", is_flag=True, help="Also run beat (periodic tasks) in this worker.")
@click.option("-s", "--schedule", "schedule_file", help="With -B: SQLite file for beat's state.")
@click.pass_context
def worker(ctx: click.Context, /, **options: Any) -> None:
    """Start a worker."""
    from taskframe.worker import Worker

    app = app_from_context(ctx)
    setup_logging(options["loglevel"], options["logfile"])
    _log_tasks_with_ids(app, options["logfile"])
    queues = [q for q in (options["queues"] or "").split(",") if q] or None
    node = Worker(
        app,
        concurrency=options["concurrency"],
        pool=options["pool"],
        queues=queues,
        exclude_queues=[q for q in options["exclude_queues"].split(",") if q],
        hostname=options["hostname"],
        prefetch_multiplier=options["prefetch_multiplier"],
        max_tasks_per_child=options["max_tasks_per_child"],
        max_memory_per_child=options["max_memory_per_child"],
        time_limit=options["time_limit"],
        soft_time_limit=options["soft_time_limit"],
        optimization=options["optimization"],
        shutdown_timeout=options["shutdown_timeout"],
        burst=options["burst"],
    )
    if options["pidfile"]:
        with open(options["pidfile"], "w") as pidfile:
            pidfile.write(f"{os.getpid()}\n")
    app.finalize()
    click.echo(banner(app, node), err=True)
    _install_signal_handlers(node)
    embedded_beat = None
    if options["beat"]:
        from taskframe.beat.service import EmbeddedService

        embedded_beat = EmbeddedService(app, schedule_filename=options["schedule_file"])
        embedded_beat.start()
    try:
        node.start()
    finally:
        if embedded_beat is not None:
            embedded_beat.stop()
        if options["pidfile"] and os.path.exists(options["pidfile"]):
            os.unlink(options["pidfile"])


def _install_signal_handlers(node: Worker) -> None:
    def shutdown(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        cold = node.stopping or signum == signal.SIGQUIT
        logger.warning("%s shutdown (%s)", "cold" if cold else "warm", name)
        node.stop(cold=cold)

    def restart(signum: int, frame: FrameType | None) -> None:
        node.restart_pool()

    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(number, shutdown)
    signal.signal(signal.SIGHUP, restart)


def _log_tasks_with_ids(app: Taskframe, logfile: str | None) -> None:
    """Records of task loggers use ``worker_task_log_format`` (task name and id), as Celery."""
    import sys

    handler: logging.Handler = (
        logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(TaskFormatter(app.conf.worker_task_log_format))
    task_logger = logging.getLogger(TASK_LOGGER_NAME)
    task_logger.handlers[:] = [handler]
    task_logger.propagate = False


def banner(app: Taskframe, node: Worker) -> str:
    """The start-up banner, Celery's layout; passwords in URLs are masked."""
    tasks = "\n".join(f"  . {name}" for name in sorted(app.tasks) if not name.startswith("celery."))
    backend = app.result_backend_url or "disabled"
    return (
        f"\n -------------- {node.hostname} (taskframe)\n"
        f"--- ***** -----\n"
        f"-- ******* ---- [config]\n"
        f"- *** --- * --- .> app:         {app.main or '__main__'}\n"
        f"- ** ---------- .> transport:   {mask_url(app.broker_url)}\n"
        f"- ** ---------- .> results:     {mask_url(backend)}\n"
        f"- *** --- * --- .> concurrency: {node.concurrency} ({node.pool.name})\n"
        f"-- ******* ---- .> prefetch:    {node.prefetch_limit} messages\n"
        f"--- ***** -----\n"
        f" -------------- [queues]\n"
        + "".join(f"                .> {queue}\n" for queue in node.queues)
        + f"\n[tasks]\n{tasks or '  (none)'}\n"
    )
