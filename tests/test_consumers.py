"""Consumers and push delivery, with real clients on real sockets: consumer tags, exclusive
consumers, no-ack, consumer priorities, cancel (client and server sent), round-robin dispatch,
basic.qos prefetch (per consumer, per channel, both) and a consumer whose socket stops draining.

Waiting is always on a condition (pika's process_data_events with a deadline, RawClient reads
with a timeout, broker.wait_for), never a bare sleep."""
import asyncio
import socket

import aio_pika
import pika
import pytest
from pamqp import commands as C

from .rawclient import RawClient
from .helpers import connect, pump, ready


# -- helpers -------------------------------------------------------------------------------------
def expect_connection_close(rc: RawClient, code: int):
    close = rc.expect(C.Connection.Close)
    assert close.reply_code == code, close
    rc.method(0, C.Connection.CloseOk())
    assert rc.is_closed()
    return close


class Holder:
    """Records deliveries of one pika consumer; the test acks explicitly."""

    def __init__(self, ch=None, group: dict | None = None):
        self.ch = ch
        self.group = group            # {"max": n}: the most held at once across a group
        if group is not None:
            group.setdefault("members", []).append(self)
        self.bodies: list = []
        self.redelivered: list = []
        self.held: list = []          # delivery tags not yet acked
        self.max_held = 0
        self.tag = None

    def __call__(self, ch, method, props, body):
        self.bodies.append(body)
        self.redelivered.append(method.redelivered)
        self.held.append(method.delivery_tag)
        self.max_held = max(self.max_held, len(self.held))
        if self.group is not None:
            total = sum(len(h.held) for h in self.group["members"])
            self.group["max"] = max(self.group["max"], total)

    def ack_one(self):
        self.ch.basic_ack(self.held.pop(0))

    def ack_all(self):
        for tag in self.held:
            self.ch.basic_ack(tag)
        self.held.clear()


# -- consumer tags ---------------------------------------------------------------------------
def test_server_generated_consumer_tags(broker):
    # pika and aio-pika pick their own tags; deliveries carry the tag the client chose.
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("ctag")
        seen = []
        ch.basic_consume("ctag", lambda c, m, p, b: seen.append(m.consumer_tag),
                         consumer_tag="mine")
        ch.basic_publish("", "ctag", b"x")
        pump(conn, lambda: seen == ["mine"])
    finally:
        conn.close()

    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.call(1, C.Queue.Declare(queue="ctag-raw"), C.Queue.DeclareOk)
        ok = rc.call(1, C.Basic.Consume(queue="ctag-raw"), C.Basic.ConsumeOk)
        ok2 = rc.call(1, C.Basic.Consume(queue="ctag-raw", no_ack=True), C.Basic.ConsumeOk)
        assert ok.consumer_tag.startswith("amq.ctag-") and ok2.consumer_tag.startswith("amq.ctag-")
        assert ok.consumer_tag != ok2.consumer_tag
        rc.call(1, C.Basic.Cancel(consumer_tag=ok2.consumer_tag), C.Basic.CancelOk)
        rc.publish(1, b"hi", routing_key="ctag-raw")
        deliver, _, data = rc.read_delivery()
        assert deliver.consumer_tag == ok.consumer_tag and data == b"hi"
        assert deliver.delivery_tag == 1 and not deliver.redelivered


def test_duplicate_consumer_tag_is_530_not_allowed(broker):
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.open_channel(2)
        rc.call(1, C.Queue.Declare(queue="dup"), C.Queue.DeclareOk)
        rc.call(1, C.Basic.Consume(queue="dup", consumer_tag="worker"), C.Basic.ConsumeOk)
        # The same tag on another channel is fine: tags are per channel.
        rc.call(2, C.Basic.Consume(queue="dup", consumer_tag="worker"), C.Basic.ConsumeOk)
        rc.method(1, C.Basic.Consume(queue="dup", consumer_tag="worker"))
        close = expect_connection_close(rc, 530)
        assert close.reply_text == "NOT_ALLOWED - attempt to reuse consumer tag 'worker'"
        assert (close.class_id, close.method_id) == (60, 20)
    broker.wait_for(lambda: not broker.broker.vhosts["/"].queues["dup"].consumers,
                    what="consumers removed with the connection")


