"""Queues over real sockets: declare (passive, server-named, reserved names, equivalence),
exclusive ownership, declare-ok counts, purge, delete (if_unused / if_empty), unbind and
auto-delete. Expected codes and texts are RabbitMQ 3.10's."""
import re
import time

import aio_pika
import aiormq
import pytest
from pamqp import commands as C
from pika.exceptions import ChannelClosedByBroker

from tests.rawclient import RawClient
from .helpers import rabbit_text, refused, reply


# -- helpers ----------------------------------------------------------------------------------
def exists(conn, queue: str) -> bool:
    """Passive declare on a throw-away channel."""
    ch = conn.channel()
    try:
        ch.queue_declare(queue, passive=True)
    except ChannelClosedByBroker as e:
        assert e.reply_code == 404, reply(e)
        return False
    ch.close()
    return True


def wait_gone(conn, queue: str, timeout: float = 5) -> None:
    """Queue deletion that follows a close or cancel may be asynchronous (it is in RabbitMQ):
    poll with passive declares until it reports 404."""
    deadline = time.monotonic() + timeout
    while exists(conn, queue):
        assert time.monotonic() < deadline, f"queue {queue!r} still exists"
        time.sleep(0.01)


def publish_n(ch, queue: str, n: int) -> None:
    for i in range(n):
        ch.basic_publish("", queue, str(i).encode())


def wait_deliveries(conn, got: list, n: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} deliveries arrived"
        conn.process_data_events(time_limit=0.05)


def locked_text(q: str, vh: str) -> str:
    return rabbit_text(
        f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost "
        f"'{vh}'. It could be originally declared on another connection or the exclusive "
        "property value does not match that of the original declaration.")


# -- declare ------------------------------------------------------------------------------------
def test_passive_declare_missing_queue_404(ch, vh):
    e = refused(ch.queue_declare, "nope", passive=True)
    assert reply(e) == (404, f"NOT_FOUND - no queue 'nope' in vhost '{vh}'")


def test_passive_declare_existing_ignores_properties(ch):
    ch.queue_declare("q", durable=False, arguments={"x-message-ttl": 1000})
    ok = ch.queue_declare("q", passive=True, durable=True, arguments={"x-message-ttl": 5})
    assert (ok.method.queue, ok.method.message_count, ok.method.consumer_count) == ("q", 0, 0)


def test_server_named_queue(ch):
    names = {ch.queue_declare("", exclusive=True).method.queue for _ in range(3)}
    assert len(names) == 3
    for name in names:
        assert re.fullmatch(r"amq\.gen-[A-Za-z0-9_-]{22}", name), name
        ch.queue_declare(name, passive=True)
        ch.basic_publish("", name, b"x")
        assert ch.basic_get(name, auto_ack=True)[2] == b"x"


def test_declare_reserved_name_403(ch, vh):
    e = refused(ch.queue_declare, "amq.x")
    assert reply(e) == (403, "ACCESS_REFUSED - queue name 'amq.x' contains reserved prefix "
                             "'amq.*'")


def test_redeclare_same_properties_ok(ch):
    args = {"x-message-ttl": 1000, "x-max-length": 10, "x-overflow": "reject-publish"}
    ch.queue_declare("q", durable=True, arguments=args)
    ok = ch.queue_declare("q", durable=True, arguments=dict(args))
    assert ok.method.queue == "q"
    ch.queue_delete("q")


