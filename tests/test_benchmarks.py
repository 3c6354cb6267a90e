"""``python -m benchmarks`` runs end to end in a tiny configuration, so the harness cannot rot.

No time is asserted: only that every (broker, framework, workload) cell holds a number or
says why it could not be measured, that the raw floors ran, and that the files were written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RABBITMQ_HOST, RABBITMQ_PORT, REDIS_HOST, REDIS_PORT, require_server

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = {
    "enqueue_delay",
    "enqueue_batch",
    "drain",
    "round_trip_p50",
    "round_trip_p99",
    "chord",
    "idle_rss",
}
WORKLOADS_ON = {
    "redis": WORKLOADS,
    "rabbitmq": WORKLOADS | {"enqueue_delay_confirmed"},
    "sqlite": WORKLOADS,
}
FRAMEWORKS_ON = {
    "redis": {"taskframe", "celery", "dramatiq"},
    "rabbitmq": {"taskframe", "celery", "dramatiq"},
    "sqlite": {"taskframe"},
}
FLOORS = {
    ("redis", "lpush_single"),
    ("redis", "lpush_pipelined"),
    ("redis", "brpop_drain"),
    ("rabbitmq", "publish"),
    ("rabbitmq", "publish_confirmed"),
    ("rabbitmq", "consume"),
}


def run_benchmark(results: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks`` once, in its own Redis db (11), writing to ``results``."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            *options,
            *("--repeats", "1", "--redis-db", "11", "--results-dir", str(results)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.rabbitmq
def test_tiny_benchmark_measures_every_row_and_writes_its_files(tmp_path: Path) -> None:
    # Given the servers and an empty results directory
    require_server("Redis", REDIS_HOST, REDIS_PORT)
    require_server("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)

    # When the benchmark runs in its smallest useful configuration (its own Redis db, 11)
    completed = run_benchmark(tmp_path, "--tasks", "200", "--round-trips", "10", "--chord", "10")

    # Then it succeeds, prints the table and writes the JSON, the Markdown and latest.md
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "| broker | workload | unit | taskframe | celery | dramatiq |" in completed.stdout
    json_files = list(tmp_path.glob("*.json"))
    markdown_files = sorted(path.name for path in tmp_path.glob("*.md"))
    assert len(json_files) == 1
    assert markdown_files == sorted([json_files[0].stem + ".md", "latest.md"])
    assert (tmp_path / "latest.md").read_text() == (
        tmp_path / f"{json_files[0].stem}.md"
    ).read_text()

    # And every row of every broker was measured, or says why it could not be
    data = json.loads(json_files[0].read_text())
    assert data["errors"] == []
    seen = {(row["broker"], row["workload"]) for row in data["rows"]}
    assert seen == {(broker, name) for broker, names in WORKLOADS_ON.items() for name in names}
    for row in data["rows"]:
        assert set(row["values"]) == FRAMEWORKS_ON[row["broker"]], row
        for framework, value in row["values"].items():
            where = f"{row['broker']}/{framework}/{row['workload']}: {value!r}"
            assert isinstance(value, float) or value.startswith("n/a ("), where
            if framework != "taskframe":
                assert isinstance(value, float), where

    # And the raw client floors ran on both servers
    assert {(floor["broker"], floor["floor"]) for floor in data["floors"]} == FLOORS


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.sqs
def test_tiny_benchmark_runs_taskframe_on_sqs(tmp_path: Path) -> None:
    """The SQS rows start a moto server of their own; Celery is left out here because its
    drain on moto can hold the last message past any tiny timeout."""
    require_server("Redis", REDIS_HOST, REDIS_PORT)
    completed = run_benchmark(
        tmp_path,
        *("--brokers", "sqs", "--frameworks", "taskframe", "--no-floors"),
        *("--tasks", "200", "--round-trips", "20", "--chord", "20"),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    [result] = tmp_path.glob("*.json")
    data = json.loads(result.read_text())
    assert data["errors"] == []
    assert {row["workload"] for row in data["rows"]} == WORKLOADS
    for row in data["rows"]:
        assert row["broker"] == "sqs"
        assert isinstance(row["values"]["taskframe"], float), row
