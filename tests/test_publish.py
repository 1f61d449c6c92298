"""Publishing and basic.get over real sockets: body sizes and framing, every basic property
(field by field, and the content-header bytes verbatim), mandatory returns, immediate, publish
errors, basic.get with and without no-ack, and ordering. Expected codes and texts are
RabbitMQ 3.10's."""
import datetime
import struct
import time
from decimal import Decimal

import aio_pika
import pika
import pytest
from pamqp import body as pamqp_body, commands as C, frame as pamqp_frame
from pamqp import header as pamqp_header
from pika.exceptions import UnroutableError

from tests.rawclient import Closed, RawClient
from .helpers import new_queue, refused, reply

FRAME_MAX = 131072          # what amqpd and RabbitMQ offer and pika accepts


# -- helpers ----------------------------------------------------------------------------------
@pytest.fixture
def raw(broker, vh):
    client = RawClient(broker.port)
    client.handshake(vhost=vh)
    client.open_channel(1)
    yield client
    try:
        client.call(0, C.Connection.Close(reply_code=200, reply_text="bye", class_id=0,
                                          method_id=0), C.Connection.CloseOk)
    except (OSError, Closed, AssertionError):
        pass            # a test that ended the connection itself
    client.close()


def raw_get(raw: RawClient, queue: str, frame_max: int, no_ack: bool = True):
    """basic.get on channel 1; returns (GetOk, header payload bytes, [body frame payloads])."""
    raw.method(1, C.Basic.Get(queue=queue, no_ack=no_ack))
    ftype, channel, payload = raw.raw_frame()
    assert (ftype, channel) == (1, 1)
    method = C.INDEX_MAPPING[struct.unpack_from(">I", payload)[0]]()
    method.unmarshal(payload[4:])
    assert isinstance(method, C.Basic.GetOk), method
    ftype, channel, header = raw.raw_frame()
    assert (ftype, channel) == (2, 1)
    body_size = struct.unpack_from(">Q", header, 4)[0]
    parts, got = [], 0
    while got < body_size:
        ftype, channel, payload = raw.raw_frame()
        assert (ftype, channel) == (3, 1)
        assert 0 < len(payload) <= frame_max - 8
        parts.append(payload)
        got += len(payload)
    assert got == body_size
    return method, header, parts


def content_header_payload(body_size: int, props: C.Basic.Properties) -> bytes:
    frame = pamqp_frame.marshal(pamqp_header.ContentHeader(0, body_size, props), 1)
    return frame[7:-1]


def sync(ch) -> None:
    """A round trip on the channel: everything published before it has been handled (the
    broker processes a channel's frames in order)."""
    ch.basic_qos(prefetch_count=0)


# -- bodies -------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, FRAME_MAX - 9, FRAME_MAX - 8, FRAME_MAX - 7,
                                  3 * (FRAME_MAX - 8), 5 * 1024 * 1024 + 3])
def test_body_sizes_roundtrip_pika(ch, size):
    q = new_queue(ch)
    body = bytes(i % 251 for i in range(size))
    ch.basic_publish("", q, body)
    method, _props, got = ch.basic_get(q, auto_ack=True)
    assert method is not None and len(got) == size and got == body


