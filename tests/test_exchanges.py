"""Exchanges over real sockets: declare/delete rules and reply codes, routing for every exchange
type, the pre-declared amq.* exchanges, exchange-to-exchange bindings, auto-delete and internal
exchanges. Expected codes and texts are RabbitMQ 3.10's."""
import re

import aio_pika
import aiormq
import pika
import pytest
from pamqp import commands as C
from pika.exceptions import ConnectionClosedByBroker

from tests.rawclient import RawClient
from .helpers import drain, new_queue, rabbit_text, refused, reply


# -- helpers ----------------------------------------------------------------------------------
def topic_match(pattern: str, key: str) -> bool:
    """Reference matcher with RabbitMQ's word split ('' has no words, 'a..b' has three)."""
    p = pattern.split(".") if pattern else []
    k = key.split(".") if key else []

    def m(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(k)
        if p[i] == "#":
            return m(i + 1, j) or (j < len(k) and m(i, j + 1))
        if j == len(k):
            return False
        return (p[i] == "*" or p[i] == k[j]) and m(i + 1, j + 1)

    return m(0, 0)


# -- declaring ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["direct", "fanout", "topic", "headers"])
def test_declare_each_type_and_passive(ch, kind):
    ch.exchange_declare(f"x-{kind}", kind)
    # Redeclaring with the same properties, and passive declares, are fine.
    ch.exchange_declare(f"x-{kind}", kind)
    ch.exchange_declare(f"x-{kind}", passive=True)
    # A passive declare does not compare the type.
    other = "fanout" if kind != "fanout" else "direct"
    ch.exchange_declare(f"x-{kind}", other, passive=True)
    ch.exchange_delete(f"x-{kind}")
    e = refused(ch.exchange_declare, f"x-{kind}", passive=True)
    assert e.reply_code == 404


@pytest.mark.parametrize("name,kind", [("amq.direct", "direct"), ("amq.fanout", "fanout"),
                                       ("amq.topic", "topic"), ("amq.headers", "headers"),
                                       ("amq.match", "headers")])
def test_standard_exchanges_predeclared(ch, name, kind):
    ch.exchange_declare(name, passive=True)
    # Declaring one with its real properties is an equivalent redeclare, not an error.
    ch.exchange_declare(name, kind, durable=True)
    e = refused(ch.exchange_declare, name, kind, durable=False)
    assert e.reply_code == 406


def test_standard_exchanges_route(ch):
    qd = new_queue(ch, "amq.direct", "dk")
    qf = new_queue(ch, "amq.fanout")
    qt = new_queue(ch, "amq.topic", "a.*")
    qh = new_queue(ch, "amq.headers", arguments={"x-match": "all", "h": "1"})
    qm = new_queue(ch, "amq.match", arguments={"x-match": "any", "h": "2"})
    ch.basic_publish("amq.direct", "dk", b"d")
    ch.basic_publish("amq.fanout", "whatever", b"f")
    ch.basic_publish("amq.topic", "a.b", b"t")
    ch.basic_publish("amq.headers", "", b"h", pika.BasicProperties(headers={"h": "1"}))
    ch.basic_publish("amq.match", "", b"m", pika.BasicProperties(headers={"h": "2"}))
    assert [drain(ch, q) for q in (qd, qf, qt, qh, qm)] == [[b"d"], [b"f"], [b"t"], [b"h"],
                                                             [b"m"]]


def test_passive_declare_missing_exchange_404(ch, vh):
    e = refused(ch.exchange_declare, "nope", passive=True)
    assert reply(e) == (404, f"NOT_FOUND - no exchange 'nope' in vhost '{vh}'")


def test_channel_usable_after_soft_error(conn, vh):
    ch = conn.channel()
    refused(ch.exchange_declare, "nope", passive=True)
    assert not ch.is_open and conn.is_open
    ch2 = conn.channel()
    ch2.exchange_declare("fine", "direct")


@pytest.mark.parametrize("first,second,arg,received,current", [
    ({"exchange_type": "direct"}, {"exchange_type": "fanout"}, "type", "fanout", "direct"),
    ({"exchange_type": "topic"}, {"exchange_type": "headers"}, "type", "headers", "topic"),
    ({"durable": False}, {"durable": True}, "durable", "true", "false"),
    ({"durable": True}, {"durable": False}, "durable", "false", "true"),
    ({"auto_delete": False}, {"auto_delete": True}, "auto_delete", "true", "false"),
    ({"internal": False}, {"internal": True}, "internal", "true", "false"),
])
def test_redeclare_inequivalent_406(conn, vh, first, second, arg, received, current):
    ch = conn.channel()
    base = {"exchange_type": "direct", "durable": False, "auto_delete": False,
            "internal": False}
    ch.exchange_declare("x", **{**base, **first})
    e = refused(ch.exchange_declare, "x", **{**base, **first, **second})
    assert reply(e) == (406, f"PRECONDITION_FAILED - inequivalent arg '{arg}' for exchange 'x' "
                             f"in vhost '{vh}': received '{received}' but current is "
                             f"'{current}'")
    ch = conn.channel()
    ch.exchange_declare("x", passive=True)      # the original survives
    ch.exchange_delete("x")


def test_redeclare_type_mismatch_exact_text(ch, vh):
    ch.exchange_declare("x", "direct")
    e = refused(ch.exchange_declare, "x", "fanout")
    assert reply(e) == (406, "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in "
                             f"vhost '{vh}': received 'fanout' but current is 'direct'")


def test_declare_reserved_name_403(ch, vh):
    e = refused(ch.exchange_declare, "amq.foo", "direct")
    assert reply(e) == (403, "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved "
                             "prefix 'amq.*'")


UNKNOWN_TYPE = re.compile(r"COMMAND_INVALID - (unknown|invalid) exchange type 'no-such-type'")


def test_unknown_exchange_type_closes_connection_503(conn):
    ch = conn.channel()
    with pytest.raises(ConnectionClosedByBroker) as info:
        ch.exchange_declare("x", "no-such-type")
    # RabbitMQ says "unknown exchange type" for a name that is not an Erlang atom (most typos)
    # and "invalid exchange type" for one that is ('foo'): both are accepted here.
    assert info.value.reply_code == 503
    assert UNKNOWN_TYPE.fullmatch(info.value.reply_text), info.value.reply_text
    assert not conn.is_open


@pytest.mark.parametrize("kind", ["topics", "x-jms-topic"])     # a plugin type amqpd lacks
def test_unknown_exchange_type_text_for_typos_and_plugin_types(conn, kind):
    ch = conn.channel()
    with pytest.raises(ConnectionClosedByBroker) as info:
        ch.exchange_declare("x", kind)
    assert reply(info.value) == (503, f"COMMAND_INVALID - unknown exchange type '{kind}'")


def test_unknown_exchange_type_raw_class_method(broker, vh):
    with RawClient(broker.port) as raw:
        raw.handshake(vhost=vh)
        raw.open_channel(1)
        close = raw.call(1, C.Exchange.Declare(exchange="x", exchange_type="no-such-type"),
                         C.Connection.Close)
        assert (close.reply_code, close.class_id, close.method_id) == (503, 40, 10)
        raw.method(0, C.Connection.CloseOk())
        assert raw.is_closed()


async def test_unknown_exchange_type_aio_pika(broker):
    conn = await aio_pika.connect(broker.url)
    try:
        ch = await conn.channel()
        with pytest.raises(aiormq.exceptions.ConnectionCommandInvalid) as info:
            await ch.declare_exchange("x", "no-such-type")
        assert UNKNOWN_TYPE.fullmatch(info.value.args[0]), info.value.args[0]
    finally:
        await conn.close()


# -- deleting -----------------------------------------------------------------------------------
def test_delete_if_unused_with_bindings_406(conn, vh):
    ch = conn.channel()
    ch.exchange_declare("x", "direct")
    q = new_queue(ch, "x", "k")
    e = refused(ch.exchange_delete, "x", if_unused=True)
    assert reply(e) == (406, f"PRECONDITION_FAILED - exchange 'x' in vhost '{vh}' in use")
    ch = conn.channel()
    ch.exchange_declare("x", passive=True)
    ch.queue_unbind(q, "x", "k")
    ch.exchange_delete("x", if_unused=True)
    assert refused(ch.exchange_declare, "x", passive=True).reply_code == 404


def test_delete_if_unused_counts_only_source_bindings(conn):
    """An exchange that is only a destination of an e2e binding is unused."""
    ch = conn.channel()
    ch.exchange_declare("src", "fanout")
    ch.exchange_declare("dst", "fanout")
    ch.exchange_bind("dst", "src")
    assert refused(ch.exchange_delete, "src", if_unused=True).reply_code == 406   # a source
    ch = conn.channel()
    ch.exchange_delete("dst", if_unused=True)
    assert refused(ch.exchange_declare, "dst", passive=True).reply_code == 404
    # ...and the binding went with it: the source is unused now.
    ch = conn.channel()
    ch.exchange_delete("src", if_unused=True)
    assert refused(ch.exchange_declare, "src", passive=True).reply_code == 404


def test_delete_missing_exchange_is_ok(ch):
    assert ch.exchange_delete("never-declared").method.NAME == "Exchange.DeleteOk"
    assert ch.exchange_delete("never-declared", if_unused=True).method.NAME == \
        "Exchange.DeleteOk"
    assert ch.is_open


@pytest.mark.parametrize("name", ["amq.direct", "amq.topic", "amq.match"])
def test_delete_builtin_exchange_403(ch, vh, name):
    e = refused(ch.exchange_delete, name)
    assert reply(e) == (403, f"ACCESS_REFUSED - deletion of system exchange '{name}' in vhost "
                             f"'{vh}' not allowed")


def test_delete_default_exchange_403(ch):
    e = refused(ch.exchange_delete, "")
    assert reply(e) == (403, "ACCESS_REFUSED - operation not permitted on the default exchange")


def test_delete_exchange_removes_its_bindings(ch):
    ch.exchange_declare("x", "fanout")
    q = new_queue(ch, "x")
    ch.exchange_delete("x")
    ch.exchange_declare("x", "fanout")
    ch.basic_publish("x", "", b"lost")
    assert drain(ch, q) == []


# -- routing ------------------------------------------------------------------------------------
def test_direct_routing(ch):
    ch.exchange_declare("d", "direct")
    qa1, qa2 = new_queue(ch, "d", "a"), new_queue(ch, "d", "a")
    qb = new_queue(ch, "d", "b")
    qab = new_queue(ch, "d", "a")
    ch.queue_bind(qab, "d", "b")
    for key in ("a", "b", "c", "A", ""):
        ch.basic_publish("d", key, key.encode() or b"-")
    assert drain(ch, qa1) == drain(ch, qa2) == [b"a"]
    assert drain(ch, qb) == [b"b"]
    assert drain(ch, qab) == [b"a", b"b"]      # bound twice, one copy per message


def test_direct_same_binding_twice_delivers_once(ch):
    ch.exchange_declare("d", "direct")
    q = new_queue(ch, "d", "k")
    ch.queue_bind(q, "d", "k")
    ch.basic_publish("d", "k", b"1")
    assert drain(ch, q) == [b"1"]
    ch.queue_unbind(q, "d", "k")            # one unbind removes the (single) binding
    ch.basic_publish("d", "k", b"2")
    assert drain(ch, q) == []


def test_fanout_routing_ignores_key(ch):
    ch.exchange_declare("f", "fanout")
    qs = [new_queue(ch, "f", key) for key in ("", "x", "y")]
    ch.basic_publish("f", "anything", b"1")
    ch.basic_publish("f", "", b"2")
    assert [drain(ch, q) for q in qs] == [[b"1", b"2"]] * 3


def test_default_exchange_routes_by_queue_name(ch):
    q = new_queue(ch)
    ch.basic_publish("", q, b"direct-to-queue")
    ch.basic_publish("", "no-such-queue", b"dropped")
    assert drain(ch, q) == [b"direct-to-queue"]


TOPIC_PATTERNS = ["*.orange.*", "*.*.rabbit", "lazy.#", "#", "a.#.b", "#.b", "a.*", "*",
                  "a.b", "", "#.#", "a.*.#", "*.#", "#.*", "a.#", "a..b", "a.*.b"]
TOPIC_KEYS = ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox", "lazy.brown.fox",
              "lazy.pink.rabbit", "quick.brown.fox", "orange", "quick.orange.male.rabbit",
              "lazy.orange.male.rabbit", "lazy", "a.b", "a.x.y.b", "a..b", "a.b.b", "b", "a", "",
              "a.", ".b", "."]