@pytest.mark.parametrize("first,second,arg,received,current", [
    ({"durable": False}, {"durable": True}, "durable", "'true'", "'false'"),
    ({"durable": True}, {"durable": False}, "durable", "'false'", "'true'"),
    ({"auto_delete": False}, {"auto_delete": True}, "auto_delete", "'true'", "'false'"),
    ({"arguments": {"x-message-ttl": 1000}}, {"arguments": {"x-message-ttl": 2000}},
     "x-message-ttl", "'2000'", "'1000'"),
    ({"arguments": {"x-max-length": 5}}, {"arguments": {"x-max-length": 6}},
     "x-max-length", "'6'", "'5'"),
    ({"arguments": {"x-dead-letter-exchange": "a"}},
     {"arguments": {"x-dead-letter-exchange": "b"}}, "x-dead-letter-exchange", "'b'", "'a'"),
])
def test_redeclare_inequivalent_406(conn, vh, first, second, arg, received, current):
    ch = conn.channel()
    ch.queue_declare("q", **first)
    e = refused(ch.queue_declare, "q", **{**first, **second})
    assert reply(e) == (406, f"PRECONDITION_FAILED - inequivalent arg '{arg}' for queue 'q' in "
                             f"vhost '{vh}': received {received} but current is {current}")
    assert exists(conn, "q")
    conn.channel().queue_delete("q")


def test_redeclare_ttl_exact_text(ch, vh):
    ch.queue_declare("q", arguments={"x-message-ttl": 1000})
    e = refused(ch.queue_declare, "q", arguments={"x-message-ttl": 2000})
    assert reply(e) == (406, "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue "
                             f"'q' in vhost '{vh}': received '2000' but current is '1000'")


def test_redeclare_dropping_argument_406(ch, vh):
    ch.queue_declare("q", arguments={"x-message-ttl": 1000})
    e = refused(ch.queue_declare, "q")
    assert reply(e) == (406, "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue "
                             f"'q' in vhost '{vh}': received none but current is the value "
                             "'1000' of type 'signedint'")


def test_redeclare_adding_argument_406(ch, vh):
    ch.queue_declare("r")
    e = refused(ch.queue_declare, "r", arguments={"x-message-ttl": 1000})
    assert reply(e) == (406, "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue "
                             f"'r' in vhost '{vh}': received the value '1000' of type "
                             "'signedint' but current is none")


async def test_redeclare_inequivalent_aio_pika(broker, vh):
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch = await conn.channel()
        await ch.declare_queue("q", arguments={"x-message-ttl": 1000})
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as info:
            await ch.declare_queue("q", arguments={"x-message-ttl": 2000})
        assert info.value.args[0] == (
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost "
            f"'{vh}': received '2000' but current is '1000'")


def test_declare_ok_counts(connect):
    conn = connect()
    ch = conn.channel()
    # Confirms make the count exact: RabbitMQ answers a declare before earlier publishes
    # have reached the queue otherwise.
    ch.confirm_delivery()
    ok = ch.queue_declare("q")
    assert (ok.method.message_count, ok.method.consumer_count) == (0, 0)
    publish_n(ch, "q", 3)
    ok = ch.queue_declare("q")
    assert (ok.method.message_count, ok.method.consumer_count) == (3, 0)
    # A consumer elsewhere with prefetch 1 holds one message unacked: it is not counted.
    other = connect()
    och = other.channel()
    och.basic_qos(prefetch_count=1)
    got = []
    och.basic_consume("q", lambda c, m, p, b: got.append(b))
    wait_deliveries(other, got, 1)
    ok = ch.queue_declare("q", passive=True)
    assert (ok.method.message_count, ok.method.consumer_count) == (2, 1)
    och.basic_consume("q", lambda c, m, p, b: got.append(b))
    wait_deliveries(other, got, 2)
    ok = ch.queue_declare("q")
    assert (ok.method.message_count, ok.method.consumer_count) == (1, 2)
    other.close()
    # The connection's unacked messages went back, its consumers went away.
    deadline = time.monotonic() + 5
    while True:
        ok = ch.queue_declare("q", passive=True)
        if (ok.method.message_count, ok.method.consumer_count) == (3, 0):
            break
        assert time.monotonic() < deadline, ok.method
        time.sleep(0.01)
    ch.queue_delete("q")