@pytest.mark.parametrize("size", [0, 1, 16384 - 8, 16384 - 7, 3 * 1024 * 1024 + 5])
def test_body_framing_raw(broker, vh, size):
    """Bodies are re-split to the connection's frame_max: frames of exactly frame_max - 8
    bytes but the last, and no body frame at all for an empty body."""
    frame_max = 16384
    with RawClient(broker.port) as small:
        small.handshake(vhost=vh, frame_max=frame_max)
        small.open_channel(1)
        ok = small.call(1, C.Queue.Declare(queue="", exclusive=True), C.Queue.DeclareOk)
        body = bytes(i % 253 for i in range(size))
        small.publish(1, body, routing_key=ok.queue, frame_max=frame_max)
        _get_ok, header, parts = raw_get(small, ok.queue, frame_max)
        assert b"".join(parts) == body
        chunk = frame_max - 8
        assert len(parts) == -(-size // chunk)
        assert all(len(p) == chunk for p in parts[:-1])
        # Nothing else follows the last body frame (an empty body has none).
        small.method(1, C.Basic.Get(queue=ok.queue, no_ack=True))
        small.expect(C.Basic.GetEmpty)
        small.call(0, C.Connection.Close(reply_code=200, reply_text="bye", class_id=0,
                                         method_id=0), C.Connection.CloseOk)


async def test_large_body_consumed_aio_pika(broker):
    body = bytes(range(256)) * (4 * 4096 + 7)       # ~4 MiB, not a multiple of the chunk
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue("", exclusive=True)
        await ch.default_exchange.publish(aio_pika.Message(body), routing_key=q.name)
        async with q.iterator() as it:
            async for msg in it:
                await msg.ack()
                assert msg.body == body
                break


# -- properties ---------------------------------------------------------------------------------
HEADERS = {
    "str": "text",
    "unicode": "żółw \u2603",
    "empty": "",
    "int": 42,
    "neg": -7,
    "big": 2 ** 40,
    "true": True,
    "false": False,
    "bytes": b"\x00\xffraw",
    "decimal": Decimal("3.14"),
    "void": None,
    "ts": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    "list": [1, "two", True, [3, [4]], {"k": "v"}, b"\x01"],
    "table": {"nested": {"deeper": {"deepest": 1}}, "arr": [], "t": {}},
}


def full_pika_properties() -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type="application/json", content_encoding="gzip", headers=HEADERS,
        delivery_mode=2, priority=5, correlation_id="corr-1", reply_to="reply.queue",
        expiration="60000", message_id="msg-1", timestamp=1700000000, type="order.created",
        user_id="guest", app_id="tests")


