"""Amazon SQS broker (boto3), sharing queues with kombu 5.4+/Celery 5.4+ fleets.

URL: ``sqs://[KEY:SECRET@][host[:port]][/?option=value&...]``. ``KEY:SECRET`` are the AWS
access key id and secret (URL-encode a ``/`` in the secret as ``%2F``); without them boto3's
usual chain applies (environment, profile, instance role). A host in the URL is the endpoint,
over **http** unless ``is_secure=True``, exactly as kombu reads ``sqs://key:secret@127.0.0.1:5000``
(elasticmq, moto, localstack); with no host, boto3 picks AWS's endpoint for ``region``. Query
values override transport options.

Capabilities: no priorities (a priority travels in the envelope, as Celery sends it, and has
no effect), ``max_delay`` 900 s per hop (longer delays work, see below), no broadcast
(``broadcast``/``subscribe`` raise ``NotImplementedError`` naming brokers that can), visibility
extension, ``max_message_size`` 262144 bytes of ``MessageBody``, no shared rate limits.

Options (``transport_options``; kombu's names where kombu has the option):

=======================  =========  ===========================================================
``region``               us-east-1  AWS region (else boto3's configured region, else us-east-1)
``endpoint_url``         None       endpoint, when the URL has no host (giving both: an error)
``is_secure``            False      https for an endpoint taken from the URL's host
``queue_name_prefix``    ""         put before every queue name (before the name mangling)
``visibility_timeout``   1800       s a received message stays invisible (kombu's default);
                                    rounded up to whole seconds, at most 43200 (12 h)
``wait_time_seconds``    10         longest single long poll, clamped to 1-20 s
``predefined_queues``    {}         ``{sqs name: {"url": ..., "access_key_id": ...,
                                    "secret_access_key": ..., "region": ...}}``: use these
                                    queues only, never ListQueues/CreateQueue/GetQueueUrl
=======================  =========  ===========================================================

Queues. The SQS name is kombu's: ``queue_name_prefix + name`` with ``.`` turned into ``-`` and
other punctuation except ``-``/``_`` into ``_``, a ``.fifo`` suffix kept (``tasks.high`` ->
``tasks-high``). A queue is created on first use with the ``VisibilityTimeout`` attribute
(plus ``FifoQueue`` for ``*.fifo``), and every receive also passes the configured visibility,
so the option holds even on a queue someone else created. URLs are cached per broker.

Bodies are kombu's: base64 of the JSON envelope whose ``body`` is base64 again, with no
message attributes (see :mod:`.envelope`), so Celery workers run what taskframe sends and the
reverse. The ~1.8x growth of the double base64 counts against the 256 KiB limit; a larger
message raises ``BrokerError`` naming its size before anything is sent. ``publish_many`` sends
``SendMessageBatch`` calls of at most 10 messages and 256 KiB.

Delays. Up to 900 s: ``DelaySeconds``, rounded up to whole seconds (never early). Longer:
``DelaySeconds=900`` and the due time in the envelope property ``taskframe_due``; a receive
that finds a message not yet due sends it again with the rest of the delay (at most 900 s a
hop) and deletes the old copy, so it never reaches a worker early. FIFO queues take no
per-message ``DelaySeconds``: a delayed message is sent at once with ``taskframe_due``, and a
receive that finds it early keeps it invisible until due, so its message group waits behind
it as FIFO order requires (its receive count then grows, so it arrives marked redelivered).
A Celery worker that takes a not-yet-due message honours its ``eta`` header in memory, as
Celery always does on SQS.

Receiving: long polls (``WaitTimeSeconds``) until the timeout, a short poll of each queue
first when there are several; an idle worker waits 2 s per receive (``idle_wait``), so it
long-polls; ``MaxNumberOfMessages`` up to 10 per call, ``ApproximateReceiveCount`` > 1 meaning
redelivered. ack = ``DeleteMessage`` (``ack_many``: ``DeleteMessageBatch``), reject with
requeue = ``ChangeMessageVisibility`` 0, reject without = delete, extend =
``ChangeMessageVisibility``. SQS standard queues do not promise FIFO order; moto keeps it.

Dead letters: a standard queue ``<sqs name>-dlq`` (``x.fifo`` -> ``x-fifo-dlq``), created on
first use with the longest retention SQS allows (14 days: older records are dropped by SQS).
A record is the message's envelope with the headers ``x-death-id``, ``x-death-reason``,
``x-death-queue`` and ``x-death-time`` (unix time), removed again when it is read or replayed.
No ``RedrivePolicy`` is set (kombu would then stop deleting rejected messages).
``dead_letters`` is a peek: it receives up to ``limit`` records, holding them 30 s, and makes
them visible again at once, sorted by failure time; a second peek at that very moment can miss
them. ``replay_dead_letters`` republishes (with a fresh FIFO deduplication id) and deletes.

``purge`` and ``purge_dead_letters`` receive and delete in batches and return the count
(``PurgeQueue`` runs once a minute per queue on AWS and counts nothing). ``size`` is
``ApproximateNumberOfMessages + ApproximateNumberOfMessagesDelayed``.

Errors: one context manager (:func:`.connection.translate_errors`) turns botocore's
exceptions into ``BrokerConnectionError`` (endpoint unreachable, throttling, 5xx: the worker
retries) or ``BrokerError`` (credentials rejected or missing, invalid requests: retrying the
same key cannot help, as on Redis). boto3 itself retries a call once, no more.
"""

from taskframe.brokers.sqs.broker import SQSBroker, SQSDelivery

__all__ = ["SQSBroker", "SQSDelivery"]
