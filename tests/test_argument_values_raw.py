"""Argument values clients can send that used to end in a 541: each gets RabbitMQ's (or the
plugin's) answer. Measured against RabbitMQ 3.10.8 with raw frames:

* a string argument that is not UTF-8 (bytes ff fe): ``x-custom`` on a durable queue, the
  dead-letter exchange and routing key, ``hash-header``, ``alternate-exchange``: accepted; ``x-overflow``: 406
  invalid_overflow; ``x-queue-type`` / ``x-queue-mode`` / ``hash-property``: RabbitMQ means a
  406 naming the value (its log shows it, as Latin-1) but its channel crashes sending it;
  amqpd sends that 406.
* a durable queue declared that way is journaled: it and its confirmed persistent messages
  survive a restart.
* the deduplication exchange's ``x-cache-size`` '--5' (not a number to Elixir's
  Integer.parse): the plugin's 406.
* consistent-hash weights: any size is cheap to bind; '+5' is a weight, '٣' is not.
* LavinMQ's ``x-deduplication-header`` names the header carrying the id, on queues and on
  deduplication exchanges.
"""
import struct
import time

import pika
import pytest
from pamqp import commands as C

from tests import reference_cases as ref
from tests.brokerthread import BrokerThread
from tests.rawclient import RawClient, sstr, table

from .helpers import drain, refused

BAD = b"S" + struct.pack(">I", 2) + b"\xff\xfe"      # a longstr that is not UTF-8


def queue_declare(name: bytes, args: bytes, durable: bool = False) -> bytes:
    return ref.raw_method(1, 50, 10, struct.pack(">H", 0) + sstr(name)
                          + bytes([0b10 if durable else 0]) + table(args))


def exchange_declare(name: bytes, kind: bytes, args: bytes) -> bytes:
    return ref.raw_method(1, 40, 10, struct.pack(">H", 0) + sstr(name) + sstr(kind) + b"\x00"
                          + table(args))


def opened(port: int) -> RawClient:
    raw = RawClient(port)
    raw.handshake()
    raw.open_channel(1)
    return raw


def answer(raw: RawClient):
    frame = raw.expect((C.Queue.DeclareOk, C.Exchange.DeclareOk, C.Channel.Close,
                        C.Connection.Close))
    if isinstance(frame, (C.Channel.Close, C.Connection.Close)):
        return frame.reply_code, frame.reply_text, frame.class_id, frame.method_id
    return type(frame).__name__


# -- string arguments that are not UTF-8 ----------------------------------------------------------
@pytest.mark.parametrize("arg,expected", [
    (b"x-overflow", (406, "PRECONDITION_FAILED - invalid arg 'x-overflow' for queue 'q' in vhost "
                          "'/': invalid_overflow", 50, 10)),
    (b"x-queue-type", (406, "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 'q' in "
                            "vhost '/': \"unsupported queue type 'ÿþ'\"", 50, 10)),
    (b"x-queue-mode", (406, "PRECONDITION_FAILED - invalid arg 'x-queue-mode' for queue 'q' in "
                            "vhost '/': \"unsupported queue mode 'ÿþ'\"", 50, 10)),
    (b"x-custom", "DeclareOk"),
])
def test_queue_argument_not_utf8(broker, arg, expected):
    with opened(broker.port) as raw:
        raw.send(queue_declare(b"q", sstr(arg) + BAD))
        assert answer(raw) == expected


