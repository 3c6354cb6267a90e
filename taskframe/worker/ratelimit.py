"""Per-task rate limits (``rate_limit='10/s' | '100/m' | '1000/h'``).

Celery's limit is per worker; here it holds across every worker sharing a store that can keep
a token bucket (``Capabilities.shared_rate_limits``: sqlite, memory, Redis), through
:meth:`Broker.acquire_rate_token` on the key ``taskframe.rate:<task name>``. Other stores get a
bucket per worker, as in Celery. Buckets hold one token (Celery's capacity), so runs are spread
evenly rather than bursting.

The consumer asks :meth:`RateLimits.wait` when a message arrives: 0 means run now (a token was
taken), otherwise the message waits in the worker's buffer (still counted in the prefetch) and
asks again when the returned delay has passed. Other tasks are not held up meanwhile.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from taskframe.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from taskframe.app import Taskframe

__all__ = ["RateLimits", "parse_rate"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
KEY_PREFIX = "taskframe.rate:"


def parse_rate(rate: str | float | int | None) -> float:
    """Tasks per second for ``'10/s'``, ``'100/m'``, ``'1000/h'`` or a plain number (per
    second); 0 means no limit."""
    if rate is None or rate == "":
        return 0.0
    if isinstance(rate, (int, float)):
        return float(rate)
    count, _, unit = str(rate).strip().partition("/")
    try:
        per = _UNITS[unit.strip()[:1] or "s"]
        return float(count) / per
    except (KeyError, ValueError):
        raise ImproperlyConfigured(
            f"rate limit {rate!r} is not understood; write it like '10/s', '100/m' or '1000/h'"
        ) from None


class RateLimits:
    """The worker's view of every task's rate limit."""

    def __init__(self, app: Taskframe) -> None:
        self.app = app
        self.disabled = bool(app.conf.worker_disable_rate_limits)
        broker = app.broker
        self.shared = broker.capabilities.shared_rate_limits
        self._rates: dict[str, float] = {}
        self._local: dict[str, tuple[float, float]] = {}

    def rate(self, task_name: str) -> float:
        """The task's limit in runs per second (0: none); computed once per task."""
        rate = self._rates.get(task_name)
        if rate is None:
            task = self.app.tasks.get(task_name)
            limit = task.rate_limit if task is not None else None
            if limit is None:
                limit = self.app.conf.task_default_rate_limit
            rate = 0.0 if self.disabled else parse_rate(limit)
            self._rates[task_name] = rate
        return rate

    def set_rate(self, task_name: str, limit: str | float | None) -> None:
        """Change a task's limit at run time (remote control ``rate_limit``)."""
        self._rates[task_name] = parse_rate(limit)

    def wait(self, task_name: str) -> float:
        """Take a token for one run of ``task_name``: 0 to run now, else seconds to wait."""
        rate = self.rate(task_name)
        if rate <= 0:
            return 0.0
        if self.shared:
            return self.app.broker.acquire_rate_token(KEY_PREFIX + task_name, rate, 1.0)
        now = time.monotonic()
        tokens, updated = self._local.get(task_name, (1.0, now))
        tokens = min(1.0, tokens + (now - updated) * rate)
        if tokens >= 1.0:
            self._local[task_name] = (tokens - 1.0, now)
            return 0.0
        self._local[task_name] = (tokens, now)
        return (1.0 - tokens) / rate