def test_topic_reference_spot_checks():
    assert topic_match("lazy.#", "lazy") and topic_match("#", "")
    assert not topic_match("*", "") and topic_match("*", "orange")
    assert topic_match("a.#.b", "a.b") and topic_match("a.#.b", "a.x.y.b")
    assert topic_match("a.*.b", "a..b") and not topic_match("a.*", "a")
    assert not topic_match("*.orange.*", "quick.orange.male.rabbit")


def test_topic_routing_wildcards(ch):
    ch.exchange_declare("t", "topic")
    queues = {p: new_queue(ch, "t", p) for p in TOPIC_PATTERNS}
    for key in TOPIC_KEYS:
        ch.basic_publish("t", key, key.encode() or b"<empty>")
    for pattern, q in queues.items():
        expected = [k.encode() or b"<empty>" for k in TOPIC_KEYS if topic_match(pattern, k)]
        assert drain(ch, q) == expected, pattern


def test_topic_unbind_one_pattern_keeps_others(ch):
    ch.exchange_declare("t", "topic")
    q = new_queue(ch, "t", "a.*")
    ch.queue_bind(q, "t", "#.z")
    ch.basic_publish("t", "a.z", b"1")         # matches both: one copy
    ch.queue_unbind(q, "t", "a.*")
    ch.basic_publish("t", "a.y", b"2")
    ch.basic_publish("t", "b.z", b"3")
    assert drain(ch, q) == [b"1", b"3"]


