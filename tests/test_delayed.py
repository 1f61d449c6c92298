"""The x-delayed-message exchange (semantics of RabbitMQ's delayed-message plugin) over real
sockets: timing and order of delayed messages, immediate routing without a (positive) delay,
routing by the underlying type, validation (406 with the plugin's texts), persistence of pending
messages of a durable exchange across a clean restart and a SIGKILL, and 10,000 pending messages
not slowing other traffic."""
import struct
import tempfile
import time

import pika
import pytest
from pamqp import commands as C
from pamqp import frame as pamqp_frame, header as pamqp_header
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker

from interop.process import AmqpdProcess
from tests.brokerthread import BrokerThread
from tests.rawclient import RawClient
from .helpers import drain, new_queue, refused


# -- helpers ----------------------------------------------------------------------------------
class Collector:
    """Consumes a queue (no-ack) and records (body, arrival monotonic, arrival wall, headers,
    redelivered, properties)."""

    def __init__(self, ch, queue: str):
        self.ch = ch
        self.got: list = []
        ch.basic_consume(queue, self._on, auto_ack=True)

    def _on(self, _ch, method, props, body):
        self.got.append((body, time.monotonic(), time.time(), props.headers or {},
                         method.redelivered, props))

    @property
    def bodies(self) -> list:
        return [g[0] for g in self.got]

    def wait(self, n: int, timeout: float = 5.0) -> list:
        deadline = time.monotonic() + timeout
        while len(self.got) < n:
            assert time.monotonic() < deadline, f"got {self.bodies}, expected {n} messages"
            self.ch.connection.process_data_events(time_limit=0.002)
        return self.got

    def settle(self) -> list:
        """Everything delivered before a synchronous round trip on the channel."""
        self.ch.basic_qos(prefetch_count=0)
        self.ch.connection.process_data_events(time_limit=0)
        return self.got


def delayed(ms, **props) -> pika.BasicProperties:
    return pika.BasicProperties(headers={"x-delay": ms}, **props)


def declare_delayed(ch, name: str = "dx", kind: str = "direct", durable: bool = False,
                    **args) -> None:
    ch.exchange_declare(name, "x-delayed-message", durable=durable,
                        arguments={"x-delayed-type": kind, **args})


# -- timing and order -------------------------------------------------------------------------
def test_delay_200ms_on_time(ch):
    declare_delayed(ch)
    q = new_queue(ch, "dx", "k")
    c = Collector(ch, q)
    sent = time.monotonic()
    ch.basic_publish("dx", "k", b"late", delayed(200))
    assert c.settle() == []                  # not there right away
    (body, arrived, *_), = c.wait(1, timeout=2)
    elapsed = arrived - sent
    print(f"x-delay 200 ms delivered after {elapsed * 1000:.1f} ms")
    assert body == b"late"
    assert 0.190 <= elapsed < 0.6


# Due order, and release exactly at the due time: tests/unit/test_delayed_unit.py.


@pytest.mark.parametrize("headers", [None, {}, {"x-delay": 0}, {"x-delay": -500},
                                     {"other": 1}])
def test_no_positive_delay_routes_at_once(ch, headers):
    declare_delayed(ch)
    q = new_queue(ch, "dx", "k")
    ch.basic_publish("dx", "k", b"now", pika.BasicProperties(headers=headers))
    method, _props, body = ch.basic_get(q, auto_ack=True)     # a round trip later: there
    assert body == b"now"


@pytest.mark.parametrize("value", ["300", 300.0])
def test_x_delay_as_string_or_float_is_a_delay(broker, ch, value):
    declare_delayed(ch)
    q = new_queue(ch, "dx", "k")
    c = Collector(ch, q)
    with RawClient(broker.port) as raw:           # pamqp encodes floats (pika cannot)
        raw.handshake()
        raw.open_channel()
        sent = time.monotonic()
        raw.publish(1, b"m", exchange="dx", routing_key="k",
                    properties=C.Basic.Properties(headers={"x-delay": value}))
        raw.call(1, C.Basic.Qos(prefetch_count=0), C.Basic.QosOk)
    assert c.settle() == []
    (_b, arrived, *_), = c.wait(1, timeout=2)
    assert arrived - sent >= 0.29