def test_dead_letter_routing_key_not_utf8_is_used_as_latin1_text(broker, ch):
    """RabbitMQ accepts it and routes with the raw bytes; amqpd stores a message's route as
    UTF-8, so it uses the key as RabbitMQ's logs show it: 'ÿþ'."""
    ch.exchange_declare("dlx", "fanout")
    ch.queue_declare("dead")
    ch.queue_bind("dead", "dlx")
    with opened(broker.port) as raw:
        raw.send(queue_declare(b"work", sstr(b"x-dead-letter-exchange") + b"S" + table(b"dlx")
                               + sstr(b"x-dead-letter-routing-key") + BAD))
        assert answer(raw) == "DeclareOk"
        raw.method(1, C.Basic.Publish(exchange="", routing_key="work"))
        raw.send(ref.frame(2, 1, struct.pack(">HHQH", 60, 0, 1, 0)) + ref.frame(3, 1, b"m"))
        raw.call(1, C.Basic.Get(queue="work"), C.Basic.GetOk)
        raw.recv(), raw.recv()                           # its header and body
        raw.method(1, C.Basic.Reject(delivery_tag=1, requeue=False))
        raw.call(1, C.Basic.Qos(), C.Basic.QosOk)
        raw.method(1, C.Basic.Get(queue="dead", no_ack=True))
        data = raw.read_raw(0.5)
    get_ok = data[7:data.index(b"\xce")]
    # Get-Ok: ids, delivery tag, redelivered, then exchange "dlx" and the routing key
    assert get_ok[13:].startswith(sstr(b"dlx") + sstr("ÿþ".encode()))


@pytest.mark.parametrize("send", [
    queue_declare(b"q", sstr(b"x-dead-letter-exchange") + BAD),
    exchange_declare(b"x", b"direct", sstr(b"alternate-exchange") + BAD)],
    ids=["x-dead-letter-exchange", "alternate-exchange"])
def test_exchange_name_argument_not_utf8_is_accepted(broker, send):
    with opened(broker.port) as raw:
        raw.send(send)
        assert answer(raw) == "DeclareOk"


@pytest.mark.parametrize("arg,expected", [
    (b"hash-property", (406, "PRECONDITION_FAILED - Unsupported property: ÿþ", 40, 10)),
    (b"hash-header", "DeclareOk"),
])
def test_consistent_hash_argument_not_utf8(broker, arg, expected):
    with opened(broker.port) as raw:
        raw.send(exchange_declare(b"chx", b"x-consistent-hash", sstr(arg) + BAD))
        assert answer(raw) == expected


def test_durable_queue_with_argument_not_utf8_survives_a_restart(tmp_path):
    """It used to answer 541 and leave the queue in memory without a journal entry or a log:
    a confirmed persistent message was gone after a restart. RabbitMQ accepts the declare."""
    b = BrokerThread(data_dir=str(tmp_path)).start()
    try:
        with opened(b.port) as raw:
            raw.send(queue_declare(b"keep", sstr(b"x-custom") + BAD, durable=True))
            assert answer(raw) == "DeclareOk"
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", "keep", b"confirmed", pika.BasicProperties(delivery_mode=2))
        conn.close()
        b.wait_for(lambda: not b.server.protocols, timeout=3, what="clients to go")
    finally:
        b.stop()
    b = BrokerThread(data_dir=str(tmp_path)).start()
    try:
        assert b.call(lambda: b.broker.vhosts["/"].queues["keep"].arguments) == {
            "x-custom": b"\xff\xfe"}
        with opened(b.port) as raw:         # the same arguments are equivalent
            raw.send(queue_declare(b"keep", sstr(b"x-custom") + BAD, durable=True))
            assert answer(raw) == "DeclareOk"
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        assert drain(conn.channel(), "keep") == [b"confirmed"]
        conn.close()
        b.wait_for(lambda: not b.server.protocols, timeout=3, what="clients to go")
    finally:
        b.stop()


# -- the deduplication exchange's numbers ----------------------------------------------------------
@pytest.mark.parametrize("value", [b"--5", b" 5", b"\xc2\xb2", b"5x"])
def test_cache_size_that_is_not_a_number_is_406(broker, value):
    with opened(broker.port) as raw:
        raw.send(exchange_declare(b"dd", b"x-message-deduplication", sstr(b"x-cache-size")
                                  + b"S" + table(value)))
        assert answer(raw) == (406, "PRECONDITION_FAILED - Missing or invalid argument, "
                                    "'x-cache-size' must be an integer greater than 0", 40, 10)


