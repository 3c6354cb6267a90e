"""A fan-out/fan-in pipeline: count the words of many text files in parallel, then merge.

``pipeline(paths)`` builds the canvas

    group(count_words.s(path) for path in paths) | merge_counts.s() | top_words.s(n)

which taskframe upgrades to a chord: every file is counted by its own task, the merge runs
once with all the counts in file order, and ``top_words`` ranks the result. A file that
cannot be read fails its task, the merge does not run, and ``report_failure`` is called once
with the ChordError that names the failed task.

The broker is ``$PIPELINE_BROKER`` or ``./pipeline.sqlite3`` (embedded, no server needed).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from taskframe import Signature, Taskframe, group

BROKER = (
    os.environ.get("PIPELINE_BROKER") or f"sqlite:///{Path(__file__).with_name('pipeline.sqlite3')}"
)
app = Taskframe("pipeline", broker=BROKER)

WORD = re.compile(r"[a-z']+")


@app.task(name="pipeline.count_words")
def count_words(path: str) -> dict[str, int]:
    """Word counts of one file (raises if the file cannot be read)."""
    text = Path(path).read_text(encoding="utf-8").lower()
    return dict(Counter(WORD.findall(text)))


@app.task(name="pipeline.merge_counts")
def merge_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    """Sum the per-file counts (called once, with every file's counts in order)."""
    total: Counter[str] = Counter()
    for one in counts:
        total.update(one)
    return dict(total)


@app.task(name="pipeline.top_words")
def top_words(counts: dict[str, int], n: int) -> list[list[Any]]:
    """The ``n`` most frequent words, most frequent first, ties alphabetical."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [[word, count] for word, count in ranked[:n]]


@app.task(name="pipeline.report_failure")
def report_failure(request: Any, exc: BaseException, traceback: str | None) -> None:
    """Errback of the merge step: runs in the worker, once, if any file failed."""
    with Path(os.environ.get("PIPELINE_FAILURES", "failures.log")).open("a") as log:
        log.write(f"{exc}\n")


def pipeline(paths: Iterable[str], n: int = 3) -> Signature:
    """The whole workflow as one signature; call ``.delay()`` or ``()`` to start it."""
    merge = merge_counts.s().on_error(report_failure.s())
    workflow: Signature = group(count_words.s(str(path)) for path in paths) | merge | top_words.s(n)
    return workflow
