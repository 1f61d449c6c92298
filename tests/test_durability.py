"""Durability end to end, with real clients: a broker restarted on the same data directory keeps
durable exchanges, queues (with their arguments) and bindings, and the persistent messages of
durable queues, in order and byte for byte; everything transient is gone. Publisher confirms of
persistent messages mean "on disk": they survive a SIGKILL of the real CLI."""
import asyncio
import contextlib
import datetime
import decimal
import json
import os
import subprocess
import sys
import threading

import aio_pika
import pika
import pytest
from pamqp import commands as C, frame as pamqp_frame, header

from amqpd.store.store import StoreError
from interop.process import ROOT, AmqpdProcess

from .brokerthread import BrokerThread
from .rawclient import RawClient
from .helpers import count, pump

PERSISTENT = pika.BasicProperties(delivery_mode=2)
TRANSIENT = pika.BasicProperties(delivery_mode=1)


class Node:
    """One data directory and the broker currently running on it (restartable)."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.broker: BrokerThread | None = None
        self.conns: list = []
        self.leaks: list = []

    def start(self, **overrides) -> BrokerThread:
        assert self.broker is None, "stop the running broker first"
        self.broker = BrokerThread(data_dir=self.data_dir, **overrides).start()
        return self.broker

    def stop(self) -> None:
        """A clean stop; every client must have closed its connection."""
        b, self.broker = self.broker, None
        if b is None:
            return
        try:
            b.wait_for(lambda: not b.server.protocols, timeout=3, what="clients to disconnect")
        except AssertionError:
            self.leaks.append(b.connection_count())
        b.stop()

    def restart(self, **overrides) -> BrokerThread:
        self.stop()
        return self.start(**overrides)

    def connect(self) -> pika.BlockingConnection:
        conn = pika.BlockingConnection(pika.URLParameters(self.broker.url))
        self.conns.append(conn)
        return conn

    def shutdown(self) -> None:
        for conn in self.conns:
            if conn.is_open:
                with contextlib.suppress(Exception):
                    conn.close()
        self.stop()


@pytest.fixture
def node(tmp_path):
    n = Node(str(tmp_path / "data"))
    yield n
    n.shutdown()
    assert not n.leaks, f"test left {n.leaks} client connection(s) open at a stop"


# -- helpers -------------------------------------------------------------------------------------
def refused(conn, action) -> int | None:
    """Run action(channel) on a fresh channel; the reply code if the broker closed it."""
    ch = conn.channel()
    try:
        action(ch)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code
    ch.close()
    return None


def refusal(conn, action) -> tuple:
    ch = conn.channel()
    try:
        action(ch)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code, exc.reply_text
    ch.close()
    return None, None


def queue_exists(conn, name: str) -> bool:
    code = refused(conn, lambda ch: ch.queue_declare(name, passive=True))
    assert code in (None, 404)
    return code is None


def exchange_exists(conn, name: str) -> bool:
    code = refused(conn, lambda ch: ch.exchange_declare(name, passive=True))
    assert code in (None, 404)
    return code is None


def drain(ch, queue: str, ack: bool = True) -> list:
    """Every message of the queue as (body, redelivered)."""
    out = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=ack)
        if method is None:
            return out
        out.append((body, method.redelivered))


def bodies(messages) -> list:
    return [b for b, _ in messages]


# -- definitions ---------------------------------------------------------------------------------
KINDS = ["direct", "fanout", "topic", "headers"]
AE = {"alternate-exchange": "my-ae"}


def test_durable_exchanges_survive_restart_transient_ones_do_not(node):
    node.start()
    conn = node.connect()
    ch = conn.channel()
    for kind in KINDS:
        ch.exchange_declare(f"d.{kind}", kind, durable=True, arguments=AE)
        ch.exchange_declare(f"t.{kind}", kind, durable=False)
    ch.exchange_declare("d.internal", "topic", durable=True, internal=True)
    ch.exchange_declare("d.autodelete", "fanout", durable=True, auto_delete=True)
    conn.close()

    b = node.restart()
    conn = node.connect()
    for kind in KINDS:
        assert exchange_exists(conn, f"d.{kind}")
        assert not exchange_exists(conn, f"t.{kind}")
        # an equivalent re-declaration is accepted ...
        assert refused(conn, lambda ch: ch.exchange_declare(f"d.{kind}", kind, durable=True,
                                                            arguments=AE)) is None
        # ... and anything else is refused: type, durability and arguments were all kept
        other = "direct" if kind == "fanout" else "fanout"
        code, text = refusal(conn, lambda ch: ch.exchange_declare(f"d.{kind}", other,
                                                                  durable=True, arguments=AE))
        assert code == 406 and "'type'" in text
        code, text = refusal(conn, lambda ch: ch.exchange_declare(
            f"d.{kind}", kind, durable=True, arguments={"alternate-exchange": "other"}))
        assert code == 406 and "alternate-exchange" in text
        code, text = refusal(conn, lambda ch: ch.exchange_declare(f"d.{kind}", kind,
                                                                  durable=False, arguments=AE))
        assert code == 406 and "durable" in text
    code, text = refusal(conn, lambda ch: ch.exchange_declare("d.internal", "topic",
                                                              durable=True))
    assert code == 406 and "internal" in text
    assert refused(conn, lambda ch: ch.exchange_declare("d.internal", "topic", durable=True,
                                                        internal=True)) is None
    code, text = refusal(conn, lambda ch: ch.exchange_declare("d.autodelete", "fanout",
                                                              durable=True))
    assert code == 406 and "auto_delete" in text
    state = b.call(lambda: {name: (ex.kind, ex.durable, ex.internal, ex.auto_delete, ex.arguments)
                            for name, ex in b.broker.vhosts["/"].exchanges.items()
                            if name.startswith(("d.", "t."))})
    assert state == {**{f"d.{k}": (k, True, False, False, AE) for k in KINDS},
                     "d.internal": ("topic", True, True, False, {}),
                     "d.autodelete": ("fanout", True, False, True, {})}
    conn.close()


QUEUE_ARGS = {"x-max-length": 10, "x-message-ttl": 600000, "x-dead-letter-exchange": "dlx",
              "x-dead-letter-routing-key": "dead", "x-max-priority": 5,
              "x-queue-mode": "lazy", "custom": {"nested": [1, "two", True], "big": 2**40}}


def test_durable_queues_with_arguments_survive_restart_transient_ones_do_not(node):
    node.start()
    conn = node.connect()
    ch = conn.channel()
    ch.queue_declare("dq", durable=True, arguments=QUEUE_ARGS)
    ch.queue_declare("dq.plain", durable=True)
    ch.queue_declare("dq.autodelete", durable=True, auto_delete=True)
    ch.queue_declare("tq", durable=False, arguments=QUEUE_ARGS)
    generated = ch.queue_declare("", durable=True).method.queue      # server-named, durable
    conn.close()

    b = node.restart()
    conn = node.connect()
    assert queue_exists(conn, "dq") and queue_exists(conn, "dq.plain")
    assert queue_exists(conn, "dq.autodelete") and queue_exists(conn, generated)
    assert not queue_exists(conn, "tq")
    assert refused(conn, lambda ch: ch.queue_declare("dq", durable=True,
                                                     arguments=QUEUE_ARGS)) is None
    code, text = refusal(conn, lambda ch: ch.queue_declare(
        "dq", durable=True, arguments={**QUEUE_ARGS, "x-max-length": 11}))
    assert code == 406 and "x-max-length" in text
    code, text = refusal(conn, lambda ch: ch.queue_declare(
        "dq", durable=True, arguments={**QUEUE_ARGS, "x-dead-letter-exchange": "elsewhere"}))
    assert code == 406 and "x-dead-letter-exchange" in text
    code, text = refusal(conn, lambda ch: ch.queue_declare("dq", durable=False))
    assert code == 406 and "durable" in text
    code, text = refusal(conn, lambda ch: ch.queue_declare("dq.autodelete", durable=True))
    assert code == 406 and "auto_delete" in text
    state = b.call(lambda: {name: (q.durable, q.auto_delete, q.arguments)
                            for name, q in b.broker.vhosts["/"].queues.items()})
    assert state == {"dq": (True, False, QUEUE_ARGS), "dq.plain": (True, False, {}),
                     "dq.autodelete": (True, True, {}), generated: (True, False, {})}
    conn.close()


def test_bindings_survive_restart(node):
    node.start()
    conn = node.connect()
    ch = conn.channel()
    ch.exchange_declare("x.direct", "direct", durable=True)
    ch.exchange_declare("x.topic", "topic", durable=True)
    ch.exchange_declare("x.headers", "headers", durable=True)
    ch.exchange_declare("x.fan", "fanout", durable=True)
    ch.exchange_declare("x.mid", "direct", durable=True)
    ch.exchange_declare("x.transient", "direct", durable=False)
    for q in ("q1", "q2", "q3", "q4", "q5", "q.doomed"):
        ch.queue_declare(q, durable=True)
    ch.queue_declare("tq", durable=False)
    ch.queue_bind("q1", "x.direct", "k")
    ch.queue_bind("q1", "x.direct", "unbound")
    ch.queue_unbind("q1", "x.direct", "unbound")
    ch.queue_bind("q2", "x.topic", "a.*.c")
    ch.queue_bind("q3", "x.headers", arguments={"x-match": "all", "h": "1", "n": 2})
    ch.exchange_bind("x.mid", "x.fan")                     # destination, source
    ch.queue_bind("q4", "x.mid", "r")
    ch.queue_bind("q5", "amq.direct", "std")               # from a standard exchange
    ch.queue_bind("q1", "x.transient", "t")                # transient source
    ch.queue_bind("tq", "x.direct", "tq")                  # transient destination
    ch.queue_bind("q.doomed", "x.direct", "doomed")
    ch.queue_delete("q.doomed")
    conn.close()

    b = node.restart()
    conn = node.connect()
    ch = conn.channel()
    ch.queue_declare("q.doomed", durable=True)
    publishes = [("x.direct", "k", None), ("x.direct", "unbound", None),
                 ("x.direct", "tq", None), ("x.direct", "doomed", None),
                 ("x.topic", "a.b.c", None), ("x.topic", "a.b", None),
                 ("x.headers", "", {"h": "1", "n": 2}), ("x.headers", "", {"h": "1"}),
                 ("x.fan", "r", None), ("x.fan", "other", None),
                 ("amq.direct", "std", None)]
    for ex, key, headers in publishes:
        ch.basic_publish(ex, key, b"%s/%s" % (ex.encode(), key.encode()),
                         pika.BasicProperties(headers=headers))
    assert {q: bodies(drain(ch, q)) for q in ("q1", "q2", "q3", "q4", "q5", "q.doomed")} == {
        "q1": [b"x.direct/k"], "q2": [b"x.topic/a.b.c"], "q3": [b"x.headers/"],
        "q4": [b"x.fan/r"], "q5": [b"amq.direct/std"], "q.doomed": []}
    sources = b.call(lambda: sorted(
        (ex.name, getattr(dest, "name", None), key)
        for ex in b.broker.vhosts["/"].exchanges.values() for (dest, key, _args) in ex.bindings))
    assert sources == [("amq.direct", "q5", "std"), ("x.direct", "q1", "k"),
                       ("x.fan", "x.mid", ""),
                       ("x.headers", "q3", "q3"), ("x.mid", "q4", "r"), ("x.topic", "q2", "a.*.c")]
    conn.close()


def test_deleted_exchanges_and_their_bindings_stay_deleted(node):
    node.start()
    conn = node.connect()
    ch = conn.channel()
    ch.exchange_declare("src", "fanout", durable=True)
    ch.exchange_declare("dst", "fanout", durable=True)
    ch.exchange_declare("gone", "direct", durable=True)
    ch.queue_declare("q", durable=True)
    ch.queue_bind("q", "gone", "k")
    ch.exchange_bind("dst", "gone", "k")
    ch.exchange_bind("gone", "src")
    ch.queue_bind("q", "dst")
    ch.exchange_delete("gone")
    conn.close()

    b = node.restart()
    conn = node.connect()
    assert not exchange_exists(conn, "gone")
    ch = conn.channel()
    ch.exchange_declare("gone", "direct", durable=True)    # a new, unbound exchange
    ch.basic_publish("gone", "k", b"via gone")
    ch.basic_publish("src", "k", b"via src")
    ch.basic_publish("dst", "k", b"via dst")
    assert bodies(drain(ch, "q")) == [b"via dst"]
    conn.close()
    assert b.call(lambda: len(b.broker.vhosts["/"].exchanges["src"].bindings)) == 0


def test_unbind_with_arguments_in_another_order_stays_unbound(node):
    """The broker treats binding arguments as unordered; so must the journal's replay."""
    node.start()
    conn = node.connect()
    ch = conn.channel()
    ch.exchange_declare("h", "headers", durable=True)
    ch.queue_declare("q", durable=True)
    ch.queue_bind("q", "h", arguments={"x-match": "all", "a": "1", "b": "2",
                                       "x-t": {"m": 1, "n": [1, 2]}})
    ch.queue_unbind("q", "h", arguments={"b": "2", "x-t": {"n": [1, 2], "m": 1}, "a": "1",
                                         "x-match": "all"})
    ch.basic_publish("h", "", b"before", pika.BasicProperties(headers={"a": "1", "b": "2"}))
    assert count(ch, "q") == 0                             # unbound for the running broker
    conn.close()

    node.restart()
    conn = node.connect()
    ch = conn.channel()
    ch.basic_publish("h", "", b"after", pika.BasicProperties(headers={"a": "1", "b": "2"}))
    n = count(ch, "q")
    conn.close()
    assert n == 0