def test_cache_size_with_a_sign_is_a_number(broker):
    with opened(broker.port) as raw:
        raw.send(exchange_declare(b"dd", b"x-message-deduplication", sstr(b"x-cache-size")
                                  + b"S" + table(b"+5")))
        assert answer(raw) == "DeclareOk"


# -- consistent-hash weights -----------------------------------------------------------------------
def test_binding_a_heavy_weight_is_cheap(broker, ch):
    """Weight 1000 took 3.7 s and 259 MB (1,000,000 ring points); now a binding is one entry."""
    ch.exchange_declare("chx", "x-consistent-hash")
    heavy = ch.queue_declare("", exclusive=True).method.queue
    light = ch.queue_declare("", exclusive=True).method.queue
    started = time.monotonic()
    ch.queue_bind(heavy, "chx", "1000")
    ch.queue_bind(light, "chx", "1")
    ch.queue_bind(light, "chx", "9" * 200)        # any weight a short string can spell
    ch.queue_unbind(light, "chx", "9" * 200)
    assert time.monotonic() - started < 1.0
    for i in range(400):
        ch.basic_publish("chx", f"k{i}", b"")
    heavy_count = ch.queue_declare(heavy, passive=True).method.message_count
    light_count = ch.queue_declare(light, passive=True).method.message_count
    assert heavy_count + light_count == 400
    assert light_count <= 5                       # about 400 / 1001


@pytest.mark.parametrize("key,ok", [("+5", True), ("05", True), ("٣", False), (" 5", False)])
def test_weights_as_erlang_reads_them(connect, key, ok):
    ch = connect().channel()
    ch.exchange_declare("chx", "x-consistent-hash")
    q = ch.queue_declare("", exclusive=True).method.queue
    if ok:
        ch.queue_bind(q, "chx", key)
    else:
        e = refused(ch.queue_bind, q, "chx", key)
        assert (e.reply_code, e.reply_text) == (
            406, f'PRECONDITION_FAILED - The binding key must be an integer: <<"{key}">>')


# -- LavinMQ's x-deduplication-header ----------------------------------------------------------------
def test_queue_deduplicates_on_the_header_its_argument_names(ch):
    ch.queue_declare("dq", arguments={"x-message-deduplication": True,
                                      "x-deduplication-header": "msg-id"})
    for body, headers in [(b"1", {"msg-id": "a"}), (b"2", {"msg-id": "a"}),
                          (b"3", {"msg-id": "b"}),
                          (b"4", {"x-deduplication-header": "a"}),     # not the id header now
                          (b"5", {"x-deduplication-header": "a"})]:
        ch.basic_publish("", "dq", body, pika.BasicProperties(headers=headers))
    assert drain(ch, "dq") == [b"1", b"3", b"4", b"5"]
    ch.basic_publish("", "dq", b"6", pika.BasicProperties(headers={"msg-id": "a"}))
    assert drain(ch, "dq") == [b"6"]             # "a" left the queue, so it is new again


def test_exchange_deduplicates_on_the_header_its_argument_names(ch):
    ch.exchange_declare("dx", "x-message-deduplication",
                        arguments={"x-cache-size": 10, "x-deduplication-header": "msg-id"})
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "dx")
    for body, value in [(b"1", "a"), (b"2", "a"), (b"3", "b")]:
        ch.basic_publish("dx", "", body, pika.BasicProperties(headers={"msg-id": value}))
    assert drain(ch, q) == [b"1", b"3"]