def test_consumer_tag_reusable_after_cancel(broker):
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.call(1, C.Queue.Declare(queue="reuse"), C.Queue.DeclareOk)
        rc.call(1, C.Basic.Consume(queue="reuse", consumer_tag="t"), C.Basic.ConsumeOk)
        ok = rc.call(1, C.Basic.Cancel(consumer_tag="t"), C.Basic.CancelOk)
        assert ok.consumer_tag == "t"
        rc.call(1, C.Basic.Consume(queue="reuse", consumer_tag="t"), C.Basic.ConsumeOk)


# -- exclusive consumers ---------------------------------------------------------------------
def test_exclusive_consumer_refuses_second_consumer(broker):
    a, b = connect(broker), connect(broker)
    try:
        cha = a.channel()
        cha.queue_declare("excl")
        ha = Holder(cha)
        tag = cha.basic_consume("excl", ha, exclusive=True)
        chb = b.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            chb.basic_consume("excl", Holder())
        assert err.value.reply_code == 403
        assert err.value.reply_text == "ACCESS_REFUSED - queue 'excl' in vhost '/' in exclusive use"
        # Also refused on the owner's own connection, and for a second exclusive consumer.
        chb2 = b.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            chb2.basic_consume("excl", Holder(), exclusive=True)
        assert err.value.reply_code == 403
        # The exclusive consumer gets everything.
        cha.basic_publish("", "excl", b"1")
        pump(a, lambda: ha.bodies == [b"1"])
        # Once it cancels, others may consume.
        cha.basic_cancel(tag)
        chb3 = b.channel()
        hb = Holder(chb3)
        chb3.basic_consume("excl", hb)
        cha.basic_publish("", "excl", b"2")
        pump(b, lambda: hb.bodies == [b"2"])
    finally:
        a.close()
        b.close()


def test_exclusive_consume_on_queue_with_consumers_is_403(broker):
    a, b = connect(broker), connect(broker)
    try:
        cha = a.channel()
        cha.queue_declare("excl2")
        cha.basic_consume("excl2", Holder())
        chb = b.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            chb.basic_consume("excl2", Holder(), exclusive=True)
        assert err.value.reply_code == 403
        assert err.value.reply_text == \
            "ACCESS_REFUSED - queue 'excl2' in vhost '/' in exclusive use"
        # Even from the same channel as the existing consumer.
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            cha.basic_consume("excl2", Holder(), exclusive=True)
        assert err.value.reply_code == 403
    finally:
        a.close()
        b.close()


# -- no-ack ----------------------------------------------------------------------------------
def test_no_ack_consumer_messages_are_settled_on_delivery(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1)     # ignored by no-ack consumers
        ch.queue_declare("noack")
        for i in range(20):
            ch.basic_publish("", "noack", b"%d" % i)
        got = []
        ch.basic_consume("noack", lambda c, m, p, b: got.append((m.delivery_tag, b)),
                         auto_ack=True)
        pump(conn, lambda: len(got) == 20)
        assert [b for _, b in got] == [b"%d" % i for i in range(20)]
        assert [t for t, _ in got] == list(range(1, 21))
        assert broker.call(lambda: broker.broker.vhosts["/"].queues["noack"].unacked) == 0
        ch.close()
        # Nothing comes back when the channel closes: they were settled.
        ch2 = conn.channel()
        assert ch2.queue_declare("noack", passive=True).method.message_count == 0
    finally:
        conn.close()


