"""``python -m benchmarks``: run every workload, print the table, write the result files.

The defaults are the full configuration (about 15 minutes on 2 shared cores); ``--tasks 200
--round-trips 20 --chord 20 --repeats 1`` is the smoke test the test suite runs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from benchmarks import harness, report
from benchmarks.settings import BROKERS, DEFAULT_BROKERS, FRAMEWORKS, BenchConfig

__all__ = ["main"]


def parse(argv: list[str]) -> BenchConfig:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--tasks",
        type=int,
        default=defaults.tasks,
        help="tasks sent through delay (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-tasks",
        type=int,
        help="tasks sent through the batch API, then drained (default: --tasks)",
    )
    parser.add_argument("--round-trips", type=int, default=defaults.round_trips)
    parser.add_argument("--chord", type=int, default=defaults.chord_size, dest="chord_size")
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument(
        "--brokers",
        default=",".join(DEFAULT_BROKERS),
        help=f"comma-separated, of {', '.join(BROKERS)} (sqs on request: moto is slow)",
    )
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated")
    parser.add_argument("--no-floors", action="store_true", help="skip the raw client floors")
    parser.add_argument(
        "--redis-db",
        type=int,
        default=defaults.redis_db,
        help="Redis db the run owns and clears (never 0; default %(default)s)",
    )
    parser.add_argument("--amqp-url", default=defaults.amqp_url)
    parser.add_argument("--results-dir", type=Path, default=defaults.results_dir)
    parser.add_argument(
        "--timeout",
        type=float,
        default=defaults.timeout,
        help="seconds any one drain or chord may take",
    )
    options = parser.parse_args(argv)
    return BenchConfig(
        tasks=options.tasks,
        batch_tasks=options.batch_tasks or options.tasks,
        round_trips=options.round_trips,
        chord_size=options.chord_size,
        repeats=options.repeats,
        brokers=tuple(b for b in options.brokers.split(",") if b),
        frameworks=tuple(f for f in options.frameworks.split(",") if f),
        floors=not options.no_floors,
        redis_db=options.redis_db,
        amqp_url=options.amqp_url,
        results_dir=options.results_dir,
        timeout=options.timeout,
    )


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("benchmarks").setLevel(logging.INFO)
    try:
        config = parse(argv)
    except ValueError as exc:
        print(f"python -m benchmarks: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    info = report.machine(config)
    result = harness.run(config)
    json_path, md_path, markdown = report.write(result, info)
    print(markdown)
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so the harness stops every worker it started."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
