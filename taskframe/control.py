"""Remote control: ``app.control.revoke(id)``, ``ping()``, ``inspect().active()`` ...

Commands travel as JSON on the broker's fan-out channel ``taskframe.control``:
``{"command", "arguments", "destination", "reply_to"}``; ``destination`` is a list of worker
hostnames (None: every worker). A command that wants answers names a fresh reply channel
``taskframe.reply.<uuid>``, subscribed before the command is sent; each worker answers there
with ``{"hostname", "result"}`` and the caller collects answers for ``timeout`` seconds (or
until ``limit`` arrived). Results have Celery's shapes: ``ping()`` is a list of
``{hostname: {"ok": "pong"}}``, ``inspect().active()`` a dict ``{hostname: [request, ...]}`` or
None when no worker answered.

``revoke`` also records the ids in the persistent revoked set (see
:mod:`taskframe.worker.revoke`), so workers started later skip them too.
"""

from __future__ import annotations

import json
import signal as signal_module
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from taskframe.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from taskframe.app import Taskframe

__all__ = ["CONTROL_CHANNEL", "Control", "Inspect", "signal_number"]

CONTROL_CHANNEL = "taskframe.control"
REPLY_PREFIX = "taskframe.reply."


def signal_number(name: str | int) -> int:
    """``'SIGTERM'``, ``'TERM'`` or 15 as a signal number."""
    if isinstance(name, int):
        return name
    text = name.upper()
    if text.isdigit():
        return int(text)
    try:
        return int(signal_module.Signals[text if text.startswith("SIG") else f"SIG{text}"])
    except KeyError:
        raise ImproperlyConfigured(f"unknown signal {name!r}; use a name like 'SIGTERM'") from None


class Control:
    """Talk to running workers through the broker's broadcast."""

    def __init__(self, app: Taskframe) -> None:
        self.app = app

    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Send ``command`` to the workers; with ``reply``, their answers as
        ``[{hostname: result}, ...]``."""
        broker = self.app.broker
        if not broker.capabilities.broadcast:
            raise ImproperlyConfigured(
                f"the {broker.scheme}:// broker cannot broadcast, so workers cannot be "
                "controlled remotely; use a broker with broadcast (sqlite, redis, amqp)"
            )
        reply_to = f"{REPLY_PREFIX}{uuid.uuid4().hex}" if reply else None
        payload = json.dumps(
            {
                "command": command,
                "arguments": arguments or {},
                "destination": list(destination) if destination else None,
                "reply_to": reply_to,
            }
        ).encode()
        if reply_to is None:
            broker.broadcast(CONTROL_CHANNEL, payload)
            return []
        answers: list[dict[str, Any]] = []
        with broker.subscribe([reply_to]) as subscription:
            broker.broadcast(CONTROL_CHANNEL, payload)
            deadline = time.monotonic() + timeout
            while limit is None or len(answers) < limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                received = subscription.get(remaining)
                if received is None:
                    break
                answer = json.loads(received[1])
                answers.append({answer["hostname"]: answer["result"]})
        return answers

    def revoke(
        self,
        task_id: str | Sequence[str],
        *,
        terminate: bool = False,
        signal: str | int = "SIGTERM",
        expires: float | None = None,
    ) -> None:
        """Do not run these tasks; with ``terminate``, also signal the process running one.

        Workers started later skip them too, for ``expires`` seconds (default 3 hours)."""
        from taskframe.worker.revoke import REVOKE_EXPIRES, persist_revoked

        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        expires_at = time.time() + (expires if expires is not None else REVOKE_EXPIRES)
        persist_revoked(self.app, ids, expires_at)
        if self.app.broker.capabilities.broadcast:
            self.broadcast(
                "revoke",
                {
                    "ids": ids,
                    "terminate": terminate,
                    "signal": signal_number(signal),
                    "expires_at": expires_at,
                },
            )

    def terminate(self, task_id: str | Sequence[str], signal: str | int = "SIGTERM") -> None:
        self.revoke(task_id, terminate=True, signal=signal)

    def ping(
        self, destination: Sequence[str] | None = None, timeout: float = 1.0
    ) -> list[dict[str, Any]]:
        return self.broadcast(
            "ping",
            destination=destination,
            reply=True,
            timeout=timeout,
            limit=len(destination) if destination else None,
        )

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | float | None,
        destination: Sequence[str] | None = None,
    ) -> None:
        """Change a task's rate limit on running workers (until they restart)."""
        self.broadcast(
            "rate_limit",
            {"task_name": task_name, "rate_limit": rate_limit},
            destination=destination,
        )

    def shutdown(self, destination: Sequence[str] | None = None) -> None:
        """Ask workers for a warm shutdown."""
        self.broadcast("shutdown", destination=destination)

    def inspect(self, destination: Sequence[str] | None = None, timeout: float = 1.0) -> Inspect:
        return Inspect(self, destination, timeout)


class Inspect:
    """Questions to running workers; each answer is ``{hostname: result}``, None if none."""

    def __init__(self, control: Control, destination: Sequence[str] | None, timeout: float) -> None:
        self.control = control
        self.destination = destination
        self.timeout = timeout

    def _ask(self, command: str) -> dict[str, Any] | None:
        answers = self.control.broadcast(
            command,
            destination=self.destination,
            reply=True,
            timeout=self.timeout,
            limit=len(self.destination) if self.destination else None,
        )
        merged: dict[str, Any] = {}
        for answer in answers:
            merged.update(answer)
        return merged or None

    def ping(self) -> dict[str, Any] | None:
        return self._ask("ping")

    def active(self) -> dict[str, Any] | None:
        return self._ask("active")

    def stats(self) -> dict[str, Any] | None:
        return self._ask("stats")

    def revoked(self) -> dict[str, Any] | None:
        return self._ask("revoked")

    def registered(self) -> dict[str, Any] | None:
        return self._ask("registered")
