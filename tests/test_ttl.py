"""Message TTL and queue expiry with real clients: per-message TTL (expiration) and queue TTL
(x-message-ttl), combined; expiry wherever the message sits in the queue (better than RabbitMQ,
which only drops expired messages at the head: not compared with RabbitMQ); TTL 0; dead-lettering
of expired messages; TTL passing while a message is unacked; x-expires; TTL across a restart.

Time-based checks wait with a deadline and assert generous bounds. The exact deadlines (to the
millisecond, on an injected clock) are tested in tests/unit/test_queue_lifecycle.py."""
import asyncio
import datetime
import time

import aio_pika
import pika
import pytest
from pamqp import body as pamqp_body, commands as C, frame as pamqp_frame, header

from .brokerthread import BrokerThread
from .rawclient import RawClient
from .helpers import connect, count, dead_queue, drain, let_time_pass, pump, queue_exists

DLX = "dlx"
DEAD = "dead"


# -- helpers -------------------------------------------------------------------------------------
def exp(ms: int) -> pika.BasicProperties:
    return pika.BasicProperties(expiration=str(ms))


def wait_deleted(broker, name: str, timeout: float = 3.0) -> float:
    """Monotonic time at which the queue was seen gone."""
    broker.wait_for(lambda: name not in broker.broker.vhosts["/"].queues, timeout=timeout,
                    what=f"queue {name} to be deleted")
    return time.monotonic()


# -- per-message and queue TTL -------------------------------------------------------------------
@pytest.mark.parametrize("how", ["expiration", "x-message-ttl"])
def test_message_expires_on_time(broker, how):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        args = {"x-dead-letter-exchange": DLX}
        if how == "x-message-ttl":
            args["x-message-ttl"] = 100
        ch.queue_declare("q", arguments=args)
        t0 = time.monotonic()
        ch.basic_publish("", "q", b"short", exp(100) if how == "expiration" else None)
        pump(conn, lambda: dead.got, timeout=2, what="the expired message")
        elapsed = dead.times[0] - t0
        assert 0.08 <= elapsed <= 1.0, elapsed
        assert dead.bodies == [b"short"]
        assert count(ch, "q") == 0
    finally:
        conn.close()


@pytest.mark.parametrize("queue_ttl,message_ttl", [(100, 5000), (5000, 100)],
                         ids=["queue-lower", "message-lower"])
def test_lower_of_queue_and_message_ttl_wins(broker, queue_ttl, message_ttl):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-message-ttl": queue_ttl,
                                         "x-dead-letter-exchange": DLX})
        t0 = time.monotonic()
        ch.basic_publish("", "q", b"m", exp(message_ttl))
        pump(conn, lambda: dead.got, timeout=3, what="the expired message")
        elapsed = dead.times[0] - t0
        assert 0.08 <= elapsed <= 1.0, elapsed
    finally:
        conn.close()


def test_longer_message_ttl_does_not_extend_queue_ttl_and_shorter_queue_ttl_applies_to_all(
        broker):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-message-ttl": 150, "x-dead-letter-exchange": DLX})
        t0 = time.monotonic()
        ch.basic_publish("", "q", b"plain")
        ch.basic_publish("", "q", b"long", exp(60000))
        ch.basic_publish("", "q", b"short", exp(50))
        pump(conn, lambda: len(dead.got) == 3, timeout=3, what="all three to expire")
        # "short" goes first although it was published last.
        assert dead.bodies[0] == b"short"
        assert sorted(dead.bodies[1:]) == [b"long", b"plain"]
        assert all(t - t0 <= 1.5 for t in dead.times)
        assert dead.times[1] - t0 >= 0.12
    finally:
        conn.close()


