"""Sends the example's tasks to SQS and prints what the worker returns.

Run it while a worker runs (see ``tasks.py``): ``python client.py``.
"""

from __future__ import annotations

from tasks import add, fetch_price, report, total

from taskframe import chord

TIMEOUT = 60


def main() -> None:
    print("add(2, 3) ->", add.delay(2, 3).get(timeout=TIMEOUT))
    print("add(20, 1) after 1s ->", add.apply_async((20, 1), countdown=1).get(timeout=TIMEOUT))
    print("chord ->", chord(add.s(i, i) for i in range(3))(total.s()).get(timeout=TIMEOUT))
    print("fetch_price ->", fetch_price.delay("apples").get(timeout=TIMEOUT))
    print("report ->", report.delay(120).get(timeout=TIMEOUT))


if __name__ == "__main__":
    main()