async def test_topic_routing_aio_pika(broker):
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch = await conn.channel()
        x = await ch.declare_exchange("logs", aio_pika.ExchangeType.TOPIC)
        kern = await ch.declare_queue("", exclusive=True)
        crit = await ch.declare_queue("", exclusive=True)
        await kern.bind(x, "kern.*")
        await crit.bind(x, "*.critical")
        for key in ("kern.critical", "kern.info", "app.critical", "app.info"):
            await x.publish(aio_pika.Message(key.encode()), routing_key=key)

        async def bodies(q):
            out = []
            while (m := await q.get(no_ack=True, fail=False)) is not None:
                out.append(m.body)
            return out

        assert await bodies(kern) == [b"kern.critical", b"kern.info"]
        assert await bodies(crit) == [b"kern.critical", b"app.critical"]


HEADER_BINDINGS = {
    "all": {"x-match": "all", "format": "pdf", "type": "report"},
    "any": {"x-match": "any", "format": "pdf", "type": "log"},
    "default-all": {"format": "zip"},
    "all-with-x": {"x-match": "all-with-x", "x-tag": "t1", "format": "pdf"},
    "any-with-x": {"x-match": "any-with-x", "x-tag": "t1", "n": 7},
    "all-ignores-x": {"x-match": "all", "x-tag": "t1", "format": "pdf"},
    "any-only-x": {"x-match": "any", "x-tag": "t1"},
    "all-empty": {"x-match": "all"},
    "int": {"x-match": "all", "n": 7},
}
HEADER_MESSAGES = {
    "pdf-report": {"format": "pdf", "type": "report"},
    "pdf-log-t1": {"format": "pdf", "type": "log", "x-tag": "t1"},
    "zip": {"format": "zip", "extra": "yes"},
    "t1-only": {"x-tag": "t1"},
    "t2-pdf": {"x-tag": "t2", "format": "pdf"},
    "n7": {"n": 7},
    "n8": {"n": 8},
    "none": None,
}
HEADER_EXPECTED = {
    "all": ["pdf-report"],
    "any": ["pdf-report", "pdf-log-t1", "t2-pdf"],
    "default-all": ["zip"],
    "all-with-x": ["pdf-log-t1"],
    "any-with-x": ["pdf-log-t1", "t1-only", "n7"],
    "all-ignores-x": ["pdf-report", "pdf-log-t1", "t2-pdf"],
    "any-only-x": [],
    "all-empty": list(HEADER_MESSAGES),
    "int": ["n7"],
}


