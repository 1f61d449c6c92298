"""Message statistics: a read model over counters the message path already keeps.

The hot path pays two attribute increments per message and nothing per ack; everything else
is derived when someone reads (the management API, Prometheus), so the cost lands on the reader:

- counted per message: ``PublishRun.n`` (one per publish: the run of publishes of one channel
  to one exchange, which both read) and ``Consumer.delivered`` (one per delivery;
  ``Consumer.redelivered`` only for a redelivered message);
- already there: ``Channel.next_tag`` (deliveries + gets of the channel), ``Channel.publish_seq``
  / ``confirmed`` (confirm mode), ``Queue.next_seq`` (messages enqueued), ``Queue.unacked`` and
  ``len(Channel.unacked)`` (outstanding deliveries);
- counted off the hot path, in a ``Counts`` object per channel and queue: basic.get, unroutable
  publishes, nacks of confirms, messages nacked/rejected/requeued rather than acked (per frame,
  not per message), the counters of consumers that went away;
- derived: ``ack`` = manual deliveries and gets - still unacked - settled otherwise;
  ``deliver_get`` = the four delivery kinds; an exchange's ``publish_out`` = publish_in -
  unroutable + extra queues of messages routed to several; node-wide figures = the sum over
  open channels + what closed channels left behind (``BrokerCounts``).

Rates are computed on read from the previous sample a reader saw (RabbitMQ shows the rate
over its last ~5 s): each object keeps two samples, the newer at least ``INTERVAL`` seconds
after the older, and a read reports the change since the older one. Nothing per message is
timestamped and no object is made per message (beyond the int CPython makes for a counter past
256: about 300 instructions per increment, which is why there are only two).

The objects here are views: ``queue.stats`` builds one on access (a property), so a domain
object and its stats never form a reference cycle.
"""

INTERVAL = 5.0       # seconds between the samples a rate is computed from (RabbitMQ's default)


class Counts:
    """The rarely moving counters of one channel or queue (allocated with it), and the samples
    its rates are computed from."""

    __slots__ = ("gets", "gets_no_ack", "gets_empty", "get_redelivered", "returned",
                 "dropped", "nacked", "not_acked", "requeued", "rejected", "gone_deliver",
                 "gone_deliver_no_ack", "gone_redeliver", "not_published", "samples")

    def __init__(self):
        self.gets = self.gets_no_ack = self.gets_empty = self.get_redelivered = 0
        self.returned = self.dropped = self.nacked = 0
        self.not_acked = 0           # channel: records nacked, rejected or requeued, not acked
        self.requeued = self.rejected = 0          # queue: the same, per queue
        self.gone_deliver = self.gone_deliver_no_ack = self.gone_redeliver = 0  # consumers gone
        self.not_published = 0       # queue: enqueued but not published (recovered, dead-lettered)
        self.samples = None


class BrokerCounts:
    """Node-wide: churn, and the message counters of channels that closed."""

    __slots__ = ("connections_opened", "connections_closed", "channels_opened",
                 "channels_closed", "queues_declared", "queues_created", "queues_deleted",
                 "closed", "samples")

    def __init__(self):
        self.connections_opened = self.connections_closed = 0
        self.channels_opened = self.channels_closed = 0
        self.queues_declared = self.queues_created = self.queues_deleted = 0
        self.closed = [0] * len(CHANNEL_KEYS)    # closed channels' counters, CHANNEL_KEYS order
        self.samples = None


class PublishRun:
    """The publishes of one channel to one exchange: the one counter a publish increments,
    read by both (channel ``publish``, exchange ``publish_in``)."""

    __slots__ = ("n", "exchange")

    def __init__(self, exchange):
        self.n = 0
        self.exchange = exchange
        exchange.runs.add(self)


# -- consumers and channels that go away -----------------------------------------------------
def retire_consumer(consumer) -> None:
    """A consumer left its queue and channel: its counts stay with both."""
    delivered = consumer.delivered
    if not delivered:
        return
    redelivered = consumer.redelivered
    for counts in (consumer.queue.counts, consumer.channel.counts):
        if consumer.no_ack:
            counts.gone_deliver_no_ack += delivered
        else:
            counts.gone_deliver += delivered
        counts.gone_redeliver += redelivered
    consumer.delivered = consumer.redelivered = 0


def retire_channel(ch) -> None:
    """An open channel closed (after its consumers left and its unacked came back): node-wide
    totals keep what it counted."""
    broker = ch.conn.broker.counters
    broker.channels_closed += 1
    closed = broker.closed
    for i, v in enumerate(channel_values(ch)):
        closed[i] += v
    for run in ch.runs.values():
        ex = run.exchange
        ex.published_in_closed += run.n
        ex.runs.discard(run)
    ch.runs = {}
    ch.run = None


