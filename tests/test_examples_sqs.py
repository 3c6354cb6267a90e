"""examples/sqs works as its docstring says: a worker started from the folder, then
``python client.py`` prints every task's result, over SQS (the session's moto server) with
results in Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
from interop_apps.processes import run_example

pytestmark = [pytest.mark.sqs, pytest.mark.redis, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sqs"


def test_sqs_example_prints_every_result(sqs_url: str, redis_url: str, tmp_path: Path) -> None:
    # Given a worker started in the example's folder (the fixture's URL is the example's form,
    # host = endpoint, with a queue prefix of its own), when the client runs
    env = {"SQS_URL": sqs_url, "REDIS_URL": redis_url}
    run = run_example(EXAMPLE, env, redis_url, tmp_path / "worker.log", patience=2)
    # Then it printed each result and the worker stopped cleanly
    assert run.client_failure is None, run.client_failure + run.worker_output
    assert run.lines == [
        "add(2, 3) -> 5",
        "add(20, 1) after 1s -> 21",
        "chord -> 6",
        "fetch_price -> apples: 3 (after 1 retry)",
        "report -> report of 120 rows",
    ]
    assert run.worker_exit_code == 0, run.worker_output
    assert "Traceback" not in run.worker_output
