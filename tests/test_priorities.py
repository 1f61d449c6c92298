"""Priorities with real clients: priority queues (x-max-priority: higher first, FIFO within a
priority, priorities above the maximum treated as the maximum, no priority = 0), requeue keeping
priority order, priority with TTL, consumer priorities (x-priority) together with prefetch, and a
durable priority queue recovered in priority order after a restart."""
import asyncio

import aio_pika
import pika
import pytest

from .brokerthread import BrokerThread
from .helpers import connect, count, drain, pump


# -- helpers -------------------------------------------------------------------------------------
def publish(ch, queue: str, items, persistent: bool = False) -> None:
    """items: (priority or None, body)"""
    for priority, body in items:
        ch.basic_publish("", queue, body, pika.BasicProperties(
            priority=priority, delivery_mode=2 if persistent else None))


# -- priority queues -----------------------------------------------------------------------------
def test_higher_priority_first_fifo_within_a_priority(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("pq", arguments={"x-max-priority": 10})
        publish(ch, "pq", [(1, b"a1"), (5, b"b1"), (1, b"a2"), (10, b"c1"), (5, b"b2"),
                           (0, b"z1"), (None, b"n1"), (10, b"c2"), (0, b"z2")])
        assert count(ch, "pq") == 9
        assert drain(ch, "pq") == [b"c1", b"c2", b"b1", b"b2", b"a1", b"a2",
                                     b"z1", b"n1", b"z2"]
    finally:
        conn.close()


def test_priority_above_maximum_is_the_maximum(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("pq", arguments={"x-max-priority": 5})
        publish(ch, "pq", [(9, b"a"), (5, b"b"), (255, b"c"), (4, b"d"), (6, b"e")])
        assert drain(ch, "pq") == [b"a", b"b", b"c", b"e", b"d"]
    finally:
        conn.close()


def test_no_priority_counts_as_zero(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("pq", arguments={"x-max-priority": 3})
        publish(ch, "pq", [(None, b"x"), (0, b"y"), (1, b"z"), (None, b"w")])
        assert drain(ch, "pq") == [b"z", b"x", b"y", b"w"]
    finally:
        conn.close()


@pytest.mark.parametrize("arguments", [{}, {"x-max-priority": 0}],
                         ids=["no-max-priority", "max-priority-0"])
def test_queue_without_priorities_is_fifo(broker, arguments):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("fifo", arguments=arguments)
        publish(ch, "fifo", [(1, b"a"), (9, b"b"), (None, b"c")])
        assert drain(ch, "fifo") == [b"a", b"b", b"c"]
    finally:
        conn.close()


def test_delivered_message_keeps_its_priority_property(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("pq", arguments={"x-max-priority": 2})
        publish(ch, "pq", [(7, b"capped")])
        _m, props, _b = ch.basic_get("pq", auto_ack=True)
        assert props.priority == 7           # capped for ordering only, not rewritten
    finally:
        conn.close()


def test_requeue_keeps_priority_order(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("pq", arguments={"x-max-priority": 9})
        publish(ch, "pq", [(1, b"low1"), (9, b"high1"), (1, b"low2"), (9, b"high2"),
                           (5, b"mid")])
        tags = []
        for expected in (b"high1", b"high2", b"mid", b"low1"):
            method, _p, body = ch.basic_get("pq")
            assert body == expected
            tags.append(method.delivery_tag)
        publish(ch, "pq", [(9, b"high3"), (1, b"low3")])
        ch.basic_nack(0, multiple=True, requeue=True)
        assert drain(ch, "pq", flags=True) == [
            (b"high1", True), (b"high2", True), (b"high3", False), (b"mid", True),
            (b"low1", True), (b"low2", False), (b"low3", False)]
    finally:
        conn.close()


def test_consumer_gets_the_most_urgent_next(broker):
    """A consumer with prefetch 1 busy on one message: urgent work published meanwhile jumps
    the queue."""
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1)
        ch.queue_declare("pq", arguments={"x-max-priority": 10})
        got = []
        ch.basic_consume("pq", lambda c, m, p, b: got.append((m.delivery_tag, b)))
        publish(ch, "pq", [(0, b"first")])
        pump(conn, lambda: got, what="the first delivery")
        publish(ch, "pq", [(1, b"l1"), (1, b"l2"), (8, b"urgent"), (4, b"normal")])
        ch.queue_declare("pq", passive=True, arguments={"x-max-priority": 10})
        assert len(got) == 1
        for n in range(2, 6):
            ch.basic_ack(got[-1][0])
            pump(conn, lambda: len(got) == n, what=f"delivery {n}")
        assert [b for _t, b in got] == [b"first", b"urgent", b"normal", b"l1", b"l2"]
        ch.basic_ack(got[-1][0])
    finally:
        conn.close()


def test_priority_queue_with_ttl_expires_across_levels(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.exchange_declare("dlx", "fanout")
        ch.queue_declare("dead")
        ch.queue_bind("dead", "dlx")
        ch.queue_declare("pq", arguments={"x-max-priority": 5,
                                          "x-dead-letter-exchange": "dlx"})
        ch.basic_publish("", "pq", b"h1", pika.BasicProperties(priority=5))
        ch.basic_publish("", "pq", b"short", pika.BasicProperties(priority=1,
                                                                  expiration="50"))
        ch.basic_publish("", "pq", b"h2", pika.BasicProperties(priority=5, expiration="60000"))
        ch.basic_publish("", "pq", b"z", pika.BasicProperties(priority=0))
        pump(conn, lambda: count(ch, "dead") == 1, timeout=2, what="the expiry")
        assert count(ch, "pq") == 3
        assert drain(ch, "pq") == [b"h1", b"h2", b"z"]
        assert drain(ch, "dead") == [b"short"]
    finally:
        conn.close()


def test_drop_head_in_priority_queue_keeps_the_limit(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("pq", arguments={"x-max-priority": 5, "x-max-length": 3})
        publish(ch, "pq", [(1, b"a"), (5, b"b"), (1, b"c"), (5, b"d"), (3, b"e")])
        assert count(ch, "pq") == 3
        # The head of a priority queue is its most urgent message: that is what drop-head
        # drops (as RabbitMQ does), and the rest comes out in priority order.
        assert drain(ch, "pq") == [b"e", b"a", b"c"]
    finally:
        conn.close()


async def test_aio_pika_priority_queue(broker):
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue("apq", arguments={"x-max-priority": 10})
        for priority, body in [(1, b"low"), (10, b"top"), (5, b"mid"), (10, b"top2")]:
            await ch.default_exchange.publish(aio_pika.Message(body, priority=priority), "apq")
        got = []
        done = asyncio.Event()

        async def on_message(message):
            async with message.process():
                got.append(message.body)
                if len(got) == 4:
                    done.set()

        await q.consume(on_message)
        await asyncio.wait_for(done.wait(), 5)
        assert got == [b"top", b"top2", b"mid", b"low"]


# -- consumer priorities -------------------------------------------------------------------------
def test_consumer_priorities_with_prefetch(broker):
    conn = connect(broker)
    try:
        high, low = conn.channel(), conn.channel()
        high.basic_qos(prefetch_count=2)
        high.queue_declare("work")
        got = {"high": [], "low": []}
        high.basic_consume("work", lambda c, m, p, b: got["high"].append((m.delivery_tag, b)),
                           arguments={"x-priority": 10})
        low.basic_consume("work", lambda c, m, p, b: got["low"].append((m.delivery_tag, b)),
                          arguments={"x-priority": 1})
        for i in range(6):
            high.basic_publish("", "work", b"m%d" % i)
        pump(conn, lambda: len(got["high"]) + len(got["low"]) == 6, what="six deliveries")
        # The high-priority consumer takes what its prefetch allows, the rest goes lower.
        assert [b for _t, b in got["high"]] == [b"m0", b"m1"]
        assert [b for _t, b in got["low"]] == [b"m2", b"m3", b"m4", b"m5"]
        high.basic_ack(got["high"][0][0])
        high.basic_publish("", "work", b"m6")
        high.basic_publish("", "work", b"m7")
        pump(conn, lambda: len(got["high"]) + len(got["low"]) == 8, what="two more")
        assert [b for _t, b in got["high"]][2:] == [b"m6"]
        assert [b for _t, b in got["low"]][4:] == [b"m7"]
        low.basic_ack(0, multiple=True)
        high.basic_ack(0, multiple=True)
    finally:
        conn.close()


def test_low_priority_consumer_served_only_when_higher_ones_are_full(broker):
    conn = connect(broker)
    try:
        a, b, c = conn.channel(), conn.channel(), conn.channel()
        for ch in (a, b):
            ch.basic_qos(prefetch_count=1)
        a.queue_declare("work")
        got = []
        a.basic_consume("work", lambda ch, m, p, body: got.append(("a", body)),
                        arguments={"x-priority": 5})
        b.basic_consume("work", lambda ch, m, p, body: got.append(("b", body)),
                        arguments={"x-priority": 5})
        c.basic_consume("work", lambda ch, m, p, body: got.append(("c", body)), auto_ack=True)
        for i in range(4):
            a.basic_publish("", "work", b"%d" % i)
        pump(conn, lambda: len(got) == 4, what="four deliveries")
        assert sorted(who for who, _b in got[:2]) == ["a", "b"]      # the two priority-5 ones
        assert [who for who, _b in got[2:]] == ["c", "c"]            # then the default one
    finally:
        conn.close()


def test_cancelled_high_priority_consumer_hands_over(broker):
    conn = connect(broker)
    try:
        high, low = conn.channel(), conn.channel()
        high.queue_declare("work")
        got = []
        tag = high.basic_consume("work", lambda c, m, p, b: got.append(("high", b)),
                                 auto_ack=True, arguments={"x-priority": 10})
        low.basic_consume("work", lambda c, m, p, b: got.append(("low", b)), auto_ack=True)
        high.basic_publish("", "work", b"1")
        pump(conn, lambda: got, what="the first delivery")
        high.basic_cancel(tag)
        high.basic_publish("", "work", b"2")
        pump(conn, lambda: len(got) == 2, what="the second delivery")
        assert got == [("high", b"1"), ("low", b"2")]
    finally:
        conn.close()


# -- durability ----------------------------------------------------------------------------------
def test_durable_priority_queue_recovered_in_priority_order(tmp_path):
    data = str(tmp_path / "data")
    args = {"x-max-priority": 10, "x-message-ttl": 60000, "x-max-length": 100}
    first = BrokerThread(data_dir=data).start()
    try:
        conn = pika.BlockingConnection(pika.URLParameters(first.url))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("dpq", durable=True, arguments=args)
        publish(ch, "dpq", [(1, b"a1"), (9, b"c1"), (5, b"b1"), (1, b"a2"), (9, b"c2"),
                            (None, b"z")], persistent=True)
        method, _p, body = ch.basic_get("dpq")        # out when the broker stops
        assert body == b"c1"
        conn.close()
        first.wait_for(lambda: not first.server.protocols, what="client to disconnect")
    finally:
        first.stop()
    second = BrokerThread(data_dir=data).start()
    try:
        conn = pika.BlockingConnection(pika.URLParameters(second.url))
        try:
            ch = conn.channel()
            ch.queue_declare("dpq", durable=True, arguments=args)     # same arguments
            assert drain(ch, "dpq", flags=True) == [
                (b"c1", True), (b"c2", False), (b"b1", False), (b"a1", False), (b"a2", False),
                (b"z", False)]
            # Still a priority queue after recovery.
            publish(ch, "dpq", [(2, b"later-low"), (8, b"later-high")], persistent=True)
            assert drain(ch, "dpq") == [b"later-high", b"later-low"]
        finally:
            conn.close()
        second.wait_for(lambda: not second.server.protocols, what="client to disconnect")
    finally:
        second.stop()
        second.cleanup()