def test_short_ttl_behind_long_lived_message_expires_on_time(broker):
    """RabbitMQ only drops expired messages at the head of the queue; amqpd expires a message
    wherever it sits (the issue's improvement; not compared with RabbitMQ)."""
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-dead-letter-exchange": DLX})
        ch.basic_publish("", "q", b"head", exp(60000))     # long-lived, at the head
        ch.basic_publish("", "q", b"no-ttl")
        t0 = time.monotonic()
        ch.basic_publish("", "q", b"short", exp(100))
        ch.basic_publish("", "q", b"tail")
        assert count(ch, "q") == 4
        pump(conn, lambda: dead.got, timeout=2, what="the short-TTL message behind the head")
        elapsed = dead.times[0] - t0
        assert 0.08 <= elapsed <= 1.0, elapsed
        assert dead.bodies == [b"short"]
        assert dead.got[0][1].headers["x-death"][0]["reason"] == "expired"
        assert count(ch, "q") == 3          # message_count drops right away
        assert drain(ch, "q") == [b"head", b"no-ttl", b"tail"]
    finally:
        conn.close()


def test_messages_expire_in_deadline_order_not_queue_order(broker):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-dead-letter-exchange": DLX,
                                         "x-message-ttl": 60000})
        t0 = time.monotonic()
        for body, ms in [(b"c", 300), (b"a", 100), (b"keep", 60000), (b"b", 200)]:
            ch.basic_publish("", "q", body, exp(ms))
        pump(conn, lambda: len(dead.got) == 3, timeout=3, what="three expiries")
        assert dead.bodies == [b"a", b"b", b"c"]
        times = [t - t0 for t in dead.times]
        assert times[0] >= 0.08 and times[2] >= 0.25 and times[2] <= 1.5, times
        assert count(ch, "q") == 1
    finally:
        conn.close()


def test_expired_messages_without_dlx_are_dropped_and_counted_out(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("q")
        ch.basic_publish("", "q", b"stay")
        for i in range(50):
            ch.basic_publish("", "q", b"go%d" % i, exp(50))
        ch.basic_publish("", "q", b"stay too")
        assert count(ch, "q") == 52
        pump(conn, lambda: count(ch, "q") == 2, timeout=2, what="50 expiries")
        assert drain(ch, "q") == [b"stay", b"stay too"]
    finally:
        conn.close()


# -- TTL 0 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["expiration", "x-message-ttl"])
def test_ttl_zero_without_consumer_expires_at_once(broker, how):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        args = {"x-dead-letter-exchange": DLX}
        if how == "x-message-ttl":
            args["x-message-ttl"] = 0
        ch.queue_declare("q", arguments=args)
        t0 = time.monotonic()
        ch.basic_publish("", "q", b"now or never", exp(0) if how == "expiration" else None)
        pump(conn, lambda: dead.got, timeout=2, what="the TTL-0 message to be dead-lettered")
        assert dead.times[0] - t0 <= 0.5
        assert dead.got[0][1].headers["x-death"][0]["reason"] == "expired"
        assert count(ch, "q") == 0
        assert ch.basic_get("q")[0] is None
    finally:
        conn.close()


@pytest.mark.parametrize("how", ["expiration", "x-message-ttl"])
def test_ttl_zero_delivered_to_ready_consumer(broker, how):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        args = {"x-dead-letter-exchange": DLX}
        if how == "x-message-ttl":
            args["x-message-ttl"] = 0
        ch.queue_declare("q", arguments=args)
        got = []
        ch.basic_consume("q", lambda c, m, p, b: (got.append(b), c.basic_ack(m.delivery_tag)))
        for i in range(5):
            ch.basic_publish("", "q", b"%d" % i, exp(0) if how == "expiration" else None)
        pump(conn, lambda: len(got) == 5, what="TTL-0 deliveries")
        assert got == [b"0", b"1", b"2", b"3", b"4"]
        assert dead.got == []
    finally:
        conn.close()


def test_ttl_zero_not_delivered_to_consumer_without_credit(broker):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1)
        ch.queue_declare("q", arguments={"x-dead-letter-exchange": DLX})
        got = []
        ch.basic_consume("q", lambda c, m, p, b: got.append((m.delivery_tag, b)))
        ch.basic_publish("", "q", b"held")
        pump(conn, lambda: got, what="the first delivery")
        ch.basic_publish("", "q", b"ttl0", exp(0))       # the consumer is at its prefetch
        pump(conn, lambda: dead.got, what="the TTL-0 message to expire")
        assert dead.bodies == [b"ttl0"]
        ch.basic_ack(got[0][0])
        ch.basic_publish("", "q", b"after")
        pump(conn, lambda: len(got) == 2, what="the next delivery")
        assert [b for _t, b in got] == [b"held", b"after"]
    finally:
        conn.close()


