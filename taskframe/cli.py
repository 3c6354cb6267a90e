"""The ``taskframe`` command: a thin click shell over the Python API.

``taskframe -A proj worker`` finds the app as Celery does: ``module:attribute``, or the
module's ``app``/``taskframe``/``celery`` attribute, or its ``celery`` submodule's, or the only
app in the module. The working directory is importable, as for ``celery``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
from types import FrameType, ModuleType
from typing import Any

import click

from taskframe.app import Taskframe
from taskframe.exceptions import TaskframeError

__all__ = ["find_app", "main"]


def find_app(name: str) -> Taskframe:
    """The app named by ``-A``: ``module``, ``module:attribute`` or ``module.attribute``."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name or "." not in module_name:
            raise click.UsageError(f"cannot import app module {module_name!r}: {exc}") from exc
        module_name, _, attribute = module_name.rpartition(".")
        module = importlib.import_module(module_name)
    if attribute:
        found = getattr(module, attribute, None)
        if isinstance(found, Taskframe):
            return found
        raise click.UsageError(f"{module_name}:{attribute} is not a taskframe app")
    app = _app_in(module)
    if app is None:
        try:
            app = _app_in(importlib.import_module(f"{module_name}.celery"))
        except ModuleNotFoundError:
            app = None
    if app is None:
        raise click.UsageError(
            f"no taskframe app found in module {module_name!r}: name it 'app' or pass "
            f"-A {module_name}:<attribute>"
        )
    return app


def _app_in(module: ModuleType) -> Taskframe | None:
    for attribute in ("app", "taskframe", "celery"):
        candidate = getattr(module, attribute, None)
        if isinstance(candidate, Taskframe):
            return candidate
    apps = [value for value in vars(module).values() if isinstance(value, Taskframe)]
    return apps[0] if len(apps) == 1 else None


def _mask(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":**@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


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


def _app(ctx: click.Context) -> Taskframe:
    name = ctx.obj.get("app_name")
    if not name:
        raise click.UsageError("missing -A/--app: which app? e.g. taskframe -A proj worker")
    app = find_app(name)
    if ctx.obj.get("broker"):
        app.conf.broker_url = ctx.obj["broker"]
    if ctx.obj.get("result_backend"):
        app.conf.result_backend = ctx.obj["result_backend"]
    return app


def _setup_logging(loglevel: str, logfile: str | None) -> None:
    handler: logging.Handler = (
        logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(loglevel.upper())


@main.command()
@click.option("-c", "--concurrency", type=int, help="Child processes or threads (default: CPUs).")
@click.option("-P", "--pool", type=click.Choice(["prefork", "threads", "solo"]), default="prefork",
              show_default=True)
@click.option("-Q", "--queues", help="Comma-separated queues to consume (default: the default queue).")
@click.option("-X", "--exclude-queues", default="", help="Comma-separated queues not to consume.")
@click.option("-n", "--hostname", help="Node name (default: taskframe@<host>).")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("--prefetch-multiplier", type=int, help="Messages held per process.")
@click.option("--max-tasks-per-child", type=int)
@click.option("--max-memory-per-child", type=int, help="KiB of resident memory before recycling.")
@click.option("--time-limit", type=float, help="Hard time limit in seconds.")
@click.option("--soft-time-limit", type=float, help="Soft time limit in seconds.")
@click.option("-O", "optimization", type=click.Choice(["fair", "default"]), default="default")
@click.option("--pidfile", type=click.Path(dir_okay=False))
@click.option("--logfile", type=click.Path(dir_okay=False))
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
@click.pass_context
def worker(ctx: click.Context, **options: Any) -> None:
    """Start a worker."""
    from taskframe.worker import Worker

    app = _app(ctx)
    _setup_logging(options["loglevel"], options["logfile"])
    queues = [q for q in (options["queues"] or "").split(",") if q] or None
    node = Worker(
        app,
        concurrency=options["concurrency"],
        pool=options["pool"],
        queues=queues,
        exclude_queues=[q for q in options["exclude_queues"].split(",") if q],
        hostname=options["hostname"],
        prefetch_multiplier=1 if options["optimization"] == "fair" else options["prefetch_multiplier"],
        max_tasks_per_child=options["max_tasks_per_child"],
        max_memory_per_child=options["max_memory_per_child"],
        time_limit=options["time_limit"],
        soft_time_limit=options["soft_time_limit"],
        burst=options["burst"],
    )
    if options["pidfile"]:
        with open(options["pidfile"], "w") as pidfile:
            pidfile.write(f"{os.getpid()}\n")
    app.finalize()
    click.echo(_banner(app, node), err=True)

    def request_stop(signum: int, frame: FrameType | None) -> None:
        if node._stopping:
            raise SystemExit(1)
        logging.getLogger("taskframe.worker").info("warm shutdown (%s)", signal.Signals(signum).name)
        node.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        node.start()
    finally:
        if options["pidfile"] and os.path.exists(options["pidfile"]):
            os.unlink(options["pidfile"])


def _banner(app: Taskframe, node: Any) -> str:
    tasks = "\n".join(f"  . {name}" for name in sorted(app.tasks) if not name.startswith("celery."))
    backend = app.result_backend_url or "disabled"
    return (
        f"\n -------------- {node.hostname} (taskframe)\n"
        f"--- ***** -----\n"
        f"-- ******* ---- [config]\n"
        f"- *** --- * --- .> app:         {app.main or '__main__'}\n"
        f"- ** ---------- .> transport:   {_mask(app.broker_url)}\n"
        f"- ** ---------- .> results:     {_mask(backend)}\n"
        f"- *** --- * --- .> concurrency: {node.concurrency} ({node.pool.name})\n"
        f"-- ******* ---- .> queues:      {', '.join(node.queues)}\n"
        f"--- ***** -----\n"
        f"[tasks]\n{tasks or '  (none)'}\n"
    )


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
def call(ctx: click.Context, name: str, args_json: str, kwargs_json: str, **options: Any) -> None:
    """Send task NAME and print its id."""
    from datetime import datetime

    app = _app(ctx)
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
def result(ctx: click.Context, task_id: str, wait: bool, timeout: float | None) -> None:
    """Print the state and value of task TASK_ID."""
    app = _app(ctx)
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
def purge(ctx: click.Context, queues: str | None, force: bool) -> None:
    """Delete every waiting message from the queues."""
    app = _app(ctx)
    names = [q for q in (queues or app.conf.task_default_queue).split(",") if q]
    if not force:
        click.confirm(
            f"Delete all waiting messages from {', '.join(names)} at {_mask(app.broker_url)}?",
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
