"""examples/pipeline end to end: a prefork worker subprocess on sqlite runs the fan-out/fan-in
chord, and a failing file stops the merge and reports the failure once."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from conftest import wait_for

from taskframe.exceptions import ChordError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pipeline"


@pytest.fixture
def pipeline(tmp_path: Path, sqlite_url: str) -> Iterator[ModuleType]:
    env = {
        **os.environ,
        "PIPELINE_BROKER": sqlite_url,
        "PIPELINE_FAILURES": str(tmp_path / "failures.log"),
    }
    os.environ["PIPELINE_BROKER"] = sqlite_url
    try:
        spec = importlib.util.spec_from_file_location("pipeline_example", EXAMPLE / "tasks.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        del os.environ["PIPELINE_BROKER"]
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskframe",
            "-A",
            "tasks",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "-l",
            "WARNING",
        ],
        cwd=EXAMPLE,
        env=env,
    )
    try:
        yield module
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)
        module.app.close()


def test_pipeline_counts_files_in_parallel_and_merges(pipeline: ModuleType, tmp_path: Path) -> None:
    texts = ["b a a", "c b a", "a"]
    paths = []
    for index, text in enumerate(texts):
        path = tmp_path / f"part{index}.txt"
        path.write_text(text, encoding="utf-8")
        paths.append(str(path))
    result = pipeline.pipeline(paths, n=2).delay()
    assert result.get(timeout=60) == [["a", 4], ["b", 2]]
    merge = result.parent
    assert merge is not None and merge.get(timeout=10) == {"a": 4, "b": 2, "c": 1}
    assert merge.parent is not None and len(merge.parent) == 3

    missing = str(tmp_path / "missing.txt")
    failed = pipeline.pipeline([paths[0], missing]).delay()
    with pytest.raises(FileNotFoundError):
        failed.get(timeout=60)
    error = failed.get(timeout=60, propagate=False)
    assert isinstance(error, ChordError)
    assert str(error).startswith(f"Dependency {failed.parent.parent.results[1].id} raised")
    assert str(failed.parent.get(timeout=10, propagate=False)) == str(error)
    log = tmp_path / "failures.log"
    wait_for(lambda: log.exists() and log.read_text(), timeout=30)
    assert log.read_text().count("Dependency") == 1