def test_ttl_zero_burst_reaches_ready_consumer(broker):
    """A burst of TTL-0 publishes in one read: every one goes to the waiting consumer."""
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.call(1, C.Queue.Declare(queue="q"), C.Queue.DeclareOk)
        rc.call(1, C.Basic.Consume(queue="q", consumer_tag="c", no_ack=True), C.Basic.ConsumeOk)
        props = C.Basic.Properties(expiration="0")
        frames = []
        for _ in range(20):
            frames += [pamqp_frame.marshal(C.Basic.Publish(exchange="", routing_key="q"), 1),
                       pamqp_frame.marshal(header.ContentHeader(0, 1, props), 1),
                       pamqp_frame.marshal(pamqp_body.ContentBody(b"x"), 1)]
        rc.send(b"".join(frames))
        for _ in range(20):
            rc.expect(C.Basic.Deliver)
            rc.expect(header.ContentHeader)
            rc.expect(pamqp_body.ContentBody)


# -- dead-lettering of expired messages ----------------------------------------------------------
def test_expired_message_dead_lettered_with_x_death(broker):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.exchange_declare("src", "direct")
        ch.queue_declare("q", arguments={"x-dead-letter-exchange": DLX})
        ch.queue_bind("q", "src", "rk")
        before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        ch.basic_publish("src", "rk", b"old", pika.BasicProperties(
            expiration="100", headers={"app": "kept"}, content_type="text/plain",
            message_id="m-1", delivery_mode=2))
        pump(conn, lambda: dead.got, timeout=2, what="the expired message")
        method, props, body = dead.got[0]
        assert body == b"old"
        assert (method.exchange, method.routing_key) == (DLX, "rk")
        assert props.expiration is None                 # removed from the dead-lettered copy
        assert (props.content_type, props.message_id, props.delivery_mode) == (
            "text/plain", "m-1", 2)
        h = props.headers
        assert h["app"] == "kept"
        (death,) = h["x-death"]
        assert death["count"] == 1
        assert death["reason"] == "expired"
        assert death["queue"] == "q"
        assert death["exchange"] == "src"
        assert death["routing-keys"] == ["rk"]
        assert death["original-expiration"] == "100"
        assert isinstance(death["time"], datetime.datetime)
        now = datetime.datetime.now(datetime.timezone.utc)
        assert before - datetime.timedelta(seconds=1) <= death["time"] <= now
        assert (h["x-first-death-reason"], h["x-first-death-queue"],
                h["x-first-death-exchange"]) == ("expired", "q", "src")
        assert (h["x-last-death-reason"], h["x-last-death-queue"],
                h["x-last-death-exchange"]) == ("expired", "q", "src")
    finally:
        conn.close()


def test_queue_ttl_expiry_has_no_original_expiration(broker):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-dead-letter-exchange": DLX, "x-message-ttl": 50,
                                         "x-dead-letter-routing-key": "moved"})
        ch.basic_publish("", "q", b"x")
        pump(conn, lambda: dead.got, timeout=2, what="the expired message")
        method, props, _b = dead.got[0]
        assert method.routing_key == "moved"
        (death,) = props.headers["x-death"]
        assert death["reason"] == "expired" and death["routing-keys"] == ["q"]
        assert "original-expiration" not in death
    finally:
        conn.close()


