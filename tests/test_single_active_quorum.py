"""Single active consumer and quorum-queue semantics with real clients.

x-single-active-consumer: only the first consumer gets messages; when it cancels, its channel
closes or its connection drops, the next one in registration order takes over, and the unacked
messages of the first are redelivered to it.

Quorum queues (as a single RabbitMQ node gives them): x-delivery-limit dead-letters a message
with reason delivery_limit after the limit; redeliveries carry an x-delivery-count header."""
import asyncio

import aio_pika
import pika
import pika.compat
from pamqp import commands as C

from .rawclient import RawClient
from .helpers import connect, count, pump

SAC = {"x-single-active-consumer": True}
QUORUM = {"x-queue-type": "quorum"}


# -- helpers -------------------------------------------------------------------------------------
class Consumer:
    """One consumer on its own channel, recording (tag, body, redelivered, headers)."""

    def __init__(self, conn, queue: str, prefetch: int = 0, auto_ack: bool = False):
        self.ch = conn.channel()
        if prefetch:
            self.ch.basic_qos(prefetch_count=prefetch)
        self.got = []
        self.tag = self.ch.basic_consume(queue, self.on_message, auto_ack=auto_ack)

    def on_message(self, ch, method, props, body):
        self.got.append((method.delivery_tag, body, method.redelivered, props.headers))

    @property
    def bodies(self) -> list:
        return [b for _t, b, _r, _h in self.got]

    @property
    def flags(self) -> list:
        return [(b, r) for _t, b, r, _h in self.got]


def sync(ch, queue: str) -> None:
    """A round trip on a channel: everything sent before it has been processed."""
    ch.queue_declare(queue, passive=True)