def test_delivered_x_delay_header_is_negated(ch):
    declare_delayed(ch)
    q = new_queue(ch, "dx", "k")
    c = Collector(ch, q)
    ch.basic_publish("dx", "k", b"m", pika.BasicProperties(headers={"x-delay": 100, "a": "b"}))
    (_b, _t, _w, headers, *_), = c.wait(1)
    assert headers == {"x-delay": -100, "a": "b"}


def test_x_delay_beyond_erlang_timer_limit_is_immediate(ch):
    declare_delayed(ch)
    q = new_queue(ch, "dx", "k")
    ch.basic_publish("dx", "k", b"m", delayed(4294967296))
    method, _props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"m"


def test_delayed_message_keeps_its_properties(ch):
    declare_delayed(ch)
    q = new_queue(ch, "dx", "k")
    c = Collector(ch, q)
    ch.basic_publish("dx", "k", b"payload",
                     pika.BasicProperties(headers={"x-delay": 50, "h": "v"},
                                          correlation_id="cid", content_type="text/plain",
                                          message_id="mid", priority=3))
    (body, _t, _w, headers, redelivered, props), = c.wait(1)
    assert (body, headers["h"], redelivered) == (b"payload", "v", False)
    assert (props.correlation_id, props.content_type, props.message_id, props.priority) == (
        "cid", "text/plain", "mid", 3)


# -- routing by the underlying type ------------------------------------------------------------
def test_direct_routing_after_delay(ch):
    declare_delayed(ch, kind="direct")
    qa, qb = new_queue(ch, "dx", "a"), new_queue(ch, "dx", "b")
    ca, cb = Collector(ch, qa), Collector(ch, qb)
    for key in ("a", "b", "c", "a"):
        ch.basic_publish("dx", key, key.encode(), delayed(50))
    ca.wait(2)
    cb.wait(1)
    ch.basic_publish("dx", "a", b"sentinel", delayed(60))
    ca.wait(3)
    assert (ca.bodies, cb.bodies) == ([b"a", b"a", b"sentinel"], [b"b"])


def test_topic_routing_after_delay(ch):
    declare_delayed(ch, kind="topic")
    q1, q2 = new_queue(ch, "dx", "kern.*"), new_queue(ch, "dx", "#.critical")
    c1, c2 = Collector(ch, q1), Collector(ch, q2)
    for key in ("kern.critical", "kern.info", "app.critical", "app.info", "kern.x.y"):
        ch.basic_publish("dx", key, key.encode(), delayed(80))
    ch.basic_publish("dx", "kern.now", b"kern.now")               # no delay: at once
    ch.basic_publish("dx", "kern.last", b"kern.last", delayed(150))
    c1.wait(4)
    c2.wait(2)
    assert c1.bodies == [b"kern.now", b"kern.critical", b"kern.info", b"kern.last"]
    assert c2.bodies == [b"kern.critical", b"app.critical"]


def test_fanout_routing_after_delay(ch):
    declare_delayed(ch, kind="fanout")
    qs = [new_queue(ch, "dx", "ignored") for _ in range(2)]
    cs = [Collector(ch, q) for q in qs]
    ch.basic_publish("dx", "whatever", b"f", delayed(50))
    for c in cs:
        c.wait(1)
        assert c.bodies == [b"f"]


def test_unroutable_after_delay_goes_to_alternate_exchange(ch):
    ch.exchange_declare("ae", "fanout")
    q_ae = new_queue(ch, "ae")
    declare_delayed(ch, **{"alternate-exchange": "ae"})
    q = new_queue(ch, "dx", "k")
    c_ae, c = Collector(ch, q_ae), Collector(ch, q)
    ch.basic_publish("dx", "nope", b"to-ae", delayed(60))
    ch.basic_publish("dx", "k", b"routed", delayed(60))
    c_ae.wait(1)
    c.wait(1)
    assert (c_ae.bodies, c.bodies) == ([b"to-ae"], [b"routed"])


