"""Content-header properties kept as raw bytes, decoded only when a feature needs them.

The header payload is ``class:u16 weight:u16 body_size:u64 flags:u16... properties``; it is
stored and re-emitted verbatim. The flag bits let us ask "is user_id set?" without decoding.
"""
from pamqp import commands, header as pamqp_header

from ..amqp import errors

CONTENT_TYPE = 1 << 15
CONTENT_ENCODING = 1 << 14
HEADERS = 1 << 13
DELIVERY_MODE = 1 << 12
PRIORITY = 1 << 11
CORRELATION_ID = 1 << 10
REPLY_TO = 1 << 9
EXPIRATION = 1 << 8
MESSAGE_ID = 1 << 7
TIMESTAMP = 1 << 6
TYPE = 1 << 5
USER_ID = 1 << 4
APP_ID = 1 << 3
CLUSTER_ID = 1 << 2


def flags(header: bytes) -> int:
    return (header[12] << 8) | header[13]


def decode(header: bytes) -> commands.Basic.Properties:
    content = pamqp_header.ContentHeader()
    try:
        content.unmarshal(header)
    except Exception as exc:  # pamqp raises struct.error, ValueError, KeyError...
        raise errors.FrameError(f"cannot decode content header properties: {exc}") from None
    return content.properties


# Property order and wire kinds: s shortstr, t table, o octet, q u64 timestamp.
_LAYOUT = ((CONTENT_TYPE, "s", "content_type"), (CONTENT_ENCODING, "s", "content_encoding"),
           (HEADERS, "t", "headers"), (DELIVERY_MODE, "o", "delivery_mode"),
           (PRIORITY, "o", "priority"), (CORRELATION_ID, "s", "correlation_id"),
           (REPLY_TO, "s", "reply_to"), (EXPIRATION, "s", "expiration"),
           (MESSAGE_ID, "s", "message_id"), (TIMESTAMP, "q", "timestamp"), (TYPE, "s", "type"),
           (USER_ID, "s", "user_id"), (APP_ID, "s", "app_id"), (CLUSTER_ID, "s", "cluster_id"))


def peek(header: bytes, flag: int):
    """One property's value without decoding the others (walks the raw bytes by their
    lengths); None when absent. Tables and continuation flag words fall back to pamqp."""
    f = flags(header)
    if not f & flag:
        return None
    if f & 1:
        return getattr(decode(header), _name(flag))
    pos = 14
    try:
        for bit, kind, name in _LAYOUT:
            if not f & bit:
                continue
            if bit == flag:
                if kind == "s":
                    n = header[pos]
                    return header[pos + 1:pos + 1 + n].decode()
                if kind == "o":
                    return header[pos]
                return getattr(decode(header), name)
            if kind == "s":
                pos += 1 + header[pos]
            elif kind == "t":
                pos += 4 + int.from_bytes(header[pos:pos + 4], "big")
            elif kind == "o":
                pos += 1
            else:
                pos += 8
    except (IndexError, UnicodeDecodeError):
        raise errors.FrameError("cannot decode content header properties") from None
    return None


def _name(flag: int) -> str:
    return next(name for bit, _kind, name in _LAYOUT if bit == flag)


def delivery_mode(header: bytes) -> int:
    return peek(header, DELIVERY_MODE) or 1


def rewrite(header: bytes, **changes) -> bytes:
    """A new content header with some properties changed (dead-lettering, direct reply-to,
    x-delivery-count). Not on the hot path: decodes and re-encodes with pamqp."""
    content = pamqp_header.ContentHeader()
    content.unmarshal(header)
    props = content.properties
    for name, value in changes.items():
        setattr(props, name, value)
    if props.headers:
        props.headers = _encodable(props.headers)
    return encode(content.body_size, props)


def _encodable(value):
    """pamqp decodes a non-UTF-8 long string as bytes but cannot encode bytes: send it back as
    a byte array."""
    if isinstance(value, dict):
        return {k: _encodable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encodable(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return bytearray(value)
    return value


def encode(body_size: int, properties: commands.Basic.Properties) -> bytes:
    return pamqp_header.ContentHeader(0, body_size, properties).marshal()
