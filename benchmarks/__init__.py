"""Side-by-side benchmarks of taskframe, Celery and Dramatiq: ``python -m benchmarks``.

One run measures every framework on the same machine and the same brokers, alternating
frameworks within each repeat, each worker with 2 processes, and writes
``benchmarks/results/<timestamp>.json`` and ``.md`` plus ``benchmarks/results/latest.md``.
Work is counted outside the frameworks: each task calls :func:`benchmarks.counter.hit`, one
Redis round trip that also stamps the first and the last completion with the server's clock.

Modules: :mod:`.settings` (what to run), :mod:`.harness` (the run), :mod:`.cycle` (one
framework on one broker), one ``*_runner`` per framework, :mod:`.floor` (raw client limits),
:mod:`.processes` (worker processes, RSS), :mod:`.report` (table, JSON, Markdown), and
``apps/`` (the modules the workers import).
"""