# -- the values -------------------------------------------------------------------------------
CHANNEL_KEYS = ("publish", "confirm", "return_unroutable", "drop_unroutable", "deliver",
                "deliver_no_ack", "get", "get_no_ack", "get_empty", "deliver_get", "redeliver",
                "ack", "received_confirm")
QUEUE_KEYS = ("publish",) + CHANNEL_KEYS[4:12]
EXCHANGE_KEYS = ("publish_in", "publish_out")
OVERVIEW_KEYS = CHANNEL_KEYS[:12]


def _consumer_sums(consumers, counts) -> tuple[int, int, int]:
    deliver, no_ack, redeliver = counts.gone_deliver, counts.gone_deliver_no_ack, \
        counts.gone_redeliver
    for c in consumers:
        if c.no_ack:
            no_ack += c.delivered
        else:
            deliver += c.delivered
        redeliver += c.redelivered
    return deliver, no_ack, redeliver


def channel_values(ch) -> tuple:
    """A channel's counters in CHANNEL_KEYS order."""
    k = ch.counts
    deliver, no_ack, redeliver = _consumer_sums(ch.consumers.values(), k)
    get, get_no_ack = k.gets, k.gets_no_ack
    ack = deliver + get - len(ch.unacked) - ch.tx_held - k.not_acked
    publishes = 0
    for run in ch.runs.values():
        publishes += run.n
    return (publishes, ch.confirmed - k.nacked, k.returned, k.dropped, deliver, no_ack, get,
            get_no_ack, k.gets_empty, deliver + no_ack + get + get_no_ack,
            redeliver + k.get_redelivered, ack, ch.publish_seq)


def queue_values(q) -> tuple:
    """A queue's counters in QUEUE_KEYS order."""
    k = q.counts
    deliver, no_ack, redeliver = _consumer_sums(q.consumers, k)
    get, get_no_ack = k.gets, k.gets_no_ack
    ack = deliver + get - q.unacked - k.requeued - k.rejected
    return (q.next_seq - k.not_published, deliver, no_ack, get, get_no_ack, k.gets_empty,
            deliver + no_ack + get + get_no_ack, redeliver + k.get_redelivered, ack)


def exchange_values(ex) -> tuple:
    published = ex.published_in_closed
    for run in ex.runs:
        published += run.n
    return published, published - ex.unroutable + ex.extra_routes


def _open_channels(broker):
    for conn in tuple(broker.connections):
        for ch in tuple(conn.channels.values()):
            if ch.state == "open":
                yield ch


def broker_values(broker) -> list:
    """Node-wide counters in CHANNEL_KEYS order: open channels + closed ones."""
    total = list(broker.counters.closed)
    for ch in _open_channels(broker):
        for i, v in enumerate(channel_values(ch)):
            total[i] += v
    return total


# -- rates ------------------------------------------------------------------------------------
def _with_rates(holder, now: float, keys, values, shown) -> dict:
    """RabbitMQ's shape: each shown key (indexes into keys) with its value and
    ``<key>_details: {"rate": r}``, the rate since the older of two samples kept at least
    INTERVAL apart."""
    s = holder.samples
    if s is None or now < s[2]:
        holder.samples = s = (now, values, now, values)
    elif now - s[2] >= INTERVAL:
        holder.samples = s = (s[2], s[3], now, values)
    base = s[1]
    span = now - s[0]
    out = {}
    for i in shown:
        key, details = keys[i]
        v = values[i]
        out[key] = v
        out[details] = {"rate": round((v - base[i]) / span, 2) if span > 0 else 0.0}
    return out


def _shown(values, groups) -> tuple:
    """RabbitMQ shows a group of keys (publishing, delivering) once anything in it happened:
    the indexes to show."""
    shown = ()
    for group in groups:
        for i in group:
            if values[i]:
                shown += group
                break
    return shown


def _keys(names) -> tuple:
    return tuple((k, k + "_details") for k in names)


_CH_KEYS = _keys(CHANNEL_KEYS)
_CH_GROUPS = (tuple(range(0, 4)), tuple(range(4, 12)))
_Q_KEYS = _keys(QUEUE_KEYS)
_Q_GROUPS = ((0,), tuple(range(1, 9)))
_X_KEYS = _keys(EXCHANGE_KEYS)
_ALL_X = (0, 1)
_O_KEYS = _keys(OVERVIEW_KEYS)
_ALL_O = tuple(range(len(OVERVIEW_KEYS)))


# -- the views --------------------------------------------------------------------------------
class _View:
    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj


class ChannelStats(_View):
    """``channel.stats``: publish, confirm, return_unroutable, drop_unroutable (once the
    channel published), deliver, deliver_no_ack, get, get_no_ack, get_empty, deliver_get,
    redeliver, ack (once it received)."""

    __slots__ = ()

    def values(self) -> dict:
        return dict(zip(CHANNEL_KEYS, channel_values(self.obj)))

    def message_stats(self, now: float) -> dict:
        values = channel_values(self.obj)
        shown = _shown(values, _CH_GROUPS)
        if not shown:
            return {}
        return _with_rates(self.obj.counts, now, _CH_KEYS, values, shown)


