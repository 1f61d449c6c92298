"""Differential tests: amqpd.wire.fastpath must be byte-identical to pamqp.

Every case is generated from a seeded ``random.Random`` so a failure is reproducible; the
corpus mixes random values with the edges (empty and 255-byte short strings, non-ASCII UTF-8,
delivery tags 0/1/2**64-1, every flag-bit combination, zero-length bodies, bodies of exactly
frame_max-8 bytes, one more, several frames) for frame_max 4096 and 131072.
"""
from __future__ import annotations

import datetime
import decimal
import random
import struct

import pytest
from pamqp import body as pamqp_body
from pamqp import commands as C
from pamqp import encode as pamqp_encode
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

from amqpd import errors
from amqpd.wire import fastpath

SEED = 0x0A3D
CASES = 3000
FRAME_MAXES = (4096, 131072)
U64 = 2 ** 64 - 1
TAG_EDGES = (0, 1, 2, U64 - 1, U64)
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:#*"
NON_ASCII = ("é", "ß", "日本語", "Ωμέγα", "🐇", "ü.ö.ä", "\u0000", "中")


# -- generators ---------------------------------------------------------------------------------
def rand_shortstr(rng: random.Random) -> str:
    """A str whose UTF-8 encoding fits a shortstr, biased towards the edges."""
    kind = rng.random()
    if kind < 0.10:
        return ""
    if kind < 0.20:
        return "x" * 255
    if kind < 0.25:
        return "é" * 127 + "a"                      # 255 bytes, 128 chars
    if kind < 0.40:
        out, size = [], 0
        limit = rng.choice((8, 40, 255))
        while True:
            piece = rng.choice(NON_ASCII + ("a", "b.", "#", "*", "-_:"))
            n = len(piece.encode())
            if size + n > limit:
                break
            out.append(piece)
            size += n
            if rng.random() < 0.15:
                break
        return "".join(out)
    n = rng.choice((1, 2, 7, 32, rng.randrange(0, 256)))
    return "".join(rng.choice(ALPHABET) for _ in range(n))


def ss(value: str) -> bytes:
    """Reference shortstr encoder, independent of the fast path."""
    raw = value.encode("utf-8")
    assert len(raw) <= 255
    return bytes([len(raw)]) + raw


def signed64(value: int) -> int:
    """pamqp encodes and decodes AMQP ``longlong`` as a *signed* 64-bit integer, while the spec
    (and RabbitMQ) use unsigned. Tags >= 2**63 are handed to pamqp in two's complement, which
    is the same 8 bytes on the wire."""
    return value - (1 << 64) if value >= 1 << 63 else value


def unsigned64(value: int) -> int:
    return value % (1 << 64)


def rand_tag(rng: random.Random) -> int:
    if rng.random() < 0.3:
        return rng.choice(TAG_EDGES)
    return rng.choice((rng.randrange(0, 1 << 16), rng.randrange(0, 1 << 40),
                       rng.randrange(0, 1 << 64)))


