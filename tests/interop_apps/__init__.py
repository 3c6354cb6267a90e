"""Twin apps for the Redis interop matrix: the same task names on a Celery app and on a
taskframe app, so either side's worker runs what the other side sends. Workers run them with
``tests/`` on PYTHONPATH; ``INTEROP_REDIS_URL`` picks the Redis database both use."""
