"""A worker dies holding unacked messages: they go to another consumer, redelivered=true, in their
original order. Death by channel close, connection close, TCP close/reset without an AMQP close,
and by going silent with heartbeats negotiated (the broker must notice and drop it)."""
import socket
import struct
import time

import pika
import pytest
from pamqp import commands as C

from .rawclient import Closed, RawClient
from .helpers import connect, pump


# -- helpers -------------------------------------------------------------------------------------
def queue_state(broker, name: str):
    q = broker.broker.vhosts["/"].queues[name]
    return q.message_count, q.unacked, len(q.consumers)


N = 6          # messages published
HELD = 3       # how many the worker holds (its prefetch) when it dies


def publish(conn, queue: str, n: int = N) -> None:
    ch = conn.channel()
    ch.queue_declare(queue)
    for i in range(n):
        ch.basic_publish("", queue, b"m%d" % i)
    ch.close()


def consume_all(conn, queue: str, n: int):
    """A second consumer: returns [(body, redelivered), ...] once n messages have arrived."""
    ch = conn.channel()
    got = []

    def on_message(c, method, props, body):
        got.append((body, method.redelivered))
        c.basic_ack(method.delivery_tag)

    ch.basic_consume(queue, on_message)
    pump(conn, lambda: len(got) >= n, what=f"{n} deliveries to the second consumer")
    return got


EXPECTED = ([(b"m%d" % i, True) for i in range(HELD)]
            + [(b"m%d" % i, False) for i in range(HELD, N)])


# -- pika workers: channel close, connection close -----------------------------------------------
@pytest.mark.parametrize("how", ["channel_close", "connection_close"])
def test_redelivery_after_clean_close(broker, how):
    other = connect(broker)
    worker = connect(broker)
    try:
        publish(other, "work")
        ch = worker.channel()
        ch.basic_qos(prefetch_count=HELD)
        got = []
        ch.basic_consume("work", lambda c, m, p, b: got.append((b, m.redelivered)))
        pump(worker, lambda: len(got) == HELD)
        assert got == [(b"m%d" % i, False) for i in range(HELD)]
        if how == "channel_close":
            ch.close()
        else:
            worker.close()
        assert broker.call(queue_state, broker, "work") == (N, 0, 0)
        assert consume_all(other, "work", N) == EXPECTED
    finally:
        if worker.is_open:
            worker.close()
        other.close()


def test_redelivery_to_a_consumer_already_attached(broker):
    """The second consumer was there all along: it first gets the rest of the queue, then the
    dead worker's messages, redelivered, in their original order."""
    other = connect(broker)
    worker = connect(broker)
    try:
        publish(other, "work2")
        wch = worker.channel()
        wch.basic_qos(prefetch_count=HELD)
        held = []
        wch.basic_consume("work2", lambda c, m, p, b: held.append(b))
        pump(worker, lambda: len(held) == HELD)
        och = other.channel()
        got = []
        och.basic_consume("work2", lambda c, m, p, b: (got.append((b, m.redelivered)),
                                                        c.basic_ack(m.delivery_tag)))
        pump(other, lambda: len(got) == N - HELD)
        assert got == [(b"m%d" % i, False) for i in range(HELD, N)]
        wch.basic_ack(1)                      # m0 done; m1, m2 still held
        wch.close()
        pump(other, lambda: len(got) == N - 1)
        assert got[N - HELD:] == [(b"m1", True), (b"m2", True)]
    finally:
        worker.close()
        other.close()


def test_redelivery_after_channel_error(broker):
    """A channel closed by the broker (406 on a bad ack) requeues like a clean close."""
    other = connect(broker)
    worker = connect(broker)
    try:
        publish(other, "work3")
        ch = worker.channel()
        ch.basic_qos(prefetch_count=HELD)
        got = []
        ch.basic_consume("work3", lambda c, m, p, b: got.append(m.delivery_tag))
        pump(worker, lambda: len(got) == HELD)
        ch.basic_ack(42)
        pump(worker, lambda: ch.is_closed, what="the channel error")
        assert consume_all(other, "work3", N) == EXPECTED
    finally:
        worker.close()
        other.close()


# -- raw workers: TCP gone without AMQP close ----------------------------------------------------
def raw_worker(broker, queue: str, heartbeat: int = 0) -> RawClient:
    rc = RawClient(broker.port)
    rc.handshake(heartbeat_s=heartbeat)
    rc.open_channel(1)
    rc.call(1, C.Basic.Qos(prefetch_count=HELD), C.Basic.QosOk)
    rc.call(1, C.Basic.Consume(queue=queue, consumer_tag="worker"), C.Basic.ConsumeOk)
    for i in range(HELD):
        deliver, _, data = rc.read_delivery()
        assert (data, deliver.redelivered, deliver.delivery_tag) == (b"m%d" % i, False, i + 1)
    return rc


