"""Redis broker and result backend, sharing one Redis with kombu 5.4+/Celery 5.4+ fleets.

URLs: ``redis://[user:password@]host[:port][/db]``, ``rediss://...`` (TLS),
``redis+socket:///path/to/sock?virtual_host=db`` and
``sentinel://host:port;sentinel://host2:port`` (option ``master_name``); connection options
are listed in :mod:`taskframe.brokers.redis.connection`.

Capabilities: priorities, no delay limit, broadcast, visibility extension, shared rate limits.

**Priority means what it means to Celery on Redis: a lower number is served first.**
taskframe's contract says "0-9, higher runs first", but a Celery worker on Redis serves the
list of priority 0-2 before 3-5, 6-8 and 9, and Celery users' ``apply_async(priority=...)``
calls were written for that. A message's ``properties.priority`` must mean one thing to every
worker on a shared queue, so this store writes each number to the list kombu writes it to and
serves the lists in kombu's order: ``priority=0`` runs before ``priority=9`` here. Within one
of the four buckets (0-2, 3-5, 6-8, 9) order is FIFO.

Broker options (``transport_options``):

=========================  =======  =============================================================
``visibility_timeout``     3600.0   s before an unacked message is restored (kombu's default)
``restore_interval``       60.0     s between restore sweeps (the default is at most half the
                                    visibility timeout; one sweep also runs on the first receive)
``restore_batch``          100      messages restored per sweep
``unacked_mutex_expire``   300      s a sweep may hold ``unacked_mutex``
``promote_interval``       1.0      s between due-delay promotions run by ``publish``
``durable_delays``         True     False: countdown/ETA messages go out at once with their
                                    ``eta`` (for queues only Celery workers consume, since
                                    nothing of taskframe runs there to promote due messages)
``fanout_prefix``          True     ``/{db}.`` before broadcast channels (False: none; str: it)
=========================  =======  =============================================================

Broker keys (db from the URL). kombu's, shared with Celery:

* ``<queue>``, ``<queue>\\x06\\x163``, ``<queue>\\x06\\x166``, ``<queue>\\x06\\x169``: lists of
  JSON envelopes (see :mod:`.envelope`); ``LPUSH`` to publish, pop from the right.
* ``_kombu.binding.<queue>`` and ``_kombu.binding_permanent.<queue>``: sets holding
  ``<queue>\\x06\\x16\\x06\\x16<queue>``, written on first publish/receive.
* ``unacked`` (hash tag -> ``[envelope, exchange, routing_key]``), ``unacked_index`` (zset
  tag -> delivery time), ``unacked_mutex`` (sweep lock): kombu's ack emulation, so a Celery
  worker's sweep restores our timed-out messages and ours restores its.
* pub/sub channels ``/{db}.<channel>`` for ``broadcast``/``subscribe`` (e.g.
  ``/9.celery.pidbox``, ``/9.celeryev/worker.heartbeat``); payloads go out as given.

taskframe's own:

* ``taskframe.delayed``: zset of ``[queue, list key, envelope]`` scored by due time; due
  members move to their list atomically on every receive and every ``promote_interval`` of
  publishing. ``taskframe.delayed.count``: hash queue -> delayed messages (for ``size``).
  Celery workers see a delayed message once it is due, as an ordinary message.
* ``<queue>.dlq``: list of JSON ``{id, reason, failed_at, envelope}``, oldest first.
* ``taskframe.rate.<key>``: token-bucket hash ``{tokens, stamp}``.

Connection loss: acks that cannot reach Redis do not raise; they are kept and sent first by
the next call that can (``ensure_connection`` included), so a restart does not turn an
early-acked task into a redelivery. A message BRPOP took just before the connection broke is
pushed back to the head of its list on reconnection. A wrong password or an ACL denial is a
plain ``BrokerError`` (only ``BrokerConnectionError`` is worth retrying).
``RedisBroker.promote_due()`` moves every due delayed message now.

A list entry that is not a kombu envelope is not recorded as unacked; ``receive`` returns it
with its raw bytes as the body, no headers and content type ``application/x-unknown``, for
the worker to dead-letter (``dead_letter`` then parks it with a base64 body).

Connections per process: the broker's pool (pipelines, receives), one held connection for
single publishes, and, for the backend, one held connection for its short commands and one
pub/sub connection shared by every ``get()`` that waits (see :mod:`.listener`).

Backend keys, Celery's: ``celery-task-meta-<id>`` (result JSON, published on the channel of
the same name, not db-scoped), ``celery-taskset-meta-<gid>`` (group), and the chord keys
``<group key>.s`` (size), ``.j`` (zset of ``[1, id, state, result]`` by group index),
``.t`` (size adjustment), ``.d`` (dedupe set ``<id>:<index>``), ``.c`` (claim, then ``done``
for 300 s). Backend options: the connection options, and ``wait_recheck_interval`` (10.0 s).
"""

from taskframe.brokers.redis.backend import RedisBackend
from taskframe.brokers.redis.broker import RedisBroker

__all__ = ["RedisBackend", "RedisBroker"]
