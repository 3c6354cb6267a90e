"""Worker subprocesses for the Redis tests: start with the apps importable, wait until the
worker says it is ready, stop warm (SIGTERM) and always reap; run an example's worker and
client as its docstring says."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
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


@dataclass
class ExampleRun:
    """What an example's ``client.py`` printed, and how its worker fared."""

    lines: list[str]
    client_failure: str | None
    worker_output: str
    worker_exit_code: int


def run_example(
    folder: Path, env: dict[str, str], redis_url: str, log: Path, *, patience: float = 1.0
) -> ExampleRun:
    """Start a worker in ``folder`` as the example's docstring says, run ``client.py`` while
    it runs, stop the worker warm. ``patience`` stretches the timeouts (slow servers)."""
    env = {**env, "PYTHONDONTWRITEBYTECODE": "1"}
    worker = WorkerProcess(
        ["-m", "taskframe", "-A", "tasks", "worker", "-c", "2", "-l", "INFO"],
        log,
        redis_url,
        cwd=folder,
        env=env,
    )
    try:
        worker.wait_ready(timeout=30 * patience)
        completed = subprocess.run(
            [sys.executable, "client.py"],
            cwd=folder,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120 * patience,
        )
    finally:
        exit_code = worker.stop(timeout=20 * patience)
    failure = None if completed.returncode == 0 else completed.stderr
    return ExampleRun(completed.stdout.splitlines(), failure, worker.output(), exit_code)