@pytest.mark.parametrize("exchange", ["hx", "amq.match"])
def test_headers_routing_x_match_modes(ch, exchange):
    if exchange == "hx":
        ch.exchange_declare("hx", "headers")
    queues = {name: new_queue(ch, exchange, "ignored-key", args)
              for name, args in HEADER_BINDINGS.items()}
    for label, headers in HEADER_MESSAGES.items():
        ch.basic_publish(exchange, "rk", label.encode(), pika.BasicProperties(headers=headers))
    got = {name: [b.decode() for b in drain(ch, q)] for name, q in queues.items()}
    assert got == HEADER_EXPECTED


# -- exchange-to-exchange bindings --------------------------------------------------------------
def test_exchange_bind_and_unbind_route(ch):
    ch.exchange_declare("src", "direct")
    ch.exchange_declare("dst", "topic")
    q = new_queue(ch, "dst", "k.#")
    ch.exchange_bind("dst", "src", "k.1")
    ch.basic_publish("src", "k.1", b"via-e2e")
    ch.basic_publish("src", "k.2", b"not-bound-at-src")
    ch.basic_publish("dst", "k.2", b"direct-to-dst")
    assert drain(ch, q) == [b"via-e2e", b"direct-to-dst"]
    ch.exchange_unbind("dst", "src", "k.1")
    ch.basic_publish("src", "k.1", b"after-unbind")
    assert drain(ch, q) == []