# -- single active consumer ----------------------------------------------------------------------
def test_only_the_first_consumer_gets_messages(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("sac", arguments=SAC)
        a, b, c = (Consumer(conn, "sac") for _ in range(3))
        for i in range(6):
            ch.basic_publish("", "sac", b"m%d" % i)
        pump(conn, lambda: len(a.got) == 6, what="six deliveries to the first consumer")
        sync(ch, "sac")
        conn.process_data_events(time_limit=0.05)
        assert a.bodies == [b"m%d" % i for i in range(6)]
        assert b.got == [] and c.got == []
        ok = ch.queue_declare("sac", passive=True).method
        assert ok.consumer_count == 3
    finally:
        conn.close()


def test_without_the_flag_consumers_share(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("shared", arguments={"x-single-active-consumer": False})
        a, b = Consumer(conn, "shared"), Consumer(conn, "shared")
        for i in range(4):
            ch.basic_publish("", "shared", b"m%d" % i)
        pump(conn, lambda: len(a.got) + len(b.got) == 4, what="four deliveries")
        assert a.got and b.got
    finally:
        conn.close()


def test_cancel_hands_over_to_the_next_consumer(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("sac", arguments=SAC)
        a = Consumer(conn, "sac", prefetch=2)
        b, c = Consumer(conn, "sac"), Consumer(conn, "sac")
        for i in range(4):
            ch.basic_publish("", "sac", b"m%d" % i)
        pump(conn, lambda: len(a.got) == 2, what="the first consumer's prefetch")
        sync(ch, "sac")
        assert count(ch, "sac") == 2 and b.got == [] and c.got == []
        a.ch.basic_ack(a.got[1][0], multiple=True)
        pump(conn, lambda: len(a.got) == 4, what="the next two for the first consumer")
        a.ch.basic_ack(a.got[3][0], multiple=True)
        a.ch.basic_cancel(a.tag)
        ch.basic_publish("", "sac", b"m4")
        pump(conn, lambda: len(b.got) == 1, what="the next consumer to take over")
        assert a.bodies == [b"m0", b"m1", b"m2", b"m3"]
        assert b.flags == [(b"m4", False)]
        assert c.got == []
    finally:
        conn.close()


def test_cancelled_consumer_holding_unacked_keeps_the_order(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("sac", arguments=SAC)
        a = Consumer(conn, "sac", prefetch=2)
        b = Consumer(conn, "sac")
        for i in range(5):
            ch.basic_publish("", "sac", b"m%d" % i)
        pump(conn, lambda: len(a.got) == 2, what="the first consumer's prefetch")
        a.ch.basic_cancel(a.tag)
        sync(ch, "sac")
        conn.process_data_events(time_limit=0.1)
        assert b.got == []                     # m0, m1 are still being worked on
        a.ch.basic_nack(0, multiple=True, requeue=True)
        pump(conn, lambda: len(b.got) == 5, what="the next consumer to take over")
        assert b.flags == [(b"m0", True), (b"m1", True), (b"m2", False), (b"m3", False),
                           (b"m4", False)]
    finally:
        conn.close()


def raw_consumer(broker, queue: str, prefetch: int) -> RawClient:
    rc = RawClient(broker.port)
    rc.handshake()
    rc.open_channel(1)
    rc.call(1, C.Basic.Qos(prefetch_count=prefetch), C.Basic.QosOk)
    rc.call(1, C.Basic.Consume(queue=queue, consumer_tag="first"), C.Basic.ConsumeOk)
    return rc


def raw_receive(rc: RawClient, expected: list) -> None:
    for body in expected:
        assert rc.read_delivery()[2] == body


def test_channel_close_redelivers_unacked_to_the_next_consumer(broker):
    """The active consumer's channel closes (channel.close, no basic.cancel first: pika would
    cancel before closing) while it holds two unacked messages."""
    conn = connect(broker)
    rc = None
    try:
        ch = conn.channel()
        ch.queue_declare("sac", arguments=SAC)
        rc = raw_consumer(broker, "sac", 2)
        b, c = Consumer(conn, "sac"), Consumer(conn, "sac")
        for i in range(3):
            ch.basic_publish("", "sac", b"m%d" % i)
        raw_receive(rc, [b"m0", b"m1"])
        sync(ch, "sac")
        assert b.got == [] and c.got == []
        rc.call(1, C.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0),
                C.Channel.CloseOk)
        pump(conn, lambda: len(b.got) == 3, what="the next consumer to take over")
        assert b.flags == [(b"m0", True), (b"m1", True), (b"m2", False)]
        assert c.got == []
    finally:
        if rc is not None:
            rc.close()
        conn.close()


def test_connection_drop_hands_over_with_redelivery(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("sac", arguments=SAC)
        rc = raw_consumer(broker, "sac", 2)
        try:
            b = Consumer(conn, "sac")
            for i in range(3):
                ch.basic_publish("", "sac", b"m%d" % i)
            raw_receive(rc, [b"m0", b"m1"])
            sync(ch, "sac")
            assert b.got == []
        finally:
            rc.close()                 # the TCP connection drops, no close handshake
        pump(conn, lambda: len(b.got) == 3, what="the takeover after the drop")
        assert b.flags == [(b"m0", True), (b"m1", True), (b"m2", False)]
    finally:
        conn.close()


def test_takeover_follows_registration_order(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("sac", arguments=SAC)
        a, b, c = (Consumer(conn, "sac", auto_ack=True) for _ in range(3))

        def send_and_see(body, who):
            ch.basic_publish("", "sac", body)
            pump(conn, lambda: body in who.bodies, what=f"{body!r}")

        send_and_see(b"1", a)
        a.ch.basic_cancel(a.tag)
        again = Consumer(conn, "sac", auto_ack=True)     # re-registers at the end
        send_and_see(b"2", b)
        b.ch.close()
        send_and_see(b"3", c)
        c.ch.close()
        send_and_see(b"4", again)
        assert (a.bodies, b.bodies, c.bodies, again.bodies) == ([b"1"], [b"2"], [b"3"], [b"4"])
    finally:
        conn.close()


def test_messages_wait_for_a_consumer_and_go_to_the_first_one(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("sac", arguments=SAC)
        for i in range(3):
            ch.basic_publish("", "sac", b"m%d" % i)
        a, b = Consumer(conn, "sac"), Consumer(conn, "sac")
        pump(conn, lambda: len(a.got) == 3, what="the backlog")
        sync(ch, "sac")
        assert b.got == []
    finally:
        conn.close()


async def test_aio_pika_single_active_consumer_failover(broker):
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch1 = await conn.channel()
        ch2 = await conn.channel()
        await ch1.set_qos(prefetch_count=1)
        q1 = await ch1.declare_queue("asac", arguments=SAC)
        q2 = await ch2.get_queue("asac")
        got = {1: [], 2: []}
        events = {1: asyncio.Event(), 2: asyncio.Event()}

        def handler(n):
            async def on_message(message):
                got[n].append((message.body, message.redelivered))
                events[n].set()
                if n == 2:
                    await message.ack()
            return on_message

        await q1.consume(handler(1))
        await q2.consume(handler(2))
        for i in range(3):
            await ch1.default_exchange.publish(aio_pika.Message(b"m%d" % i), "asac")
        await asyncio.wait_for(events[1].wait(), 5)
        assert got == {1: [(b"m0", False)], 2: []}
        await ch1.close()                 # the first consumer goes away holding m0

        async def wait_for_three():
            while len(got[2]) < 3:
                events[2].clear()
                await events[2].wait()

        await asyncio.wait_for(wait_for_three(), 5)
        assert got[2] == [(b"m0", True), (b"m1", False), (b"m2", False)]


# -- quorum queues: delivery limit ---------------------------------------------------------------
def quorum_with_dlx(ch, name: str, limit: int) -> None:
    ch.exchange_declare("qdlx", "fanout")
    ch.queue_declare("qdead")
    ch.queue_bind("qdead", "qdlx")
    ch.queue_declare(name, durable=True, arguments={**QUORUM, "x-delivery-limit": limit,
                                                    "x-dead-letter-exchange": "qdlx"})


def test_delivery_limit_dead_letters_with_delivery_count_headers(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        quorum_with_dlx(ch, "qq", 2)
        seen = []

        def always_fail(c, method, props, body):
            seen.append((body, method.redelivered, (props.headers or {}).get("x-delivery-count")))
            c.basic_nack(method.delivery_tag, requeue=True)

        ch.basic_consume("qq", always_fail)
        ch.basic_publish("", "qq", b"poison", pika.BasicProperties(headers={"id": 1}))
        pump(conn, lambda: count(ch, "qdead") == 1, what="the poison message to be parked")
        assert seen == [(b"poison", False, None), (b"poison", True, 1), (b"poison", True, 2)]
        assert count(ch, "qq", durable=True) == 0
        _m, props, body = ch.basic_get("qdead", auto_ack=True)
        assert body == b"poison" and props.headers["id"] == 1
        (death,) = props.headers["x-death"]
        assert (death["reason"], death["queue"], death["count"]) == ("delivery_limit", "qq", 1)
        assert death["exchange"] == "" and death["routing-keys"] == ["qq"]
        assert props.headers["x-first-death-reason"] == "delivery_limit"
    finally:
        conn.close()


def test_delivery_limit_zero_allows_one_delivery(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        quorum_with_dlx(ch, "qq", 0)
        seen = []
        ch.basic_consume("qq", lambda c, m, p, b: (seen.append(b),
                                                   c.basic_reject(m.delivery_tag, requeue=True)))
        ch.basic_publish("", "qq", b"once")
        pump(conn, lambda: count(ch, "qdead") == 1, what="the dead letter")
        assert seen == [b"once"]
    finally:
        conn.close()


def test_delivery_limit_counts_requeues_by_channel_close(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        quorum_with_dlx(ch, "qq", 1)
        ch.basic_publish("", "qq", b"crashy")
        counts = []
        for _ in range(2):
            worker = Consumer(conn, "qq")
            pump(conn, lambda: worker.got, what="a delivery")
            counts.append((worker.got[0][3] or {}).get("x-delivery-count"))
            worker.ch.close()              # the worker crashes holding it
        pump(conn, lambda: count(ch, "qdead") == 1, what="the dead letter")
        assert counts == [None, 1]
        assert count(ch, "qq", durable=True) == 0
    finally:
        conn.close()


def test_reject_without_requeue_in_quorum_queue_is_rejected_reason(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        quorum_with_dlx(ch, "qq", 5)
        ch.basic_publish("", "qq", b"bad")
        pump(conn, lambda: count(ch, "qq", durable=True) == 1, what="the message")
        method, _p, _b = ch.basic_get("qq")
        ch.basic_reject(method.delivery_tag, requeue=False)
        pump(conn, lambda: count(ch, "qdead") == 1, what="the dead letter")
        _m, props, _b = ch.basic_get("qdead", auto_ack=True)
        assert props.headers["x-death"][0]["reason"] == "rejected"
    finally:
        conn.close()


def test_delivery_limit_without_dlx_drops(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("qq", durable=True, arguments={**QUORUM, "x-delivery-limit": 1})
        ch.basic_publish("", "qq", b"x")
        for _ in range(2):
            pump(conn, lambda: count(ch, "qq", durable=True) == 1, what="the message")
            method, _p, _b = ch.basic_get("qq")
            ch.basic_nack(method.delivery_tag, requeue=True)
        pump(conn, lambda: count(ch, "qq", durable=True) == 0, what="the message to go")
        assert broker.call(lambda: broker.broker.vhosts["/"].queues["qq"].unacked) == 0
        assert ch.basic_get("qq")[0] is None                # dropped, not held somewhere
    finally:
        conn.close()


def test_quorum_queue_with_single_active_consumer(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("qsac", durable=True, arguments={**QUORUM, **SAC})
        a, b = Consumer(conn, "qsac", auto_ack=True), Consumer(conn, "qsac", auto_ack=True)
        for i in range(3):
            ch.basic_publish("", "qsac", b"%d" % i)
        pump(conn, lambda: len(a.got) == 3, what="deliveries to the active consumer")
        a.ch.close()
        ch.basic_publish("", "qsac", b"3")
        pump(conn, lambda: b.got, what="the takeover")
        assert b.bodies == [b"3"]
    finally:
        conn.close()


def test_delivery_count_header_is_a_long(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("qq", durable=True, arguments={**QUORUM, "x-delivery-limit": 5})
        worker = Consumer(conn, "qq")
        ch.basic_publish("", "qq", b"x")
        pump(conn, lambda: worker.got, what="the first delivery")
        worker.ch.basic_nack(worker.got[0][0], requeue=True)
        pump(conn, lambda: len(worker.got) == 2, what="the redelivery")
        value = worker.got[1][3]["x-delivery-count"]
        assert value == 1 and isinstance(value, pika.compat.long), type(value)
    finally:
        conn.close()


def test_dead_lettered_copy_has_no_delivery_count(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        quorum_with_dlx(ch, "qq", 1)
        ch.basic_publish("", "qq", b"x")
        for _ in range(2):
            method, _p, _b = ch.basic_get("qq")
            ch.basic_nack(method.delivery_tag, requeue=True)
        pump(conn, lambda: count(ch, "qdead") == 1, what="the dead letter")
        _m, props, _b = ch.basic_get("qdead", auto_ack=True)
        assert "x-delivery-count" not in props.headers
    finally:
        conn.close()
