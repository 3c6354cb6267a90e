"""``taskframe worker -B``: beat runs inside the worker process and fires its entries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import wait_for

APP = """
from taskframe import Taskframe

app = Taskframe("wb", broker="sqlite:///{db}")
app.conf.beat_schedule = {{"tick": {{"task": "wb.tick", "schedule": 0.3}}}}


@app.on_after_configure.connect
def add_entries(sender, **kwargs):
    sender.add_periodic_task(0.3, tock.s(), name="tock")


@app.task(name="wb.tick")
def tick():
    with open({ticks!r}, "a") as out:
        out.write("tick\\n")


@app.task(name="wb.tock")
def tock():
    with open({ticks!r}, "a") as out:
        out.write("tock\\n")
"""


def test_worker_with_embedded_beat_runs_periodic_tasks(tmp_path: Path) -> None:
    # Given an app with a beat_schedule entry and one added by on_after_configure
    ticks = tmp_path / "ticks.txt"
    (tmp_path / "wbapp.py").write_text(
        textwrap.dedent(APP.format(db=tmp_path / "broker.sqlite3", ticks=str(ticks)))
    )
    # When a worker starts with -B
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskframe",
            "-A",
            "wbapp",
            "worker",
            "-B",
            "-c",
            "1",
            "-s",
            str(tmp_path / "beat-state.sqlite3"),
            "-l",
            "WARNING",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # Then both entries fire, repeatedly
        def fired_twice_each() -> bool:
            lines = ticks.read_text().split() if ticks.exists() else []
            return lines.count("tick") >= 2 and lines.count("tock") >= 2

        wait_for(fired_twice_each, timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr.decode()
