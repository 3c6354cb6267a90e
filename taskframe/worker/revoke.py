"""Revoked task ids: what a worker must not run, kept across worker restarts.

``app.control.revoke(id)`` does two things:

* broadcasts the ids to every live worker (channel ``taskframe.control``), which add them to
  their in-memory :class:`Revoked` set at once;
* adds them to a persistent set stored in the result backend, as one group entry under the
  id ``taskframe.revoked`` (a JSON object ``{"ids": {task_id: expires_at}}``), which every
  worker loads when it starts. So a message revoked while no worker was running, or while a
  worker was restarting, is still not run.

Entries expire after :data:`REVOKE_EXPIRES` seconds (Celery keeps revokes 3 hours too); the
set is pruned on each write. Writes read, merge and store the entry, so two revokes issued at
the same instant from two processes may race and one of them be missing from the stored set;
both still reach every live worker through the broadcast. Without a result backend only the
broadcast is used (as Celery without ``--statedb``).

A revoked message that reaches a worker is acked and stored as REVOKED (``task_revoked``
signal), as in Celery.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from taskframe.exceptions import BrokerError

if TYPE_CHECKING:
    from taskframe.app import Taskframe

__all__ = ["REVOKED_KEY", "REVOKE_EXPIRES", "Revoked", "load_revoked", "persist_revoked"]

logger = logging.getLogger("taskframe.worker")

REVOKED_KEY = "taskframe.revoked"
REVOKE_EXPIRES = 10800.0


class Revoked:
    """Task ids not to run, each with the epoch time after which it is forgotten."""

    def __init__(self) -> None:
        self._ids: dict[str, float] = {}

    def add(self, ids: Iterable[str], expires_at: float) -> None:
        for task_id in ids:
            self._ids[task_id] = max(expires_at, self._ids.get(task_id, 0.0))

    def update(self, entries: dict[str, float]) -> None:
        for task_id, expires_at in entries.items():
            self.add([task_id], expires_at)

    def __contains__(self, task_id: object) -> bool:
        expires_at = self._ids.get(task_id) if isinstance(task_id, str) else None
        if expires_at is None:
            return False
        if expires_at < time.time():
            del self._ids[task_id]  # type: ignore[arg-type]  # a str, checked above
            return False
        return True

    def __len__(self) -> int:
        return len(self._ids)

    def prune(self) -> None:
        now = time.time()
        self._ids = {task_id: at for task_id, at in self._ids.items() if at >= now}

    def ids(self) -> list[str]:
        self.prune()
        return sorted(self._ids)


def load_revoked(app: Taskframe) -> dict[str, float]:
    """The persistent revoked set (empty without a result backend)."""
    backend = app.backend
    if backend is None:
        return {}
    payload = backend.get_group(REVOKED_KEY)
    if not payload:
        return {}
    try:
        entries = json.loads(payload).get("ids", {})
    except (ValueError, AttributeError):
        logger.warning("ignoring an unreadable revoked set in the result backend")
        return {}
    now = time.time()
    return {
        str(task_id): float(at)
        for task_id, at in entries.items()
        if isinstance(at, (int, float)) and at >= now
    }


def persist_revoked(app: Taskframe, ids: Iterable[str], expires_at: float) -> bool:
    """Add ``ids`` to the persistent revoked set; False when there is nowhere to keep it."""
    backend = app.backend
    if backend is None:
        return False
    entries = load_revoked(app)
    for task_id in ids:
        entries[task_id] = max(expires_at, entries.get(task_id, 0.0))
    try:
        backend.set_group(
            REVOKED_KEY, json.dumps({"ids": entries}).encode(), expires=REVOKE_EXPIRES
        )
    except BrokerError as exc:
        logger.warning("could not store revoked ids in the result backend: %s", exc)
        return False
    return True
