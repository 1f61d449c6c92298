"""Queue length limits and admission with real clients: x-max-length and x-max-length-bytes with
x-overflow drop-head (oldest dropped / dead-lettered as maxlen), reject-publish (publisher gets
basic.nack under confirms), reject-publish-dlx (nacked and dead-lettered); unacked messages do not
count toward a limit. And queue-level deduplication (x-message-deduplication, semantics of the
rabbitmq-message-deduplication plugin)."""

import aio_pika
import pika
import pytest
from pamqp import commands as C

from .rawclient import RawClient, publish_frames
from .helpers import connect, count, dead_queue, drain, pump

DLX = "dlx"
DEAD = "dead"


# -- helpers -------------------------------------------------------------------------------------
def publish_confirmed(ch, queue: str, body: bytes, props=None) -> bool:
    """True when the broker acked the publish, False when it nacked it."""
    try:
        ch.basic_publish("", queue, body, props)
        return True
    except pika.exceptions.NackError:
        return False


def burst(rc: RawClient, queue: str, n: int) -> None:
    """n one-byte publishes in a single write (one read on the broker side)."""
    rc.send(publish_frames(1, b"x", routing_key=queue) * n)


def confirms(rc: RawClient, n: int) -> tuple[set, set]:
    """Read confirms until n publishes are settled: (acked seqs, nacked seqs)."""
    acked, nacked, done = set(), set(), 0
    while done < n:
        _ch, frame = rc.recv()
        if isinstance(frame, (C.Basic.Ack, C.Basic.Nack)):
            target = acked if isinstance(frame, C.Basic.Ack) else nacked
            settled = acked | nacked
            if frame.multiple:
                new = {t for t in range(1, frame.delivery_tag + 1) if t not in settled}
            else:
                new = {frame.delivery_tag}
            target |= new
            done += len(new)
    return acked, nacked


# -- drop-head -----------------------------------------------------------------------------------
def test_drop_head_max_length_dead_letters_oldest(broker):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-max-length": 3, "x-dead-letter-exchange": DLX})
        for i in range(5):
            ch.basic_publish("", "q", b"m%d" % i)
        assert count(ch, "q") == 3
        pump(conn, lambda: len(dead.got) == 2, what="two dropped messages")
        assert dead.bodies == [b"m0", b"m1"]
        for _m, props, _b in dead.got:
            (death,) = props.headers["x-death"]
            assert (death["reason"], death["queue"], death["count"]) == ("maxlen", "q", 1)
            assert death["exchange"] == "" and death["routing-keys"] == ["q"]
            assert props.headers["x-first-death-reason"] == "maxlen"
        assert drain(ch, "q") == [b"m2", b"m3", b"m4"]
    finally:
        conn.close()


def test_drop_head_without_dlx_just_drops(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-max-length": 2, "x-overflow": "drop-head"})
        for i in range(6):
            ch.basic_publish("", "q", b"m%d" % i)
        assert drain(ch, "q") == [b"m4", b"m5"]
    finally:
        conn.close()


def test_drop_head_max_length_bytes(broker):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-max-length-bytes": 10,
                                         "x-dead-letter-exchange": DLX})
        for body in (b"aaaa", b"bbbb", b"cccc"):       # 12 bytes > 10: the oldest goes
            ch.basic_publish("", "q", body)
        assert count(ch, "q") == 2
        ch.basic_publish("", "q", b"d" * 10)           # needs the whole budget
        assert count(ch, "q") == 1
        ch.basic_publish("", "q", b"e" * 11)           # larger than the limit: itself dropped
        assert count(ch, "q") == 0
        pump(conn, lambda: len(dead.got) == 5, what="five dropped messages")
        assert dead.bodies == [b"aaaa", b"bbbb", b"cccc", b"d" * 10, b"e" * 11]
        assert {p.headers["x-death"][0]["reason"] for _m, p, _b in dead.got} == {"maxlen"}
    finally:
        conn.close()