def test_exchange_bind_chain_and_fanout_dedup(ch):
    """a -> b -> c and a -> c: a queue bound to c and b gets one copy per message."""
    for name in ("a", "b", "c"):
        ch.exchange_declare(name, "fanout")
    ch.exchange_bind("b", "a")
    ch.exchange_bind("c", "b")
    ch.exchange_bind("c", "a")
    q = new_queue(ch, "c")
    ch.queue_bind(q, "b")
    ch.basic_publish("a", "", b"once")
    assert drain(ch, q) == [b"once"]


def test_exchange_binding_cycle_terminates(ch):
    for name in ("c1", "c2", "c3"):
        ch.exchange_declare(name, "fanout")
    ch.exchange_bind("c2", "c1")
    ch.exchange_bind("c3", "c2")
    ch.exchange_bind("c1", "c3")            # a cycle
    ch.exchange_bind("c1", "c1")            # and a self-loop
    q1, q3 = new_queue(ch, "c1"), new_queue(ch, "c3")
    ch.basic_publish("c2", "", b"round")
    ch.basic_publish("c1", "", b"trip")
    assert drain(ch, q1) == [b"round", b"trip"]
    assert drain(ch, q3) == [b"round", b"trip"]


def test_exchange_bind_missing_source_or_destination_404(conn, vh):
    ch = conn.channel()
    ch.exchange_declare("there", "fanout")
    e = refused(ch.exchange_bind, "there", "missing")
    assert reply(e) == (404, f"NOT_FOUND - no exchange 'missing' in vhost '{vh}'")
    ch = conn.channel()
    e = refused(ch.exchange_bind, "missing", "there")
    assert reply(e) == (404, f"NOT_FOUND - no exchange 'missing' in vhost '{vh}'")


def test_unbind_missing_exchange_binding_is_ok(ch):
    ch.exchange_declare("e1", "direct")
    ch.exchange_declare("e2", "fanout")
    ch.exchange_bind("e2", "e1", "k")
    q = new_queue(ch, "e2")
    assert ch.exchange_unbind("e2", "e1", "never-bound").method.NAME == "Exchange.UnbindOk"
    ch.basic_publish("e1", "k", b"still routed")       # the real binding is untouched
    assert drain(ch, q) == [b"still routed"]