def test_routing_through_an_exchange_binding_after_delay(ch):
    declare_delayed(ch)
    ch.exchange_declare("x2", "fanout")
    ch.exchange_bind("x2", "dx", "k")
    q = new_queue(ch, "x2")
    c = Collector(ch, q)
    ch.basic_publish("dx", "k", b"via-x2", delayed(60))
    ch.basic_publish("dx", "other", b"not-bound", delayed(60))
    c.wait(1)
    ch.basic_publish("dx", "k", b"sentinel", delayed(80))
    c.wait(2)
    assert c.bodies == [b"via-x2", b"sentinel"]


def test_confirm_comes_when_accepted_not_when_delivered(broker, connect):
    """The publish is confirmed once the exchange holds it (after fsync for a durable one),
    long before its delay ends."""
    ch = connect().channel()
    ch.confirm_delivery()
    declare_delayed(ch, "dx-durable", durable=True)
    declare_delayed(ch, "dx-transient")
    for name in ("dx-durable", "dx-transient"):
        t = time.monotonic()
        ch.basic_publish(name, "k", b"m", delayed(30_000, delivery_mode=2))   # acked
        assert time.monotonic() - t < 2.0
    ch.exchange_delete("dx-durable")


def test_delayed_publish_in_a_transaction(connect):
    ch = connect().channel()
    declare_delayed(ch)
    q = new_queue(ch, "dx", "k")
    c = Collector(ch, q)
    ch.tx_select()
    ch.basic_publish("dx", "k", b"rolled-back", delayed(50))
    ch.tx_rollback()
    sent = time.monotonic()
    ch.basic_publish("dx", "k", b"committed", delayed(100))
    ch.tx_commit()
    (body, arrived, *_), = c.wait(1)
    assert body == b"committed" and arrived - sent >= 0.095
    ch.basic_publish("dx", "k", b"sentinel", delayed(50))
    ch.tx_commit()
    c.wait(2)
    assert c.bodies == [b"committed", b"sentinel"]


# -- validation -------------------------------------------------------------------------------
TYPE_TEXT = ("PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing "
             "exchange type")


@pytest.mark.parametrize("args", [{}, {"x-delayed-type": 1}, {"x-delayed-type": True},
                                  {"other": "direct"}])
def test_missing_or_non_string_delayed_type_406(connect, args):
    conn = connect()
    ch = conn.channel()
    e = refused(ch.exchange_declare, "dx", "x-delayed-message", arguments=args)
    assert (e.reply_code, e.reply_text) == (406, TYPE_TEXT)
    ch = conn.channel()
    assert refused(ch.exchange_declare, "dx", passive=True).reply_code == 404


def test_invalid_delayed_type_raw_class_method(broker):
    with RawClient(broker.port) as raw:
        raw.handshake()
        raw.open_channel()
        raw.method(1, C.Exchange.Declare(exchange="dx", exchange_type="x-delayed-message"))
        close = raw.expect(C.Channel.Close)
        assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
            406, TYPE_TEXT, 40, 10)


def test_unknown_delayed_type_is_refused(connect):
    """Refused one way or the other (see the exact-reply test below)."""
    conn = connect()
    ch = conn.channel()
    with pytest.raises((ChannelClosedByBroker, ConnectionClosedByBroker)) as info:
        ch.exchange_declare("dx", "x-delayed-message", arguments={"x-delayed-type": "nonsense"})
    assert info.value.reply_code in (406, 503)


def test_unknown_delayed_type_closes_connection_503(connect):
    ch = connect().channel()
    with pytest.raises(ConnectionClosedByBroker) as info:
        ch.exchange_declare("dx", "x-delayed-message", arguments={"x-delayed-type": "nonsense"})
    assert (info.value.reply_code, info.value.reply_text) == (
        503, "COMMAND_INVALID - unknown exchange type 'nonsense'")