# -- exclusive queues ---------------------------------------------------------------------------
@pytest.fixture
def locked(connect):
    """An exclusive queue 'ex' owned by one connection, and a channel factory on another."""
    owner = connect()
    och = owner.channel()
    och.queue_declare("ex", exclusive=True)
    och.queue_bind("ex", "amq.fanout")
    intruder = connect()
    return owner, intruder


@pytest.mark.parametrize("op", [
    "declare", "declare-exclusive", "passive", "consume", "get", "bind",
    "unbind",
    "purge", "delete"])
def test_exclusive_queue_locked_for_other_connections_405(locked, vh, op):
    owner, intruder = locked
    ch = intruder.channel()
    actions = {
        "declare": lambda: ch.queue_declare("ex"),
        "declare-exclusive": lambda: ch.queue_declare("ex", exclusive=True),
        "passive": lambda: ch.queue_declare("ex", passive=True),
        "consume": lambda: ch.basic_consume("ex", lambda *a: None),
        "get": lambda: ch.basic_get("ex"),
        "bind": lambda: ch.queue_bind("ex", "amq.fanout"),
        "unbind": lambda: ch.queue_unbind("ex", "amq.fanout"),
        "purge": lambda: ch.queue_purge("ex"),
        "delete": lambda: ch.queue_delete("ex"),
    }
    e = refused(actions[op])
    assert reply(e) == (405, locked_text("ex", vh))
    assert intruder.is_open
    assert exists(owner, "ex")


def test_exclusive_queue_usable_by_owner_on_any_channel(connect):
    owner = connect()
    ch1, ch2 = owner.channel(), owner.channel()
    ch1.queue_declare("ex", exclusive=True)
    ch2.queue_declare("ex", exclusive=True)
    ch2.queue_declare("ex", passive=True)
    ch2.queue_bind("ex", "amq.fanout")
    ch2.basic_publish("amq.fanout", "", b"m")
    assert ch2.queue_purge("ex").method.message_count == 1
    ch1.close()                      # closing the declaring channel does not delete it
    assert exists(owner, "ex")
    ch2.queue_delete("ex")
    assert not exists(owner, "ex")


def test_redeclare_shared_queue_as_exclusive_405(conn, vh):
    ch = conn.channel()
    ch.queue_declare("shared")
    e = refused(ch.queue_declare, "shared", exclusive=True)
    assert reply(e) == (405, locked_text("shared", vh))


def test_owner_redeclare_exclusive_queue_as_shared_405(conn, vh):
    ch = conn.channel()
    ch.queue_declare("mine", exclusive=True)
    e = refused(ch.queue_declare, "mine", exclusive=False)
    assert reply(e) == (405, locked_text("mine", vh))


def test_exclusive_queues_vanish_with_their_connection(connect):
    owner, other = connect(), connect()
    ch = owner.channel()
    ch.queue_declare("ex1", exclusive=True)
    gen = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind("ex1", "amq.direct", "k")
    ch.basic_publish("", "ex1", b"gone too")
    owner.close()
    wait_gone(other, "ex1")
    wait_gone(other, gen)
    # The name is free again, and the old binding did not survive.
    och = other.channel()
    ok = och.queue_declare("ex1", exclusive=True)
    assert ok.method.message_count == 0
    och.basic_publish("amq.direct", "k", b"x")
    assert och.basic_get("ex1")[0] is None


async def test_exclusive_queue_aio_pika_locked(broker, vh):
    a = await aio_pika.connect(broker.url)
    b = await aio_pika.connect(broker.url)
    async with a, b:
        cha = await a.channel()
        q = await cha.declare_queue("", exclusive=True)
        chb = await b.channel()
        with pytest.raises(aiormq.exceptions.ChannelLockedResource) as info:
            await chb.declare_queue(q.name, passive=True)
        assert info.value.args[0] == locked_text(q.name, vh)


