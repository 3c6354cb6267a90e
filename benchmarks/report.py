"""The table: medians per framework, the raw floor, taskframe/peer ratios and the issue's
targets; written as JSON (every sample) and Markdown (``<timestamp>.md`` and ``latest.md``).

A ratio is always taskframe divided by the peer: above 1 is better for tasks/s, below 1 is
better for ms, s and MiB. A cell that was not measured shows why ("n/a (...)", "error").
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import pika
import redis

from benchmarks.cycle import Outcome
from benchmarks.harness import RunResult
from benchmarks.settings import CONFIRMED_TASKS, FRAMEWORKS, WORKLOADS, BenchConfig, Workload
from benchmarks.sqs_server import SQS_SCALE

__all__ = ["machine", "render_markdown", "rows", "write"]

FLOOR_OF = {
    ("redis", "enqueue_delay"): "lpush_single",
    ("redis", "enqueue_batch"): "lpush_pipelined",
    ("redis", "drain"): "brpop_drain",
    ("rabbitmq", "enqueue_delay"): "publish",
    ("rabbitmq", "enqueue_delay_confirmed"): "publish_confirmed",
    ("rabbitmq", "enqueue_batch"): "publish",
    ("rabbitmq", "drain"): "consume",
}
FLOOR_TITLES = {
    "lpush_single": "redis-py LPUSH, one round trip each",
    "lpush_pipelined": "redis-py LPUSH, pipelined",
    "brpop_drain": "redis-py BRPOP, 2 processes",
    "publish": "pika publish, persistent, no confirms",
    "publish_confirmed": "pika publish, persistent, with confirms",
    "consume": "pika consume, 2 processes, prefetch 100",
}
TARGETS: dict[tuple[str, str], tuple[tuple[str, float], ...]] = {
    ("redis", "enqueue_delay"): (("celery", 3.0), ("floor", 0.7)),
    ("rabbitmq", "enqueue_delay"): (("celery", 3.0),),
    ("redis", "enqueue_batch"): (("celery", 20.0),),
    ("rabbitmq", "enqueue_batch"): (("celery", 5.0),),
    ("redis", "drain"): (("celery", 6.0), ("dramatiq", 1.0)),
    ("rabbitmq", "drain"): (("celery", 3.0), ("dramatiq", 1.0)),
    ("redis", "round_trip_p50"): (("celery", 1 / 3),),
    ("rabbitmq", "round_trip_p50"): (("celery", 1 / 3),),
    ("redis", "round_trip_p99"): (("celery", 1 / 2),),
    ("rabbitmq", "round_trip_p99"): (("celery", 1 / 2),),
    ("redis", "chord"): (("celery", 1 / 5),),
    ("rabbitmq", "chord"): (("celery", 1 / 5),),
    ("redis", "idle_rss"): (("celery", 1 / 2),),
    ("rabbitmq", "idle_rss"): (("celery", 1 / 2),),
}
"""Ratio bounds taskframe/peer from the issue: at least this for tasks/s, at most for the rest."""


def median(values: list[Outcome]) -> Outcome | None:
    """The median of the numbers; when none was measured, the first reason given."""
    numbers = [value for value in values if isinstance(value, float)]
    if numbers:
        return statistics.median(numbers)
    return values[0] if values else None


def rows(result: RunResult) -> list[dict[str, Any]]:
    """One row per (broker, workload) actually run, with medians, ratios and target checks."""
    table = []
    brokers = [b for b in result.config.brokers if b not in result.skipped]
    for broker in brokers:
        for workload in (w for w in WORKLOADS if broker in w.brokers):
            cells = {
                fw: median(result.samples.get((broker, fw, workload.key), []))
                for fw in FRAMEWORKS
                if (broker, fw, workload.key) in result.samples
            }
            floor_name = FLOOR_OF.get((broker, workload.key))
            floor_value = None
            if floor_name and (broker, floor_name) in result.floors:
                floor_value = statistics.median(result.floors[(broker, floor_name)])
            table.append(
                {
                    "broker": broker,
                    "workload": workload.key,
                    "title": workload.title,
                    "unit": workload.unit,
                    "values": cells,
                    "floor": floor_value,
                    "floor_name": floor_name,
                    "ratios": _ratios(cells, floor_value),
                    "targets": _targets(broker, workload, cells, floor_value),
                }
            )
    return table


def _ratio(mine: Outcome | None, theirs: Outcome | float | None) -> float | None:
    if isinstance(mine, float) and isinstance(theirs, float) and theirs > 0:
        return mine / theirs
    return None


def _ratios(cells: dict[str, Outcome | None], floor: float | None) -> dict[str, float | None]:
    mine = cells.get("taskframe")
    ratios = {peer: _ratio(mine, cells.get(peer)) for peer in cells if peer != "taskframe"}
    if floor is not None:
        ratios["floor"] = _ratio(mine, floor)
    return ratios


def _targets(
    broker: str, workload: Workload, cells: dict[str, Outcome | None], floor: float | None
) -> list[dict[str, Any]]:
    checks = []
    for peer, bound in TARGETS.get((broker, workload.key), ()):
        ratio = _ratio(cells.get("taskframe"), floor if peer == "floor" else cells.get(peer))
        met = None
        if ratio is not None:
            met = ratio >= bound if workload.higher_is_better else ratio <= bound
        checks.append({"peer": peer, "bound": bound, "ratio": ratio, "met": met})
    return checks


# -- rendering -----------------------------------------------------------------------------------


def _number(value: Outcome | float | None, unit: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return "error" if value.startswith("error") else value
    if unit == "tasks/s":
        return f"{value:,.0f}"
    if unit == "s":
        return f"{value:.2f}"
    return f"{value:.1f}" if unit == "MiB" else f"{value:.2f}"


def _target_text(workload: Workload, checks: list[dict[str, Any]]) -> str:
    parts = []
    for check in checks:
        sign = "≥" if workload.higher_is_better else "≤"
        bound = check["bound"]
        inverse = 1 / bound
        exact = abs(inverse - round(inverse)) < 1e-9
        shown = f"1/{round(inverse)}" if bound < 1 and exact else f"{bound:g}"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[check["met"]]
        parts.append(f"{sign}{shown} {check['peer']}: {verdict}")
    return "; ".join(parts)


def render_markdown(result: RunResult, info: dict[str, Any]) -> str:
    frameworks = [fw for fw in FRAMEWORKS if fw in result.config.frameworks]
    peers = [fw for fw in frameworks if fw != "taskframe"]
    head = [
        "broker",
        "workload",
        "unit",
        *frameworks,
        "raw floor",
        *[f"tf/{peer}" for peer in peers],
        "tf/floor",
        "target (tf/peer)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_key = {workload.key: workload for workload in WORKLOADS}
    for row in rows(result):
        workload = by_key[row["workload"]]
        if all(value is None for value in row["values"].values()):
            continue
        cells = [row["broker"], row["title"], row["unit"]]
        cells += [_number(row["values"].get(fw), workload.unit) for fw in frameworks]
        cells.append(_number(row["floor"], workload.unit))
        cells += [_times(row["ratios"].get(peer)) for peer in peers]
        cells.append(_times(row["ratios"].get("floor")))
        cells.append(_target_text(workload, row["targets"]))
        lines.append("| " + " | ".join(cells) + " |")
    config = result.config
    out = [
        f"## Benchmark results ({time.strftime('%Y-%m-%d %H:%M', time.localtime(result.started))})",
        "",
        f"Machine: {info['machine']}.",
        f"Software: {info['software']}.",
        f"Configuration: {config.tasks:,} tasks via delay, {config.batch_tasks:,} via the batch "
        f"API (then drained), {config.round_trips} round trips, chord of {config.chord_size:,}, "
        f"median of {config.repeats}; payload {result.payload_bytes} bytes; "
        f"run took {result.duration:.0f} s.",
        *_sqs_lines(result),
        "",
        *lines,
        "",
        "Ratios are taskframe / peer (above 1 is better for tasks/s, below 1 for ms, s, MiB).",
        "Drain is counted by the tasks themselves (one Redis INCR each, stamped with the server's",
        "clock) from the first to the last completion; worker start-up is not counted. Round",
        "trips run on a warm idle worker; idle RSS is the worker parent plus its children after",
        "20 warm-up round trips and 1 s idle.",
        "",
        *_confirm_lines(result),
        *_floor_lines(result),
        "Workers (each 2 processes):",
        "",
        *[f"- {fw}: {text}" for fw, text in result.worker_configs.items()],
        "",
        *_problem_lines(result),
    ]
    return "\n".join(out).rstrip() + "\n"


def _times(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}x"


def _sqs_lines(result: RunResult) -> list[str]:
    if "sqs" not in result.config.brokers or "sqs" in result.skipped:
        return []
    return [
        f"SQS rows run on a local moto server at 1/{SQS_SCALE} of these sizes, for taskframe "
        "and Celery (Dramatiq has no SQS broker of its own); moto answers in milliseconds and "
        "slows as a queue grows, so they measure moto as much as the frameworks, and carry "
        "no targets.",
    ]


def _confirm_lines(result: RunResult) -> list[str]:
    """Why the main RabbitMQ rows are without publisher confirms, and where confirms are."""
    if "rabbitmq" not in result.config.brokers or "rabbitmq" in result.skipped:
        return []
    return [
        "Publisher confirms: the main RabbitMQ rows run without them on both sides (producer and",
        "worker) for every framework, as Celery's default; taskframe's own default is confirms on",
        '(transport option `confirm_publish`, its at-least-once guarantee). The row "enqueue,',
        "delay, confirmed\" runs every producer with them (taskframe's default, Celery's",
        "`broker_transport_options={'confirm_publish': True}`, Dramatiq's `confirm_delivery=True`)",
        f"on at most {CONFIRMED_TASKS:,} tasks; it has no target.",
        "",
    ]


def _floor_lines(result: RunResult) -> list[str]:
    if not result.floors:
        return []
    lines = ["Raw client floors (median, tasks/s):", ""]
    for (broker, name), values in sorted(result.floors.items()):
        lines.append(f"- {broker}: {FLOOR_TITLES[name]}: {statistics.median(values):,.0f}")
    return [*lines, ""]


def _problem_lines(result: RunResult) -> list[str]:
    lines = [f"- {broker} not run: {reason}" for broker, reason in result.skipped.items()]
    lines += [f"- {error}" for error in result.errors()]
    if result.scratch:
        lines.append(f"- worker logs kept in {result.scratch}")
    return ["Problems:", "", *lines, ""] if lines else []


# -- machine and files -----------------------------------------------------------------------------


def machine(config: BenchConfig) -> dict[str, Any]:
    """CPU, cores, memory, kernel, Python and the versions of everything measured."""
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        memory_kib = int(meminfo.readline().split()[1])
    client = redis.Redis.from_url(config.redis_url())
    redis_version = client.info("server").get("redis_version", "?")
    client.close()
    versions = [f"Python {platform.python_version()}", f"Redis {redis_version}"]
    if "rabbitmq" in config.brokers:
        versions.append(f"RabbitMQ {_rabbitmq_version(config.amqp_url)}")
    packages = ("taskframe", "celery", "kombu", "dramatiq", "redis", "hiredis", "pika")
    if "sqs" in config.brokers:
        packages += ("boto3", "moto")
    for package in packages:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return {
        "machine": f"{cpu}, {os.cpu_count()} cores, {memory_kib / 1024 / 1024:.0f} GiB RAM, "
        f"Linux {platform.release()}; brokers on loopback, sharing the cores",
        "software": ", ".join(versions),
        "python": sys.version,
    }


def _rabbitmq_version(url: str) -> str:
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPError:
        return "unreachable"
    properties = connection._impl.server_properties  # pika exposes them only here
    connection.close()
    version = properties.get("version", b"?")
    return version.decode() if isinstance(version, bytes) else str(version)


def write(result: RunResult, info: dict[str, Any]) -> tuple[Path, Path, str]:
    """Write ``<timestamp>.json``, ``<timestamp>.md`` and ``latest.md``; returns the paths
    and the Markdown."""
    directory = result.config.results_dir
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(result.started))
    markdown = render_markdown(result, info)
    payload = {
        "started": result.started,
        "duration": result.duration,
        "machine": info,
        "config": {**asdict(result.config), "results_dir": str(result.config.results_dir)},
        "payload_bytes": result.payload_bytes,
        "worker_configs": result.worker_configs,
        "skipped": result.skipped,
        "rows": rows(result),
        "samples": [
            {"broker": b, "framework": fw, "workload": w, "values": values}
            for (b, fw, w), values in result.samples.items()
        ],
        "floors": [
            {"broker": b, "floor": name, "values": values}
            for (b, name), values in result.floors.items()
        ],
        "errors": result.errors(),
    }
    json_path = directory / f"{stamp}.json"
    md_path = directory / f"{stamp}.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(markdown)
    (directory / "latest.md").write_text(markdown)
    return json_path, md_path, markdown
