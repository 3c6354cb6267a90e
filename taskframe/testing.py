"""Helpers for testing your own tasks: an in-process worker and eager mode.

::

    def test_add(app):
        with app.test_worker():
            assert add.delay(2, 2).get(timeout=5) == 4

``test_worker`` runs a real :class:`~taskframe.worker.Worker` (threads pool by default; also
``solo`` and ``asyncio``) in a background thread of the test process, against the app's own
broker (``memory://`` is the quickest), so tests exercise the same path as production:
retries, dead letters, time limits, revokes. ``worker.join()`` waits until the queues are
empty and nothing is held, delayed retries included. ``eager(app)`` switches
``task_always_eager`` on for a block: tasks run in place, no worker at all.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from taskframe.worker import Worker

if TYPE_CHECKING:
    from taskframe.app import Taskframe

__all__ = ["eager", "start_worker"]


@contextmanager
def start_worker(
    app: Taskframe,
    *,
    pool: str = "threads",
    concurrency: int = 2,
    startup_timeout: float = 10.0,
    **options: Any,
) -> Iterator[Worker]:
    """Run a worker for ``app`` in a background thread for the duration of the block."""
    worker = Worker(app, pool=pool, concurrency=concurrency, **options)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            worker.start()
        except BaseException as exc:
            failure.append(exc)
            raise

    thread = threading.Thread(target=run, name="taskframe-test-worker", daemon=True)
    thread.start()
    if not worker.ready.wait(startup_timeout):
        worker.stop()
        raise RuntimeError(f"test worker did not start within {startup_timeout}s: {failure}")
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30)
        if thread.is_alive():
            raise RuntimeError("test worker did not stop within 30s")


@contextmanager
def eager(app: Taskframe, *, propagate: bool = True) -> Iterator[Taskframe]:
    """Run every ``delay``/``apply_async`` of ``app`` in place for the block."""
    saved = (app.conf.task_always_eager, app.conf.task_eager_propagates)
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = propagate
    try:
        yield app
    finally:
        app.conf.task_always_eager, app.conf.task_eager_propagates = saved
