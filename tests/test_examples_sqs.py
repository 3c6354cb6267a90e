"""examples/sqs works as its docstring says: a worker started from the folder, then
``python client.py`` prints every task's result, over SQS (the session's moto server) with
results in Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from interop_apps.processes import WorkerProcess

pytestmark = [pytest.mark.sqs, pytest.mark.redis, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sqs"


def test_sqs_example_prints_every_result(sqs_url: str, redis_url: str, tmp_path: Path) -> None:
    # The fixture's URL is the example's form (host = endpoint) with a queue prefix of its own
    env = {"SQS_URL": sqs_url, "REDIS_URL": redis_url, "PYTHONDONTWRITEBYTECODE": "1"}
    # Given a worker started in the example's folder, as the docstring says
    worker = WorkerProcess(
        ["-m", "taskframe", "-A", "tasks", "worker", "-c", "2", "-l", "INFO"],
        tmp_path / "worker.log",
        redis_url,
        cwd=EXAMPLE,
        env=env,
    )
    try:
        worker.wait_ready(timeout=60)
        # When the client runs
        completed = subprocess.run(
            [sys.executable, "client.py"],
            cwd=EXAMPLE,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        exit_code = worker.stop(timeout=40)
    # Then it printed each result and the worker stopped cleanly
    assert completed.returncode == 0, completed.stderr + worker.output()
    assert completed.stdout.splitlines() == [
        "add(2, 3) -> 5",
        "add(20, 1) after 1s -> 21",
        "chord -> 6",
        "fetch_price -> apples: 3 (after 1 retry)",
        "report -> report of 120 rows",
    ]
    assert exit_code == 0, worker.output()
    assert "Traceback" not in worker.output()