def test_both_limits_apply(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-max-length": 3, "x-max-length-bytes": 6})
        for body in (b"a", b"b", b"c", b"d"):
            ch.basic_publish("", "q", body)
        assert count(ch, "q") == 3                      # by count
        ch.basic_publish("", "q", b"eeeee")             # b,c,d,eeeee: by count, then bytes
        assert drain(ch, "q") == [b"d", b"eeeee"]
    finally:
        conn.close()


@pytest.mark.parametrize("overflow", ["drop-head", "reject-publish"])
def test_unacked_messages_do_not_count(broker, overflow):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("q", arguments={"x-max-length": 1, "x-overflow": overflow})
        assert publish_confirmed(ch, "q", b"first")
        method, _p, body = ch.basic_get("q")               # out, unacked
        assert body == b"first"
        assert publish_confirmed(ch, "q", b"second")       # the queue holds 0 ready: fits
        assert count(ch, "q") == 1
        assert publish_confirmed(ch, "q", b"third") == (overflow == "drop-head")
        assert count(ch, "q") == 1
        ch.basic_ack(method.delivery_tag)
        expected = [b"third"] if overflow == "drop-head" else [b"second"]
        assert drain(ch, "q") == expected
    finally:
        conn.close()


def test_requeue_over_the_limit_with_reject_publish_keeps_both(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        ch.basic_publish("", "q", b"first")
        method, _p, _b = ch.basic_get("q")
        ch.basic_publish("", "q", b"second")
        ch.basic_nack(method.delivery_tag, requeue=True)   # 2 ready: over, but nothing refused
        assert count(ch, "q") == 2
        assert drain(ch, "q") == [b"first", b"second"]
    finally:
        conn.close()


def test_requeue_over_the_limit_with_drop_head_drops_the_head(broker):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-max-length": 1, "x-dead-letter-exchange": DLX})
        ch.basic_publish("", "q", b"first")
        method, _p, _b = ch.basic_get("q")
        ch.basic_publish("", "q", b"second")
        ch.basic_nack(method.delivery_tag, requeue=True)
        assert count(ch, "q") == 1
        pump(conn, lambda: dead.got, timeout=1, what="the dropped head")
        assert dead.bodies == [b"first"]
        assert dead.got[0][1].headers["x-death"][0]["reason"] == "maxlen"
        assert drain(ch, "q") == [b"second"]
    finally:
        conn.close()


# -- reject-publish ------------------------------------------------------------------------------
def test_reject_publish_nacks_with_pika(broker):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("q", arguments={"x-max-length": 2, "x-overflow": "reject-publish",
                                         "x-dead-letter-exchange": DLX})
        assert [publish_confirmed(ch, "q", b"m%d" % i) for i in range(4)] == [
            True, True, False, False]
        assert count(ch, "q") == 2
        ch.basic_get("q", auto_ack=True)
        assert publish_confirmed(ch, "q", b"room again")
        assert drain(ch, "q") == [b"m1", b"room again"]
        assert dead.got == []           # reject-publish does not dead-letter
    finally:
        conn.close()


def test_reject_publish_nack_frames(broker):
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.call(1, C.Queue.Declare(queue="q", arguments={"x-max-length-bytes": 2,
                                                         "x-overflow": "reject-publish"}),
                C.Queue.DeclareOk)
        rc.call(1, C.Confirm.Select(), C.Confirm.SelectOk)
        for _ in range(4):
            rc.publish(1, b"x", routing_key="q")
        acked, nacked = confirms(rc, 4)
        assert (acked, nacked) == ({1, 2}, {3, 4})
        # With nothing else outstanding, RabbitMQ may set multiple on the nack (it covers only
        # settled tags then): only the tag matters.
        rc.publish(1, b"y", routing_key="q")
        nack = rc.expect(C.Basic.Nack)
        assert nack.delivery_tag == 5
        ok = rc.call(1, C.Queue.Declare(queue="q", passive=True), C.Queue.DeclareOk)
        assert ok.message_count == 2


def test_reject_publish_without_confirms_drops_silently(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        ch.basic_publish("", "q", b"kept")
        ch.basic_publish("", "q", b"refused")
        assert drain(ch, "q") == [b"kept"]
        assert ch.is_open
    finally:
        conn.close()


def test_reject_publish_dlx_nacks_and_dead_letters(broker):
    conn = connect(broker)
    try:
        dead = dead_queue(conn)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare("src", "direct")
        ch.queue_declare("q", arguments={"x-max-length": 1,
                                         "x-overflow": "reject-publish-dlx",
                                         "x-dead-letter-exchange": DLX})
        ch.queue_bind("q", "src", "k")
        ch.basic_publish("src", "k", b"in")
        with pytest.raises(pika.exceptions.NackError):
            ch.basic_publish("src", "k", b"out", pika.BasicProperties(expiration="60000"))
        pump(conn, lambda: dead.got, what="the dead-lettered refusal")
        method, props, body = dead.got[0]
        assert body == b"out" and method.routing_key == "k"
        assert props.expiration is None
        (death,) = props.headers["x-death"]
        assert (death["reason"], death["queue"], death["exchange"], death["routing-keys"]) == (
            "maxlen", "q", "src", ["k"])
        assert drain(ch, "q") == [b"in"]
    finally:
        conn.close()


def test_reject_publish_in_one_queue_nacks_but_others_get_it(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare("fan", "fanout")
        ch.queue_declare("full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        ch.queue_declare("open")
        ch.queue_bind("full", "fan")
        ch.queue_bind("open", "fan")
        ch.basic_publish("fan", "", b"one")
        with pytest.raises(pika.exceptions.NackError):
            ch.basic_publish("fan", "", b"two")
        assert drain(ch, "full") == [b"one"]
        assert drain(ch, "open") == [b"one", b"two"]
    finally:
        conn.close()


async def test_aio_pika_reject_publish(broker):
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        await ch.declare_queue("aq", arguments={"x-max-length": 1,
                                                "x-overflow": "reject-publish"})
        await ch.default_exchange.publish(aio_pika.Message(b"a"), "aq")
        with pytest.raises(aio_pika.exceptions.DeliveryError):
            await ch.default_exchange.publish(aio_pika.Message(b"b"), "aq")
        declared = await ch.declare_queue("aq", passive=True)
        assert declared.declaration_result.message_count == 1


# -- limits and a consumer that is keeping up ----------------------------------------------------
def test_max_length_zero_still_delivers_to_waiting_consumer(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-max-length": 0})
        got = []
        ch.basic_consume("q", lambda c, m, p, b: got.append(b), auto_ack=True)
        ch.basic_publish("", "q", b"straight through")
        pump(conn, lambda: got, timeout=1, what="the delivery")
        assert got == [b"straight through"]
    finally:
        conn.close()


def test_burst_to_limited_queue_with_ready_consumer_drops_nothing(broker):
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.call(1, C.Queue.Declare(queue="q", arguments={"x-max-length": 1}), C.Queue.DeclareOk)
        rc.call(1, C.Basic.Consume(queue="q", consumer_tag="c", no_ack=True), C.Basic.ConsumeOk)
        burst(rc, "q", 10)
        delivered = 0
        try:
            while delivered < 10:
                _ch, frame = rc.recv(1.0)
                delivered += isinstance(frame, C.Basic.Deliver)
        except TimeoutError:
            pass
        assert delivered == 10


def test_burst_to_reject_publish_queue_with_ready_consumer_nacks_nothing(broker):
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.call(1, C.Queue.Declare(queue="q", arguments={"x-max-length": 1,
                                                         "x-overflow": "reject-publish"}),
                C.Queue.DeclareOk)
        rc.call(1, C.Confirm.Select(), C.Confirm.SelectOk)
        rc.call(1, C.Basic.Consume(queue="q", consumer_tag="c", no_ack=True), C.Basic.ConsumeOk)
        burst(rc, "q", 10)
        acked, nacked = confirms(rc, 10)
        assert nacked == set()


# -- queue-level deduplication -------------------------------------------------------------------
def dedup(key) -> pika.BasicProperties:
    return pika.BasicProperties(headers={"x-deduplication-header": key})


def test_duplicate_not_enqueued_while_first_is_in_queue(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("dd", arguments={"x-message-deduplication": True})
        assert publish_confirmed(ch, "dd", b"first", dedup("order-1"))
        assert publish_confirmed(ch, "dd", b"retry", dedup("order-1"))   # acked, not stored
        assert publish_confirmed(ch, "dd", b"other", dedup("order-2"))
        assert publish_confirmed(ch, "dd", b"plain")                      # no header
        assert publish_confirmed(ch, "dd", b"plain")
        assert count(ch, "dd") == 4
        assert drain(ch, "dd") == [b"first", b"other", b"plain", b"plain"]
        # Consumed (auto-ack): the id can be used again.
        ch.basic_publish("", "dd", b"again", dedup("order-1"))
        assert drain(ch, "dd") == [b"again"]
    finally:
        conn.close()


def test_duplicate_refused_while_unacked_and_accepted_after_ack(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("dd", arguments={"x-message-deduplication": True})
        ch.basic_publish("", "dd", b"v1", dedup(42))
        method, _p, _b = ch.basic_get("dd")                # out, unacked: still "in the queue"
        ch.basic_publish("", "dd", b"v2", dedup(42))
        assert count(ch, "dd") == 0
        ch.basic_nack(method.delivery_tag, requeue=True)   # back: still the one copy
        ch.basic_publish("", "dd", b"v3", dedup(42))
        assert count(ch, "dd") == 1
        method, _p, body = ch.basic_get("dd")
        assert body == b"v1" and method.redelivered
        ch.basic_ack(method.delivery_tag)
        ch.basic_publish("", "dd", b"v4", dedup(42))
        assert drain(ch, "dd") == [b"v4"]
    finally:
        conn.close()


def test_rejected_or_expired_message_frees_its_id(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("dd", arguments={"x-message-deduplication": True})
        ch.basic_publish("", "dd", b"v1", dedup("k"))
        method, _p, _b = ch.basic_get("dd")
        ch.basic_reject(method.delivery_tag, requeue=False)
        ch.basic_publish("", "dd", b"v2", pika.BasicProperties(
            headers={"x-deduplication-header": "k"}, expiration="30"))
        pump(conn, lambda: count(ch, "dd") == 0, timeout=2, what="the expiry")
        ch.basic_publish("", "dd", b"v3", dedup("k"))
        assert drain(ch, "dd") == [b"v3"]
    finally:
        conn.close()


def test_purge_frees_ids_and_queues_without_the_flag_do_not_deduplicate(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("dd", arguments={"x-message-deduplication": True})
        ch.queue_declare("plain", arguments={"x-message-deduplication": False})
        for q in ("dd", "plain"):
            ch.basic_publish("", q, b"a", dedup("same"))
            ch.basic_publish("", q, b"b", dedup("same"))
        assert (count(ch, "dd"), count(ch, "plain")) == (1, 2)
        ch.queue_purge("dd")
        ch.basic_publish("", "dd", b"c", dedup("same"))
        assert drain(ch, "dd") == [b"c"]
    finally:
        conn.close()


async def test_aio_pika_retry_after_lost_confirm_makes_no_second_copy(broker):
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        q = await ch.declare_queue("adq", arguments={"x-message-deduplication": True})
        for _ in range(3):     # the producer retries the same message
            await ch.default_exchange.publish(
                aio_pika.Message(b"payment", headers={"x-deduplication-header": "pay-7"}),
                "adq")
        declared = await ch.declare_queue("adq", passive=True)
        assert declared.declaration_result.message_count == 1
        message = await q.get(timeout=5)
        await message.ack()