def test_bind_to_default_exchange_403(conn):
    ch = conn.channel()
    q = new_queue(ch)
    e = refused(ch.queue_bind, q, "", q)
    assert reply(e) == (403, "ACCESS_REFUSED - operation not permitted on the default exchange")
    ch = conn.channel()
    ch.exchange_declare("e", "fanout")
    e = refused(ch.exchange_bind, "e", "")
    assert reply(e) == (403, "ACCESS_REFUSED - operation not permitted on the default exchange")
    ch = conn.channel()
    e = refused(ch.exchange_bind, "", "e")
    assert reply(e) == (403, "ACCESS_REFUSED - operation not permitted on the default exchange")
    ch = conn.channel()
    e = refused(ch.queue_unbind, q, "", q)
    assert reply(e) == (403, "ACCESS_REFUSED - operation not permitted on the default exchange")


# -- auto-delete and internal -------------------------------------------------------------------
def test_auto_delete_exchange_goes_with_last_queue_binding(conn):
    ch = conn.channel()
    ch.exchange_declare("ad", "direct", auto_delete=True)
    ch.exchange_declare("ad", passive=True)     # no binding yet: still there
    q = new_queue(ch, "ad", "k1")
    ch.queue_bind(q, "ad", "k2")
    ch.queue_unbind(q, "ad", "k1")
    ch.exchange_declare("ad", passive=True)     # one binding left
    ch.queue_unbind(q, "ad", "k2")
    assert refused(ch.exchange_declare, "ad", passive=True).reply_code == 404


def test_auto_delete_exchange_goes_when_bound_queue_is_deleted(conn):
    ch = conn.channel()
    ch.exchange_declare("ad", "fanout", auto_delete=True)
    q = new_queue(ch, "ad")
    ch.queue_delete(q)
    assert refused(ch.exchange_declare, "ad", passive=True).reply_code == 404


def test_auto_delete_exchange_goes_with_last_exchange_binding(conn):
    ch = conn.channel()
    ch.exchange_declare("ad", "fanout", auto_delete=True)
    ch.exchange_declare("dst", "fanout")
    ch.exchange_bind("dst", "ad")
    ch.exchange_unbind("dst", "ad")
    assert refused(ch.exchange_declare, "ad", passive=True).reply_code == 404
    ch = conn.channel()
    ch.exchange_declare("dst", passive=True)   # the destination is not affected


def test_internal_exchange_publish_403(conn, vh):
    ch = conn.channel()
    ch.exchange_declare("inner", "fanout", internal=True)
    ch.exchange_declare("outer", "fanout")
    ch.exchange_bind("inner", "outer")
    q = new_queue(ch, "inner")
    ch.basic_publish("outer", "", b"through-e2e")   # routing through it is allowed
    assert drain(ch, q) == [b"through-e2e"]
    ch.basic_publish("inner", "", b"direct")
    e = refused(ch.basic_get, q)                     # the close is asynchronous
    assert reply(e) == (403, f"ACCESS_REFUSED - cannot publish to internal exchange 'inner' in "
                             f"vhost '{vh}'")
    ch = conn.channel()
    assert drain(ch, q) == []


def test_internal_exchange_publish_raw_class_method(broker, vh):
    with RawClient(broker.port) as raw:
        raw.handshake(vhost=vh)
        raw.open_channel(1)
        raw.call(1, C.Exchange.Declare(exchange="inner", exchange_type="fanout", internal=True),
                 C.Exchange.DeclareOk)
        raw.publish(1, b"x", exchange="inner")
        close = raw.expect(C.Channel.Close)
        assert (close.reply_code, close.class_id, close.method_id) == (403, 60, 40)
        raw.method(1, C.Channel.CloseOk())
        raw.open_channel(2)                           # the connection survives
        raw.call(0, C.Connection.Close(reply_code=200, reply_text="bye", class_id=0,
                                       method_id=0), C.Connection.CloseOk)


# -- odds and ends ------------------------------------------------------------------------------
def test_default_exchange_cannot_be_declared_even_passively(conn):
    for kw in ({"passive": True}, {"exchange_type": "direct"}):
        ch = conn.channel()
        e = refused(ch.exchange_declare, "", **kw)
        assert reply(e) == (403, "ACCESS_REFUSED - operation not permitted on the default "
                                 "exchange")


def test_unknown_type_checked_before_default_exchange_name(conn):
    ch = conn.channel()
    with pytest.raises(ConnectionClosedByBroker) as info:
        ch.exchange_declare("", "no-such-type")
    assert info.value.reply_code == 503


