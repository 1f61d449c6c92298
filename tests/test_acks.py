"""Consumer acknowledgements: ack / nack / reject with multiple and requeue, requeue position and
the redelivered flag, unknown delivery tags, ack(0, multiple) and basic.recover."""

import pika
import pytest
from pamqp import commands as C

from .rawclient import RawClient
from .helpers import connect, drain, pump, unacked


# -- helpers -------------------------------------------------------------------------------------
def fill(ch, queue: str, n: int) -> None:
    ch.queue_declare(queue)
    for i in range(n):
        ch.basic_publish("", queue, b"m%d" % i)


def raw_get(rc: RawClient, channel: int, queue: str, n: int) -> list:
    out = []
    for _ in range(n):
        rc.method(channel, C.Basic.Get(queue=queue))
        method, _, data = rc.read_delivery(C.Basic.GetOk)
        out.append((method.delivery_tag, data))
    return out


def expect_channel_close(rc: RawClient, code: int):
    close = rc.expect(C.Channel.Close)
    assert close.reply_code == code, close
    return close


class Collector:
    def __init__(self):
        self.got = []     # (tag, body, redelivered)

    def __call__(self, ch, method, props, body):
        self.got.append((method.delivery_tag, body, method.redelivered))


# -- ack -----------------------------------------------------------------------------------------
def test_ack_single_and_multiple(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        fill(ch, "ack", 6)
        c = Collector()
        ch.basic_consume("ack", c)
        pump(conn, lambda: len(c.got) == 6)
        assert [t for t, _, _ in c.got] == [1, 2, 3, 4, 5, 6]   # tags start at 1, per channel
        ch.basic_ack(2)                           # single
        ch.basic_ack(4, multiple=True)            # 1, 3, 4
        ch.queue_declare("ack", passive=True)     # round trip: the acks are processed
        assert unacked(broker, "ack") == 2
        ch.close()
        # Only the unacked ones (m4, m5) come back, redelivered.
        ch2 = conn.channel()
        assert drain(ch2, "ack", flags=True) == [(b"m4", True), (b"m5", True)]
    finally:
        conn.close()


def test_ack_zero_multiple_acks_everything(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        fill(ch, "ack0", 5)
        c = Collector()
        ch.basic_consume("ack0", c)
        pump(conn, lambda: len(c.got) == 5)
        ch.basic_ack(0, multiple=True)
        ch.queue_declare("ack0", passive=True)
        assert unacked(broker, "ack0") == 0
        # Nothing outstanding: ack(0, multiple) is still fine.
        ch.basic_ack(0, multiple=True)
        ch.close()
        ch2 = conn.channel()
        assert ch2.queue_declare("ack0", passive=True).method.message_count == 0
    finally:
        conn.close()


def test_delivery_tags_shared_by_get_and_consume(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        fill(ch, "tags", 4)
        m1, _, _ = ch.basic_get("tags")
        m2, _, _ = ch.basic_get("tags")
        c = Collector()
        ch.basic_consume("tags", c)
        pump(conn, lambda: len(c.got) == 2)
        assert (m1.delivery_tag, m2.delivery_tag) == (1, 2)
        assert [t for t, _, _ in c.got] == [3, 4]
        other = conn.channel()                    # tags are per channel
        fill(other, "tags2", 1)
        m, _, _ = other.basic_get("tags2")
        assert m.delivery_tag == 1
        ch.basic_ack(0, multiple=True)
        other.basic_ack(1)
    finally:
        conn.close()


# -- nack / reject -------------------------------------------------------------------------------
def test_reject_requeue_goes_back_to_original_position(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        fill(ch, "pos", 6)
        tags = [ch.basic_get("pos")[0].delivery_tag for _ in range(4)]   # m0..m3
        assert tags == [1, 2, 3, 4]
        # Requeue m1 first, then m2: by original position the queue reads m1 m2 m4 m5
        # (pushing each to the head would give m2 m1 ...).
        ch.basic_reject(2, requeue=True)
        ch.basic_reject(3, requeue=True)
        # m3 is dropped, m0 acked.
        ch.basic_reject(4, requeue=False)
        ch.basic_ack(1)
        assert drain(ch, "pos", flags=True) == [(b"m1", True), (b"m2", True), (b"m4", False),
                                      (b"m5", False)]
        assert unacked(broker, "pos") == 0
    finally:
        conn.close()


def test_nack_multiple_requeue_redelivers_in_order_to_consumer(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        fill(ch, "nack", 5)
        c = Collector()
        ch.basic_consume("nack", c)
        pump(conn, lambda: len(c.got) == 5)
        assert all(not r for _, _, r in c.got)
        ch.basic_ack(2)
        ch.basic_nack(4, multiple=True, requeue=True)    # m0, m2, m3 (m1 was acked)
        pump(conn, lambda: len(c.got) == 8)
        assert c.got[5:] == [(6, b"m0", True), (7, b"m2", True), (8, b"m3", True)]
        # The old tags are gone; the new ones and m4 (tag 5) are outstanding.
        ch.basic_nack(0, multiple=True, requeue=False)
        ch.queue_declare("nack", passive=True)
        assert unacked(broker, "nack") == 0
        ch.close()
        ch2 = conn.channel()
        assert drain(ch2, "nack", flags=True) == []
    finally:
        conn.close()


def test_nack_and_reject_without_requeue_drop(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        fill(ch, "drop", 4)
        for _ in range(4):
            ch.basic_get("drop")
        ch.basic_nack(2, multiple=True, requeue=False)   # m0, m1
        ch.basic_reject(3, requeue=False)                # m2
        ch.basic_nack(4, requeue=True)                   # m3 back
        assert drain(ch, "drop", flags=True) == [(b"m3", True)]
        assert unacked(broker, "drop") == 0
    finally:
        conn.close()


def test_requeue_of_messages_behind_ready_ones(broker):
    """A requeued message lands by its original position even with messages ahead of it."""
    conn = connect(broker)
    try:
        ch = conn.channel()
        fill(ch, "mid", 3)
        ch.basic_get("mid")                   # m0, tag 1
        ch.basic_get("mid")                   # m1, tag 2
        ch2 = conn.channel()
        ch2.basic_reject(ch2.basic_get("mid")[0].delivery_tag, requeue=True)   # m2 back
        ch.basic_nack(2, requeue=True)        # m1 back, ahead of m2
        ch.basic_nack(1, requeue=True)        # m0 back, at the head
        assert drain(ch, "mid", flags=True) == [(b"m0", True), (b"m1", True), (b"m2", True)]
    finally:
        conn.close()


# -- unknown delivery tags -----------------------------------------------------------------------
@pytest.mark.parametrize("method,method_id", [
    (C.Basic.Ack(delivery_tag=99), 80),
    (C.Basic.Nack(delivery_tag=99), 120),
    (C.Basic.Reject(delivery_tag=99), 90),
    (C.Basic.Ack(delivery_tag=0), 80),
])
def test_unknown_delivery_tag_is_406(broker, method, method_id):
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.call(1, C.Queue.Declare(queue="unk"), C.Queue.DeclareOk)
        rc.method(1, method)
        close = expect_channel_close(rc, 406)
        tag = method.delivery_tag
        assert close.reply_text == f"PRECONDITION_FAILED - unknown delivery tag {tag}"
        assert (close.class_id, close.method_id) == (60, method_id)
        rc.method(1, C.Channel.CloseOk())
        rc.open_channel(1)                    # the connection survives
        rc.call(1, C.Queue.Declare(queue="unk", passive=True), C.Queue.DeclareOk)


def test_double_ack_is_406_and_requeues_the_rest(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        fill(ch, "dbl", 3)
        c = Collector()
        ch.basic_consume("dbl", c)
        pump(conn, lambda: len(c.got) == 3)
        ch.basic_ack(1)
        ch.basic_ack(1)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.queue_declare("dbl", passive=True)
        assert err.value.reply_code == 406
        assert err.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 1"
        # The channel error released m1 and m2 back to the queue, redelivered.
        ch2 = conn.channel()
        assert drain(ch2, "dbl", flags=True) == [(b"m1", True), (b"m2", True)]
    finally:
        conn.close()


def test_tag_from_another_channel_is_406(broker):
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.open_channel(2)
        rc.call(1, C.Queue.Declare(queue="xch"), C.Queue.DeclareOk)
        rc.publish(1, b"a", routing_key="xch")
        assert raw_get(rc, 1, "xch", 1) == [(1, b"a")]
        rc.method(2, C.Basic.Ack(delivery_tag=1))
        close = expect_channel_close(rc, 406)
        assert close.reply_text == "PRECONDITION_FAILED - unknown delivery tag 1"
        rc.method(2, C.Channel.CloseOk())
        # Channel 1 still owns it.
        rc.method(1, C.Basic.Ack(delivery_tag=1))
        rc.call(1, C.Basic.Qos(), C.Basic.QosOk)
    assert unacked(broker, "xch") == 0


@pytest.mark.parametrize("first,tag", [(None, 9), ("ack3", 3)], ids=["beyond", "acked"])
def test_multiple_ack_of_unknown_tag_is_406(broker, first, tag):
    """RabbitMQ (rabbit_channel:collect_acks) walks the unacked list looking for the exact tag
    even with multiple=true; if it is not there: 406, and nothing is acked."""
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.call(1, C.Queue.Declare(queue="mult"), C.Queue.DeclareOk)
        for i in range(3):
            rc.publish(1, b"m%d" % i, routing_key="mult")
        assert [t for t, _ in raw_get(rc, 1, "mult", 3)] == [1, 2, 3]
        if first == "ack3":
            rc.method(1, C.Basic.Ack(delivery_tag=3))
        rc.method(1, C.Basic.Ack(delivery_tag=tag, multiple=True))
        rc.method(1, C.Basic.Qos())
        _ch, frame = rc.recv()
        assert isinstance(frame, C.Channel.Close), frame
        assert frame.reply_code == 406
        assert frame.reply_text == f"PRECONDITION_FAILED - unknown delivery tag {tag}"


# -- basic.recover -------------------------------------------------------------------------------
def test_recover_requeue_true_redelivers(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        fill(ch, "recover", 3)
        c = Collector()
        ch.basic_consume("recover", c)
        pump(conn, lambda: len(c.got) == 3)
        ch.basic_ack(2)
        ch.basic_recover(requeue=True)
        pump(conn, lambda: len(c.got) == 5)
        assert c.got == [(1, b"m0", False), (2, b"m1", False), (3, b"m2", False),
                         (4, b"m0", True), (5, b"m2", True)]
        ch.basic_ack(5, multiple=True)
        ch.queue_declare("recover", passive=True)
        assert unacked(broker, "recover") == 0
        # The pre-recover tags are no longer known.
        ch.basic_ack(1)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.queue_declare("recover", passive=True)
        assert err.value.reply_code == 406
    finally:
        conn.close()


def test_recover_requeue_true_raw_and_to_other_consumers(broker):
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.open_channel(2)
        rc.call(1, C.Queue.Declare(queue="rec2"), C.Queue.DeclareOk)
        for i in range(2):
            rc.publish(1, b"m%d" % i, routing_key="rec2")
        assert raw_get(rc, 1, "rec2", 2) == [(1, b"m0"), (2, b"m1")]
        rc.call(2, C.Basic.Consume(queue="rec2", consumer_tag="other"), C.Basic.ConsumeOk)
        rc.call(1, C.Basic.Recover(requeue=True), C.Basic.RecoverOk)
        # basic.get deliveries have no consumer to go back to: they go to the queue and on to
        # the other channel's consumer, redelivered, in order.
        d1, _, b1 = rc.read_delivery()
        d2, _, b2 = rc.read_delivery()
        assert (b1, d1.redelivered, d1.delivery_tag) == (b"m0", True, 1)
        assert (b2, d2.redelivered, d2.delivery_tag) == (b"m1", True, 2)


@pytest.mark.parametrize("method,method_id", [
    ("Recover", 110),
    ("RecoverAsync", 100),
], ids=["recover", "recover-async"])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")     # pamqp: recover-async
def test_recover_requeue_false_is_540(broker, method, method_id):
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.method(1, getattr(C.Basic, method)(requeue=False))
        close = rc.expect(C.Connection.Close)
        assert close.reply_code == 540
        assert close.reply_text == "NOT_IMPLEMENTED - requeue=false"
        assert (close.class_id, close.method_id) == (60, method_id)
        rc.method(0, C.Connection.CloseOk())
        assert rc.is_closed()


def test_recover_requeue_false_pika(broker):
    conn = connect(broker)
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as err:
        ch.basic_recover(requeue=False)
    assert err.value.reply_code == 540
    assert conn.is_closed