PROPERTY_FIELDS = ["content_type", "content_encoding", "headers", "delivery_mode", "priority",
                   "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                   "type", "user_id", "app_id", "cluster_id"]


def test_every_property_preserved_pika(ch):
    q = new_queue(ch)
    sent = full_pika_properties()
    ch.basic_publish("", q, b"{}", sent)
    method, got, body = ch.basic_get(q, auto_ack=True)
    assert body == b"{}"
    for field in PROPERTY_FIELDS:
        assert getattr(got, field) == getattr(sent, field), field
    assert got.headers["ts"] == HEADERS["ts"]
    assert got.headers["table"]["nested"]["deeper"]["deepest"] == 1


def test_no_properties_stay_absent(ch):
    q = new_queue(ch)
    ch.basic_publish("", q, b"bare")
    _method, got, _body = ch.basic_get(q, auto_ack=True)
    assert all(getattr(got, f) is None for f in PROPERTY_FIELDS)


@pytest.mark.parametrize("props", [
    {},
    {"content_type": "text/plain"},
    {"headers": {}},
    {"delivery_mode": 1, "priority": 0, "timestamp": datetime.datetime(2000, 1, 1)},
    {"content_type": "application/octet-stream", "content_encoding": "identity",
     "headers": {"s": "v", "i": 1, "l": 2 ** 40, "b": True, "d": 1.25, "f": {"x": [1, "y"]},
                 "dec": Decimal("1.5"), "ts": datetime.datetime(2024, 5, 6, 7, 8, 9),
                 "bin": bytearray(b"\x00\x01"), "v": None},
     "delivery_mode": 2, "priority": 9, "correlation_id": "c" * 255, "reply_to": "r",
     "expiration": "1000000", "message_id": "m", "timestamp": datetime.datetime(2030, 1, 1),
     "message_type": "t", "user_id": "guest", "app_id": "a"},
])
def test_content_header_bytes_verbatim(raw, props):
    """What a publisher put in the content header comes back byte for byte in get-ok."""
    ok = raw.call(1, C.Queue.Declare(queue="", exclusive=True), C.Queue.DeclareOk)
    properties = C.Basic.Properties(**props)
    raw.publish(1, b"payload", routing_key=ok.queue, properties=properties)
    _get_ok, header, parts = raw_get(raw, ok.queue, FRAME_MAX)
    assert header == content_header_payload(7, properties)
    assert parts == [b"payload"]


async def test_properties_preserved_aio_pika(broker):
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue("", exclusive=True)
        sent = aio_pika.Message(
            b"body", content_type="text/plain", content_encoding="utf-8",
            headers={"a": 1, "b": "two", "c": [1, 2], "d": {"e": True}},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, priority=3, correlation_id="cid",
            reply_to="rq", expiration=30, message_id="mid",
            timestamp=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
            type="kind", user_id="guest", app_id="app")
        await ch.default_exchange.publish(sent, routing_key=q.name)
        got = await q.get(no_ack=True)
        for field in ("body", "content_type", "content_encoding", "headers", "delivery_mode",
                      "priority", "correlation_id", "reply_to", "message_id", "timestamp",
                      "type", "user_id", "app_id"):
            assert getattr(got, field) == getattr(sent, field), field
        assert got.expiration == sent.expiration


# -- mandatory / immediate ----------------------------------------------------------------------
def test_mandatory_unroutable_returned_pika(conn):
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda c, method, props, body: returned.append(
        (method, props, body)))
    ch.exchange_declare("lonely", "direct")
    props = pika.BasicProperties(message_id="m1", headers={"k": "v"})
    ch.basic_publish("lonely", "nowhere", b"back", props, mandatory=True)
    ch.basic_publish("", "no-such-queue", b"back2", mandatory=True)
    ch.basic_publish("lonely", "nowhere", b"dropped", mandatory=False)
    deadline = time.monotonic() + 5
    while len(returned) < 2:
        assert time.monotonic() < deadline, returned
        conn.process_data_events(time_limit=0.05)
    sync(ch)
    conn.process_data_events(time_limit=0)
    assert len(returned) == 2
    (m1, p1, b1), (m2, _p2, b2) = returned
    assert (m1.reply_code, m1.reply_text, m1.exchange, m1.routing_key, b1) == (
        312, "NO_ROUTE", "lonely", "nowhere", b"back")
    assert (p1.message_id, p1.headers) == ("m1", {"k": "v"})
    assert (m2.reply_code, m2.reply_text, m2.exchange, m2.routing_key, b2) == (
        312, "NO_ROUTE", "", "no-such-queue", b"back2")


def test_mandatory_routable_not_returned(conn):
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    q = new_queue(ch)
    ch.basic_publish("", q, b"ok", mandatory=True)
    sync(ch)
    conn.process_data_events(time_limit=0)
    assert returned == []
    assert ch.basic_get(q, auto_ack=True)[2] == b"ok"


def test_mandatory_unroutable_with_confirms_pika(ch):
    ch.confirm_delivery()
    with pytest.raises(UnroutableError) as info:
        ch.basic_publish("amq.direct", "nowhere", b"x", mandatory=True)
    [msg] = info.value.messages
    assert (msg.method.reply_code, msg.method.reply_text, msg.body) == (312, "NO_ROUTE", b"x")
    # Not mandatory: silently dropped, and still confirmed.
    ch.basic_publish("amq.direct", "nowhere", b"y")


def test_mandatory_return_precedes_ack_raw(raw):
    raw.call(1, C.Confirm.Select(), C.Confirm.SelectOk)
    raw.publish(1, b"r", exchange="amq.direct", routing_key="nowhere", mandatory=True)
    ret = raw.expect(C.Basic.Return)
    assert (ret.reply_code, ret.reply_text, ret.exchange, ret.routing_key) == (
        312, "NO_ROUTE", "amq.direct", "nowhere")
    raw.expect(pamqp_header.ContentHeader)
    raw.expect(pamqp_body.ContentBody)
    ack = raw.expect(C.Basic.Ack)
    assert (ack.delivery_tag, ack.multiple) == (1, False)