def test_amq_default_is_not_an_exchange_name(conn, vh):
    ch = conn.channel()
    e = refused(ch.exchange_declare, "amq.default", passive=True)
    assert reply(e) == (404, f"NOT_FOUND - no exchange 'amq.default' in vhost '{vh}'")


def test_alternate_exchange_argument_equivalence(conn, vh):
    ch = conn.channel()
    ch.exchange_declare("x", "fanout", arguments={"alternate-exchange": "a"})
    ch.exchange_declare("x", "fanout", arguments={"alternate-exchange": "a", "x-other": 1})
    e = refused(ch.exchange_declare, "x", "fanout", arguments={"alternate-exchange": "b"})
    assert reply(e) == (406, f"PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for "
                             f"exchange 'x' in vhost '{vh}': received 'b' but current is 'a'")
    ch = conn.channel()
    e = refused(ch.exchange_declare, "x", "fanout")
    assert reply(e) == (406, f"PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for "
                             f"exchange 'x' in vhost '{vh}': received none but current is the "
                             "value 'a' of type 'longstr'")


def test_alternate_exchange_routes_unroutable(conn):
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    ch.exchange_declare("ae", "fanout")
    ch.exchange_declare("main", "direct", arguments={"alternate-exchange": "ae"})
    q_main, q_ae = new_queue(ch, "main", "k"), new_queue(ch, "ae")
    ch.basic_publish("main", "k", b"routed")
    ch.basic_publish("main", "other", b"to-ae", mandatory=True)
    assert drain(ch, q_main) == [b"routed"]
    assert drain(ch, q_ae) == [b"to-ae"]
    conn.process_data_events(time_limit=0)
    assert returned == []                      # routed via the AE: not returned


def test_headers_values_compare_by_value_not_wire_type(ch):
    """Like RabbitMQ (Erlang ==): str and bytes are both binaries; 7 != '7'; True != 1."""
    ch.exchange_declare("hh", "headers")
    qn = new_queue(ch, "hh", arguments={"n": 7})
    qs = new_queue(ch, "hh", arguments={"s": "v"})
    qb = new_queue(ch, "hh", arguments={"b": True})
    for label, headers in [("str7", {"n": "7"}), ("bytes7", {"n": b"7"}), ("int7", {"n": 7}),
                           ("long7", {"n": 2 ** 40}), ("s-str", {"s": "v"}),
                           ("s-bytes", {"s": b"v"}), ("s-bool", {"s": True}),
                           ("b-true", {"b": True}), ("b-one", {"b": 1}),
                           ("b-false", {"b": False})]:
        ch.basic_publish("hh", "", label.encode(), pika.BasicProperties(headers=headers))
    assert drain(ch, qn) == [b"int7"]
    assert drain(ch, qs) == [b"s-str", b"s-bytes"]
    assert drain(ch, qb) == [b"b-true"]


def test_headers_invalid_x_match_value_text(ch):
    ch.exchange_declare("hx", "headers")
    q = new_queue(ch)
    e = refused(ch.queue_bind, q, "hx", "", arguments={"x-match": "some"})
    assert reply(e) == (406, 'PRECONDITION_FAILED - Invalid x-match field value <<"some">>; '
                             "expected all, any, all-with-x, or any-with-x")


def test_headers_invalid_x_match_type_text(ch):
    ch.exchange_declare("hx", "headers")
    q = new_queue(ch)
    e = refused(ch.queue_bind, q, "hx", "", arguments={"x-match": 1})
    assert reply(e) == (406, "PRECONDITION_FAILED - Invalid x-match field type signedint "
                             "(value 1); expected longstr")


def test_long_connection_close_text_truncated_like_rabbitmq(conn):
    kind = "t" * 240
    ch = conn.channel()
    with pytest.raises(ConnectionClosedByBroker) as info:
        ch.exchange_declare("x", kind)
    assert info.value.reply_code == 503
    assert info.value.reply_text in (
        rabbit_text(f"COMMAND_INVALID - unknown exchange type '{kind}'"),
        rabbit_text(f"COMMAND_INVALID - invalid exchange type '{kind}'"))
