"""Worker processes the harness starts, and what they weigh.

Every worker runs in a session of its own, so stopping it reaches its children too, and every
one is registered until stopped: :func:`stop_all` (called from the harness's ``finally`` and at
exit) kills whatever is still running, by process group id.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["WorkerProcess", "stop_all", "tree_rss"]

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
_running: dict[int, WorkerProcess] = {}


class WorkerProcess:
    """One framework's worker: ``start()``, ``alive()``, ``rss()``, ``stop()``."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.command = command
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.started_at = time.time()
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        _running[self.process.pid] = self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss(self) -> tuple[float, int]:
        """Resident memory of the worker and all its descendants (MiB), and how many."""
        if self.process is None:
            raise RuntimeError("the worker was not started")
        return tree_rss(self.process.pid)

    def log_tail(self, lines: int = 2) -> str:
        """The log's last unindented lines (for a traceback: the exception, not the frames)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        kept = [line for line in text.splitlines() if line.strip() and not line[0].isspace()]
        return " | ".join(kept[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM (warm shutdown), then SIGKILL to the whole group after ``grace`` s."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(grace)
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()
        _running.pop(process.pid, None)


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def stop_all() -> None:
    """Kill every worker still registered (the harness's last line of defence)."""
    for worker in list(_running.values()):
        worker.stop(grace=1.0)


atexit.register(stop_all)


def tree_rss(root: int) -> tuple[float, int]:
    """Sum of ``/proc/<pid>/statm`` resident pages over ``root`` and its descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    members = {root}
    grew = True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in members} - members
        grew = bool(found)
        members |= found
    total_kib = 0
    counted = 0
    for pid in members:
        try:
            resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        total_kib += resident * PAGE_KIB
        counted += 1
    return total_kib / 1024, counted