def test_delayed_type_cannot_be_itself_406(ch):
    e = refused(ch.exchange_declare, "dx", "x-delayed-message",
                arguments={"x-delayed-type": "x-delayed-message"})
    assert (e.reply_code, e.reply_text) == (
        406, "PRECONDITION_FAILED - Invalid argument, 'x-delayed-message' can't be used for "
             "'x-delayed-type'")


def test_delayed_type_itself_refused_406(ch):
    e = refused(ch.exchange_declare, "dx", "x-delayed-message",
                arguments={"x-delayed-type": "x-delayed-message"})
    assert e.reply_code == 406


@pytest.mark.parametrize("kind", ["direct", "topic", "fanout", "headers"])
def test_every_routing_type_accepted(ch, kind):
    declare_delayed(ch, "dx-" + kind, kind=kind)
    declare_delayed(ch, "dx-" + kind, kind=kind)          # equivalent redeclare
    ch.exchange_declare("dx-" + kind, passive=True)
    # and it routes by that type (a message without x-delay goes at once)
    key, args = {"direct": ("k", None), "topic": ("k.#", None), "fanout": ("", None),
                 "headers": ("", {"x-match": "all", "h": "v"})}[kind]
    q = new_queue(ch, "dx-" + kind, key, arguments=args)
    ch.basic_publish("dx-" + kind, "k.1" if kind == "topic" else "k", b"m",
                     pika.BasicProperties(headers={"h": "v"}))
    ch.basic_publish("dx-" + kind, "other", b"not", pika.BasicProperties(headers={"h": "w"}))
    assert drain(ch, q) == ([b"m"] if kind != "fanout" else [b"m", b"not"])


# -- deleting the exchange --------------------------------------------------------------------
def test_deleting_the_exchange_drops_its_pending_messages(ch):
    declare_delayed(ch)
    q = new_queue(ch, "dx", "k")
    c = Collector(ch, q)
    ch.basic_publish("dx", "k", b"doomed", delayed(150))
    ch.exchange_delete("dx")
    # A new exchange of the same name, bound the same way, does not inherit them.
    declare_delayed(ch)
    ch.queue_bind(q, "dx", "k")
    ch.basic_publish("dx", "k", b"sentinel", delayed(400))    # due well after "doomed"
    c.wait(1)
    assert c.settle() and c.bodies == [b"sentinel"]


# -- persistence ------------------------------------------------------------------------------
def _setup_durable(ch, name="ddx", queue="ddq"):
    ch.exchange_declare(name, "x-delayed-message", durable=True,
                        arguments={"x-delayed-type": "direct"})
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, name, "k")