@pytest.mark.parametrize("requeue_by", ["nack", "reject", "channel-close", "recover"])
def test_ttl_passing_while_unacked_dead_letters_on_requeue(broker, requeue_by):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-dead-letter-exchange": DLX, "x-message-ttl": 100})
        ch.basic_publish("", "q", b"slow")
        ch.basic_publish("", "q", b"fresh-later")
        method, _p, body = ch.basic_get("q")
        assert body == b"slow"
        t0 = time.monotonic()
        # While it is out with a consumer it does not expire...
        pump(conn, lambda: dead.bodies == [b"fresh-later"], timeout=2,
             what="the ready message to expire")
        let_time_pass(conn, max(0.0, t0 + 0.15 - time.monotonic()))
        assert dead.bodies == [b"fresh-later"]
        # ...but once back it is past its time: dead-lettered, not redelivered.
        if requeue_by == "nack":
            ch.basic_nack(method.delivery_tag, requeue=True)
        elif requeue_by == "reject":
            ch.basic_reject(method.delivery_tag, requeue=True)
        elif requeue_by == "recover":
            ch.basic_recover(requeue=True)
        else:
            ch.close()
            ch = conn.channel()
        pump(conn, lambda: len(dead.got) == 2, timeout=2, what="the requeued message")
        assert dead.bodies == [b"fresh-later", b"slow"]
        assert dead.got[1][1].headers["x-death"][0]["reason"] == "expired"
        assert count(ch, "q") == 0
        assert ch.basic_get("q")[0] is None
    finally:
        conn.close()


def test_unacked_message_past_its_ttl_is_still_consumed_normally(broker):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-dead-letter-exchange": DLX})
        got = []
        ch.basic_consume("q", lambda c, m, p, b: got.append(m.delivery_tag))
        ch.basic_publish("", "q", b"x", exp(50))
        pump(conn, lambda: got, what="the delivery")
        let_time_pass(conn, 0.15)
        ch.basic_ack(got[0])
        assert count(ch, "q") == 0
        let_time_pass(conn, 0.05)
        assert dead.got == []
    finally:
        conn.close()


def test_requeued_message_within_its_ttl_keeps_original_deadline(broker):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-dead-letter-exchange": DLX})
        t0 = time.monotonic()
        ch.basic_publish("", "q", b"x", exp(400))
        method, _p, _b = ch.basic_get("q")
        ch.basic_nack(method.delivery_tag, requeue=True)
        assert count(ch, "q") == 1
        pump(conn, lambda: dead.got, timeout=3, what="the expiry")
        assert 0.35 <= dead.times[0] - t0 <= 1.3
    finally:
        conn.close()


async def test_aio_pika_expiration(broker):
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch = await conn.channel()
        dlx = await ch.declare_exchange(DLX, aio_pika.ExchangeType.FANOUT)
        dead_q = await ch.declare_queue(DEAD)
        await dead_q.bind(dlx)
        q = await ch.declare_queue("aq", arguments={"x-dead-letter-exchange": DLX})
        arrived = asyncio.get_running_loop().create_future()

        async def on_dead(message: aio_pika.abc.AbstractIncomingMessage):
            async with message.process():
                if not arrived.done():
                    arrived.set_result((time.monotonic(), message))

        await dead_q.consume(on_dead)
        await ch.default_exchange.publish(aio_pika.Message(b"keep"), "aq")
        t0 = time.monotonic()
        await ch.default_exchange.publish(aio_pika.Message(b"go", expiration=0.1), "aq")
        t, message = await asyncio.wait_for(arrived, 2)
        assert 0.08 <= t - t0 <= 1.0
        assert message.body == b"go" and message.expiration is None
        assert message.headers["x-death"][0]["original-expiration"] == "100"
        declared = await ch.declare_queue("aq", passive=True)
        assert declared.declaration_result.message_count == 1
        assert q.name == "aq"


