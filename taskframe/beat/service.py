"""The ``beat`` service: run the scheduler until stopped, alone or inside a worker (``-B``).

``Service.start()`` blocks, ticking the scheduler and sleeping in between; ``stop()`` (from a
signal handler or another thread) wakes it at once, and the lease is released on the way out so
a standby beat takes over without waiting for the lease to expire. A store that fails (server
down, file locked) is logged in one line and retried after ``retry_delay``; beat never fires
without the lease, so an unreachable store pauses it rather than risking a double fire.

``EmbeddedService`` is the same loop in a daemon thread, for ``taskframe worker -B``: the
worker calls ``start()`` when it starts and ``stop()`` on shutdown.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from taskframe.beat.scheduler import Scheduler
from taskframe.beat.store import BeatStore, open_store
from taskframe.exceptions import BrokerError
from taskframe.timeutils import utcnow

__all__ = ["EmbeddedService", "Service", "finalize_app"]

logger = logging.getLogger("taskframe.beat")


def finalize_app(app: Any) -> None:
    """Finalize the app if it can be, so ``on_after_configure`` receivers add their entries."""
    finalize = getattr(app, "finalize", None)
    if callable(finalize):
        finalize()


class Service:
    """Runs one beat scheduler until ``stop()``."""

    def __init__(
        self,
        app: Any,
        *,
        store: BeatStore | None = None,
        schedule_filename: str | None = None,
        max_interval: float | None = None,
        lease_ttl: float | None = None,
        missed_policy: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] | None = None,
        retry_delay: float = 5.0,
    ) -> None:
        finalize_app(app)
        self._stopped = threading.Event()
        self._owns_store = store is None
        self.store = store if store is not None else open_store(app, schedule_filename)
        self.retry_delay = retry_delay
        self.scheduler = Scheduler(
            app,
            self.store,
            clock=clock,
            sleep=sleep if sleep is not None else self._wait,
            max_interval=max_interval,
            lease_ttl=lease_ttl,
            missed_policy=missed_policy,
            retry_delay=retry_delay,
        )

    def _wait(self, seconds: float) -> None:
        self._stopped.wait(seconds)

    def start(self) -> None:
        """Run until ``stop()``; releases the lease and closes an own store at the end."""
        scheduler = self.scheduler
        logger.info(
            "beat: starting as %s (max interval %gs, lease %gs, missed runs: %s)",
            scheduler.owner,
            scheduler.max_interval,
            scheduler.lease_ttl,
            scheduler.missed_policy,
        )
        try:
            while not self._stopped.is_set():
                try:
                    delay = scheduler.tick()
                except BrokerError as exc:
                    logger.error("beat: store failed: %s; retrying in %gs", exc, self.retry_delay)
                    scheduler.is_leader = False
                    delay = self.retry_delay
                scheduler.sleep(delay)
        finally:
            self._shutdown()

    def stop(self) -> None:
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def _shutdown(self) -> None:
        try:
            self.scheduler.close()
        except BrokerError as exc:
            logger.warning("beat: could not release the lease: %s", exc)
        finally:
            if self._owns_store:
                self.store.close()
        logger.info("beat: stopped")


class EmbeddedService(threading.Thread):
    """Beat inside another process (``worker -B``): a daemon thread running ``Service``."""

    def __init__(self, app: Any, **options: Any) -> None:
        super().__init__(name="taskframe-beat", daemon=True)
        self.service = Service(app, **options)

    def run(self) -> None:
        self.service.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the loop and wait (up to ``timeout``) for the lease to be released."""
        self.service.stop()
        if self.is_alive():
            self.join(timeout)