def test_binary_deduplication_id_is_hashable(broker):
    """An 'x' byte-array id (a bytearray once decoded) used to crash the lookup (541)."""
    with opened(broker.port) as raw:
        raw.call(1, C.Queue.Declare(queue="dq", arguments={"x-message-deduplication": True}),
                 C.Queue.DeclareOk)
        props = table(sstr(b"x-deduplication-header") + b"x" + table(b"\x00\x01"))
        header = struct.pack(">HHQH", 60, 0, 1, 1 << 13) + props
        for _ in range(2):
            raw.send(ref.method(1, C.Basic.Publish(exchange="", routing_key="dq"))
                     + ref.frame(2, 1, header) + ref.frame(3, 1, b"m"))
        ok = raw.call(1, C.Queue.Declare(queue="dq", passive=True), C.Queue.DeclareOk)
        assert ok.message_count == 1


@pytest.mark.parametrize("declare,expected", [
    (lambda ch: ch.queue_declare("dq", arguments={"x-message-deduplication": True,
                                                  "x-deduplication-header": 5}),
     "PRECONDITION_FAILED - invalid arg 'x-deduplication-header' for queue 'dq' in vhost '/': "
     "{unacceptable_type,signedint}"),
    (lambda ch: ch.exchange_declare("dx", "x-message-deduplication", arguments={
        "x-cache-size": 5, "x-deduplication-header": 5}),
     "PRECONDITION_FAILED - Invalid argument, 'x-deduplication-header' must be a string"),
])
def test_deduplication_header_must_be_a_string(ch, declare, expected):
    e = refused(declare, ch)
    assert (e.reply_code, e.reply_text) == (406, expected)


def test_message_dead_lettered_with_such_a_routing_key_survives_a_restart(tmp_path):
    b = BrokerThread(data_dir=str(tmp_path)).start()
    try:
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        ch.exchange_declare("dlx", "fanout", durable=True)
        ch.queue_declare("dead", durable=True)
        ch.queue_bind("dead", "dlx")
        with opened(b.port) as raw:
            raw.send(queue_declare(b"work", sstr(b"x-dead-letter-exchange") + b"S"
                                   + table(b"dlx") + sstr(b"x-dead-letter-routing-key") + BAD
                                   + sstr(b"x-message-ttl") + b"I" + struct.pack(">i", 0),
                                   durable=True))
            assert answer(raw) == "DeclareOk"
        ch.confirm_delivery()
        ch.basic_publish("", "work", b"m", pika.BasicProperties(delivery_mode=2))
        deadline = time.monotonic() + 5
        while ch.queue_declare("dead", passive=True).method.message_count == 0:
            assert time.monotonic() < deadline
            conn.process_data_events(time_limit=0.01)
        conn.close()
        b.wait_for(lambda: not b.server.protocols, timeout=3, what="clients to go")
    finally:
        b.stop()
    b = BrokerThread(data_dir=str(tmp_path)).start()
    try:
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        method, _props, body = conn.channel().basic_get("dead", auto_ack=True)
        assert (body, method.routing_key) == (b"m", "ÿþ")
        conn.close()
        b.wait_for(lambda: not b.server.protocols, timeout=3, what="clients to go")
    finally:
        b.stop()


def test_binding_arguments_with_a_key_that_is_not_utf8(broker):
    """Found by fuzzing: ordering a binding's arguments compared a str key with a bytes one
    (541). RabbitMQ accepts such keys."""
    args = table(sstr(b"\xff") + b"V" + sstr(b"x-match") + b"S" + table(b"any"))
    with opened(broker.port) as raw:
        raw.call(1, C.Queue.Declare(queue="hq"), C.Queue.DeclareOk)
        for method_id, reply in ((20, C.Queue.BindOk), (50, C.Queue.UnbindOk)):
            raw.send(ref.raw_method(1, 50, method_id, struct.pack(">H", 0) + sstr(b"hq")
                                    + sstr(b"amq.headers") + sstr(b"") + (b"\x00" if
                                                                         method_id == 20 else b"")
                                    + args))
            raw.expect(reply)
            bound = broker.call(lambda: [args for dest, _k, args in
                                         broker.broker.vhosts["/"].exchanges["amq.headers"]
                                         .bindings if dest.name == "hq"])
            assert len(bound) == (1 if reply is C.Queue.BindOk else 0), bound
