"""Dead-lettering with real clients: reject / nack without requeue send the message to the
queue's x-dead-letter-exchange with RabbitMQ's x-death history and x-first-death-* /
x-last-death-* headers; x-dead-letter-routing-key; counts that grow through a Celery-style retry
loop; automatic cycles dropped; a missing dead-letter exchange drops the message silently; the
expiration property removed from the dead-lettered copy."""
import asyncio
import datetime
import time

import aio_pika
import pika
import pika.compat
import pytest
from .helpers import connect, count, dead_queue, let_time_pass, pump

DLX = "dlx"
DEAD = "dead"


# -- helpers -------------------------------------------------------------------------------------
def take(ch, queue: str):
    method, props, body = ch.basic_get(queue)
    assert method is not None, f"{queue} is empty"
    return method, props, body


# -- reject and nack -----------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["reject", "nack"])
def test_rejected_message_dead_lettered_with_x_death(broker, how):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.exchange_declare("src", "topic")
        ch.queue_declare("work", arguments={"x-dead-letter-exchange": DLX})
        ch.queue_bind("work", "src", "orders.#")
        before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        ch.basic_publish("src", "orders.eu.new", b"order-1", pika.BasicProperties(
            headers={"trace": "abc", "n": 7}, content_type="application/json",
            correlation_id="c-1", priority=3, delivery_mode=2))
        method, _p, _b = take(ch, "work")
        if how == "reject":
            ch.basic_reject(method.delivery_tag, requeue=False)
        else:
            ch.basic_nack(method.delivery_tag, requeue=False)
        pump(conn, lambda: dead.got, what="the dead-lettered message")
        m, props, body = dead.got[0]
        assert body == b"order-1"
        assert (m.exchange, m.routing_key, m.redelivered) == (DLX, "orders.eu.new", False)
        assert (props.content_type, props.correlation_id, props.priority,
                props.delivery_mode) == ("application/json", "c-1", 3, 2)
        h = props.headers
        assert (h["trace"], h["n"]) == ("abc", 7)
        (death,) = h["x-death"]
        assert set(death) == {"count", "reason", "queue", "time", "exchange", "routing-keys"}
        assert death["count"] == 1
        assert death["reason"] == "rejected"
        assert death["queue"] == "work"
        assert death["exchange"] == "src"
        assert death["routing-keys"] == ["orders.eu.new"]
        assert isinstance(death["time"], datetime.datetime)
        assert before - datetime.timedelta(seconds=1) <= death["time"] <= \
            datetime.datetime.now(datetime.timezone.utc)
        assert (h["x-first-death-reason"], h["x-first-death-queue"],
                h["x-first-death-exchange"]) == ("rejected", "work", "src")
        assert (h["x-last-death-reason"], h["x-last-death-queue"],
                h["x-last-death-exchange"]) == ("rejected", "work", "src")
        assert count(ch, "work") == 0
    finally:
        conn.close()


def test_nack_multiple_dead_letters_all_in_order(broker):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.queue_declare("work", arguments={"x-dead-letter-exchange": DLX})
        for i in range(5):
            ch.basic_publish("", "work", b"m%d" % i)
        got = []
        ch.basic_consume("work", lambda c, m, p, b: got.append(m.delivery_tag))
        pump(conn, lambda: len(got) == 5, what="five deliveries")
        ch.basic_ack(got[1])
        ch.basic_nack(got[3], multiple=True, requeue=False)    # m0, m2, m3
        pump(conn, lambda: len(dead.got) == 3, what="three dead letters")
        assert dead.bodies == [b"m0", b"m2", b"m3"]
        ch.basic_nack(0, multiple=True, requeue=False)          # the rest: m4
        pump(conn, lambda: len(dead.got) == 4, what="the last dead letter")
        assert dead.bodies[-1] == b"m4"
    finally:
        conn.close()


def test_reject_with_requeue_is_not_dead_lettered(broker):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.queue_declare("work", arguments={"x-dead-letter-exchange": DLX})
        ch.basic_publish("", "work", b"again")
        method, _p, _b = take(ch, "work")
        ch.basic_reject(method.delivery_tag, requeue=True)
        method, _p, body = take(ch, "work")
        assert body == b"again" and method.redelivered
        ch.basic_ack(method.delivery_tag)
        assert dead.got == []
    finally:
        conn.close()


