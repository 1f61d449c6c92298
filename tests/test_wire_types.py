"""Headers and arguments keep their exact wire types end to end, and no client input produces a
541 that is not RabbitMQ's own answer. Raw frames on real sockets (pika where a real client's
view is the point).

* Poison messages: a property block no client could decode is refused at publish with
  RabbitMQ's answer (connection.close 541 'INTERNAL_ERROR', class/method 0, 0) and never stored;
  what RabbitMQ accepts (an unused flag bit, shortstrs that are not UTF-8, unsigned or 'L'
  integers, timestamps past year 9999) is accepted and delivered byte for byte.
* Paths that rewrite headers (dead-lettering, direct reply-to, the delayed exchange,
  x-delivery-count) change only what they must: every other header keeps its bytes.
* Method arguments: trailing bytes, unreadable tables and malformed UTF-8 get RabbitMQ's 501.
"""
import struct
import time

import pytest
from pamqp import commands as C, decode as pamqp_decode

from amqpd.wire import tables
from tests import reference_cases as ref
from tests.brokerthread import BrokerThread
from tests.rawclient import RawClient, sstr, table

from .helpers import count, let_time_pass

H = 1 << 13              # the headers flag bit
INTERNAL_ERROR = (541, "INTERNAL_ERROR", 0, 0)


# -- raw frames ----------------------------------------------------------------------------------
def content_header(flags: int, props: bytes, size: int = 5, extra: bytes = b"") -> bytes:
    return struct.pack(">HHQH", 60, 0, size, flags) + extra + props


def publish(exchange: str, rk: str, header_payload: bytes, body: bytes = b"hello",
            ch: int = 1) -> bytes:
    """Publish + content header (its body size set to the body's) + body."""
    header_payload = header_payload[:4] + struct.pack(">Q", len(body)) + header_payload[12:]
    return (ref.method(ch, C.Basic.Publish(exchange=exchange, routing_key=rk))
            + ref.frame(2, ch, header_payload) + ref.frame(3, ch, body))


def get_raw(raw: RawClient, queue: str):
    """basic.get (no-ack) -> (content header payload, body) or None when empty."""
    raw.method(1, C.Basic.Get(queue=queue, no_ack=True))
    kind, _ch, payload = raw.raw_frame()
    if payload[:4] == b"\x00\x3c\x00\x48":       # Get-Empty
        return None
    assert payload[:4] == b"\x00\x3c\x00\x47", payload
    _k, _c, header = raw.raw_frame()
    size = struct.unpack_from(">Q", header, 4)[0]
    body = b""
    while len(body) < size:
        _k, _c, part = raw.raw_frame()
        body += part
    return header, body


def opened(broker) -> RawClient:
    raw = RawClient(broker.port)
    raw.handshake()
    raw.open_channel(1)
    return raw


def expect_close(raw: RawClient, cls=C.Connection.Close):
    close = raw.expect(cls)
    return close.reply_code, close.reply_text, close.class_id, close.method_id


# == poison messages ==============================================================================
POISON = {
    "headers-unknown-type-z": content_header(H, table(sstr(b"k") + b"z\x00")),
    "headers-pamqp-void-0x00": content_header(H, table(sstr(b"k") + b"\x00")),
    "headers-pika-short-U": content_header(H, table(sstr(b"k") + b"U\x00\x01")),
    "headers-truncated-table": content_header(H, struct.pack(">I", 10) + sstr(b"k") + b"S"),
    "headers-value-past-its-table": content_header(
        H, table(sstr(b"k") + b"S" + struct.pack(">I", 50) + b"abc")),
    "headers-key-cut": content_header(H, table(bytes([5]) + b"ab")),
    "headers-bad-type-in-array": content_header(H, table(sstr(b"k") + b"A" + table(b"z\x00"))),
    "headers-bad-type-in-nested-table": content_header(
        H, table(sstr(b"k") + b"F" + table(sstr(b"j") + b"Q"))),
    "content-type-past-the-end": content_header(1 << 15, bytes([20]) + b"abc"),
    "delivery-mode-missing": content_header(1 << 12, b""),
    "trailing-garbage": content_header(1 << 12, b"\x02GARBAGE"),
    "trailing-byte-without-properties": content_header(0, b"X"),
    "priority-and-garbage": content_header(1 << 11, b"\x05\x00"),
    # RabbitMQ ignores the continuation bit and accepts this one; every client would read a
    # second flag word that is not there, so amqpd refuses it (docs/supported.md)
    "continuation-flag": content_header(1, b""),
    "continuation-flag-and-word": content_header(1, b"", extra=b"\x00\x00"),
}


