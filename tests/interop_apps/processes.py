"""Worker subprocesses for the Redis tests: start with the apps importable, wait until the
worker says it is ready, stop warm (SIGTERM) and always reap."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent
READY_MARKERS = ("ready: queues", " ready.")


class WorkerProcess:
    """One worker subprocess whose output goes to ``log`` (read it with :meth:`output`)."""

    def __init__(
        self,
        argv: list[str],
        log: Path,
        redis_url: str,
        *,
        cwd: Path = TESTS_DIR,
        env: dict[str, str] | None = None,
    ) -> None:
        self.log = log
        environment = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
            "INTEROP_REDIS_URL": redis_url,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, *argv],
                cwd=cwd,
                env=environment,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the worker logs that it consumes; fails with its output if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output()
            if any(marker in text for marker in READY_MARKERS):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"worker not ready (exit {self.process.poll()}):\n{self.output()}")

    def wait_exit(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """Warm shutdown; a worker that does not stop in ``timeout`` seconds is killed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout=timeout)


def taskframe_worker(log: Path, redis_url: str, *options: str) -> WorkerProcess:
    argv = ["-m", "taskframe", "-A", "interop_apps.taskframe_app", "worker", "-l", "INFO"]
    return WorkerProcess([*argv, *options], log, redis_url)


def celery_worker(log: Path, redis_url: str, *options: str) -> WorkerProcess:
    argv = ["-m", "celery", "-A", "interop_apps.celery_app", "worker", "-l", "INFO"]
    argv += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
    return WorkerProcess([*argv, *options], log, redis_url)