def test_dead_letter_routing_key_replaces_the_routing_key(broker):
    conn = connect(broker)
    try:
        parked = dead_queue(conn, kind="direct", queue="parked", key="parking")
        ch = conn.channel()
        ch.queue_declare("other")
        ch.queue_bind("other", DLX, "work")          # would match the original key
        ch.queue_declare("work", arguments={"x-dead-letter-exchange": DLX,
                                            "x-dead-letter-routing-key": "parking"})
        ch.basic_publish("", "work", b"x")
        method, _p, _b = take(ch, "work")
        ch.basic_reject(method.delivery_tag, requeue=False)
        pump(conn, lambda: parked.got, what="the dead letter")
        m, props, _b = parked.got[0]
        assert m.routing_key == "parking"
        assert props.headers["x-death"][0]["routing-keys"] == ["work"]    # the original
        assert props.headers["x-death"][0]["exchange"] == ""
        assert count(ch, "other") == 0
    finally:
        conn.close()


def test_dead_letter_to_default_exchange_by_routing_key(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("parking-lot")
        ch.queue_declare("work", arguments={"x-dead-letter-exchange": "",
                                            "x-dead-letter-routing-key": "parking-lot"})
        ch.basic_publish("", "work", b"x")
        method, _p, _b = take(ch, "work")
        ch.basic_nack(method.delivery_tag, requeue=False)
        pump(conn, lambda: count(ch, "parking-lot") == 1, what="the dead letter")
        method, props, body = take(ch, "parking-lot")
        assert body == b"x" and method.exchange == "" and method.routing_key == "parking-lot"
        assert props.headers["x-death"][0]["queue"] == "work"
    finally:
        conn.close()


def test_missing_dead_letter_exchange_drops_silently(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("work", arguments={"x-dead-letter-exchange": "no-such-exchange"})
        ch.basic_publish("", "work", b"lost")
        ch.basic_publish("", "work", b"next")
        method, _p, _b = take(ch, "work")
        ch.basic_reject(method.delivery_tag, requeue=False)
        # No error anywhere: the channel and connection go on, the message is gone.
        assert count(ch, "work") == 1
        method, _p, body = take(ch, "work")
        assert body == b"next"
        ch.basic_ack(method.delivery_tag)
        assert ch.is_open and conn.is_open
    finally:
        conn.close()


def test_queue_without_dlx_just_drops_rejected_messages(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("work")
        ch.basic_publish("", "work", b"x")
        method, _p, _b = take(ch, "work")
        ch.basic_reject(method.delivery_tag, requeue=False)
        assert count(ch, "work") == 0
    finally:
        conn.close()


def test_dead_letter_exchange_declared_after_the_queue_is_used(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("work", arguments={"x-dead-letter-exchange": "late"})
        ch.basic_publish("", "work", b"first")
        ch.basic_publish("", "work", b"second")
        method, _p, _b = take(ch, "work")
        ch.basic_reject(method.delivery_tag, requeue=False)      # dropped: no exchange yet
        dead = dead_queue(conn, exchange="late")
        method, _p, _b = take(ch, "work")
        ch.basic_reject(method.delivery_tag, requeue=False)
        pump(conn, lambda: dead.got, what="the dead letter")
        assert dead.bodies == [b"second"]
    finally:
        conn.close()


def test_expiration_removed_from_dead_lettered_copy(broker):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.queue_declare("work", arguments={"x-dead-letter-exchange": DLX})
        ch.basic_publish("", "work", b"x", pika.BasicProperties(expiration="60000"))
        method, props, _b = take(ch, "work")
        assert props.expiration == "60000"
        ch.basic_reject(method.delivery_tag, requeue=False)
        pump(conn, lambda: dead.got, what="the dead letter")
        assert dead.got[0][1].expiration is None
        assert dead.got[0][1].headers["x-death"][0]["reason"] == "rejected"
    finally:
        conn.close()


def test_original_expiration_recorded_for_rejected_message(broker):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.queue_declare("work", arguments={"x-dead-letter-exchange": DLX})
        ch.basic_publish("", "work", b"x", pika.BasicProperties(expiration="60000"))
        method, _p, _b = take(ch, "work")
        ch.basic_reject(method.delivery_tag, requeue=False)
        pump(conn, lambda: dead.got, what="the dead letter")
        assert dead.got[0][1].headers["x-death"][0]["original-expiration"] == "60000"
    finally:
        conn.close()


def test_x_death_count_is_a_long(broker):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.queue_declare("work", arguments={"x-dead-letter-exchange": DLX})
        ch.basic_publish("", "work", b"x")
        method, _p, _b = take(ch, "work")
        ch.basic_reject(method.delivery_tag, requeue=False)
        pump(conn, lambda: dead.got, what="the dead letter")
        count_ = dead.got[0][1].headers["x-death"][0]["count"]
        assert isinstance(count_, pika.compat.long), type(count_)   # pika: AMQP type 'l'
    finally:
        conn.close()


# -- repeated deaths -----------------------------------------------------------------------------
def test_reject_back_into_the_same_queue_counts_up(broker):
    """A queue dead-lettering into itself through rejection is not a cycle (a consumer decided
    each time): the same x-death entry counts up."""
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("self", arguments={"x-dead-letter-exchange": "",
                                            "x-dead-letter-routing-key": "self"})
        ch.basic_publish("", "self", b"boomerang")
        for n in (1, 2, 3):
            method, _p, _b = take(ch, "self")
            ch.basic_reject(method.delivery_tag, requeue=False)
            method, props, body = ch.basic_get("self", auto_ack=False)
            assert body == b"boomerang"
            assert not method.redelivered        # a new message, not a redelivery
            (death,) = props.headers["x-death"]
            assert (death["count"], death["reason"], death["queue"]) == (n, "rejected", "self")
            ch.basic_nack(method.delivery_tag, requeue=True)
    finally:
        conn.close()


def test_celery_style_retry_loop_counts_deaths(broker):
    """work --reject--> retry (x-message-ttl) --expire--> work: the loop contains a rejection,
    so it is not a cycle; both x-death entries count up, most recent first."""
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.exchange_declare("tasks", "direct")
        ch.exchange_declare("tasks.retry", "direct")
        ch.queue_declare("work", arguments={"x-dead-letter-exchange": "tasks.retry"})
        ch.queue_bind("work", "tasks", "task")
        ch.queue_declare("retry", arguments={"x-dead-letter-exchange": "tasks",
                                             "x-message-ttl": 30})
        ch.queue_bind("retry", "tasks.retry", "task")
        attempts = []

        def on_task(c, method, props, body):
            attempts.append((method, props))
            if len(attempts) < 4:
                c.basic_reject(method.delivery_tag, requeue=False)   # fail: retry later
            else:
                c.basic_ack(method.delivery_tag)

        ch.basic_consume("work", on_task)
        ch.basic_publish("tasks", "task", b"job", pika.BasicProperties(headers={"id": "j-1"}))
        pump(conn, lambda: len(attempts) == 4, timeout=5, what="four attempts")
        assert attempts[0][1].headers == {"id": "j-1"}
        for n in (1, 2, 3):
            method, props = attempts[n]
            assert (method.exchange, method.routing_key) == ("tasks", "task")
            h = props.headers
            deaths = h["x-death"]
            assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [
                ("retry", "expired", n), ("work", "rejected", n)]
            assert deaths[1]["exchange"] == "tasks" and deaths[1]["routing-keys"] == ["task"]
            assert deaths[0]["exchange"] == "tasks.retry"
            assert (h["x-first-death-reason"], h["x-first-death-queue"],
                    h["x-first-death-exchange"]) == ("rejected", "work", "tasks")
            assert (h["x-last-death-reason"], h["x-last-death-queue"],
                    h["x-last-death-exchange"]) == ("expired", "retry", "tasks.retry")
        assert count(ch, "work") == 0 and count(ch, "retry") == 0
    finally:
        conn.close()


# -- cycles --------------------------------------------------------------------------------------
def test_automatic_cycle_is_dropped(broker):
    """A queue whose expired messages dead-letter back into itself: RabbitMQ drops the message
    at the second arrival (no consumer decided anything). A second queue on the same fanout
    dead-letter exchange sees the one copy that is not a cycle."""
    conn = connect(broker)
    try:
        observer = dead_queue(conn, exchange="cycle-dlx", queue="observer")
        ch = conn.channel()
        ch.queue_declare("cyc", arguments={"x-message-ttl": 30,
                                           "x-dead-letter-exchange": "cycle-dlx"})
        ch.queue_bind("cyc", "cycle-dlx")
        ch.basic_publish("", "cyc", b"round and round")
        pump(conn, lambda: observer.got, what="the expiry")
        assert count(ch, "cyc") == 0                  # not routed back into itself
        (death,) = observer.got[0][1].headers["x-death"]
        assert (death["queue"], death["reason"], death["count"]) == ("cyc", "expired", 1)
        # Had it gone back into "cyc", it would expire again within 30 ms and show up again.
        let_time_pass(conn, 0.2)
        assert len(observer.got) == 1
        assert count(ch, "cyc") == 0
    finally:
        conn.close()


def test_automatic_cycle_through_two_queues_is_dropped(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("a", arguments={"x-message-ttl": 20, "x-dead-letter-exchange": "",
                                         "x-dead-letter-routing-key": "b"})
        ch.queue_declare("b", arguments={"x-message-ttl": 20, "x-dead-letter-exchange": "",
                                         "x-dead-letter-routing-key": "a"})
        ch.basic_publish("", "a", b"ping")
        t0 = time.monotonic()
        pump(conn, lambda: count(ch, "a") + count(ch, "b") == 0 and time.monotonic() - t0 > 0.1,
             timeout=3, what="the cycle to be broken")
        let_time_pass(conn, 0.1)
        assert count(ch, "a") + count(ch, "b") == 0
    finally:
        conn.close()


def test_expiry_cycle_with_a_rejection_in_it_is_not_dropped(broker):
    """queue q: expire -> retry (reject by consumer) -> back to q by expiry: allowed."""
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-message-ttl": 20, "x-dead-letter-exchange": "",
                                         "x-dead-letter-routing-key": "r"})
        ch.queue_declare("r", arguments={"x-dead-letter-exchange": "",
                                         "x-dead-letter-routing-key": "q"})
        ch.basic_publish("", "q", b"x")
        pump(conn, lambda: count(ch, "r") == 1, what="the expiry into r")
        method, _p, _b = take(ch, "r")
        ch.basic_reject(method.delivery_tag, requeue=False)     # back into q: allowed
        pump(conn, lambda: count(ch, "r") == 1, what="the second expiry into r")
        method, props, _b = take(ch, "r")
        assert [(d["queue"], d["reason"], d["count"]) for d in props.headers["x-death"]] == [
            ("q", "expired", 2), ("r", "rejected", 1)]
        ch.basic_ack(method.delivery_tag)
    finally:
        conn.close()


# -- aio-pika ------------------------------------------------------------------------------------
async def test_aio_pika_reject_to_dead_letter_queue(broker):
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch = await conn.channel()
        dlx = await ch.declare_exchange("aio-dlx", aio_pika.ExchangeType.DIRECT)
        parked = await ch.declare_queue("aio-parked")
        await parked.bind(dlx, "failed")
        work = await ch.declare_queue("aio-work", arguments={
            "x-dead-letter-exchange": "aio-dlx", "x-dead-letter-routing-key": "failed"})
        await ch.default_exchange.publish(
            aio_pika.Message(b"bad", headers={"attempt": 1}), "aio-work")
        incoming = await work.get(timeout=5)
        await incoming.reject(requeue=False)
        arrived = asyncio.get_running_loop().create_future()

        async def on_parked(message):
            async with message.process():
                arrived.set_result(message)

        await parked.consume(on_parked)
        message = await asyncio.wait_for(arrived, 5)
        assert message.body == b"bad" and message.routing_key == "failed"
        assert message.headers["attempt"] == 1
        death = message.headers["x-death"][0]
        assert (death["reason"], death["queue"], death["count"]) == ("rejected", "aio-work", 1)
        assert death["routing-keys"] == ["aio-work"]
        assert message.headers["x-first-death-reason"] == "rejected"