def test_auto_deletions_are_durable(node):
    node.start()
    conn = node.connect()
    ch = conn.channel()
    ch.queue_declare("ad.q", durable=True, auto_delete=True)
    tag = ch.basic_consume("ad.q", lambda *a: None)
    ch.basic_cancel(tag)                                     # last consumer gone: deleted
    assert not queue_exists(conn, "ad.q")
    ch = conn.channel()
    ch.exchange_declare("ad.x1", "direct", durable=True, auto_delete=True)
    ch.exchange_declare("ad.x2", "direct", durable=True, auto_delete=True)
    ch.exchange_declare("ad.kept", "direct", durable=True, auto_delete=True)   # never bound
    ch.queue_declare("q", durable=True)
    ch.queue_declare("q2", durable=True)
    ch.queue_bind("q", "ad.x1", "k")
    ch.queue_unbind("q", "ad.x1", "k")                       # last binding gone: deleted
    ch.queue_bind("q2", "ad.x2", "k")
    ch.queue_delete("q2")                                    # ... also through a queue delete
    assert not exchange_exists(conn, "ad.x1") and not exchange_exists(conn, "ad.x2")
    conn.close()
    node.restart()
    conn = node.connect()
    assert not queue_exists(conn, "ad.q")
    assert not exchange_exists(conn, "ad.x1") and not exchange_exists(conn, "ad.x2")
    assert exchange_exists(conn, "ad.kept") and queue_exists(conn, "q")
    conn.close()


