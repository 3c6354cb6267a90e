"""examples/redis works as its docstring says: a worker started from the folder, then
``python client.py`` prints every task's result."""

from __future__ import annotations

from pathlib import Path

import pytest
from interop_apps.processes import run_example

pytestmark = [pytest.mark.redis, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "redis"


def test_redis_example_prints_every_result(redis_url: str, tmp_path: Path) -> None:
    # Given a worker started in the example's folder, when the client runs
    run = run_example(EXAMPLE, {"REDIS_URL": redis_url}, redis_url, tmp_path / "worker.log")
    # Then it printed each result and the worker stopped cleanly
    assert run.client_failure is None, run.client_failure + run.worker_output
    assert run.lines == [
        "add(2, 3) -> 5",
        "add(20, 1) after 1s -> 21",
        "urgent add(1, 1) -> 2",
        "group -> [0, 2, 4, 6, 8]",
        "chord -> 20",
        "fetch_price -> apples: 3 (after 1 retry)",
        "report -> report of 120 rows",
    ]
    assert run.worker_exit_code == 0
    assert "Traceback" not in run.worker_output
