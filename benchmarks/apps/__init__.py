"""The modules benchmark workers import, one per framework, configured by environment.

``BENCH_BROKER_URL``, ``BENCH_BACKEND_URL``, ``BENCH_QUEUE`` and ``BENCH_COUNTER_URL`` say
where to connect; each module also offers ``build(...)`` so the harness makes the producer
side with the same task names and options. The task bodies live in :mod:`.tasks`.
"""
