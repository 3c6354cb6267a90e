"""examples/redis works as its docstring says: a worker started from the folder, then
``python client.py`` prints every task's result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from interop_apps.processes import WorkerProcess

pytestmark = [pytest.mark.redis, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "redis"


def test_redis_example_prints_every_result(redis_url: str, tmp_path: Path) -> None:
    # Given a worker started in the example's folder, as the docstring says
    worker = WorkerProcess(
        ["-m", "taskframe", "-A", "tasks", "worker", "-c", "2", "-l", "INFO"],
        tmp_path / "worker.log",
        redis_url,
        cwd=EXAMPLE,
        env={"REDIS_URL": redis_url, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    try:
        worker.wait_ready()
        # When the client runs
        completed = subprocess.run(
            [sys.executable, "client.py"],
            cwd=EXAMPLE,
            env={**os.environ, "REDIS_URL": redis_url, "PYTHONDONTWRITEBYTECODE": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        exit_code = worker.stop()
    # Then it printed each result and the worker stopped cleanly
    assert completed.returncode == 0, completed.stderr + worker.output()
    assert completed.stdout.splitlines() == [
        "add(2, 3) -> 5",
        "add(20, 1) after 1s -> 21",
        "urgent add(1, 1) -> 2",
        "group -> [0, 2, 4, 6, 8]",
        "chord -> 20",
        "fetch_price -> apples: 3 (after 1 retry)",
        "report -> report of 120 rows",
    ]
    assert exit_code == 0