@pytest.mark.parametrize("name", list(POISON))
def test_undecodable_property_block_is_refused_at_publish(broker, name):
    with opened(broker) as raw:
        raw.call(1, C.Queue.Declare(queue="pq"), C.Queue.DeclareOk)
        raw.send(publish("", "pq", POISON[name]))
        assert expect_close(raw) == INTERNAL_ERROR
        raw.method(0, C.Connection.CloseOk())
        assert raw.is_closed()
    with opened(broker) as raw:          # nothing was stored
        assert get_raw(raw, "pq") is None


def test_deeply_nested_headers_are_refused(broker):
    nested = b""
    for _ in range(tables.MAX_DEPTH + 2):
        nested = sstr(b"k") + b"F" + table(nested)
    with opened(broker) as raw:
        raw.send(publish("amq.fanout", "", content_header(H, table(nested))))
        assert expect_close(raw) == INTERNAL_ERROR


ACCEPTED = {
    "unused-flag-bit-1": content_header(0x0002, b""),
    "content-type-not-utf8": content_header(1 << 15, sstr(b"\xff\xfe")),
    "header-key-not-utf8": content_header(H, table(sstr(b"\xff") + b"V")),
    "header-longstr-not-utf8": content_header(H, table(sstr(b"k") + b"S" + table(b"\xff"))),
    "header-unsigned-int-i": content_header(H, table(sstr(b"k") + b"i"
                                                     + struct.pack(">I", 3_000_000_000))),
    "header-L": content_header(H, table(sstr(b"k") + b"L" + struct.pack(">q", 5))),
    "header-bool-2": content_header(H, table(sstr(b"k") + b"t\x02")),
    "header-timestamp-past-9999": content_header(H, table(sstr(b"k") + b"T"
                                                          + struct.pack(">Q", 2 ** 63))),
    "header-duplicate-keys": content_header(H, table(sstr(b"k") + b"V" + sstr(b"k") + b"t\x01")),
    "header-float-nan": content_header(H, table(sstr(b"k") + b"f\x7f\x80\x00\x01")),
    "timestamp-property-max": content_header(1 << 6, struct.pack(">Q", 2 ** 64 - 1)),
    "every-property": content_header(
        0xFFFC, sstr(b"ct") + sstr(b"ce") + table(sstr(b"k") + b"s\x00\x05") + b"\x02\x05"
        + sstr(b"cid") + sstr(b"r") + sstr(b"60000") + sstr(b"mid") + struct.pack(">Q", 7)
        + sstr(b"type") + sstr(b"guest") + sstr(b"app") + sstr(b"")),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_what_rabbitmq_accepts_is_delivered_byte_for_byte(broker, name):
    with opened(broker) as raw:
        raw.call(1, C.Queue.Declare(queue="ok"), C.Queue.DeclareOk)
        raw.send(publish("", "ok", ACCEPTED[name]))
        assert get_raw(raw, "ok") == (ACCEPTED[name], b"hello")


def test_pika_consumer_reads_every_accepted_message(broker, ch):
    """What amqpd lets through, pika can decode (the point of refusing the rest)."""
    ch.queue_declare("ok")
    with opened(broker) as raw:
        for name, payload in ACCEPTED.items():
            # pika cannot read a timestamp past year 9999 (datetime) nor a NaN float (it
            # turns floats into ints); RabbitMQ accepts both, and so does amqpd
            if name not in ("header-timestamp-past-9999", "timestamp-property-max",
                            "header-float-nan"):
                raw.send(publish("", "ok", payload, body=name.encode()))
        raw.call(1, C.Basic.Qos(), C.Basic.QosOk)
    got = []
    while True:
        method, _props, body = ch.basic_get("ok", auto_ack=True)
        if method is None:
            break
        got.append(body.decode())
    assert len(got) == len(ACCEPTED) - 3


# == message expiration ===========================================================================
@pytest.mark.parametrize("value,shown,problem", [
    (b"--1", "--1", "no_integer"), ("²".encode(), "²", "no_integer"),
    ("٣".encode(), "٣", "no_integer"), (b" 5", " 5", "no_integer"), (b"", "", "no_integer"),
    (b"5x", "5x", '{leftover_string,"x"}'), (b"-5", "-5", "{value_negative,-5}"),
    (b"\xff", "ÿ", "no_integer"),        # RabbitMQ means this text (its channel then crashes)
])
def test_invalid_expiration_is_406(broker, value, shown, problem):
    with opened(broker) as raw:
        raw.send(publish("amq.direct", "k", content_header(1 << 8, sstr(value))))
        assert expect_close(raw, C.Channel.Close) == (
            406, f"PRECONDITION_FAILED - invalid expiration '{shown}': {problem}", 60, 40)


@pytest.mark.parametrize("value", [b"+5000", b"-0", b"0005000"])
def test_expiration_forms_rabbitmq_accepts(broker, value):
    with opened(broker) as raw:
        raw.call(1, C.Queue.Declare(queue="ttl"), C.Queue.DeclareOk)
        raw.send(publish("", "ttl", content_header(1 << 8, sstr(value))))
        raw.call(1, C.Basic.Qos(), C.Basic.QosOk)          # the publish was not refused
        got = get_raw(raw, "ttl")          # ... and it was queued as sent, or expired at once
        if value == b"-0":                 # a TTL of 0 with no consumer waiting
            assert got is None
        else:
            assert got is not None and got[0][14:] == sstr(value)


# == direct reply-to =============================================================================
RICH = (sstr(b"d") + b"d" + struct.pack(">d", 0.1) + sstr(b"s") + b"s\x00\x05"
        + sstr(b"u") + b"i" + struct.pack(">I", 4_000_000_000) + sstr(b"n") + b"S" + table(b"\xff")
        + sstr(b"f") + b"f" + struct.pack(">f", 1.5) + sstr(b"x") + b"x" + table(b"\x00\x01"))


def test_direct_reply_to_rewrites_only_reply_to(broker):
    with opened(broker) as raw:
        raw.call(1, C.Basic.Consume(queue="amq.rabbitmq.reply-to", no_ack=True,
                                    consumer_tag="rc"), C.Basic.ConsumeOk)
        sent = content_header(H | (1 << 9) | (1 << 15), sstr(b"text/plain") + table(RICH)
                              + sstr(b"amq.rabbitmq.reply-to"))
        raw.call(1, C.Queue.Declare(queue="server"), C.Queue.DeclareOk)
        raw.send(publish("", "server", sent))
        header, _body = get_raw(raw, "server")
    assert header[:14] == sent[:14]                                  # same flags
    props = header[14:]
    assert props[:11] == sstr(b"text/plain")
    assert props[11:11 + len(table(RICH))] == table(RICH)            # headers byte for byte
    reply_to = props[11 + len(table(RICH)):]
    assert reply_to[0] == len(reply_to) - 1
    assert reply_to[1:].decode().startswith("amq.rabbitmq.reply-to.")


def test_direct_reply_to_with_malformed_headers_is_refused(broker):
    with opened(broker) as raw:
        raw.call(1, C.Basic.Consume(queue="amq.rabbitmq.reply-to", no_ack=True,
                                    consumer_tag="rc"), C.Basic.ConsumeOk)
        bad = content_header(H | (1 << 9), table(sstr(b"k") + b"z\x00")
                             + sstr(b"amq.rabbitmq.reply-to"))
        raw.send(publish("amq.fanout", "", bad))
        assert expect_close(raw) == INTERNAL_ERROR


# == dead-lettering ===============================================================================
def test_dead_lettered_headers_keep_their_types(broker, ch):
    ch.exchange_declare("dlx", "fanout")
    ch.queue_declare("dead")
    ch.queue_bind("dead", "dlx")
    ch.queue_declare("work", arguments={"x-dead-letter-exchange": "dlx"})
    with opened(broker) as raw:
        raw.send(publish("", "work", content_header(H, table(RICH))))
        raw.call(1, C.Basic.Get(queue="work"), C.Basic.GetOk)
        raw.raw_frame(), raw.raw_frame()
        raw.method(1, C.Basic.Reject(delivery_tag=1, requeue=False))
        header, _ = get_raw(raw, "dead")        # same channel: after the reject dead-lettered it
    headers = tables.decode_field_table(header, 14)[0]
    for key in ("d", "s", "u", "n", "f", "x"):
        original = tables.decode_table(RICH)[key]
        assert type(headers[key]) is type(original) and headers[key] == original, key
    assert type(headers["x-death"][0]["count"]) is tables.Long


def test_double_header_arrives_as_the_same_double(broker, ch):
    """As aio-pika (pamqp) reads it: the double 0.1, not the float 0.10000000149011612. (pika
    turns every float into an int, so it cannot tell.)"""
    ch.exchange_declare("dlx", "fanout")
    ch.queue_declare("dead")
    ch.queue_bind("dead", "dlx")
    ch.queue_declare("work", arguments={"x-dead-letter-exchange": "dlx", "x-message-ttl": 0})
    with opened(broker) as raw:
        raw.send(publish("", "work", content_header(H, table(sstr(b"d") + b"d"
                                                             + struct.pack(">d", 0.1)))))
        raw.call(1, C.Basic.Qos(), C.Basic.QosOk)
        deadline = time.monotonic() + 5
        got = None
        while got is None:
            assert time.monotonic() < deadline
            got = get_raw(raw, "dead")
    value = pamqp_decode.field_table(got[0][14:])[1]["d"]
    assert value == 0.1 and got[0][14:].find(b"\x01dd") > 0


def test_huge_double_is_dead_lettered_and_the_other_timers_still_run(broker, ch):
    """A double no 32-bit float can hold used to make dead-lettering raise after the message
    had left its queue (lost), and the timer pass then skipped the other queues' expiries."""
    ch.exchange_declare("dlx", "fanout")
    ch.queue_declare("dead")
    ch.queue_bind("dead", "dlx")
    for q in ("big", "plain1", "plain2"):
        ch.queue_declare(q, arguments={"x-dead-letter-exchange": "dlx", "x-message-ttl": 100})
    with opened(broker) as raw:
        raw.send(publish("", "big", content_header(H, table(sstr(b"h") + b"d"
                                                            + struct.pack(">d", 1e300))), b"big")
                 + publish("", "plain1", content_header(0, b""), b"p1")
                 + publish("", "plain2", content_header(0, b""), b"p2"))
        raw.call(1, C.Basic.Qos(), C.Basic.QosOk)
    deadline = time.monotonic() + 5
    while count(ch, "dead") < 3:
        assert time.monotonic() < deadline, count(ch, "dead")
        let_time_pass(ch.connection, 0.02)
    got = {}
    while True:
        method, props, body = ch.basic_get("dead", auto_ack=True)
        if method is None:
            break
        got[body] = props.headers
    assert set(got) == {b"big", b"p1", b"p2"}
    assert got[b"big"]["h"] == 1e300


# == delayed exchange and delivery count ==========================================================
def test_delayed_message_keeps_its_header_types(broker, ch):
    ch.exchange_declare("dx", "x-delayed-message", arguments={"x-delayed-type": "fanout"})
    ch.queue_declare("later")
    ch.queue_bind("later", "dx")
    with opened(broker) as raw:
        raw.send(publish("dx", "", content_header(H, table(RICH + sstr(b"x-delay")
                                                           + b"s\x00\x32"))))
        raw.call(1, C.Basic.Qos(), C.Basic.QosOk)
        deadline = time.monotonic() + 5
        got = None
        while got is None:
            assert time.monotonic() < deadline
            got = get_raw(raw, "later")
            time.sleep(0.01)
    headers = tables.decode_field_table(got[0], 14)[0]
    assert headers["x-delay"] == -50 and type(headers["x-delay"]) is tables.SignedInt
    assert tables.encode_table({k: v for k, v in headers.items() if k != "x-delay"}) == \
        table(RICH)


def test_delivery_count_is_added_and_other_headers_keep_their_bytes(broker):
    with opened(broker) as raw:
        raw.call(1, C.Queue.Declare(queue="qq", durable=True, arguments={
            "x-queue-type": "quorum", "x-delivery-limit": 5}), C.Queue.DeclareOk)
        raw.send(publish("", "qq", content_header(H, table(RICH))))
        raw.call(1, C.Basic.Get(queue="qq"), C.Basic.GetOk)
        raw.raw_frame(), raw.raw_frame()
        raw.method(1, C.Basic.Nack(delivery_tag=1, requeue=True))
        header, _ = get_raw(raw, "qq")
    headers = tables.decode_field_table(header, 14)[0]
    assert headers["x-delivery-count"] == 1 and type(headers["x-delivery-count"]) is tables.Long
    del headers["x-delivery-count"]
    assert tables.encode_table(headers) == table(RICH)


# == method arguments =============================================================================
def test_unreadable_table_in_method_arguments_is_501(broker):
    with opened(broker) as raw:
        raw.send(ref.raw_method(1, 50, 10, struct.pack(">H", 0) + sstr(b"q") + b"\x00"
                                + table(sstr(b"k") + b"z\x00")))
        code, _text, class_id, method_id = expect_close(raw)
        assert (code, class_id, method_id) == (501, 50, 10)


@pytest.mark.parametrize("label,data", [
    ("exchange-name", ref.raw_method(1, 40, 10, struct.pack(">H", 0) + sstr(b"x\xff")
                                     + sstr(b"direct") + b"\x00" + table(b""))),
    ("queue-name", ref.raw_method(1, 50, 10, struct.pack(">H", 0) + sstr(b"q\xff") + b"\x00"
                                  + table(b""))),
    ("consumer-tag", ref.raw_method(1, 60, 30, sstr(b"\xff\xfe") + b"\x00")),
])
def test_malformed_utf8_shortstr_is_501(broker, label, data):
    with opened(broker) as raw:
        raw.send(data)
        assert expect_close(raw) == (501, "FRAME_ERROR - Malformed UTF-8 in shortstr", 0, 0)


def test_argument_types_survive_a_restart(tmp_path):
    """A durable queue declared with a 'short' TTL still says 'short' after a restart."""
    for step in ("declare", "redeclare"):
        b = BrokerThread(data_dir=str(tmp_path)).start()
        try:
            with opened(b) as raw:
                if step == "declare":
                    raw.call(1, C.Queue.Declare(queue="d", durable=True, arguments={
                        "x-message-ttl": 2000}), C.Queue.DeclareOk)
                else:
                    raw.method(1, C.Queue.Declare(queue="d", durable=True))
                    assert expect_close(raw, C.Channel.Close)[1] == (
                        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'd' "
                        "in vhost '/': received none but current is the value '2000' of type "
                        "'short'")
            b.wait_for(lambda: not b.server.protocols, timeout=3, what="clients to go")
        finally:
            b.stop()


# == found by fuzzing typed headers ================================================================
@pytest.mark.parametrize("x_death", [b"t\x01", b"S" + table(b"fanout"), b"d" + b"\x00" * 8,
                                     b"A" + table(b"I\x00\x00\x00\x01")])
def test_dead_lettering_a_message_whose_x_death_is_not_an_array_of_tables(broker, ch, x_death):
    """A client may send anything as x-death; RabbitMQ ignores what is not an array of tables.
    It used to raise (a 541 to the consumer that nacked, and the message lost)."""
    ch.exchange_declare("dlx", "fanout")
    ch.queue_declare("dead")
    ch.queue_bind("dead", "dlx")
    ch.queue_declare("work", arguments={"x-dead-letter-exchange": "dlx"})
    with opened(broker) as raw:
        raw.send(publish("", "work", content_header(H, table(sstr(b"x-death") + x_death))))
        raw.call(1, C.Basic.Get(queue="work"), C.Basic.GetOk)
        raw.raw_frame(), raw.raw_frame()
        raw.method(1, C.Basic.Nack(delivery_tag=1, requeue=False))
        raw.call(1, C.Basic.Qos(), C.Basic.QosOk)
        header, _ = get_raw(raw, "dead")
    deaths = tables.decode_field_table(header, 14)[0]["x-death"]
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [("work", "rejected", 1)]


@pytest.mark.parametrize("value", [struct.pack(">d", float("nan")), struct.pack(">d", float("inf")),
                                   struct.pack(">d", -float("inf"))])
def test_x_delay_that_is_not_a_finite_number_routes_at_once(broker, value):
    with opened(broker) as raw:
        raw.call(1, C.Exchange.Declare(exchange="dx", exchange_type="x-delayed-message",
                                       arguments={"x-delayed-type": "fanout"}),
                 C.Exchange.DeclareOk)
        raw.call(1, C.Queue.Declare(queue="now"), C.Queue.DeclareOk)
        raw.call(1, C.Queue.Bind(queue="now", exchange="dx"), C.Queue.BindOk)
        raw.send(publish("dx", "", content_header(H, table(sstr(b"x-delay") + b"d" + value))))
        raw.call(1, C.Basic.Qos(), C.Basic.QosOk)
        assert get_raw(raw, "now") is not None