def test_exclusive_locked_raw_class_method(broker, vh):
    with RawClient(broker.port) as owner, RawClient(broker.port) as other:
        owner.handshake(vhost=vh)
        owner.open_channel(1)
        owner.call(1, C.Queue.Declare(queue="ex", exclusive=True), C.Queue.DeclareOk)
        other.handshake(vhost=vh)
        other.open_channel(1)
        close = other.call(1, C.Basic.Consume(queue="ex"), C.Channel.Close)
        assert (close.reply_code, close.class_id, close.method_id) == (405, 60, 20)
        other.method(1, C.Channel.CloseOk())
        other.open_channel(1)
        close = other.call(1, C.Queue.Purge(queue="ex"), C.Channel.Close)
        assert (close.reply_code, close.class_id, close.method_id) == (405, 50, 30)


# -- purge / delete -----------------------------------------------------------------------------
def test_purge_returns_count(ch):
    ch.queue_declare("q")
    publish_n(ch, "q", 5)
    assert ch.queue_purge("q").method.message_count == 5
    assert ch.queue_purge("q").method.message_count == 0
    assert ch.basic_get("q")[0] is None
    ch.queue_delete("q")


def test_purge_leaves_unacked_messages(ch):
    ch.queue_declare("q")
    publish_n(ch, "q", 3)
    method, _, _ = ch.basic_get("q", auto_ack=False)
    assert ch.queue_purge("q").method.message_count == 2
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, _, body = ch.basic_get("q", auto_ack=True)
    assert (body, method.redelivered, method.message_count) == (b"0", True, 0)
    ch.queue_delete("q")


def test_purge_missing_queue_404(ch, vh):
    e = refused(ch.queue_purge, "nope")
    assert reply(e) == (404, f"NOT_FOUND - no queue 'nope' in vhost '{vh}'")


def test_delete_returns_count(conn):
    ch = conn.channel()
    ch.queue_declare("q")
    publish_n(ch, "q", 4)
    assert ch.queue_delete("q").method.message_count == 4
    assert not exists(conn, "q")


def test_delete_missing_queue_ok(ch):
    assert ch.queue_delete("never-declared").method.message_count == 0
    assert ch.queue_delete("never-declared", if_unused=True,
                           if_empty=True).method.message_count == 0


def test_delete_if_unused_with_consumer_406(conn, vh):
    ch = conn.channel()
    ch.queue_declare("q")
    tag = ch.basic_consume("q", lambda *a: None)
    ch2 = conn.channel()
    e = refused(ch2.queue_delete, "q", if_unused=True)
    assert reply(e) == (406, f"PRECONDITION_FAILED - queue 'q' in vhost '{vh}' in use")
    assert exists(conn, "q")
    ch.basic_cancel(tag)
    assert conn.channel().queue_delete("q", if_unused=True).method.message_count == 0
    assert not exists(conn, "q")


def test_delete_if_empty_with_messages_406(conn, vh):
    ch = conn.channel()
    ch.queue_declare("q")
    publish_n(ch, "q", 2)
    e = refused(ch.queue_delete, "q", if_empty=True)
    assert reply(e) == (406, f"PRECONDITION_FAILED - queue 'q' in vhost '{vh}' not empty")
    ch = conn.channel()
    ch.queue_purge("q")
    assert ch.queue_delete("q", if_empty=True).method.message_count == 0


def test_delete_cancels_consumers_and_bindings(conn):
    ch = conn.channel()
    ch.queue_declare("q")
    ch.queue_bind("q", "amq.direct", "k")
    ch.basic_consume("q", lambda *a: None)
    ch2 = conn.channel()
    ch2.queue_delete("q")
    ch2.queue_declare("q")
    ch2.basic_publish("amq.direct", "k", b"old binding")
    assert ch2.queue_declare("q", passive=True).method.consumer_count == 0
    assert ch2.basic_get("q")[0] is None
    ch2.queue_delete("q")