def test_acking_a_no_ack_delivery_is_unknown_tag(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("noack2")
        ch.basic_publish("", "noack2", b"x")
        got = []
        ch.basic_consume("noack2", lambda c, m, p, b: got.append(m.delivery_tag), auto_ack=True)
        pump(conn, lambda: got == [1])
        ch.basic_ack(1)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.queue_declare("noack2", passive=True)
        assert err.value.reply_code == 406
        assert err.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 1"
    finally:
        conn.close()


# -- consumer priorities ---------------------------------------------------------------------
def test_consumer_priorities(broker):
    conn = connect(broker)
    try:
        pub = conn.channel()
        pub.queue_declare("prio")
        ch_hi, ch_lo = conn.channel(), conn.channel()
        ch_hi.basic_qos(prefetch_count=2)
        ch_lo.basic_qos(prefetch_count=100)
        hi, lo = Holder(ch_hi), Holder(ch_lo)
        # The low-priority consumer subscribes first: priority, not arrival, decides.
        ch_lo.basic_consume("prio", lo)
        ch_hi.basic_consume("prio", hi, arguments={"x-priority": 10})
        for i in range(10):
            pub.basic_publish("", "prio", b"%d" % i)
        pump(conn, lambda: len(hi.bodies) + len(lo.bodies) == 10)
        assert hi.bodies == [b"0", b"1"]          # while it had credit
        assert lo.bodies == [b"%d" % i for i in range(2, 10)]
        # Credit back for the high-priority consumer: it is served first again.
        hi.ack_one()
        ch_hi.queue_declare("prio", passive=True)  # the ack is in before the next publishes
        pub.basic_publish("", "prio", b"10")
        pub.basic_publish("", "prio", b"11")
        pump(conn, lambda: len(hi.bodies) + len(lo.bodies) == 12)
        assert hi.bodies[2:] == [b"10"] and lo.bodies[8:] == [b"11"]
    finally:
        conn.close()


def test_consumer_priority_without_limit_takes_everything(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("prio2")
        hi, lo, neg = Holder(ch), Holder(ch), Holder(ch)
        ch.basic_consume("prio2", neg, arguments={"x-priority": -5})
        ch.basic_consume("prio2", lo)
        ch.basic_consume("prio2", hi, arguments={"x-priority": 1})
        for i in range(30):
            ch.basic_publish("", "prio2", b"%d" % i)
        pump(conn, lambda: len(hi.bodies) == 30)
        ch.queue_declare("prio2", passive=True)
        assert lo.bodies == [] and neg.bodies == []
    finally:
        conn.close()


# -- cancel ----------------------------------------------------------------------------------
def test_basic_cancel_stops_delivery(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("cancel")
        h = Holder(ch)
        tag = ch.basic_consume("cancel", h)
        ch.basic_publish("", "cancel", b"before")
        pump(conn, lambda: h.bodies == [b"before"])
        ch.basic_cancel(tag)                    # blocks until cancel-ok
        for i in range(5):
            ch.basic_publish("", "cancel", b"after")
        assert ch.queue_declare("cancel", passive=True).method.message_count == 5
        conn.process_data_events(time_limit=0)
        assert h.bodies == [b"before"]
        # A message delivered before the cancel can still be acked.
        h.ack_one()
        assert ch.queue_declare("cancel", passive=True).method.message_count == 5
        assert broker.call(lambda: broker.broker.vhosts["/"].queues["cancel"].unacked) == 0
    finally:
        conn.close()

    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.call(1, C.Basic.Consume(queue="cancel", consumer_tag="c1", no_ack=True),
                C.Basic.ConsumeOk)
        for _ in range(5):
            deliver, _, _ = rc.read_delivery()
            assert deliver.consumer_tag == "c1"
        ok = rc.call(1, C.Basic.Cancel(consumer_tag="c1"), C.Basic.CancelOk)
        assert ok.consumer_tag == "c1"
        # Cancelling an unknown tag is not an error.
        ok = rc.call(1, C.Basic.Cancel(consumer_tag="nope"), C.Basic.CancelOk)
        assert ok.consumer_tag == "nope"


def test_server_cancel_on_queue_delete_pika(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("doomed")
        cancelled = []
        ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
        tag = ch.basic_consume("doomed", Holder(ch))
        other = conn.channel()
        other.queue_delete("doomed")
        pump(conn, lambda: cancelled == [tag], what="server basic.cancel")
        # The channel is still usable.
        ch.queue_declare("doomed2")
    finally:
        conn.close()


async def test_server_cancel_on_queue_delete_aio_pika(broker):
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue("doomed-aio")
        cancelled = asyncio.get_running_loop().create_future()
        underlay = await ch.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(
            lambda frame: cancelled.done() or cancelled.set_result(frame.consumer_tag))

        async def on_message(message):
            await message.ack()

        tag = await q.consume(on_message)
        other = await conn.channel()
        await other.queue_delete("doomed-aio")
        assert await asyncio.wait_for(cancelled, 5) == tag
        assert not ch.is_closed


def _delete_and_collect(rc: RawClient, queue: str) -> list:
    """Delete ``queue`` on channel 2, then a round trip on channel 1; return the frames seen."""
    rc.method(2, C.Queue.Delete(queue=queue))
    rc.method(1, C.Basic.Qos(prefetch_count=0))
    seen = []
    while True:
        _ch, frame = rc.recv()
        if frame.name == "Heartbeat":
            continue
        seen.append((_ch, frame))
        if isinstance(frame, C.Basic.QosOk):
            return seen


def test_server_cancel_only_with_consumer_cancel_notify(broker):
    with RawClient(broker.port) as rc:
        rc.handshake()                        # advertises consumer_cancel_notify
        rc.open_channel(1)
        rc.open_channel(2)
        rc.call(1, C.Queue.Declare(queue="cn"), C.Queue.DeclareOk)
        rc.call(1, C.Basic.Consume(queue="cn", consumer_tag="ct"), C.Basic.ConsumeOk)
        seen = _delete_and_collect(rc, "cn")
        cancels = [(n, f) for n, f in seen if isinstance(f, C.Basic.Cancel)]
        assert len(cancels) == 1
        assert cancels[0][0] == 1 and cancels[0][1].consumer_tag == "ct"
        assert any(isinstance(f, C.Queue.DeleteOk) for _n, f in seen)

    with RawClient(broker.port) as rc:
        rc.handshake(capabilities={"basic.nack": True})   # no consumer_cancel_notify
        rc.open_channel(1)
        rc.open_channel(2)
        rc.call(1, C.Queue.Declare(queue="cn"), C.Queue.DeclareOk)
        rc.call(1, C.Basic.Consume(queue="cn", consumer_tag="ct"), C.Basic.ConsumeOk)
        seen = _delete_and_collect(rc, "cn")
        assert [type(f).__name__ for _n, f in seen] == ["DeleteOk", "QosOk"]
        # The consumer is gone silently: its tag is free again.
        rc.call(1, C.Queue.Declare(queue="cn"), C.Queue.DeclareOk)
        rc.call(1, C.Basic.Consume(queue="cn", consumer_tag="ct"), C.Basic.ConsumeOk)


# -- round-robin dispatch --------------------------------------------------------------------
def test_round_robin_between_consumers(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("rr0")
        holders = [Holder(ch) for _ in range(3)]
        for h in holders:
            ch.basic_consume("rr0", h)
        for i in range(30):
            ch.basic_publish("", "rr0", b"%d" % i)
        pump(conn, lambda: sum(len(h.bodies) for h in holders) == 30)
        assert [len(h.bodies) for h in holders] == [10, 10, 10]
        # Strict rotation: consumer k gets messages k, k+3, k+6, ... (up to rotation start).
        firsts = sorted(int(h.bodies[0]) for h in holders)
        assert firsts == [0, 1, 2]
        for h in holders:
            nums = [int(b) for b in h.bodies]
            assert nums == list(range(nums[0], 30, 3))
    finally:
        conn.close()


def _rr_setup(conn, queue: str, n_consumers: int, prefetch: int):
    pub = conn.channel()
    pub.queue_declare(queue)
    holders = []
    for _ in range(n_consumers):
        ch = conn.channel()
        ch.basic_qos(prefetch_count=prefetch)
        h = Holder(ch)
        h.tag = ch.basic_consume(queue, h)
        holders.append(h)
    return pub, holders


def test_fair_dispatch_prefetch_1_three_consumers(broker):
    conn = connect(broker)
    try:
        pub, holders = _rr_setup(conn, "rr1", 3, 1)
        for i in range(30):
            pub.basic_publish("", "rr1", b"%d" % i)
        for _round in range(10):
            pump(conn, lambda: all(len(h.held) == 1 for h in holders))
            for h in holders:
                h.ack_one()
        pump(conn, lambda: broker.call(
            lambda: broker.broker.vhosts["/"].queues["rr1"].unacked) == 0)
        assert [len(h.bodies) for h in holders] == [10, 10, 10]
        assert all(h.max_held == 1 for h in holders)
        assert sorted(int(b) for h in holders for b in h.bodies) == list(range(30))
        for h in holders:                       # each sees the queue in order
            assert [int(b) for b in h.bodies] == sorted(int(b) for b in h.bodies)
    finally:
        conn.close()


def test_slow_consumer_holding_its_message_gets_no_more(broker):
    conn = connect(broker)
    try:
        pub, (a, b, slow) = _rr_setup(conn, "rr2", 3, 1)
        for i in range(30):
            pub.basic_publish("", "rr2", b"%d" % i)

        def total():
            return len(a.bodies) + len(b.bodies) + len(slow.bodies)

        while True:
            pump(conn, lambda: total() == 30 or (a.held and b.held and slow.held))
            if total() == 30:
                break
            a.ack_one()
            b.ack_one()
        pub.queue_declare("rr2", passive=True)
        conn.process_data_events(time_limit=0)
        assert len(slow.bodies) == 1 and slow.max_held == 1
        assert abs(len(a.bodies) - len(b.bodies)) <= 1
        assert ready(broker, "rr2") == 0
    finally:
        conn.close()


# -- prefetch --------------------------------------------------------------------------------
def _fill(ch, queues, n):
    for q in queues:
        ch.queue_declare(q)
        for i in range(n):
            ch.basic_publish("", q, b"%s-%d" % (q.encode(), i))


def test_prefetch_per_consumer_exact(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        _fill(ch, ["pa", "pb"], 10)
        ch.basic_qos(prefetch_count=3, global_qos=False)
        a, b = Holder(ch), Holder(ch)
        ch.basic_consume("pa", a)
        ch.basic_consume("pb", b)
        pump(conn, lambda: len(a.held) == 3 and len(b.held) == 3)
        # Barrier: a round trip after the dispatch; nothing more arrived.
        assert ch.queue_declare("pa", passive=True).method.message_count == 7
        assert ch.queue_declare("pb", passive=True).method.message_count == 7
        conn.process_data_events(time_limit=0)
        assert (len(a.bodies), len(b.bodies)) == (3, 3)
        # One ack buys exactly one more delivery for that consumer only.
        a.ack_one()
        pump(conn, lambda: len(a.bodies) == 4)
        assert ch.queue_declare("pa", passive=True).method.message_count == 6
        conn.process_data_events(time_limit=0)
        assert (len(a.bodies), len(b.bodies), len(a.held)) == (4, 3, 3)
        # Drain both, acking as we go: every refill is exactly up to the limit.
        while len(a.bodies) < 10 or len(b.bodies) < 10:
            ta, tb = min(3, 10 - len(a.bodies)), min(3, 10 - len(b.bodies))
            a.ack_all()
            b.ack_all()
            pump(conn, lambda: len(a.held) == ta and len(b.held) == tb)
        assert a.max_held == 3 and b.max_held == 3
        assert a.bodies == [b"pa-%d" % i for i in range(10)]
    finally:
        conn.close()


def test_prefetch_global_is_per_channel(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        _fill(ch, ["ga", "gb"], 10)
        ch.basic_qos(prefetch_count=5, global_qos=True)
        group = {"max": 0}
        a, b = Holder(ch, group), Holder(ch, group)
        ch.basic_consume("ga", a)
        ch.basic_consume("gb", b)
        held = lambda: len(a.held) + len(b.held)           # noqa: E731
        pump(conn, lambda: held() == 5)
        assert (ch.queue_declare("ga", passive=True).method.message_count
                + ch.queue_declare("gb", passive=True).method.message_count) == 15
        conn.process_data_events(time_limit=0)
        assert held() == 5 and len(a.bodies) + len(b.bodies) == 5
        # Acks free channel credit, which either consumer may use.
        (a if a.held else b).ack_one()
        (a if a.held else b).ack_one()
        pump(conn, lambda: len(a.bodies) + len(b.bodies) == 7)
        ch.queue_declare("ga", passive=True)
        conn.process_data_events(time_limit=0)
        assert held() == 5 and len(a.bodies) + len(b.bodies) == 7
        # A per-channel limit does not restrict a second channel.
        ch2 = conn.channel()
        c = Holder(ch2)
        ch2.basic_consume("ga", c)
        pump(conn, lambda: ready(broker, "ga") == 0 and len(a.bodies) + len(c.bodies) == 10)
        assert len(c.held) == 10 - len(a.bodies) and held() == 5
        assert group["max"] == 5
    finally:
        conn.close()


def test_prefetch_per_consumer_and_global_together(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        _fill(ch, ["ba", "bb", "bc"], 10)
        ch.basic_qos(prefetch_count=2, global_qos=False)
        ch.basic_qos(prefetch_count=3, global_qos=True)
        group = {"max": 0}
        hs = [Holder(ch, group) for _ in range(3)]
        for q, h in zip(["ba", "bb", "bc"], hs):
            ch.basic_consume(q, h)
        held = lambda: sum(len(h.held) for h in hs)          # noqa: E731
        for _step in range(10):
            pump(conn, lambda: held() == 3)
            ch.queue_declare("ba", passive=True)     # barrier
            conn.process_data_events(time_limit=0)
            assert held() == 3
            assert all(len(h.held) <= 2 for h in hs)
            # Ack one from the consumer holding the most.
            max(hs, key=lambda h: len(h.held)).ack_one()
        assert max(h.max_held for h in hs) == 2 and group["max"] == 3
        assert sum(len(h.bodies) for h in hs) == 12
    finally:
        conn.close()


def test_qos_per_consumer_applies_to_new_consumers_only(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        _fill(ch, ["na", "nb"], 10)
        ch.basic_qos(prefetch_count=2)
        a = Holder(ch)
        ch.basic_consume("na", a)
        pump(conn, lambda: len(a.held) == 2)
        ch.basic_qos(prefetch_count=5)         # a keeps its limit of 2
        b = Holder(ch)
        ch.basic_consume("nb", b)
        pump(conn, lambda: len(b.held) == 5)
        assert ch.queue_declare("na", passive=True).method.message_count == 8
        conn.process_data_events(time_limit=0)
        assert (len(a.bodies), len(b.bodies)) == (2, 5)
        a.ack_one()
        pump(conn, lambda: len(a.bodies) == 3)
        ch.queue_declare("na", passive=True)
        conn.process_data_events(time_limit=0)
        assert len(a.held) == 2 and a.max_held == 2
    finally:
        conn.close()


def test_qos_global_change_applies_at_once(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        _fill(ch, ["gc"], 10)
        ch.basic_qos(prefetch_count=1, global_qos=True)
        a = Holder(ch)
        ch.basic_consume("gc", a)
        pump(conn, lambda: len(a.held) == 1)
        ch.basic_qos(prefetch_count=4, global_qos=True)
        pump(conn, lambda: len(a.held) == 4)
        assert ch.queue_declare("gc", passive=True).method.message_count == 6
        conn.process_data_events(time_limit=0)
        assert len(a.bodies) == 4
        ch.basic_qos(prefetch_count=0, global_qos=True)   # unlimited
        pump(conn, lambda: len(a.held) == 10)
    finally:
        conn.close()


def test_prefetch_size_is_540_not_implemented(broker):
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.method(1, C.Basic.Qos(prefetch_size=1000, prefetch_count=10))
        close = expect_connection_close(rc, 540)
        assert close.reply_text == "NOT_IMPLEMENTED - prefetch_size!=0 (1000)"
        assert (close.class_id, close.method_id) == (60, 10)

    conn = connect(broker)
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as err:
        ch.basic_qos(prefetch_size=4096)
    assert err.value.reply_code == 540
    assert conn.is_closed


async def test_aio_pika_prefetch(broker):
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=2)
        q = await ch.declare_queue("aio-prefetch")
        for i in range(6):
            await ch.default_exchange.publish(aio_pika.Message(b"%d" % i), "aio-prefetch")
        got: list = []
        changed = asyncio.Event()

        async def on_message(message):
            got.append(message)
            changed.set()

        async def wait_count(n):
            while len(got) < n:
                changed.clear()
                await asyncio.wait_for(changed.wait(), 5)

        await q.consume(on_message)
        await wait_count(2)
        declared = await ch.declare_queue("aio-prefetch", passive=True)
        assert declared.declaration_result.message_count == 4 and len(got) == 2
        await got[0].ack()
        await wait_count(3)
        declared = await ch.declare_queue("aio-prefetch", passive=True)
        assert declared.declaration_result.message_count == 3 and len(got) == 3
        assert [m.body for m in got] == [b"0", b"1", b"2"]


# -- a consumer whose socket does not drain --------------------------------------------------
class StuckClient(RawClient):
    """A RawClient with a tiny receive buffer; after subscribing it never reads again."""

    def __init__(self, port: int):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        self.sock = sock
        self.buf = b""
        self.timeout = 5.0


def test_stuck_consumer_does_not_hold_up_others(broker):
    n, size = 120, 256 * 1024
    conn = connect(broker)
    stuck = StuckClient(broker.port)
    try:
        setup = conn.channel()
        setup.queue_declare("flood")
        setup.queue_declare("other")
        stuck.handshake()
        stuck.open_channel(1)
        stuck.call(1, C.Basic.Consume(queue="flood", consumer_tag="stuck"), C.Basic.ConsumeOk)
        stuck.call(1, C.Basic.Consume(queue="other", consumer_tag="stuck2"), C.Basic.ConsumeOk)
        # From here on the stuck client never reads its socket.

        got = {"flood": 0, "other": 0}

        def on_message(ch, method, props, body):
            got[method.routing_key] += 1
            ch.basic_ack(method.delivery_tag)

        worker = conn.channel()
        worker.basic_qos(prefetch_count=10)
        worker.basic_consume("flood", on_message)
        worker.basic_consume("other", on_message)

        payload = b"x" * size
        for _ in range(n):
            setup.basic_publish("", "flood", payload)

        def flood_state():
            q = broker.broker.vhosts["/"].queues["flood"]
            stuck_consumer = next(c for c in q.consumers if c.tag == "stuck")
            return q.message_count, stuck_consumer.unacked

        def settled():
            ready_, stuck_unacked = broker.call(flood_state)
            return ready_ == 0 and got["flood"] + stuck_unacked == n

        pump(conn, settled, timeout=20, what="the flood to be consumed")
        stuck_held = broker.call(flood_state)[1]
        assert 0 < stuck_held < n // 2, stuck_held     # round robin would give it n/2
        assert got["flood"] == n - stuck_held

        # Another queue is served promptly even though the stuck client consumes it too.
        for i in range(50):
            setup.basic_publish("", "other", b"small")
        pump(conn, lambda: got["other"] == 50, what="the other queue")
        assert broker.call(lambda: broker.broker.vhosts["/"].queues["other"].unacked) == 0
    finally:
        conn.close()
        stuck.close()
    # Its deliveries go back to the queue when the stuck client goes away.
    broker.wait_for(lambda: broker.broker.vhosts["/"].queues["flood"].message_count ==
                    stuck_held, what="requeue of the stuck client's deliveries")
