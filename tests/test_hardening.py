"""Regression tests for what probing a running broker found (issue 10): no operation stalls
every client, nothing is sent on a channel after its close-ok, names and logins that used to
end in 541, what a queue deletion tells its own consumer.

Stalls are measured the way a user notices them: an unrelated client's round trip while the
big operation runs. The bounds are generous (the machine is shared and noisy); the stalls they
guard against were seconds long.
"""
import gc
import threading
import time

import kombu
import pika
import pytest
from pamqp import commands as C
from pamqp import encode as pamqp_encode

from .brokerthread import BrokerThread
from .rawclient import RawClient
from . import reference_cases as ref
from .rawclient import PROTOCOL_HEADER
from .test_errors_raw import XC, F, closed_after, expect_connection_close, expect_frame, opened


# -- helpers -----------------------------------------------------------------------------------
def fill(port: int, queue: str, n: int, persistent: bool = False) -> None:
    """n 16-byte messages into a (durable when persistent) queue, as fast as a raw socket can."""
    with RawClient(port, timeout=60) as c:
        c.handshake()
        c.open_channel(1)
        c.method(1, C.Queue.Declare(queue=queue, durable=persistent))
        c.expect(C.Queue.DeclareOk)
        props = C.Basic.Properties(delivery_mode=2 if persistent else 1)
        chunk = ref.publish(1, "", queue, b"x" * 16, props) * 1000
        for _ in range(n // 1000):
            c.send(chunk)
        while True:
            c.method(1, C.Queue.Declare(queue=queue, passive=True))
            if c.expect(C.Queue.DeclareOk).message_count >= n:
                return


class Canary:
    """An unrelated client doing round trips (a passive exchange declare) in its own thread;
    ``worst`` is the longest one."""

    def __init__(self, url: str):
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        self.worst = 0.0
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            self.ch.exchange_declare("amq.direct", passive=True)
            self.worst = max(self.worst, time.perf_counter() - t)
            self.count += 1
            self._stop.wait(0.002)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        self.conn.close()


def consumer(port: int, queue: str, prefetch: int) -> RawClient:
    """A raw consumer holding ``prefetch`` unacked deliveries (all read off the socket)."""
    c = RawClient(port, timeout=30)
    c.handshake()
    c.open_channel(1)
    c.method(1, C.Basic.Qos(prefetch_count=prefetch))
    c.expect(C.Basic.QosOk)
    c.method(1, C.Basic.Consume(queue=queue, consumer_tag="c"))
    c.expect(C.Basic.ConsumeOk)
    return c


def take_deliveries(clients: list, each: int) -> None:
    """Read deliveries from the consumers in turn until each has ``each`` of them."""
    got = [0] * len(clients)
    while min(got) < each:
        for i, c in enumerate(clients):
            if got[i] < each:
                ch, f = c.recv(30)
                if isinstance(f, C.Basic.Deliver):
                    got[i] += 1


# -- stalls -------------------------------------------------------------------------------------
def test_requeue_of_interleaved_unacked_messages_does_not_stall(broker):
    """Two consumers take interleaved messages (odd and even sequence numbers); the first one's
    messages go back when it closes, then the second one's, which must be merged between
    them. That merge used to be one O(n) insertion per message: 4.2 s with 300,000 queued."""
    fill(broker.port, "big", 120_000)
    a, b = consumer(broker.port, "big", 20_000), consumer(broker.port, "big", 20_000)
    take_deliveries([a, b], 20_000)
    with Canary(broker.url) as canary:
        a.close()
        broker.wait_for(lambda: broker.broker.vhosts["/"].queues["big"].unacked == 20_000, 30)
        b.close()
        broker.wait_for(lambda: broker.broker.vhosts["/"].queues["big"].unacked == 0, 30)
        after = canary.count                # a few round trips after the merge, then stop
        deadline = time.monotonic() + 10
        while canary.count < after + 10:
            assert time.monotonic() < deadline, "the canary stopped"
            time.sleep(0.01)
    assert canary.count > 10
    assert canary.worst < 0.5, f"an unrelated round trip took {canary.worst:.3f} s"
    # and every message is back, in order (the queue's RAM window holds the head; the rest
    # is paged to disk behind it, in order, as tests/unit/test_paging.py checks)
    q = broker.broker.vhosts["/"].queues["big"]
    ready, count = broker.call(lambda: ([e.seq for e in q.ready], q.message_count))
    assert ready == sorted(ready) and ready[:1] == [1] and count == 120_000


def test_purge_of_a_big_persistent_queue_does_not_stall(broker):
    fill(broker.port, "big", 300_000, persistent=True)
    with Canary(broker.url) as canary:
        c = pika.BlockingConnection(pika.URLParameters(broker.url))
        assert c.channel().queue_purge("big").method.message_count == 300_000
        broker.wait_for(lambda: not broker.broker.tasks, 30, "the purge to finish")
        c.close()
    assert canary.worst < 0.5, f"an unrelated round trip took {canary.worst:.3f} s"


def test_purged_messages_stay_purged_after_a_clean_restart(tmp_path):
    b = BrokerThread(data_dir=str(tmp_path)).start()
    fill(b.port, "dq", 20_000, persistent=True)
    c = pika.BlockingConnection(pika.URLParameters(b.url))
    c.channel().queue_purge("dq")
    c.close()
    b.stop()                     # a purge still in progress is written out in full
    b = BrokerThread(data_dir=str(tmp_path)).start()
    try:
        assert b.call(lambda: b.broker.vhosts["/"].queues["dq"].message_count) == 0
    finally:
        b.stop()


def test_closed_connections_leave_no_cycles_of_amqpd_objects(broker):
    """Full garbage collections are rare in the standalone broker (gc_policy.py), so a closed
    connection must be freed by reference counting alone."""
    def session():
        with RawClient(broker.port) as c:
            c.handshake()
            c.open_channel(1)
            c.method(1, C.Queue.Declare(queue="", exclusive=True))
            name = c.expect(C.Queue.DeclareOk).queue
            c.method(1, C.Basic.Consume(queue=name, consumer_tag="t"))
            c.expect(C.Basic.ConsumeOk)
            c.method(0, C.Connection.Close(reply_code=200, reply_text="", class_id=0,
                                           method_id=0))
            c.expect(C.Connection.CloseOk)
    session()
    broker.wait_for(lambda: not broker.server.protocols, 5)
    gc.collect()
    gc.disable()
    try:
        gc.set_debug(gc.DEBUG_SAVEALL)
        for _ in range(20):
            session()
        broker.wait_for(lambda: not broker.server.protocols, 5)
        gc.collect()
        leaked = {type(o).__name__ for o in gc.garbage
                  if type(o).__module__.startswith("amqpd")}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not leaked, f"closed connections left cycles of {sorted(leaked)}"


# -- nothing on a channel after its close-ok ------------------------------------------------------
@pytest.mark.parametrize("how", ["channel", "connection"])
def test_no_confirm_after_close_ok(broker, how):
    with opened(broker) as c:
        c.method(1, C.Queue.Declare(queue="dq", durable=True))
        expect_frame(c, F(1, C.Queue.DeclareOk))
        c.method(1, C.Confirm.Select())
        expect_frame(c, F(1, C.Confirm.SelectOk))
        props = C.Basic.Properties(delivery_mode=2)
        burst = b"".join(ref.publish(1, "", "dq", b"p" * 100, props) for _ in range(2000))
        close = (C.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0)
                 if how == "channel" else
                 C.Connection.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
        c.send(burst + ref.method(1 if how == "channel" else 0, close))
        done = C.Channel.CloseOk if how == "channel" else C.Connection.CloseOk
        while True:
            ch, f = c.recv(10)
            if isinstance(f, done):
                break
            assert isinstance(f, C.Basic.Ack) and ch == 1, f
        # Nothing may follow on channel 1: a window (the point is that nothing comes) long
        # enough for the fsyncs of the burst's last group commits.
        after = []
        deadline = time.monotonic() + 0.4
        while time.monotonic() < deadline:
            try:
                after.append(c.recv(deadline - time.monotonic()))
            except Exception:
                break
        assert [f for ch, f in after if ch == 1] == []


# -- names, logins, pre-tune input --------------------------------------------------------------
@pytest.mark.parametrize("name", ["tâche", "a*b", "é" * 127, "with space"])
def test_any_utf8_queue_name_up_to_255_bytes(ch, name):
    assert ch.queue_declare(name).method.queue == name
    ch.basic_publish("", name, b"hello")
    assert ch.basic_get(name, auto_ack=True)[2] == b"hello"
    assert ch.queue_declare(name, passive=True).method.message_count == 0
    ch.queue_delete(name)


def test_start_ok_over_4096_bytes_before_tune_is_refused_undecoded(make_broker):
    """A 131 KB start-ok whose client-properties table has 65,504 empty entries used to be
    decoded (0.27 s of CPU, every client stalled); RabbitMQ refuses frames over 4096 bytes
    before tune."""
    broker = make_broker(limits={"close_timeout": 0.5})
    props = b"".join(b"\x00V" for _ in range(65_504))
    with RawClient(broker.port) as c:
        c.send(PROTOCOL_HEADER)
        c.expect(C.Connection.Start)
        args = (len(props).to_bytes(4, "big") + props + pamqp_encode.short_string("PLAIN")
                + pamqp_encode.long_string("\0guest\0guest") + pamqp_encode.short_string("en_US"))
        c.send(ref.raw_method(0, 10, 11, args))
        expect_connection_close(c, XC(501, None, 0, 0))
        gone = closed_after(c, 5.0)       # not read any more: dropped after close_timeout
        assert gone is not None and 0.3 < gone < 1.5, gone


def test_amqplain_nested_600_deep_is_a_refused_login(broker):
    inner = b""
    for _ in range(600):
        inner = b"\x00F" + len(inner).to_bytes(4, "big") + inner
    response = b"\x05LOGINS\x00\x00\x00\x05guest" + inner
    with RawClient(broker.port) as c:
        c.send(PROTOCOL_HEADER)
        c.expect(C.Connection.Start)
        caps = pamqp_encode.field_table({"capabilities": {"authentication_failure_close": True}})
        args = (caps + pamqp_encode.short_string("AMQPLAIN") + len(response).to_bytes(4, "big")
                + response + pamqp_encode.short_string("en_US"))
        c.send(ref.raw_method(0, 10, 11, args))
        close = expect_connection_close(c, XC(403, "ACCESS_REFUSED - *", 0, 0))
        assert close.reply_code == 403


# -- deleting the queue a channel consumes from -------------------------------------------------
def test_kombu_deleting_its_own_consumers_queue(broker):
    """As with RabbitMQ: delete() returns; the cancel comes with the next drain_events."""
    with kombu.Connection(broker.url) as conn:
        channel = conn.channel()
        queue = kombu.Queue("doomed", channel=channel)
        queue.declare()
        got = []
        consumer = kombu.Consumer(channel, [queue], callbacks=[lambda b, m: got.append(b)])
        consumer.consume()
        assert queue.delete() == 0
        from amqp.exceptions import ConsumerCancelled
        with pytest.raises(ConsumerCancelled):
            conn.drain_events(timeout=2)