class QueueStats(_View):
    """``queue.stats``: publish (messages enqueued, dead-lettered ones included), and deliver,
    deliver_no_ack, get, get_no_ack, get_empty, deliver_get, redeliver, ack."""

    __slots__ = ()

    def values(self) -> dict:
        return dict(zip(QUEUE_KEYS, queue_values(self.obj)))

    def message_stats(self, now: float) -> dict:
        q = self.obj
        k = q.counts
        if q.next_seq == k.not_published and not q.consumers and k.samples is None \
                and not (k.gets or k.gets_no_ack or k.gets_empty or k.gone_deliver
                     or k.gone_deliver_no_ack):
            return {}                            # the common idle queue: nothing to add up
        values = queue_values(q)
        shown = _shown(values, _Q_GROUPS)
        if not shown:
            return {}
        return _with_rates(k, now, _Q_KEYS, values, shown)


class ExchangeStats(_View):
    """``exchange.stats``: publish_in (publishes by channels to this exchange), publish_out
    (messages it routed to queues, once per queue)."""

    __slots__ = ()

    def values(self) -> dict:
        return dict(zip(EXCHANGE_KEYS, exchange_values(self.obj)))

    def message_stats(self, now: float) -> dict:
        ex = self.obj
        if not ex.runs and not ex.published_in_closed:
            return {}
        values = exchange_values(ex)
        if not any(values):
            return {}
        return _with_rates(ex, now, _X_KEYS, values, _ALL_X)


IO_KEYS = ("recv_oct", "recv_cnt", "send_oct", "send_cnt")
_IO_KEYS = _keys(IO_KEYS)


class ConnectionStats(_View):
    """``conn.stats``: octets and reads/writes (``io()``) and their rates (``io_details``).
    A connection has no message_stats in RabbitMQ: ``{}``."""

    __slots__ = ()

    def io(self) -> dict:
        c = self.obj
        return {"recv_oct": c.recv_oct, "recv_cnt": c.recv_cnt, "send_oct": c.send_oct,
                "send_cnt": c.send_cnt}

    def io_details(self, now: float) -> dict:
        c = self.obj
        values = (c.recv_oct, c.recv_cnt, c.send_oct, c.send_cnt)
        out = _with_rates(c.io_counts, now, _IO_KEYS, values, (0, 2))
        return {"recv_oct_details": out["recv_oct_details"],
                "send_oct_details": out["send_oct_details"]}

    def message_stats(self, now: float) -> dict:
        return {}


class IOCounts:
    """A connection's io samples (its counters are plain attributes of the connection)."""

    __slots__ = ("samples",)

    def __init__(self):
        self.samples = None


# Prometheus names (rabbitmq_global_messages_*_total) -> CHANNEL_KEYS index
_TOTALS = (("messages_received", "publish"), ("messages_received_confirm", "received_confirm"),
           ("messages_confirmed", "confirm"),
           ("messages_unroutable_dropped", "drop_unroutable"),
           ("messages_unroutable_returned", "return_unroutable"),
           ("messages_delivered", "deliver_get"),
           ("messages_delivered_consume_auto_ack", "deliver_no_ack"),
           ("messages_delivered_consume_manual_ack", "deliver"),
           ("messages_delivered_get_auto_ack", "get_no_ack"),
           ("messages_delivered_get_manual_ack", "get"),
           ("messages_get_empty", "get_empty"), ("messages_redelivered", "redeliver"),
           ("messages_acknowledged", "ack"))
_INDEX = {k: i for i, k in enumerate(CHANNEL_KEYS)}


class BrokerStats(_View):
    """``broker.stats``: node-wide message_stats (the overview), Prometheus' global counters
    (``totals``) and churn. Each read adds up the open channels (O(channels + consumers))."""

    __slots__ = ()

    def totals(self) -> dict:
        values = broker_values(self.obj)
        out = {name: values[_INDEX[key]] for name, key in _TOTALS}
        # routed = received and not unroutable (tx publishes count once committed)
        out["messages_routed"] = (out["messages_received"] - out["messages_unroutable_dropped"]
                                  - out["messages_unroutable_returned"])
        return out

    def message_stats(self, now: float) -> dict:
        values = broker_values(self.obj)[:len(OVERVIEW_KEYS)]
        if not any(values):
            return {}
        return _with_rates(self.obj.counters, now, _O_KEYS, values, _ALL_O)

    def churn(self) -> dict:
        k = self.obj.counters
        return {"connections_opened": k.connections_opened,
                "connections_closed": k.connections_closed,
                "channels_opened": k.channels_opened, "channels_closed": k.channels_closed,
                "queues_declared": k.queues_declared, "queues_created": k.queues_created,
                "queues_deleted": k.queues_deleted}