async def test_mandatory_unroutable_aio_pika(broker):
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch = await conn.channel(on_return_raises=True)
        x = await ch.declare_exchange("lonely", aio_pika.ExchangeType.DIRECT)
        with pytest.raises(aio_pika.exceptions.PublishError):
            await x.publish(aio_pika.Message(b"x"), routing_key="nowhere", mandatory=True)
        ch2 = await conn.channel()
        returned = await ch2.default_exchange.publish(aio_pika.Message(b"y"),
                                                      routing_key="no-such-queue",
                                                      mandatory=True)
        assert returned.delivery.reply_code == 312
        assert returned.delivery.reply_text == "NO_ROUTE"
        assert returned.body == b"y"


def test_immediate_closes_connection_540(raw):
    ok = raw.call(1, C.Queue.Declare(queue="", exclusive=True), C.Queue.DeclareOk)
    raw.publish(1, b"x", routing_key=ok.queue, immediate=True)
    close = raw.expect(C.Connection.Close)
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        540, "NOT_IMPLEMENTED - immediate=true", 60, 40)
    raw.method(0, C.Connection.CloseOk())
    assert raw.is_closed()


# -- publish errors -----------------------------------------------------------------------------
def test_publish_to_missing_exchange_404(conn, vh):
    ch = conn.channel()
    ch.basic_publish("no-such-exchange", "k", b"x")
    e = refused(sync, ch)                       # the channel.close is asynchronous
    assert reply(e) == (404, f"NOT_FOUND - no exchange 'no-such-exchange' in vhost '{vh}'")
    assert conn.is_open
    conn.channel().queue_declare("", exclusive=True)


def test_publish_to_missing_exchange_raw_class_method(raw, vh):
    raw.publish(1, b"x", exchange="no-such-exchange")
    close = raw.expect(C.Channel.Close)
    assert (close.reply_code, close.class_id, close.method_id) == (404, 60, 40)
    raw.method(1, C.Channel.CloseOk())
    raw.open_channel(1)


def test_publish_to_missing_exchange_with_confirms(ch, vh):
    ch.confirm_delivery()
    e = refused(ch.basic_publish, "no-such-exchange", "k", b"x")
    assert reply(e) == (404, f"NOT_FOUND - no exchange 'no-such-exchange' in vhost '{vh}'")


def test_user_id_mismatch_406(conn):
    ch = conn.channel()
    q = new_queue(ch)
    ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="bob"))
    e = refused(sync, ch)
    assert reply(e) == (406, "PRECONDITION_FAILED - user_id property set to 'bob' but "
                             "authenticated user was 'guest'")
    ch = conn.channel()
    ch.basic_publish("", "whatever", b"x", pika.BasicProperties(user_id="guest"))
    sync(ch)


def test_user_id_mismatch_not_enqueued(connect):
    conn = connect()
    ch = conn.channel()
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"forged", pika.BasicProperties(user_id="admin"))
    refused(sync, ch)
    ch = conn.channel()
    assert ch.basic_get("q")[0] is None
    ch.queue_delete("q")


# -- basic.get ----------------------------------------------------------------------------------
def test_get_empty_and_missing_queue(conn, vh):
    ch = conn.channel()
    q = new_queue(ch)
    assert ch.basic_get(q) == (None, None, None)
    e = refused(ch.basic_get, "no-such-queue")
    assert reply(e) == (404, f"NOT_FOUND - no queue 'no-such-queue' in vhost '{vh}'")


def test_get_empty_raw(raw):
    ok = raw.call(1, C.Queue.Declare(queue="", exclusive=True), C.Queue.DeclareOk)
    raw.call(1, C.Basic.Get(queue=ok.queue), C.Basic.GetEmpty)