def rand_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return rand_shortstr(rng)
    if kind == 1:
        return rng.choice((0, 1, -1, 127, -128, 32767, -32768, 2 ** 31 - 1, -2 ** 31,
                           rng.randrange(-2 ** 31, 2 ** 31)))
    if kind == 2:
        return rng.random() < 0.5
    if kind == 3:
        return rng.uniform(-1e9, 1e9)
    if kind == 4:
        return decimal.Decimal(rng.randrange(-10000, 10000)) / 100
    if kind == 5:
        return datetime.datetime.fromtimestamp(rng.randrange(0, 2 ** 31), datetime.timezone.utc)
    if kind == 6:
        return [rand_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rand_shortstr(rng)[:40] or "k": rand_value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def rand_properties(rng: random.Random) -> C.Basic.Properties:
    kw = {}

    def maybe(name, make):
        if rng.random() < 0.45:
            kw[name] = make()

    maybe("content_type", lambda: rand_shortstr(rng))
    maybe("content_encoding", lambda: rand_shortstr(rng))
    maybe("headers", lambda: {f"h{i}-{rand_shortstr(rng)[:20]}": rand_value(rng)
                              for i in range(rng.randrange(6))})
    maybe("delivery_mode", lambda: rng.choice((1, 2)))
    maybe("priority", lambda: rng.randrange(256))
    maybe("correlation_id", lambda: rand_shortstr(rng))
    maybe("reply_to", lambda: rand_shortstr(rng))
    maybe("expiration", lambda: str(rng.randrange(0, 10 ** 9)))
    maybe("message_id", lambda: rand_shortstr(rng))
    maybe("timestamp", lambda: datetime.datetime.fromtimestamp(rng.randrange(0, 2 ** 32),
                                                               datetime.timezone.utc))
    maybe("message_type", lambda: rand_shortstr(rng))
    maybe("user_id", lambda: rand_shortstr(rng))
    maybe("app_id", lambda: rand_shortstr(rng))
    return C.Basic.Properties(**kw)


_BLOB = random.Random(SEED ^ 0xB10B).randbytes(3 * 131072 + 4096)


def rand_body(rng: random.Random, frame_max: int) -> bytes:
    chunk = frame_max - 8
    kind = rng.random()
    if kind < 0.10:
        size = 0
    elif kind < 0.22:
        size = rng.choice((1, chunk - 1, chunk, chunk + 1, 2 * chunk, 2 * chunk + 1,
                           3 * chunk - 1, rng.randrange(chunk, 3 * chunk)))
    else:
        size = rng.randrange(1, 300)
    start = rng.randrange(0, len(_BLOB) - size + 1)
    return _BLOB[start:start + size]


def unvalidated(cls):
    """pamqp validates exchange names (<=127 chars, [a-zA-Z0-9-_.:]) when marshalling; the wire
    format allows any 255-byte shortstr, so compare against a subclass that skips that check.
    No ``__slots__`` here, so ``self.__slots__`` still names the parent's fields."""
    return type(cls.__name__, (cls,), {"validate": lambda self: None})


Deliver = unvalidated(C.Basic.Deliver)
GetOk = unvalidated(C.Basic.GetOk)
Return = unvalidated(C.Basic.Return)


def content_frames(channel: int, header_payload: bytes, body: bytes, frame_max: int) -> bytes:
    """The content frames as pamqp marshals them, body split at frame_max - 8 like a client."""
    out = [pamqp_frame._marshal(2, channel, header_payload)]
    step = frame_max - 8
    for i in range(0, len(body), step):
        out.append(pamqp_frame.marshal(pamqp_body.ContentBody(body[i:i + step]), channel))
    return b"".join(out)


def frames_of(data: bytes) -> list:
    """Split a byte string into (type, channel, size) with a plain loop (reference framer)."""
    out = []
    pos = 0
    while pos < len(data):
        ftype, channel, size = struct.unpack_from(">BHI", data, pos)
        assert data[pos + 7 + size] == 0xCE
        out.append((ftype, channel, size))
        pos += 8 + size
    assert pos == len(data)
    return out


def publish_payload(ticket: int, exchange: bytes, routing_key: bytes, bits: int) -> bytes:
    return (struct.pack(">HHH", 60, 40, ticket) + bytes([len(exchange)]) + exchange
            + bytes([len(routing_key)]) + routing_key + bytes([bits]))


def assert_amqp_error(fn, *args):
    with pytest.raises(errors.AMQPError) as info:
        fn(*args)
    assert info.value.connection_level, "a malformed frame is a connection error"
    assert 500 <= info.value.code < 600
    return info.value


# -- sanity of the reference itself -------------------------------------------------------------
def test_unvalidated_reference_matches_pamqp_on_valid_names():
    a = C.Basic.Deliver(consumer_tag="ctag", delivery_tag=7, redelivered=True,
                        exchange="amq.direct", routing_key="rk")
    b = Deliver(consumer_tag="ctag", delivery_tag=7, redelivered=True,
                exchange="amq.direct", routing_key="rk")
    assert pamqp_frame.marshal(a, 3) == pamqp_frame.marshal(b, 3)


# -- shortstr / route ---------------------------------------------------------------------------
def test_shortstr_and_route_bytes_match_pamqp():
    rng = random.Random(SEED + 1)
    for _ in range(CASES):
        ex, rk = rand_shortstr(rng), rand_shortstr(rng)
        assert fastpath.shortstr(ex) == pamqp_encode.short_string(ex) == ss(ex)
        assert fastpath.route_bytes(ex, rk) == (pamqp_encode.short_string(ex)
                                                + pamqp_encode.short_string(rk))


@pytest.mark.parametrize("value", ["x" * 256, "é" * 128, "🐇" * 64])
def test_shortstr_longer_than_255_bytes_is_an_amqp_error(value):
    with pytest.raises(errors.AMQPError):
        fastpath.shortstr(value)


# -- Basic.Publish ------------------------------------------------------------------------------
def _check_publish(payload: bytes) -> None:
    ref = C.Basic.Publish()
    ref.unmarshal(payload[4:])
    exchange, routing_key, route, mandatory, immediate = fastpath.decode_publish(payload)
    assert exchange == ref.exchange
    assert routing_key == ref.routing_key
    assert mandatory is bool(ref.mandatory) and isinstance(mandatory, bool)
    assert immediate is bool(ref.immediate) and isinstance(immediate, bool)
    # route is the raw exchange + routing-key shortstr slice, ticket and bits excluded
    assert route == payload[6:-1]
    assert route == pamqp_encode.short_string(ref.exchange) + pamqp_encode.short_string(
        ref.routing_key)
    assert isinstance(route, bytes)


def test_decode_publish_random_corpus():
    rng = random.Random(SEED + 2)
    for _ in range(CASES):
        ex, rk = rand_shortstr(rng), rand_shortstr(rng)
        payload = publish_payload(rng.randrange(1 << 16), ex.encode(), rk.encode(),
                                  rng.randrange(256))
        _check_publish(payload)


def test_decode_publish_from_pamqp_marshal():
    rng = random.Random(SEED + 3)
    names = ["", "amq.direct", "a" * 127, "ex-1_2.3:4"]
    for _ in range(500):
        m = C.Basic.Publish(exchange=rng.choice(names), routing_key=rand_shortstr(rng),
                            mandatory=rng.random() < 0.5, immediate=rng.random() < 0.5)
        payload = pamqp_frame.marshal(m, 1)[7:-1]
        exchange, routing_key, route, mandatory, immediate = fastpath.decode_publish(payload)
        assert (exchange, routing_key, mandatory, immediate) == (
            m.exchange, m.routing_key, m.mandatory, m.immediate)
        assert route == ss(m.exchange) + ss(m.routing_key)


@pytest.mark.parametrize("bits", range(256))
def test_decode_publish_every_flag_byte(bits):
    _check_publish(publish_payload(0, b"amq.topic", "é.ß.#".encode(), bits))


@pytest.mark.parametrize("exchange,routing_key", [
    ("", ""), ("x" * 255, ""), ("", "y" * 255), ("x" * 255, "y" * 255),
    ("é" * 127 + "a", "日本語" * 28), ("🐇", "\u0000"),
])
def test_decode_publish_edges(exchange, routing_key):
    for ticket in (0, 1, 0xFFFF):
        _check_publish(publish_payload(ticket, exchange.encode(), routing_key.encode(), 3))


def test_decode_publish_every_truncation_raises():
    rng = random.Random(SEED + 4)
    for _ in range(200):
        payload = publish_payload(rng.randrange(1 << 16), rand_shortstr(rng).encode(),
                                  rand_shortstr(rng).encode(), rng.randrange(256))
        for cut in range(len(payload)):
            assert_amqp_error(fastpath.decode_publish, payload[:cut])


def test_decode_publish_trailing_bytes_raise():
    payload = publish_payload(0, b"ex", b"rk", 1)
    for extra in (b"\x00", b"\x00\x00", b"garbage", b"\x05table"):
        assert_amqp_error(fastpath.decode_publish, payload + extra)


@pytest.mark.parametrize("bad", [b"\xff", b"\xc3", b"\xc3(", b"\xed\xa0\x80", b"a\x80b"])
def test_decode_publish_invalid_utf8_raises(bad):
    assert_amqp_error(fastpath.decode_publish, publish_payload(0, bad, b"rk", 0))
    assert_amqp_error(fastpath.decode_publish, publish_payload(0, b"ex", bad, 0))


def test_decode_publish_random_garbage_never_leaks_other_exceptions():
    rng = random.Random(SEED + 5)
    for _ in range(CASES):
        n = rng.randrange(0, 40)
        payload = b"\x00\x3c\x00\x28" + rng.randbytes(n)
        try:
            result = fastpath.decode_publish(payload)
        except errors.AMQPError as exc:
            assert exc.connection_level
            continue
        # whatever decodes must decode exactly as pamqp reads it
        _check_publish(payload)
        assert result[2] == payload[6:-1]


# -- content header -----------------------------------------------------------------------------
def _check_header(payload: bytes) -> None:
    ref = pamqp_header.ContentHeader()
    ref.unmarshal(payload)
    got = fastpath.peek_content_header(payload)
    assert got[0] == ref.class_id
    assert got[-1] == ref.body_size
    if len(got) == 3:                       # (class_id, weight, body_size)
        assert got[1] == ref.weight


def test_peek_content_header_random_properties():
    rng = random.Random(SEED + 6)
    for _ in range(CASES):
        size = rng.choice((0, 1, 4088, 131064, U64, rng.randrange(0, 1 << 64),
                           rng.randrange(0, 1 << 20)))
        payload = pamqp_header.ContentHeader(0, size, rand_properties(rng)).marshal()
        _check_header(payload)


def test_peek_content_header_class_weight_and_size_fields():
    rng = random.Random(SEED + 7)
    props = C.Basic.Properties(content_type="text/plain", delivery_mode=2).marshal()
    for class_id in (0, 10, 60, 0xFFFF):
        for weight in (0, 1, 0xFFFF):
            for size in (0, 1, U64, rng.randrange(1 << 64)):
                _check_header(struct.pack(">HHQ", class_id, weight, size) + props)


def test_peek_content_header_too_short_raises():
    payload = pamqp_header.ContentHeader(0, 5, C.Basic.Properties()).marshal()
    assert len(payload) == 14
    for cut in range(14):
        assert_amqp_error(fastpath.peek_content_header, payload[:cut])


# -- Basic.Ack / Nack / Reject ------------------------------------------------------------------
ACK_CLASSES = {80: C.Basic.Ack, 90: C.Basic.Reject, 120: C.Basic.Nack}


def _semantics(method_id: int, bits: int) -> dict:
    """How the bits returned by decode_ack are documented to be read."""
    if method_id == 80:
        return {"multiple": bool(bits & 1)}
    if method_id == 90:
        return {"requeue": bool(bits & 1)}
    return {"multiple": bool(bits & 1), "requeue": bool(bits & 2)}


def _check_ack(method_id: int, payload: bytes) -> None:
    ref = ACK_CLASSES[method_id]()
    ref.unmarshal(payload[4:])
    tag, bits = fastpath.decode_ack(payload)
    assert tag == unsigned64(ref.delivery_tag)
    for name, value in _semantics(method_id, bits).items():
        assert value == bool(getattr(ref, name)), (method_id, bits, name)


@pytest.mark.parametrize("method_id", sorted(ACK_CLASSES))
def test_decode_ack_every_tag_edge_and_flag_byte(method_id):
    for tag in TAG_EDGES:
        for bits in range(256):
            _check_ack(method_id, struct.pack(">HHQB", 60, method_id, tag, bits))


@pytest.mark.parametrize("method_id", sorted(ACK_CLASSES))
def test_decode_ack_from_pamqp_marshal(method_id):
    rng = random.Random(SEED + method_id)
    cls = ACK_CLASSES[method_id]
    for _ in range(CASES):
        tag = rand_tag(rng)
        kw = {"delivery_tag": signed64(tag)}
        if method_id in (80, 120):
            kw["multiple"] = rng.random() < 0.5
        if method_id in (90, 120):
            kw["requeue"] = rng.random() < 0.5
        m = cls(**kw)
        payload = pamqp_frame.marshal(m, 1)[7:-1]
        got_tag, bits = fastpath.decode_ack(payload)
        assert got_tag == tag
        expected = {k: v for k, v in kw.items() if k != "delivery_tag"}
        assert _semantics(method_id, bits) == expected


@pytest.mark.parametrize("method_id", sorted(ACK_CLASSES))
def test_decode_ack_wrong_length_raises(method_id):
    payload = struct.pack(">HHQB", 60, method_id, 5, 1)
    for cut in range(len(payload)):
        assert_amqp_error(fastpath.decode_ack, payload[:cut])
    assert_amqp_error(fastpath.decode_ack, payload + b"\x00")


# -- Deliver / Get-Ok / Return ------------------------------------------------------------------
def _channel(rng: random.Random) -> int:
    return rng.choice((1, 2, 65535, rng.randrange(1, 65536)))


def _check_framing(data: bytes, frame_max: int, channel: int, body_len: int) -> None:
    frames = frames_of(data)
    assert all(size + 8 <= frame_max for _, _, size in frames)
    assert all(ch == channel for _, ch, _ in frames)
    types = [t for t, _, _ in frames]
    nbody = -(-body_len // (frame_max - 8))
    assert types == [1, 2] + [3] * nbody


@pytest.mark.parametrize("frame_max", FRAME_MAXES)
def test_write_deliver_matches_pamqp(frame_max):
    rng = random.Random(SEED + 10 + frame_max)
    for _ in range(CASES):
        channel = _channel(rng)
        ctag, ex, rk = rand_shortstr(rng), rand_shortstr(rng), rand_shortstr(rng)
        tag, redelivered = rand_tag(rng), rng.random() < 0.5
        body = rand_body(rng, frame_max)
        header = pamqp_header.ContentHeader(0, len(body), rand_properties(rng)).marshal()
        ref = Deliver(consumer_tag=ctag, delivery_tag=signed64(tag), redelivered=redelivered,
                      exchange=ex, routing_key=rk)
        expected = (pamqp_frame.marshal(ref, channel)
                    + content_frames(channel, header, body, frame_max))
        out: list = []
        fastpath.write_deliver(out, channel, ss(ctag), tag, redelivered, ss(ex) + ss(rk),
                               header, body, frame_max)
        got = b"".join(out)
        assert got == expected
        _check_framing(got, frame_max, channel, len(body))


@pytest.mark.parametrize("frame_max", FRAME_MAXES)
def test_write_get_ok_matches_pamqp(frame_max):
    rng = random.Random(SEED + 20 + frame_max)
    for _ in range(CASES):
        channel = _channel(rng)
        ex, rk = rand_shortstr(rng), rand_shortstr(rng)
        tag, redelivered = rand_tag(rng), rng.random() < 0.5
        count = rng.choice((0, 1, 2 ** 32 - 1, rng.randrange(2 ** 32)))
        body = rand_body(rng, frame_max)
        header = pamqp_header.ContentHeader(0, len(body), rand_properties(rng)).marshal()
        ref = GetOk(delivery_tag=signed64(tag), redelivered=redelivered, exchange=ex,
                    routing_key=rk, message_count=count)
        expected = (pamqp_frame.marshal(ref, channel)
                    + content_frames(channel, header, body, frame_max))
        out: list = []
        fastpath.write_get_ok(out, channel, tag, redelivered, ss(ex) + ss(rk), count, header,
                              body, frame_max)
        got = b"".join(out)
        assert got == expected
        _check_framing(got, frame_max, channel, len(body))


@pytest.mark.parametrize("frame_max", FRAME_MAXES)
def test_write_return_matches_pamqp(frame_max):
    rng = random.Random(SEED + 30 + frame_max)
    for _ in range(CASES):
        channel = _channel(rng)
        ex, rk = rand_shortstr(rng), rand_shortstr(rng)
        code = rng.choice((312, 313, 0, 65535, rng.randrange(65536)))
        text = rng.choice(("NO_ROUTE", "NO_CONSUMERS", "", rand_shortstr(rng)))
        body = rand_body(rng, frame_max)
        header = pamqp_header.ContentHeader(0, len(body), rand_properties(rng)).marshal()
        expected = (pamqp_frame.marshal(Return(reply_code=code, reply_text=text, exchange=ex,
                                               routing_key=rk), channel)
                    + content_frames(channel, header, body, frame_max))
        out: list = []
        fastpath.write_return(out, channel, code, text, ss(ex) + ss(rk), header, body,
                              frame_max)
        got = b"".join(out)
        assert got == expected
        _check_framing(got, frame_max, channel, len(body))


@pytest.mark.parametrize("frame_max", FRAME_MAXES)
@pytest.mark.parametrize("extra", [None, 0, -1, 1, "2x", "2x+1", "3x-1", "5x+7"])
def test_content_split_at_frame_boundaries(frame_max, extra):
    """Zero-length bodies send no body frame; exactly frame_max-8 is one frame; one byte more
    is two; longer bodies are split into full frames plus a remainder."""
    chunk = frame_max - 8
    size = {None: 0, 0: chunk, -1: chunk - 1, 1: chunk + 1, "2x": 2 * chunk,
            "2x+1": 2 * chunk + 1, "3x-1": 3 * chunk - 1, "5x+7": 5 * chunk + 7}[extra]
    body = (_BLOB * 3)[:size]
    header = pamqp_header.ContentHeader(0, size, C.Basic.Properties(delivery_mode=2)).marshal()
    route = ss("amq.direct") + ss("key")
    expected_content = content_frames(7, header, body, frame_max)
    for write, args, ref in (
        (fastpath.write_deliver, (7, ss("ctag"), 1, False, route),
         Deliver(consumer_tag="ctag", delivery_tag=1, redelivered=False, exchange="amq.direct",
                 routing_key="key")),
        (fastpath.write_get_ok, (7, 1, True, route, 3),
         GetOk(delivery_tag=1, redelivered=True, exchange="amq.direct", routing_key="key",
               message_count=3)),
        (fastpath.write_return, (7, 312, "NO_ROUTE", route),
         Return(reply_code=312, reply_text="NO_ROUTE", exchange="amq.direct",
                routing_key="key")),
    ):
        out: list = []
        write(out, *args, header, body, frame_max)
        got = b"".join(out)
        assert got == pamqp_frame.marshal(ref, 7) + expected_content
        _check_framing(got, frame_max, 7, size)
        # and a pamqp client reading the stream reassembles the body
        pos, parts = 0, []
        while pos < len(got):
            used, _, frame = pamqp_frame.unmarshal(got[pos:])
            pos += used
            if isinstance(frame, pamqp_body.ContentBody):
                parts.append(frame.value)
        assert b"".join(parts) == body


def test_write_functions_reemit_header_verbatim():
    """The header payload is never re-encoded: even a non-canonical one comes back as is."""
    odd_header = struct.pack(">HHQH", 60, 0, 3, 0x0001) + struct.pack(">H", 0)  # flag continuation
    out: list = []
    fastpath.write_deliver(out, 1, ss("t"), 1, False, ss("") + ss("q"), odd_header, b"abc", 4096)
    frames = frames_of(b"".join(out))
    assert frames[1] == (2, 1, len(odd_header))
    assert odd_header in b"".join(out)


# -- publisher-confirm Ack / Nack ---------------------------------------------------------------
def test_encode_ack_matches_pamqp():
    rng = random.Random(SEED + 40)
    for _ in range(CASES):
        channel = _channel(rng)
        tag, multiple = rand_tag(rng), rng.random() < 0.5
        assert fastpath.encode_ack(channel, tag, multiple) == pamqp_frame.marshal(
            C.Basic.Ack(delivery_tag=signed64(tag), multiple=multiple), channel)
        requeue = rng.random() < 0.5
        assert fastpath.encode_ack(channel, tag, multiple, fastpath.NACK, requeue) == \
            pamqp_frame.marshal(C.Basic.Nack(delivery_tag=signed64(tag), multiple=multiple,
                                             requeue=requeue), channel)


@pytest.mark.parametrize("tag", TAG_EDGES)
@pytest.mark.parametrize("multiple", [False, True])
@pytest.mark.parametrize("requeue", [False, True])
def test_encode_ack_edges(tag, multiple, requeue):
    for channel in (0, 1, 65535):
        assert fastpath.encode_ack(channel, tag, multiple) == pamqp_frame.marshal(
            C.Basic.Ack(delivery_tag=signed64(tag), multiple=multiple), channel)
        assert fastpath.encode_ack(channel, tag, multiple, fastpath.NACK, requeue) == \
            pamqp_frame.marshal(C.Basic.Nack(delivery_tag=signed64(tag), multiple=multiple,
                                             requeue=requeue), channel)


def test_fast_encoders_round_trip_through_fast_decoders():
    """What the broker writes for confirms decodes with its own inbound decoder."""
    rng = random.Random(SEED + 41)
    for _ in range(500):
        tag, multiple, requeue = rand_tag(rng), rng.random() < 0.5, rng.random() < 0.5
        frame = fastpath.encode_ack(1, tag, multiple, fastpath.NACK, requeue)
        got_tag, bits = fastpath.decode_ack(frame[7:-1])
        assert got_tag == tag
        assert _semantics(120, bits) == {"multiple": multiple, "requeue": requeue}