# -- bindings -----------------------------------------------------------------------------------
def test_bind_unbind_and_unbind_missing_binding_ok(ch):
    ch.queue_declare("q", exclusive=True)
    ch.exchange_declare("x", "direct")
    ch.queue_unbind("q", "x", "never-bound")          # no such binding: ok
    ch.queue_bind("q", "x", "k")
    ch.queue_unbind("q", "x", "k")
    ch.queue_unbind("q", "x", "k")                    # already gone: ok
    ch.basic_publish("x", "k", b"m")
    assert ch.basic_get("q")[0] is None


def test_unbind_with_missing_queue_or_exchange_ok(conn):
    """RabbitMQ answers unbind-ok whenever the binding does not exist, even when the queue or
    the exchange does not exist either."""
    ch = conn.channel()
    ch.queue_declare("q", exclusive=True)
    ch.queue_bind("q", "amq.direct", "k")
    assert ch.queue_unbind("q", "no-such-exchange", "k").method.NAME == "Queue.UnbindOk"
    assert ch.queue_unbind("no-such-queue", "amq.direct", "k").method.NAME == "Queue.UnbindOk"
    # nothing was created on the way, and q's own binding is untouched
    assert refused(ch.exchange_declare, "no-such-exchange", passive=True).reply_code == 404
    ch = conn.channel()
    assert refused(ch.queue_declare, "no-such-queue", passive=True).reply_code == 404
    ch = conn.channel()
    ch.basic_publish("amq.direct", "k", b"routed")
    assert ch.basic_get("q", auto_ack=True)[2] == b"routed"


def test_bind_missing_queue_or_exchange_404(conn, vh):
    ch = conn.channel()
    e = refused(ch.queue_bind, "nope", "amq.direct", "k")
    assert reply(e) == (404, f"NOT_FOUND - no queue 'nope' in vhost '{vh}'")
    ch = conn.channel()
    ch.queue_declare("q", exclusive=True)
    e = refused(ch.queue_bind, "q", "nope", "k")
    assert reply(e) == (404, f"NOT_FOUND - no exchange 'nope' in vhost '{vh}'")


# -- auto-delete --------------------------------------------------------------------------------
def test_auto_delete_queue_goes_when_last_consumer_cancels(connect):
    conn, watcher = connect(), connect()
    ch = conn.channel()
    ch.queue_declare("ad", auto_delete=True)
    t1 = ch.basic_consume("ad", lambda *a: None)
    t2 = ch.basic_consume("ad", lambda *a: None)
    ch.basic_cancel(t1)
    assert exists(watcher, "ad")
    ch.basic_cancel(t2)
    wait_gone(watcher, "ad")


def test_auto_delete_queue_without_consumers_stays(connect):
    conn = connect()
    ch = conn.channel()
    ch.queue_declare("ad", auto_delete=True)
    ch.basic_publish("", "ad", b"m")
    ch.basic_get("ad", auto_ack=True)       # basic.get is not a consumer
    ch.close()
    assert exists(conn, "ad")
    conn.channel().queue_delete("ad")


def test_auto_delete_queue_goes_when_consumer_channel_closes(connect):
    conn, watcher = connect(), connect()
    ch = conn.channel()
    ch.queue_declare("ad", auto_delete=True)
    ch.basic_consume("ad", lambda *a: None)
    ch.close()
    wait_gone(watcher, "ad")


def test_long_reply_text_truncated_like_rabbitmq(conn, vh):
    """Reply texts are shortstrs: RabbitMQ cuts them to 252 bytes plus '...'."""
    name = "q" * 250
    ch = conn.channel()
    e = refused(ch.queue_declare, name, passive=True)
    expected = rabbit_text(f"NOT_FOUND - no queue '{name}' in vhost '{vh}'")
    assert len(expected) == 255 and expected.endswith("...")
    assert reply(e) == (404, expected)
    assert conn.is_open
    conn.channel().queue_declare("still-works", exclusive=True)
