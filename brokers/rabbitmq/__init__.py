"""RabbitMQ broker (pika), sharing queues with Celery 5 workers and producers.

URL: ``amqp://user:password@host:port/vhost`` (``//`` is the default vhost ``/``),
``amqps://...`` for TLS, ``pyamqp://...`` as an alias; see :mod:`.connection`.

Capabilities: durable delay without limit, broadcast, persistent; priorities only where the
queues carry ``x-max-priority`` (option ``max_priority``); no visibility timeout to extend.

**Celery's layout.** A task queue is durable with no arguments, with a durable direct exchange
of the same name bound by routing key = queue; messages go to the default exchange ``""`` with
routing key = queue, as Celery sends them, so a Celery worker consumes what taskframe publishes
and the reverse. A queue that already exists is used as it is and never re-declared: declaring
a Celery queue with other arguments fails with ``406 PRECONDITION_FAILED``.

**Priorities.** RabbitMQ orders by priority only on queues declared with ``x-max-priority``;
there 9 runs first, Celery's meaning too, so ``lower_priority_first`` is False. Without the
``max_priority`` option (or ``x-max-priority`` in ``queue_arguments``) ``capabilities.priorities``
is False and the priority property is carried but ignored. The option only applies to queues
this broker creates: Celery workers must declare the same (``task_queue_max_priority``).

**No visibility timeout.** An unacked message stays with its consumer until acked or rejected,
or until the consumer's channel closes (the process died, the connection broke); then RabbitMQ
redelivers it with ``redelivered`` set. ``extend`` is a no-op. The server setting
``consumer_timeout`` (RabbitMQ 3.8.15+, default 30 min) closes a channel holding an unacked
message for longer; raise it on the server for tasks that run longer than that.

**Prefetch and threads.** pika connections are not thread-safe: each thread (and each forked
process) gets its own connection. ``receive`` starts one consumer per queue on the first call
and keeps it. Each ``receive`` asks for ``max_messages``, and the ask stands until the next
one: the channel's prefetch (global basic.qos: one limit over all the queues) is the
deliveries handed out and not settled plus what was asked for and not yet handed out, so what
nobody asked for stays on the queue for other consumers; but never below ``prefetch_count``
nor what ``set_prefetch`` set. The worker sets its prefetch window there (Celery's
``worker_prefetch_multiplier`` times the concurrency, as Celery's basic.qos): RabbitMQ then
pushes the next messages while the current ones run, instead of after each ask; without it
a drain ran at half the speed, waiting on those round trips.
Settling lowers it in the same write as the ack, so an early ack does not let in a message
the consumer has no room for. The limit is sent without waiting for RabbitMQ's answer (a
channel's methods apply in order): no round trip per receive or per ack. A consumer that
then holds and wants nothing has its consumers cancelled (AMQP reads a prefetch of 0 as "no
limit"), which puts back what they buffered; the next ``receive`` starts them again. Settle a
delivery on the thread that received it.

**Publishing** waits for publisher confirms by default, so ``publish`` returns once RabbitMQ
holds the message; ``publish_many`` sends the whole batch and waits once. With
``confirm_publish=False`` (kombu's default) it returns once the message is written to the
socket, fire-and-forget: RabbitMQ may still lose it if it fails before storing it. A
message's frames go out in one ``send()``, and a batch's in a few (see :mod:`.connection`);
headers are encoded by :mod:`.codec`.

**Expiry.** The worker enforces a task's ``expires`` header (it stores ``REVOKED``, as on
Redis and SQS), so the AMQP ``expiration`` property Celery also sets is left out by default:
with it RabbitMQ drops an expired message unseen and nobody records the task as revoked.
``per_message_ttl=True`` sends it as Celery does (never on a delayed message, whose wait it
would cut short).

**Float headers.** Celery's ``timelimit`` may hold floats; pika cannot send them and truncates
received doubles. This package teaches pika AMQP doubles (see :mod:`.connection`): floats go
out as py-amqp writes them and come back exact.

Options (``transport_options``; URL query values override):

==============================  =======  ======================================================
``confirm_publish``             True     wait for publisher confirms (False: return once
                                         written, as kombu does by default)
``confirm_timeout``             30.0     s to wait for them before raising ``BrokerError``
``prefetch_count``              0        lower bound of the channel prefetch
``per_message_ttl``             False    send the ``expiration`` property (see Expiry)
``max_priority``                None     ``x-max-priority`` for queues this broker creates
``queue_arguments``             {}       more arguments for queues this broker creates
``heartbeat``                   0        AMQP heartbeat s; off because a blocking connection
                                         answers heartbeats only inside pika calls, so a long
                                         task on the consumer thread (solo pool) would lose it
``connect_timeout``             5.0      s to connect (socket and handshake)
``blocked_connection_timeout``  None     s a publish may stay blocked by a resource alarm
``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs`` (``required``/``none``),
``ssl_check_hostname``: TLS for ``amqps://``.
==============================  =======  ======================================================

Names declared (``<q>`` is a task queue):

* ``<q>``: durable queue, exchange ``<q>`` (direct, durable) bound with key ``<q>`` (Celery's).
* ``<q>.dlq``: durable queue of dead letters; each keeps the message with the headers
  ``x-taskframe-dlq-id``, ``x-taskframe-dlq-reason`` and ``x-taskframe-dlq-failed-at``
  (unix time). ``dead_letters`` reads them with ``basic_get`` on a channel of its own and
  closes it, which puts them back in order.
* Delay chain: exchanges ``taskframe.delay.<2**i>ms`` (topic, durable, ``i`` = 0..31) and
  ``taskframe.delay.deliver``; per task queue, queues ``taskframe.delay.<q>.<2**i>ms`` with
  ``x-message-ttl = 2**i`` and ``x-dead-letter-exchange`` = the next lower level's exchange.
  A delay of ``n`` ms is published with routing key ``<bit 31>. ... .<bit 0>.<q>`` to the
  exchange of its highest set bit; the message waits in the level queue of each set bit (a
  per-queue TTL, so every message in a level queue expires in order), passes through levels
  whose bit is 0 by exchange-to-exchange bindings, and ``taskframe.delay.deliver`` (bound to
  ``<q>`` by pattern ``*. ... .*.<q>``) puts it on its queue when the chain ends. Nothing in
  any process has to be running for a delayed message to arrive. ``size`` and ``purge``
  include the chain. A delay past 49.7 days makes a second pass, marked by the
  ``x-taskframe-defer-until`` header. Queue names containing ``*`` or ``#`` cannot be delayed.
* ``taskframe.broadcast``: topic exchange (not durable) for ``broadcast``/``subscribe``; a
  channel name is the routing key, so ``#`` and ``*`` work as wildcards in ``subscribe``; each
  subscription binds an exclusive, auto-deleted queue on a connection of its own.
"""

from taskframe.brokers.rabbitmq.broker import RabbitMQBroker, RabbitMQDelivery

__all__ = ["RabbitMQBroker", "RabbitMQDelivery"]