def _publish_confirmed(url: str, items) -> dict:
    """Publish (body, delay ms) with confirms; returns body -> due wall time."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        _setup_durable(ch)
        ch.confirm_delivery()
        due = {}
        for body, delay in items:
            sent = time.time()
            ch.basic_publish("ddx", "k", body, delayed(delay, delivery_mode=2))
            due[body] = sent + delay / 1000
        return due
    finally:
        conn.close()


def _collect(url: str, queue: str, n: int, timeout: float = 6.0) -> list:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        c = Collector(conn.channel(), queue)
        c.wait(n, timeout)
        return c.settle()
    finally:
        conn.close()


def _stop(b: BrokerThread) -> None:
    try:
        b.wait_for(lambda: not b.server.protocols, timeout=3, what="clients to disconnect")
    finally:
        b.stop()


def test_pending_messages_survive_clean_restart_and_keep_their_due_time():
    with tempfile.TemporaryDirectory(prefix="amqpd-delayed-") as data:
        b = BrokerThread(data_dir=data).start()
        try:
            due = _publish_confirmed(b.url, [(b"m1", 900), (b"m2", 1300)])
        finally:
            _stop(b)
        b = BrokerThread(data_dir=data).start()
        restarted = time.time()
        try:
            got = _collect(b.url, "ddq", 2)
            assert [g[0] for g in got] == [b"m1", b"m2"]
            for body, _mono, wall, *_ in got:
                print(f"{body!r} delivered {1000 * (wall - due[body]):+.0f} ms from its due time "
                      "(across a restart)")
                # Not early; on time (or at once if the restart itself took longer).
                assert due[body] - 0.015 <= wall <= max(due[body], restarted) + 0.5
            # Delivered messages are settled in the exchange's log: another restart does not
            # bring them back (a sentinel published after it is the only arrival).
            conn = pika.BlockingConnection(pika.URLParameters(b.url))
            conn.channel().queue_purge("ddq")
            conn.close()
        finally:
            _stop(b)
        b = BrokerThread(data_dir=data).start()
        try:
            _publish_confirmed(b.url, [(b"sentinel", 200)])
            got = _collect(b.url, "ddq", 1)
            assert [g[0] for g in got] == [b"sentinel"]
        finally:
            _stop(b)
            b.cleanup()


def test_pending_messages_survive_sigkill():
    with tempfile.TemporaryDirectory(prefix="amqpd-delayed-kill-") as data:
        proc = AmqpdProcess(data_dir=data).start()
        try:
            due = _publish_confirmed(proc.url, [(b"k1", 1000), (b"k2", 1500)])
            proc.kill()                    # SIGKILL right after the confirms
            proc = AmqpdProcess(data_dir=data).start()
            restarted = time.time()
            got = _collect(proc.url, "ddq", 2)
            assert [g[0] for g in got] == [b"k1", b"k2"]
            for body, _mono, wall, *_ in got:
                print(f"{body!r} delivered {1000 * (wall - due[body]):+.0f} ms from its due time "
                      "(across a SIGKILL)")
                assert due[body] - 0.015 <= wall <= max(due[body], restarted) + 0.5
        finally:
            proc.kill()


def _overdue_after_restart(data: str):
    """Publish o2 (400 ms) then o1 (100 ms) to a durable delayed exchange, stop the broker,
    let both due times pass, restart it: returns the deliveries and the restart wall time."""
    b = BrokerThread(data_dir=data).start()
    try:
        due = _publish_confirmed(b.url, [(b"o2", 400), (b"o1", 100)])
    finally:
        _stop(b)
    # Let the due times pass while the broker is down.
    time.sleep(max(0.0, max(due.values()) - time.time()) + 0.05)
    b = BrokerThread(data_dir=data).start()
    started = time.time()
    try:
        return _collect(b.url, "ddq", 2), started
    finally:
        _stop(b)
        b.cleanup()


def test_message_overdue_at_restart_is_delivered_at_once():
    with tempfile.TemporaryDirectory(prefix="amqpd-delayed-overdue-") as data:
        got, started = _overdue_after_restart(data)
        assert sorted(g[0] for g in got) == [b"o1", b"o2"]
        assert all(wall - started < 0.5 for _b, _m, wall, *_ in got)


def test_overdue_messages_at_restart_come_out_in_due_order():
    with tempfile.TemporaryDirectory(prefix="amqpd-delayed-overdue-") as data:
        got, _started = _overdue_after_restart(data)
        assert [g[0] for g in got] == [b"o1", b"o2"]


def test_deleted_durable_exchange_pending_messages_do_not_come_back():
    with tempfile.TemporaryDirectory(prefix="amqpd-delayed-del-") as data:
        b = BrokerThread(data_dir=data).start()
        try:
            _publish_confirmed(b.url, [(b"doomed", 300)])
            conn = pika.BlockingConnection(pika.URLParameters(b.url))
            conn.channel().exchange_delete("ddx")
            conn.close()
        finally:
            _stop(b)
        b = BrokerThread(data_dir=data).start()
        try:
            conn = pika.BlockingConnection(pika.URLParameters(b.url))
            ch = conn.channel()
            with pytest.raises(ChannelClosedByBroker):
                ch.exchange_declare("ddx", passive=True)
            conn.close()
            # Declared anew: only what is published now comes out.
            _publish_confirmed(b.url, [(b"sentinel", 500)])
            got = _collect(b.url, "ddq", 1)
            assert [g[0] for g in got] == [b"sentinel"]
        finally:
            _stop(b)
            b.cleanup()


# -- many pending -----------------------------------------------------------------------------
def _delayed_frames(exchange: str, key: str, delay_ms: int, body: bytes) -> bytes:
    props = C.Basic.Properties(headers={"x-delay": delay_ms})
    return (pamqp_frame.marshal(C.Basic.Publish(exchange=exchange, routing_key=key), 1)
            + pamqp_frame.marshal(pamqp_header.ContentHeader(0, len(body), props), 1)
            + struct.pack(">BHI", 3, 1, len(body)) + body + b"\xce")


def test_10k_pending_do_not_slow_other_traffic(broker, connect):
    n = 10_000
    ch = connect().channel()
    declare_delayed(ch)
    q_delayed = new_queue(ch, "dx", "k")
    with RawClient(broker.port, timeout=30) as raw:
        raw.handshake()
        raw.open_channel()
        # Delays spread between 60 and 70 s: all stay pending for this test.
        raw.send(b"".join(_delayed_frames("dx", "k", 60_000 + i, b"p") for i in range(n)))
        raw.call(1, C.Basic.Qos(prefetch_count=0), C.Basic.QosOk)
        raw.method(1, C.Channel.Close(reply_code=200, reply_text="bye", class_id=0,
                                      method_id=0))
        raw.expect(C.Channel.CloseOk)
        raw.method(0, C.Connection.Close(reply_code=200, reply_text="bye", class_id=0,
                                         method_id=0))
        raw.expect(C.Connection.CloseOk)
    assert broker.call(lambda: broker.broker.vhosts["/"].exchanges["dx"].held) == n

    # An unrelated queue: publish + consume round trips stay fast.
    other = connect().channel()
    q = other.queue_declare("", exclusive=True).method.queue
    worst = 0.0
    for i in range(50):
        t = time.monotonic()
        other.basic_publish("", q, str(i).encode())
        method, _props, body = other.basic_get(q, auto_ack=True)
        worst = max(worst, time.monotonic() - t)
        assert body == str(i).encode()
    print(f"worst unrelated publish+get round trip with {n} pending delayed: "
          f"{worst * 1000:.1f} ms")
    assert worst < 0.25
    # A short delay published after the 10,000 long ones still comes out on time.
    c = Collector(ch, q_delayed)
    sent = time.monotonic()
    ch.basic_publish("dx", "k", b"short", delayed(100))
    (body, arrived, *_), = c.wait(1, timeout=3)
    assert body == b"short" and 0.095 <= arrived - sent < 0.6


# -- held on disk -----------------------------------------------------------------------------
def test_messages_spread_over_time_arrive_in_due_order_after_a_sigkill():
    """100 messages due every 40 ms from 3 s on (spanning several due-time buckets on disk),
    published in a shuffled order with confirms; amqpd is killed (SIGKILL) before any is due
    and restarted: every one arrives once, in due order, none early. (40 ms apart: a publish
    read late by a loaded machine has a later due time, and that is not what is tested.)"""
    import random
    with tempfile.TemporaryDirectory(prefix="amqpd-delayed-spread-") as data:
        proc = AmqpdProcess(data_dir=data).start()
        try:
            conn = pika.BlockingConnection(pika.URLParameters(proc.url))
            ch = conn.channel()
            _setup_durable(ch)
            ch.confirm_delivery()
            t0 = time.time()
            order = list(range(100))
            random.Random(5).shuffle(order)
            due = {}
            for i in order:
                body = b"%03d" % i
                delay = int((t0 + 3.0 + i * 0.040 - time.time()) * 1000)
                due[body] = time.time() + delay / 1000
                ch.basic_publish("ddx", "k", body, delayed(delay, delivery_mode=2))
            conn.close()
            assert time.time() < t0 + 3.0, "publishing took too long for this test"
            proc.kill()
            proc = AmqpdProcess(data_dir=data).start()
            got = _collect(proc.url, "ddq", 100, timeout=15)
            bodies = [g[0] for g in got]
            assert bodies == sorted(due, key=due.get)
            early = [(b, wall - due[b]) for b, _m, wall, *_ in got if wall < due[b] - 0.015]
            assert early == []
        finally:
            proc.kill()