def test_second_broker_on_the_same_data_dir_is_refused(node):
    node.start()
    other = BrokerThread(data_dir=node.data_dir)
    with pytest.raises(StoreError, match=rf"in use by another amqpd \(pid {os.getpid()}\)"):
        other.start()
    other.loop.close()
    node.restart()                                           # the owner itself restarts fine


def test_exclusive_queues_are_not_persisted(node):
    b = node.start()
    conn = node.connect()
    ch = conn.channel()
    ch.exchange_declare("x", "direct", durable=True)
    ch.queue_declare("excl", durable=True, exclusive=True)
    ch.queue_bind("excl", "x", "k")
    ch.basic_publish("x", "k", b"persistent", PERSISTENT)
    assert count(ch, "excl") == 1
    assert b.call(lambda: b.broker.vhosts["/"].queues["excl"].log) is None
    conn.close()
    node.restart()
    conn = node.connect()
    assert not queue_exists(conn, "excl")
    ch = conn.channel()
    ch.queue_declare("excl", durable=True)                 # the name is free, the queue empty
    assert count(ch, "excl") == 0
    ch.basic_publish("x", "k", b"unbound now")
    assert count(ch, "excl") == 0
    conn.close()


# -- messages ------------------------------------------------------------------------------------
RICH = C.Basic.Properties(
    content_type="application/x-test", content_encoding="identity",
    headers={"s": "text", "i": 42, "neg": -7, "big": 2**40, "f": 1.25, "b": True,
             "t": {"inner": "yes"}, "a": [1, "x", False], "none": None,
             "ts": datetime.datetime(2024, 2, 3, 4, 5, 6)},
    delivery_mode=2, priority=3, correlation_id="corr-1", reply_to="replies",
    expiration="600000", message_id="mid-1", timestamp=datetime.datetime(2024, 1, 2, 3, 4, 5),
    message_type="kind", user_id="guest", app_id="the-app")


