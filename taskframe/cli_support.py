"""What every ``taskframe`` subcommand shares: finding the app, logging, masking URLs.

``-A proj`` finds the app as Celery does: ``module:attribute``, or the module's
``app``/``taskframe``/``celery`` attribute, or its ``celery`` submodule's, or the only app in
the module. The working directory is importable, as for ``celery``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from types import ModuleType

import click

from taskframe.app import Taskframe

__all__ = ["app_from_context", "find_app", "mask_url", "setup_logging"]


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
        except ModuleNotFoundError as exc:
            if exc.name != f"{module_name}.celery":
                raise click.UsageError(f"cannot import {module_name}.celery: {exc}") from exc
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


def mask_url(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":**@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def app_from_context(ctx: click.Context) -> Taskframe:
    name = ctx.obj.get("app_name")
    if not name:
        raise click.UsageError("missing -A/--app: which app? e.g. taskframe -A proj worker")
    app = find_app(name)
    if ctx.obj.get("broker"):
        app.conf.broker_url = ctx.obj["broker"]
    if ctx.obj.get("result_backend"):
        app.conf.result_backend = ctx.obj["result_backend"]
    return app


CHATTY_LIBRARIES = ("pika", "botocore", "boto3", "urllib3")
"""Client libraries whose INFO lines (several per connection or request) would drown the
worker's own; they speak at ``-l DEBUG`` only."""


def setup_logging(loglevel: str, logfile: str | None) -> None:
    handler: logging.Handler = (
        logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(
        logging.Formatter("[%(asctime)s: %(levelname)s/%(processName)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(loglevel.upper())
    if root.getEffectiveLevel() > logging.DEBUG:
        for name in CHATTY_LIBRARIES:
            logging.getLogger(name).setLevel(max(root.getEffectiveLevel(), logging.WARNING))
