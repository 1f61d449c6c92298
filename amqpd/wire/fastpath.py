"""Hand-written codec for the frames on the publish -> deliver -> ack path.

pamqp's generic marshalling costs tens of microseconds per message; these functions do the same
work with one ``struct`` call each. ``tests/unit/test_fastpath.py`` proves them byte-identical to
pamqp on a generated corpus. Everything else goes through pamqp.

Conventions: a method *payload* starts with class_id:u16 method_id:u16. ``route`` is the raw
``exchange shortstr + routing_key shortstr`` slice of a Basic.Publish, which Deliver, Get-Ok and
Return all end with, so it is stored once and re-emitted verbatim.
"""
import struct

from .. import errors
from .framing import FRAME_BODY, FRAME_END_BYTE, FRAME_HEADER, FRAME_METHOD

_u8 = struct.Struct(">B")
_method_head = struct.Struct(">BHIHH")      # frame type, channel, size, class, method
_frame_head = struct.Struct(">BHI")
_tag_bits = struct.Struct(">QB")
_deliver_tail = struct.Struct(">QB")
_getok_tail = struct.Struct(">I")
_return_head = struct.Struct(">HB")
_header_peek = struct.Struct(">HHQ")

pack_method_head = _method_head.pack
pack_frame_head = _frame_head.pack
# a frame's end octet followed by the next frame's head (type, channel, size): one pack
_pack_end_head = struct.Struct(">BBHI").pack

BASIC = 60
PUBLISH, RETURN, DELIVER, GET_OK, ACK, REJECT, NACK = 40, 50, 60, 71, 80, 90, 120


def _syntax(what: str):
    # RabbitMQ answers undecodable method arguments with 501 FRAME_ERROR "cannot decode".
    return errors.FrameError(f"cannot decode {what} arguments")


def decode_publish(payload: bytes):
    """Basic.Publish -> (exchange, routing_key, route_bytes, mandatory, immediate)."""
    try:
        n = payload[6]
        rk_at = 7 + n
        exchange = payload[7:rk_at].decode()
        m = payload[rk_at]
        bits_at = rk_at + 1 + m
        routing_key = payload[rk_at + 1:bits_at].decode()
        bits = payload[bits_at]
    except (IndexError, UnicodeDecodeError):
        raise _syntax("basic.publish") from None
    if len(payload) != bits_at + 1:
        raise _syntax("basic.publish")
    return exchange, routing_key, payload[6:bits_at], bool(bits & 1), bool(bits & 2)


def peek_content_header(payload: bytes):
    """Content header payload -> (class_id, weight, body_size). The payload is kept raw."""
    if len(payload) < 14:
        raise errors.FrameError("content header too short")
    return _header_peek.unpack_from(payload, 0)


def decode_ack(payload: bytes):
    """Basic.Ack / Basic.Nack / Basic.Reject -> (delivery_tag, bits).

    bits: ack -> multiple; reject -> requeue; nack -> multiple | requeue << 1.
    """
    if len(payload) != 13:
        raise _syntax("acknowledgement")
    return _tag_bits.unpack_from(payload, 4)


def shortstr(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise errors.SyntaxError_("short string longer than 255 bytes")
    return _u8.pack(len(raw)) + raw


def route_bytes(exchange: str, routing_key: str) -> bytes:
    return shortstr(exchange) + shortstr(routing_key)


def _content(out: list, channel: int, header: bytes, body: bytes, frame_max: int) -> None:
    out.append(pack_frame_head(FRAME_HEADER, channel, len(header)))
    out.append(header)
    out.append(FRAME_END_BYTE)
    size = len(body)
    if not size:
        return
    chunk = frame_max - 8
    if size <= chunk:
        out.append(pack_frame_head(FRAME_BODY, channel, size))
        out.append(body)
        out.append(FRAME_END_BYTE)
        return
    view = memoryview(body)
    for start in range(0, size, chunk):
        piece = view[start:start + chunk]
        out.append(pack_frame_head(FRAME_BODY, channel, len(piece)))
        out.append(bytes(piece))
        out.append(FRAME_END_BYTE)


def write_deliver(out: list, channel: int, ctag: bytes, delivery_tag: int, redelivered: bool,
                  route: bytes, header: bytes, body: bytes, frame_max: int) -> None:
    """Basic.Deliver + content. ``ctag`` is the consumer tag already encoded as a shortstr."""
    size = len(body)
    if 0 < size <= frame_max - 8:       # the common case, per delivery: one list extension
        out += (pack_method_head(FRAME_METHOD, channel, 13 + len(ctag) + len(route), BASIC,
                                 DELIVER),
                ctag, _deliver_tail.pack(delivery_tag, redelivered), route,
                _pack_end_head(0xCE, FRAME_HEADER, channel, len(header)), header,
                _pack_end_head(0xCE, FRAME_BODY, channel, size), body, FRAME_END_BYTE)
        return
    out.append(pack_method_head(FRAME_METHOD, channel, 13 + len(ctag) + len(route), BASIC, DELIVER))
    out.append(ctag)
    out.append(_deliver_tail.pack(delivery_tag, redelivered))
    out.append(route)
    out.append(FRAME_END_BYTE)
    _content(out, channel, header, body, frame_max)


def write_get_ok(out: list, channel: int, delivery_tag: int, redelivered: bool, route: bytes,
                 message_count: int, header: bytes, body: bytes, frame_max: int) -> None:
    out.append(pack_method_head(FRAME_METHOD, channel, 17 + len(route), BASIC, GET_OK))
    out.append(_deliver_tail.pack(delivery_tag, redelivered))
    out.append(route)
    out.append(_getok_tail.pack(message_count))
    out.append(FRAME_END_BYTE)
    _content(out, channel, header, body, frame_max)


def write_return(out: list, channel: int, reply_code: int, reply_text: str, route: bytes,
                 header: bytes, body: bytes, frame_max: int) -> None:
    text = shortstr(reply_text)
    out.append(pack_method_head(FRAME_METHOD, channel, 6 + len(text) + len(route), BASIC, RETURN))
    out.append(struct.pack(">H", reply_code))
    out.append(text)
    out.append(route)
    out.append(FRAME_END_BYTE)
    _content(out, channel, header, body, frame_max)


def encode_ack(channel: int, delivery_tag: int, multiple: bool, method_id: int = ACK,
               requeue: bool = False) -> bytes:
    """Publisher-confirm Basic.Ack / Basic.Nack from the broker."""
    bits = multiple | (requeue << 1)
    return (pack_method_head(FRAME_METHOD, channel, 13, BASIC, method_id)
            + _tag_bits.pack(delivery_tag, bits) + FRAME_END_BYTE)