def test_get_ok_fields_and_message_count(ch):
    ch.exchange_declare("x", "direct")
    q = new_queue(ch)
    ch.queue_bind(q, "x", "rk")
    for i in range(3):
        ch.basic_publish("x", "rk", b"m%d" % i)
    counts, tags = [], []
    for i in range(3):
        method, _props, body = ch.basic_get(q, auto_ack=True)
        assert body == b"m%d" % i
        assert (method.exchange, method.routing_key, method.redelivered) == ("x", "rk", False)
        counts.append(method.message_count)
        tags.append(method.delivery_tag)
    assert counts == [2, 1, 0]
    assert tags == [1, 2, 3]


def test_get_without_no_ack_keeps_message_until_acked(connect):
    conn = connect()
    ch = conn.channel()
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"a")
    ch.basic_publish("", "q", b"b")
    m1, _, b1 = ch.basic_get("q", auto_ack=False)
    assert (b1, m1.delivery_tag, m1.message_count) == (b"a", 1, 1)
    m2, _, b2 = ch.basic_get("q", auto_ack=False)
    assert (b2, m2.delivery_tag, m2.message_count) == (b"b", 2, 0)
    assert ch.basic_get("q") == (None, None, None)
    ch.basic_ack(m2.delivery_tag)
    ch.close()                                   # 'a' was never acked: back to the queue
    ch = conn.channel()
    m, _, body = ch.basic_get("q", auto_ack=False)
    assert (body, m.redelivered, m.delivery_tag) == (b"a", True, 1)
    ch.basic_ack(m.delivery_tag)
    sync(ch)
    assert ch.basic_get("q") == (None, None, None)
    ch.queue_delete("q")


def test_get_no_ack_then_ack_is_unknown_tag_406(ch):
    q = new_queue(ch)
    ch.basic_publish("", q, b"x")
    method, _, _ = ch.basic_get(q, auto_ack=True)
    ch.basic_ack(method.delivery_tag)
    e = refused(sync, ch)
    assert reply(e) == (406, f"PRECONDITION_FAILED - unknown delivery tag {method.delivery_tag}")


async def test_get_aio_pika(broker):
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue("", exclusive=True)
        assert await q.get(fail=False) is None
        for body in (b"1", b"2"):
            await ch.default_exchange.publish(aio_pika.Message(body), routing_key=q.name)
        m = await q.get(no_ack=False)
        assert (m.body, m.message_count, m.redelivered) == (b"1", 1, False)
        await m.ack()
        m = await q.get(no_ack=True)
        assert (m.body, m.message_count) == (b"2", 0)
        with pytest.raises(aio_pika.exceptions.QueueEmpty):
            await q.get()


# -- ordering -----------------------------------------------------------------------------------
def test_order_preserved_publish_get(ch):
    q = new_queue(ch)
    n = 500
    for i in range(n):
        ch.basic_publish("", q, b"%d" % i)
    got = []
    while (m := ch.basic_get(q, auto_ack=True))[0] is not None:
        got.append(int(m[2]))
    assert got == list(range(n))


def test_order_preserved_across_fanout_and_sizes(ch):
    ch.exchange_declare("fx", "fanout")
    qs = [new_queue(ch) for _ in range(3)]
    for q in qs:
        ch.queue_bind(q, "fx")
    bodies = [b"%d:" % i + b"z" * (i * 9973 % 300000) for i in range(40)]
    for body in bodies:
        ch.basic_publish("fx", "", body)
    for q in qs:
        got = []
        while (m := ch.basic_get(q, auto_ack=True))[0] is not None:
            got.append(m[2])
        assert got == bodies


async def test_order_preserved_aio_pika_consumer(broker):
    n = 300
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch = await conn.channel(publisher_confirms=False)
        q = await ch.declare_queue("", exclusive=True)
        for i in range(n):
            await ch.default_exchange.publish(aio_pika.Message(b"%d" % i), routing_key=q.name)
        got = []
        async with q.iterator(no_ack=True) as it:
            async for msg in it:
                got.append(int(msg.body))
                if len(got) == n:
                    break
        assert got == list(range(n))