# -- invalid expiration --------------------------------------------------------------------------
@pytest.mark.parametrize("value,reason", [
    ("abc", "no_integer"), ("-1", "{value_negative,-1}"), ("1.5", '{leftover_string,".5"}'),
    ("315360000001", "{value_too_large,315360000001}"),
], ids=["letters", "negative", "fraction", "too-large"])
def test_invalid_expiration_is_406(broker, value, reason):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("q")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.basic_publish("", "q", b"x", pika.BasicProperties(expiration=value))
            ch.queue_declare("q", passive=True)
        assert (err.value.reply_code, err.value.reply_text) == (
            406, f"PRECONDITION_FAILED - invalid expiration '{value}': {reason}")
    finally:
        conn.close()


# -- x-expires -----------------------------------------------------------------------------------
def test_unused_queue_expires_even_with_messages(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        t0 = time.monotonic()
        ch.queue_declare("exp", arguments={"x-expires": 200})
        ch.basic_publish("", "exp", b"left behind")
        gone = wait_deleted(broker, "exp")
        assert 0.15 <= gone - t0 <= 2.0, gone - t0
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.queue_declare("exp", passive=True)
        assert err.value.reply_code == 404
    finally:
        conn.close()


# A consumer keeping the queue until basic.cancel: tests/unit/test_queue_lifecycle.py (exact
# to the millisecond); the channel-close path stays here.


def test_consumer_channel_closing_starts_the_expiry_clock(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("exp", arguments={"x-expires": 150})
        ch.basic_consume("exp", lambda *a: None)
        let_time_pass(conn, 0.3)
        assert queue_exists(broker, "exp")
        ch.close()
        t0 = time.monotonic()
        gone = wait_deleted(broker, "exp")
        assert 0.1 <= gone - t0 <= 2.0, gone - t0
    finally:
        conn.close()


# basic.get and redeclare resetting x-expires: tests/unit/test_queue_lifecycle.py.


# -- TTL across a restart ------------------------------------------------------------------------
def publish_and_restart(tmp_path, expiration_ms: int, wait_before_restart: float):
    """Publish a persistent message with a TTL into a durable queue, let some time pass, restart
    the broker on the same data directory. Returns (new broker, publish time)."""
    data = str(tmp_path / "data")
    first = BrokerThread(data_dir=data).start()
    try:
        conn = pika.BlockingConnection(pika.URLParameters(first.url))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("durable-ttl", durable=True, arguments={"x-message-ttl": 60000})
        t0 = time.monotonic()
        ch.basic_publish("", "durable-ttl", b"persistent",
                         pika.BasicProperties(delivery_mode=2, expiration=str(expiration_ms)))
        ch.basic_publish("", "durable-ttl", b"stays", pika.BasicProperties(delivery_mode=2))
        let_time_pass(conn, wait_before_restart)
        conn.close()
        first.wait_for(lambda: not first.server.protocols, what="client to disconnect")
    finally:
        first.stop()
    return BrokerThread(data_dir=data).start(), t0


def test_ttl_message_recovered_after_restart_still_expires(tmp_path):
    second, _t0 = publish_and_restart(tmp_path, 400, 0.0)
    try:
        conn = pika.BlockingConnection(pika.URLParameters(second.url))
        try:
            ch = conn.channel()
            assert count(ch, "durable-ttl") in (1, 2)
            pump(conn, lambda: count(ch, "durable-ttl") == 1, timeout=3,
                 what="the recovered message to expire")
            assert drain(ch, "durable-ttl") == [b"stays"]
        finally:
            conn.close()
        second.wait_for(lambda: not second.server.protocols, what="client to disconnect")
    finally:
        second.stop()


def test_ttl_deadline_not_extended_by_restart(tmp_path):
    second, t0 = publish_and_restart(tmp_path, 1000, 0.6)
    try:
        conn = pika.BlockingConnection(pika.URLParameters(second.url))
        try:
            ch = conn.channel()
            deadline = t0 + 1.5      # expiry due at t0 + 1.0
            while count(ch, "durable-ttl") != 1 and time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.02)
            assert count(ch, "durable-ttl") == 1, "expiry pushed back by the restart"
        finally:
            conn.close()
        second.wait_for(lambda: not second.server.protocols, what="client to disconnect")
    finally:
        second.stop()