def header_payload(props, body_size: int) -> bytes:
    return pamqp_frame.marshal(header.ContentHeader(0, body_size, props), 1)[7:-1]


def raw_get(rc: RawClient, queue: str):
    """basic.get with no-ack: (get-ok, raw header payload, body), or None if empty."""
    rc.method(1, C.Basic.Get(queue=queue, no_ack=True))
    _ch, frame = rc.recv()
    while frame.name == "Heartbeat":
        _ch, frame = rc.recv()
    if isinstance(frame, C.Basic.GetEmpty):
        return None
    assert isinstance(frame, C.Basic.GetOk), frame
    kind, _ch, head = rc.raw_frame()
    assert kind == 2
    size = int.from_bytes(head[4:12], "big")
    data = b""
    while len(data) < size:
        kind, _ch, payload = rc.raw_frame()
        assert kind == 3
        data += payload
    return frame, head, data


def test_persistent_messages_survive_in_order_byte_identical(node):
    b = node.start()
    big = bytes(range(256)) * 1200                          # 300 KiB: several body frames
    plan = [  # (exchange, routing key, properties, body, persistent)
        ("", "dq", RICH, b"rich", True),
        ("", "dq", C.Basic.Properties(delivery_mode=1, message_id="t"), b"transient", False),
        ("", "dq", C.Basic.Properties(delivery_mode=2), b"plain", True),
        ("", "dq", C.Basic.Properties(), b"no mode", False),
        ("dx", "rk", C.Basic.Properties(delivery_mode=2, content_type="x/y"), big, True),
        ("", "dq", C.Basic.Properties(delivery_mode=2), b"", True),
    ]
    plan += [("", "dq", C.Basic.Properties(delivery_mode=2 - i % 2, headers={"n": i}),
              b"n%d" % i, i % 2 == 0) for i in range(40)]
    with RawClient(b.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.call(1, C.Queue.Declare(queue="dq", durable=True), C.Queue.DeclareOk)
        rc.call(1, C.Queue.Declare(queue="tq", durable=False), C.Queue.DeclareOk)
        rc.call(1, C.Exchange.Declare(exchange="dx", exchange_type="direct", durable=True),
                C.Exchange.DeclareOk)
        rc.call(1, C.Queue.Bind(queue="dq", exchange="dx", routing_key="rk"), C.Queue.BindOk)
        for ex, key, props, body, _ in plan:
            rc.publish(1, body, exchange=ex, routing_key=key, properties=props)
        rc.publish(1, b"to a transient queue", routing_key="tq", properties=RICH)
        ok = rc.call(1, C.Queue.Declare(queue="dq", passive=True), C.Queue.DeclareOk)
        assert ok.message_count == len(plan)
    node.restart()
    b = node.broker
    with RawClient(b.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        got = []
        while (item := raw_get(rc, "dq")) is not None:
            got.append(item)
        rc.method(1, C.Queue.Declare(queue="tq", passive=True))
        close = rc.expect(C.Channel.Close)
        assert close.reply_code == 404
    kept = [p for p in plan if p[4]]
    assert [body for _, _, body in got] == [p[3] for p in kept]
    for i, ((get_ok, head, _), (ex, key, props, body, _)) in enumerate(zip(got, kept)):
        assert head == header_payload(props, len(body)), i          # byte for byte
        assert (get_ok.exchange, get_ok.routing_key) == (ex, key)
        assert get_ok.redelivered is False
        assert get_ok.message_count == len(kept) - 1 - i


def test_rich_properties_decode_the_same_after_restart(node):
    node.start()
    conn = node.connect()
    ch = conn.channel()
    ch.queue_declare("dq", durable=True)
    sent = pika.BasicProperties(
        content_type="text/plain", content_encoding="utf-8",
        headers={"s": "text", "i": 42, "l": 2**40, "d": decimal.Decimal("1.5"), "b": False,
                 "t": {"x": "y"}, "a": [1, "z"]}, delivery_mode=2, priority=7, correlation_id="c",
        reply_to="r", expiration="600000", message_id="m", timestamp=1700000000, type="t",
        user_id="guest", app_id="a")
    ch.basic_publish("", "dq", "héllo".encode(), sent)
    assert count(ch, "dq") == 1
    conn.close()
    node.restart()
    conn = node.connect()
    ch = conn.channel()
    method, props, body = ch.basic_get("dq", auto_ack=True)
    conn.close()
    assert body == "héllo".encode() and not method.redelivered
    for field in ("content_type", "content_encoding", "delivery_mode", "priority",
                  "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                  "type", "user_id", "app_id"):
        assert getattr(props, field) == getattr(sent, field), field
    assert props.headers == sent.headers


def test_transient_messages_and_non_durable_queues_are_gone(node):
    node.start()
    conn = node.connect()
    ch = conn.channel()
    ch.queue_declare("dq", durable=True)
    ch.queue_declare("tq", durable=False)
    for i in range(5):
        ch.basic_publish("", "dq", b"t%d" % i, TRANSIENT)
        ch.basic_publish("", "dq", b"n%d" % i)                       # no delivery_mode
        ch.basic_publish("", "tq", b"p%d" % i, PERSISTENT)
    ch.basic_publish("", "dq", b"kept", PERSISTENT)
    assert count(ch, "dq") == 11 and count(ch, "tq") == 5
    conn.close()
    node.restart()
    conn = node.connect()
    ch = conn.channel()
    assert drain(ch, "dq") == [(b"kept", False)]
    conn.close()
    assert not queue_exists(node.connect(), "tq")


def test_one_message_in_several_durable_queues(node):
    """Each durable queue keeps its own copy, whatever exchange routed it; settling it in one
    queue leaves the others alone."""
    node.start()
    conn = node.connect()
    ch = conn.channel()
    ch.exchange_declare("fan", "fanout", durable=False)          # a transient exchange
    for q in ("a", "b", "c"):
        ch.queue_declare(q, durable=True)
        ch.queue_bind(q, "fan")
    ch.queue_declare("t", durable=False)
    ch.queue_bind("t", "fan")
    for i in range(3):
        ch.basic_publish("fan", "", b"f%d" % i, PERSISTENT)
    assert drain(ch, "a") == [(b"f0", False), (b"f1", False), (b"f2", False)]
    method, _, _ = ch.basic_get("b", auto_ack=False)
    ch.basic_ack(method.delivery_tag)
    conn.close()
    node.restart()
    conn = node.connect()
    ch = conn.channel()
    assert not exchange_exists(conn, "fan") and not queue_exists(conn, "t")
    assert {q: bodies(drain(ch, q)) for q in "abc"} == {
        "a": [], "b": [b"f1", b"f2"], "c": [b"f0", b"f1", b"f2"]}
    conn.close()


def test_transactional_publishes_and_acks_are_durable(node):
    node.start()
    conn = node.connect()
    ch = conn.channel()
    ch.queue_declare("dq", durable=True)
    publish_numbered(ch, "dq", 3, b"pre")
    ch.tx_select()
    for i in range(3):
        ch.basic_publish("", "dq", b"tx%d" % i, PERSISTENT)
    ch.basic_publish("", "dq", b"rolled back", PERSISTENT)
    ch.tx_rollback()
    for i in range(3):
        ch.basic_publish("", "dq", b"tx%d" % i, PERSISTENT)
    method, _, _ = ch.basic_get("dq", auto_ack=False)
    ch.basic_ack(method.delivery_tag)                            # pre0, acked in the tx
    ch.tx_commit()
    conn.close()
    node.restart()
    conn = node.connect()
    ch = conn.channel()
    assert bodies(drain(ch, "dq")) == [b"pre1", b"pre2", b"tx0", b"tx1", b"tx2"]
    conn.close()


def test_order_is_kept_across_restarts_and_requeues(node):
    """Recovered messages keep their places: new publishes go after them, and a requeue puts
    a message back where it was, before and after a restart."""
    node.start()
    conn = node.connect()
    ch = conn.channel()
    ch.queue_declare("dq", durable=True)
    publish_numbered(ch, "dq", 3, b"a")
    ch.basic_publish("", "dq", b"transient", TRANSIENT)
    conn.close()
    for round_ in range(3):
        node.restart()
        conn = node.connect()
        ch = conn.channel()
        publish_numbered(ch, "dq", 2, b"r%d-" % round_)
        tags = [ch.basic_get("dq", auto_ack=False)[0].delivery_tag for _ in range(3)]
        ch.basic_nack(tags[1], requeue=True)                     # the middle one back first
        ch.basic_nack(tags[-1], multiple=True, requeue=True)
        conn.close()
    node.restart()
    conn = node.connect()
    ch = conn.channel()
    expect = [b"a0", b"a1", b"a2", b"r0-0", b"r0-1", b"r1-0", b"r1-1", b"r2-0", b"r2-1"]
    assert bodies(drain(ch, "dq")) == expect
    conn.close()


def test_definitions_journal_is_compacted_at_start(node):
    node.start()
    conn = node.connect()
    ch = conn.channel()
    ch.exchange_declare("keep", "topic", durable=True)
    ch.queue_declare("kept", durable=True)
    ch.queue_bind("kept", "keep", "#")
    for i in range(30):
        ch.queue_declare(f"churn{i}", durable=True)
        ch.queue_bind(f"churn{i}", "keep", "x")
        ch.queue_delete(f"churn{i}")
    conn.close()
    path = os.path.join(node.data_dir, "definitions.jsonl")
    with open(path) as f:
        assert len(f.readlines()) > 90
    node.restart()
    with open(path) as f:
        lines = [json.loads(line) for line in f]
    assert sorted(d["op"] for d in lines) == ["bind", "exchange", "queue"]
    conn = node.connect()
    ch = conn.channel()
    ch.basic_publish("keep", "a.b", b"routed")
    assert count(ch, "kept") == 1
    conn.close()


def publish_numbered(ch, queue: str, n: int, prefix: bytes = b"m") -> None:
    for i in range(n):
        ch.basic_publish("", queue, b"%s%d" % (prefix, i), PERSISTENT)


def stop_while_connected(node, conn) -> None:
    """A clean broker stop while ``conn`` is still open: the broker closes it with 320."""
    b = node.broker
    node.broker = None
    stopper = threading.Thread(target=b.stop)
    stopper.start()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        conn.sleep(10)
    assert info.value.reply_code == 320
    stopper.join(10)
    assert not stopper.is_alive()


@pytest.mark.parametrize("how", ["held at stop", "requeued before stop"])
def test_delivered_unacked_messages_come_back_redelivered(node, how):
    node.start()
    conn = node.connect()
    ch = conn.channel()
    ch.queue_declare("dq", durable=True)
    publish_numbered(ch, "dq", 6)
    method, _, body = ch.basic_get("dq", auto_ack=False)
    assert body == b"m0"
    ch.basic_ack(method.delivery_tag)                            # acked: gone for good
    method, _, body = ch.basic_get("dq", auto_ack=False)         # delivered by basic.get
    assert body == b"m1"
    got = []
    ch.basic_qos(prefetch_count=2)
    ch.basic_consume("dq", lambda c, m, p, b: got.append(b))   # delivered to a consumer
    pump(conn, lambda: len(got) == 2)
    assert got == [b"m2", b"m3"]
    assert count(ch, "dq") == 2                                  # m4, m5 never delivered
    if how == "held at stop":
        stop_while_connected(node, conn)
        node.start()
    else:
        conn.close()
        node.restart()

    conn = node.connect()
    ch = conn.channel()
    expect = [(b"m1", True), (b"m2", True), (b"m3", True), (b"m4", False), (b"m5", False)]
    assert drain(ch, "dq", ack=False) == expect
    conn.close()                  # all requeued again; m4 and m5 have now been delivered too
    node.restart()
    conn = node.connect()
    ch = conn.channel()
    assert drain(ch, "dq", ack=True) == [(body, True) for body, _ in expect]
    conn.close()
    node.restart()
    conn = node.connect()
    assert count(conn.channel(), "dq") == 0
    conn.close()


def test_settled_messages_do_not_come_back(node):
    node.start()
    conn = node.connect()
    ch = conn.channel()
    ch.queue_declare("dq", durable=True)
    publish_numbered(ch, "dq", 10)
    ch.basic_get("dq", auto_ack=True)                            # m0: no-ack get
    method, _, _ = ch.basic_get("dq", auto_ack=False)            # m1: rejected, not requeued
    ch.basic_reject(method.delivery_tag, requeue=False)
    method, _, _ = ch.basic_get("dq", auto_ack=False)            # m2: nacked, not requeued
    ch.basic_nack(method.delivery_tag, requeue=False)
    method, _, _ = ch.basic_get("dq", auto_ack=False)            # m3: nacked and requeued
    ch.basic_nack(method.delivery_tag, requeue=True)
    got = []
    ch.basic_qos(prefetch_count=3)
    ch.basic_consume("dq", lambda c, m, p, b: got.append((m.delivery_tag, b)))
    pump(conn, lambda: len(got) == 3)
    assert [b for _, b in got] == [b"m3", b"m4", b"m5"]
    ch.basic_ack(got[-1][0], multiple=True)                      # m3, m4, m5 acked at once
    pump(conn, lambda: len(got) == 6)
    assert [b for _, b in got[3:]] == [b"m6", b"m7", b"m8"]
    ch.basic_ack(got[3][0])                                      # m6 acked alone
    pump(conn, lambda: len(got) == 7)                            # m7, m8, m9 held
    assert got[6][1] == b"m9"
    c2 = node.connect()
    assert count(c2.channel(), "dq") == 0                        # a round trip after the acks
    c2.close()
    conn.close()
    node.restart()
    conn = node.connect()
    ch = conn.channel()
    assert drain(ch, "dq") == [(b"m7", True), (b"m8", True), (b"m9", True)]
    conn.close()


def test_purge_is_durable(node):
    node.start()
    conn = node.connect()
    ch = conn.channel()
    ch.queue_declare("dq", durable=True)
    publish_numbered(ch, "dq", 5, b"old")
    method, _, _ = ch.basic_get("dq", auto_ack=False)            # old0 held: purge skips it
    assert ch.queue_purge("dq").method.message_count == 4
    publish_numbered(ch, "dq", 2, b"new")
    assert count(ch, "dq") == 2
    conn.close()                                                 # old0 goes back
    node.restart()
    conn = node.connect()
    ch = conn.channel()
    assert drain(ch, "dq") == [(b"old0", True), (b"new0", False), (b"new1", False)]
    conn.close()


def test_queue_delete_is_durable(node):
    node.start()
    conn = node.connect()
    ch = conn.channel()
    ch.queue_declare("gone", durable=True)
    ch.queue_declare("reborn", durable=True)
    publish_numbered(ch, "gone", 5)
    publish_numbered(ch, "reborn", 5, b"old")
    ch.basic_get("reborn", auto_ack=False)                       # held when it is deleted
    assert ch.queue_delete("gone").method.message_count == 5
    ch.queue_delete("reborn")
    ch.queue_declare("reborn", durable=True)
    publish_numbered(ch, "reborn", 2, b"new")
    conn.close()
    node.restart()
    conn = node.connect()
    assert not queue_exists(conn, "gone")
    ch = conn.channel()
    assert drain(ch, "reborn") == [(b"new0", False), (b"new1", False)]
    conn.close()
    node.restart()
    conn = node.connect()
    ch = conn.channel()
    ch.queue_declare("gone", durable=True)
    assert count(ch, "gone") == 0
    assert count(ch, "reborn") == 0
    conn.close()


def test_a_queue_deleted_just_before_a_crash_stays_gone_when_declared_again(node):
    """A crash between journaling queue.delete and removing the queue's files leaves them
    behind. They used to stay: declared again, the queue appended a new segment header into
    the old file, so after the next restart the deleted messages were back and the new,
    confirmed ones were unreadable (the old salt does not validate them)."""
    node.start()
    conn = node.connect()
    ch = conn.channel()
    ch.queue_declare("phoenix", durable=True)
    publish_numbered(ch, "phoenix", 3, b"old")
    conn.close()
    node.stop()
    # what a crash right after the journal line of the delete leaves (the files are still there)
    with open(os.path.join(node.data_dir, "definitions.jsonl"), "a") as f:
        f.write(json.dumps({"op": "queue.delete", "vhost": "/", "name": "phoenix"}) + "\n")
    node.start()
    conn = node.connect()
    assert not queue_exists(conn, "phoenix")
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("phoenix", durable=True)
    ch.basic_publish("", "phoenix", b"new", PERSISTENT)         # confirmed
    conn.close()
    node.restart()
    conn = node.connect()
    assert drain(conn.channel(), "phoenix") == [(b"new", False)]
    conn.close()


# -- confirms ------------------------------------------------------------------------------------
async def publish_confirmed(channel, queue: str, bodies_: list) -> None:
    results = await asyncio.gather(*(
        channel.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue)
        for body in bodies_))
    assert all(isinstance(r, C.Basic.Ack) for r in results), results


async def get_all(channel, queue: str, ack: bool = True) -> list:
    q = await channel.declare_queue(queue, durable=True, passive=True)
    out = []
    while (msg := await q.get(no_ack=ack, fail=False)) is not None:
        out.append((msg.body, msg.redelivered))
    return out


async def test_publisher_confirms_for_persistent_messages(node):
    b = node.start()
    conn = await aio_pika.connect(b.url)
    try:
        ch = await conn.channel(publisher_confirms=True)
        await ch.declare_queue("cq", durable=True)
        await ch.declare_queue("tq", durable=False)
        sent = [b"c%d" % i for i in range(200)]
        await publish_confirmed(ch, "cq", sent[:100])
        for body in sent[100:]:                                  # one at a time, too
            await publish_confirmed(ch, "cq", [body])
        await publish_confirmed(ch, "tq", [b"transient queue"])  # confirmed without a log
        assert b.call(lambda: b.server.store.commit.synced_gen >= 1)
    finally:
        await conn.close()
    node.restart()
    b = node.broker
    conn = await aio_pika.connect(b.url)
    try:
        ch = await conn.channel()
        assert await get_all(ch, "cq") == [(body, False) for body in sent]
    finally:
        await conn.close()


async def test_confirmed_messages_survive_sigkill(tmp_path):
    data = str(tmp_path / "data")
    first = AmqpdProcess(data_dir=data).start()
    second = None
    try:
        conn = await aio_pika.connect(first.url)
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.declare_exchange("cx", aio_pika.ExchangeType.FANOUT, durable=True)
        q = await ch.declare_queue("cq", durable=True)
        await q.bind(ex)
        # a second amqpd on the same data dir is refused, naming the owner
        other = subprocess.run([sys.executable, "-m", "amqpd", "--port", "0", "--http-port", "0",
                                "--prometheus-port", "0", "--data-dir", data],
                               cwd=ROOT, capture_output=True, text=True, timeout=20)
        assert other.returncode == 1
        assert "in use" in other.stderr and f"pid {first.proc.pid}" in other.stderr
        sent = [b"k%d" % i for i in range(300)]
        results = await asyncio.gather(*(
            ex.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                       routing_key="")
            for body in sent))
        assert all(isinstance(r, C.Basic.Ack) for r in results)
        held = [await q.get(no_ack=False) for _ in range(2)]     # delivered, never acked
        assert [m.body for m in held] == sent[:2]
        await ch.declare_queue("cq", durable=True, passive=True)  # a round trip after the gets
        first.proc.kill()                                        # SIGKILL: no clean shutdown
        first.proc.wait(5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 2)

        second = AmqpdProcess(data_dir=data).start()
        conn = await aio_pika.connect(second.url)
        try:
            ch = await conn.channel(publisher_confirms=True)
            got = await get_all(ch, "cq")
            assert got == [(b, True) for b in sent[:2]] + [(b, False) for b in sent[2:]]
            # the durable exchange and its binding were on disk before declare-ok/bind-ok
            ex = await ch.declare_exchange("cx", aio_pika.ExchangeType.FANOUT, passive=True)
            await ex.publish(aio_pika.Message(b"again", delivery_mode=2), routing_key="")
            assert await get_all(ch, "cq") == [(b"again", False)]
        finally:
            await conn.close()
    finally:
        first.cleanup()
        if second is not None:
            assert second.stop() == 0
            second.cleanup()


@pytest.mark.parametrize("mode", ["always", "batch", "never"])
def test_fsync_modes_keep_confirmed_messages(node, mode):
    b = node.start(storage={"fsync": mode})
    assert b.server.store.fsync_mode == mode
    conn = node.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("dq", durable=True)
    for i in range(100):
        ch.basic_publish("", "dq", b"f%d" % i, PERSISTENT)     # raises unless acked
    ch.basic_publish("", "dq", b"transient", TRANSIENT)
    conn.close()
    b = node.restart(storage={"fsync": mode})
    conn = node.connect()
    ch = conn.channel()
    assert drain(ch, "dq") == [(b"f%d" % i, False) for i in range(100)]
    conn.close()
