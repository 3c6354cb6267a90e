"""The worker's side of remote control: a thread that listens on ``taskframe.control``.

It subscribes before the worker reports ready (so a revoke sent after ``worker_ready`` is
never missed), then loads the persistent revoked set. While it waits on the broker it holds
:attr:`ControlListener.fork_lock`, which the prefork pool takes to fork a child: a child forked
while this thread is inside a client library (sqlite's mutexes, a socket's buffers) could
inherit a lock held forever. Revokes go straight into the worker's
:class:`~taskframe.worker.revoke.Revoked` set; anything that touches the pool (terminate) is
queued for the consumer thread, which owns the pool. Answers are broadcast on the command's
reply channel. A bad command is logged in one line and ignored.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from taskframe.brokers.base import Subscription
from taskframe.control import CONTROL_CHANNEL
from taskframe.exceptions import BrokerError
from taskframe.worker.revoke import load_revoked

if TYPE_CHECKING:
    from taskframe.worker.consumer import Worker

__all__ = ["ControlListener"]

logger = logging.getLogger("taskframe.worker")

POLL_INTERVAL = 0.25
FORK_WINDOW = 0.001


class ControlListener:
    """Runs remote-control commands for one worker."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._subscription: Subscription | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.fork_lock = threading.Lock()

    def start(self) -> None:
        app = self.worker.app
        broker = app.broker
        if broker.capabilities.broadcast and app.conf.worker_enable_remote_control:
            self._subscription = broker.subscribe([CONTROL_CHANNEL])
            self._thread = threading.Thread(
                target=self._listen, name="taskframe-control", daemon=True
            )
            self._thread.start()
        self.worker.revoked.update(load_revoked(app))

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._subscription is not None:
            self._subscription.close()

    def _listen(self) -> None:
        assert self._subscription is not None
        while not self._stopped.is_set():
            try:
                with self.fork_lock:
                    received = self._subscription.get(POLL_INTERVAL)
                time.sleep(FORK_WINDOW)  # a thread waiting to fork gets the lock now
            except BrokerError as exc:
                logger.warning("remote control: %s", exc)
                self._stopped.wait(1.0)
                continue
            if received is not None:
                self.handle(received[1])

    def handle(self, payload: bytes) -> None:
        try:
            request = json.loads(payload)
            destination = request.get("destination")
            if destination and self.worker.hostname not in destination:
                return
            command = str(request["command"])
            handler = getattr(self, f"_command_{command}", None)
            if handler is None:
                logger.warning("remote control: unknown command %r", command)
                return
            result = handler(**(request.get("arguments") or {}))
            reply_to = request.get("reply_to")
            if reply_to:
                answer = {"hostname": self.worker.hostname, "result": result}
                self.worker.app.broker.broadcast(reply_to, json.dumps(answer).encode())
        except Exception as exc:
            logger.warning("remote control: bad command %r: %r", payload[:200], exc)

    def _command_revoke(
        self,
        ids: list[str],
        terminate: bool = False,
        signal: int = 15,
        expires_at: float | None = None,
    ) -> dict[str, str]:
        self.worker.revoked.add(ids, expires_at or time.time() + 10800.0)
        if terminate:
            self.worker.commands.put(("terminate", ids, signal))
        return {"ok": f"tasks {', '.join(ids)} flagged as revoked"}

    def _command_ping(self) -> dict[str, str]:
        return {"ok": "pong"}

    def _command_active(self) -> list[dict[str, Any]]:
        return self.worker.active_requests()

    def _command_stats(self) -> dict[str, Any]:
        return self.worker.stats()

    def _command_revoked(self) -> list[str]:
        return self.worker.revoked.ids()

    def _command_registered(self) -> list[str]:
        return sorted(name for name in self.worker.app.tasks if not name.startswith("celery."))

    def _command_rate_limit(self, task_name: str, rate_limit: str | float | None) -> dict[str, str]:
        self.worker.rate_limits.set_rate(task_name, rate_limit)
        return {"ok": f"new rate limit set for {task_name}"}

    def _command_shutdown(self) -> dict[str, str]:
        logger.warning("remote control: shutdown requested (pid %s)", os.getpid())
        self.worker.stop()
        return {"ok": "shutting down"}
