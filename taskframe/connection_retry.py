"""Reaching the broker again after it went away: backoff, one log line per try, a clear end.

Celery's settings decide whether and how long to retry:

* ``broker_connection_retry_on_startup`` (None: follow ``broker_connection_retry``) for the
  first connection, ``broker_connection_retry`` for a connection lost while working;
* ``broker_connection_max_retries`` (100; 0 or None: forever).

The pause before try *n* is ``interval_start + (n - 1) * interval_step``, capped at
``interval_max`` (2, 2 and 30 s, as kombu), each overridable in ``broker_transport_options``
under kombu's names.

Only :class:`~taskframe.exceptions.BrokerConnectionError` is retried. A store that was reached
but refused (wrong password, an ACL denial) raises a plain ``BrokerError``: no number of retries
fixes a password, so that error goes straight up as one clear line instead of a retry storm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from taskframe.brokers.base import Broker
from taskframe.exceptions import BrokerConnectionError

__all__ = ["RetryPolicy", "connect_with_retry", "reconnect"]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to try a connection again."""

    enabled: bool = True
    max_retries: int | None = 100
    interval_start: float = 2.0
    interval_step: float = 2.0
    interval_max: float = 30.0

    @classmethod
    def from_conf(cls, conf: Any, *, startup: bool) -> RetryPolicy:
        """The policy Celery's settings ask for, at startup or after a lost connection."""
        enabled = conf.broker_connection_retry
        if startup and conf.broker_connection_retry_on_startup is not None:
            enabled = conf.broker_connection_retry_on_startup
        options = conf.broker_transport_options or {}
        return cls(
            enabled=bool(enabled),
            max_retries=conf.broker_connection_max_retries or None,
            interval_start=float(options.get("interval_start", 2.0)),
            interval_step=float(options.get("interval_step", 2.0)),
            interval_max=float(options.get("interval_max", 30.0)),
        )

    def pauses(self) -> Iterator[float]:
        """Seconds to wait before each retry; ends after ``max_retries`` (never if None)."""
        number = 0
        while self.enabled and (self.max_retries is None or number < self.max_retries):
            yield min(self.interval_max, self.interval_start + number * self.interval_step)
            number += 1


def connect_with_retry(
    broker: Broker,
    policy: RetryPolicy,
    logger: logging.Logger,
    *,
    stopping: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """``broker.ensure_connection()`` until it works, following ``policy``.

    Logs one warning per failed try (what failed, the try number, the pause). When the
    retries run out, raises ``BrokerConnectionError`` saying how many tries were made; when
    ``stopping()`` turns true, re-raises the last error at once."""
    pauses = policy.pauses()
    tries = 0
    while True:
        tries += 1
        try:
            broker.ensure_connection()
        except BrokerConnectionError as exc:
            pause = next(pauses, None)
            if stopping() or not policy.enabled:
                raise
            if pause is None:
                raise BrokerConnectionError(
                    f"{exc}; gave up after {tries} tries "
                    f"(broker_connection_max_retries={policy.max_retries})"
                ) from exc
            limit = "" if policy.max_retries is None else f" of {policy.max_retries}"
            logger.warning(
                "broker connection failed: %s; retry %d%s in %.1fs", exc, tries, limit, pause
            )
            _pause(pause, stopping, sleep)
        else:
            if tries > 1:
                logger.info("connected to the broker after %d tries", tries)
            return


def reconnect(
    broker: Broker,
    policy: RetryPolicy,
    logger: logging.Logger,
    error: BrokerConnectionError,
    *,
    stopping: Callable[[], bool] = lambda: False,
) -> None:
    """After ``error`` broke a working connection: say so in one line, then reconnect."""
    logger.error("lost the broker connection: %s; reconnecting", error)
    connect_with_retry(broker, policy, logger, stopping=stopping)
    logger.info("reconnected to the broker")


def _pause(seconds: float, stopping: Callable[[], bool], sleep: Callable[[float], None]) -> None:
    """Sleep in short slices, so a worker asked to stop does not wait out a long backoff."""
    deadline = time.monotonic() + seconds
    while not stopping():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        sleep(min(remaining, 0.25))