@pytest.mark.parametrize("how", ["close", "shutdown", "reset"])
def test_redelivery_after_tcp_drop(broker, how):
    other = connect(broker)
    try:
        publish(other, "work4")
        rc = raw_worker(broker, "work4")
        if how == "shutdown":
            rc.sock.shutdown(socket.SHUT_RDWR)
        elif how == "reset":
            rc.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rc.close()
        broker.wait_for(lambda: queue_state(broker, "work4") == (N, 0, 0),
                        what="the dropped worker's messages to be requeued")
        assert consume_all(other, "work4", N) == EXPECTED
    finally:
        other.close()


def test_redelivery_when_pika_socket_is_shut_down(broker):
    other = connect(broker)
    worker = connect(broker)
    try:
        publish(other, "work5")
        ch = worker.channel()
        ch.basic_qos(prefetch_count=HELD)
        got = []
        ch.basic_consume("work5", lambda c, m, p, b: got.append(b))
        pump(worker, lambda: len(got) == HELD)
        # Kill the TCP connection under pika: no connection.close is ever sent.
        sock = worker._impl._transport._sock
        sock.shutdown(socket.SHUT_RDWR)
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pump(worker, lambda: False, timeout=5)
        assert worker.is_closed
        broker.wait_for(lambda: queue_state(broker, "work5") == (N, 0, 0))
        assert consume_all(other, "work5", N) == EXPECTED
    finally:
        if worker.is_open:
            worker.close()
        other.close()


# -- heartbeats ----------------------------------------------------------------------------------
def test_silent_client_dropped_by_heartbeat_and_redelivered(make_broker):
    broker = make_broker(limits={"heartbeat": 1})
    # The second consumer must not be dropped while the test waits: no heartbeats for it.
    other = connect(broker, heartbeat=0)
    try:
        publish(other, "work6")
        rc = raw_worker(broker, "work6", heartbeat=1)
        silent_since = time.monotonic()
        # From now on the worker sends nothing. It keeps reading: the broker's heartbeats
        # arrive, then the broker drops the TCP connection (no connection.close).
        frames = []
        dropped = None
        deadline = silent_since + 6
        try:
            while time.monotonic() < deadline:
                try:
                    _ch, frame = rc.recv(timeout=max(0.01, deadline - time.monotonic()))
                except TimeoutError:
                    break
                except (Closed, ConnectionError):
                    dropped = time.monotonic()
                    break
                frames.append(frame.name)
        finally:
            rc.close()
        assert dropped is not None, "the broker never dropped the silent client"
        elapsed = dropped - silent_since
        assert 1.0 <= elapsed <= 3.5, elapsed
        assert frames and set(frames) == {"Heartbeat"}, frames       # no connection.close
        broker.wait_for(lambda: queue_state(broker, "work6") == (N, 0, 0))
        assert consume_all(other, "work6", N) == EXPECTED
    finally:
        other.close()


def test_heartbeating_client_is_not_dropped(make_broker):
    """The converse: a client that sends heartbeats keeps its connection and its messages,
    past the point a silent one is dropped (also the RabbitMQ comparison of heartbeat=1)."""
    broker = make_broker(limits={"heartbeat": 1})
    with RawClient(broker.port) as rc:
        rc.handshake(heartbeat_s=1)
        rc.open_channel(1)
        rc.call(1, C.Queue.Declare(queue="held"), C.Queue.DeclareOk)
        rc.publish(1, b"m0", routing_key="held")
        rc.method(1, C.Basic.Get(queue="held"))
        get_ok, _, _ = rc.read_delivery(C.Basic.GetOk)
        start = time.monotonic()
        beats = 0
        while time.monotonic() - start < 2.8:       # a silent peer is dropped by 2.5 s
            rc.send(b"\x08\x00\x00\x00\x00\x00\x00\xce")     # heartbeat frame
            try:
                _ch, frame = rc.recv(timeout=0.4)
                assert frame.name == "Heartbeat", frame
                beats += 1
            except TimeoutError:
                pass
        assert beats >= 4                             # the broker heartbeats every 0.5 s too
        assert broker.call(lambda: queue_state(broker, "held")) == (0, 1, 0)   # still held
        rc.method(1, C.Basic.Ack(delivery_tag=get_ok.delivery_tag))
        rc.call(1, C.Queue.Declare(queue="held", passive=True), C.Queue.DeclareOk)
        assert broker.call(lambda: queue_state(broker, "held")) == (0, 0, 0)
