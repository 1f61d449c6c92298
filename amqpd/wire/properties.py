"""Content-header properties kept as raw bytes, decoded only when a feature needs them.

The header payload is ``class:u16 weight:u16 body_size:u64 flags:u16 properties``; it is stored
and re-emitted verbatim. The flag bits tell which properties are present without decoding, and
``check`` makes sure at publish that every client can decode what will be delivered.
"""
import struct

from .. import errors
from . import tables

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
UNUSED = 1 << 1        # no property; RabbitMQ and clients ignore it
CONTINUED = 1          # "another flag word follows": no 0-9-1 client reads one correctly

# The flag word is bytes 12-13 of a content-header payload (class, weight, body size before it).
# The hot path tests the expiration bit in its high byte directly: header[FLAGS_HIGH] & EXPIRES.
FLAGS_HIGH = 12
EXPIRES = EXPIRATION >> 8

# Wire kinds: shortstr, table, octet, 64-bit timestamp.
SHORTSTR, TABLE, OCTET, STAMP = "s", "t", "o", "q"
_LAYOUT = ((CONTENT_TYPE, SHORTSTR, "content_type"),
           (CONTENT_ENCODING, SHORTSTR, "content_encoding"), (HEADERS, TABLE, "headers"),
           (DELIVERY_MODE, OCTET, "delivery_mode"), (PRIORITY, OCTET, "priority"),
           (CORRELATION_ID, SHORTSTR, "correlation_id"), (REPLY_TO, SHORTSTR, "reply_to"),
           (EXPIRATION, SHORTSTR, "expiration"), (MESSAGE_ID, SHORTSTR, "message_id"),
           (TIMESTAMP, STAMP, "timestamp"), (TYPE, SHORTSTR, "message_type"),
           (USER_ID, SHORTSTR, "user_id"), (APP_ID, SHORTSTR, "app_id"),
           (CLUSTER_ID, SHORTSTR, "cluster_id"))
_NAMES = {bit: name for bit, _kind, name in _LAYOUT}

# The present properties' kinds for each value of the flag word's high and low byte, in wire
# order, so a walk looks only at what is there.
_HIGH_KINDS = [tuple(kind for bit, kind, _ in _LAYOUT if bit >> 8 & h) for h in range(256)]
_LOW_KINDS = [tuple(kind for bit, kind, _ in _LAYOUT if bit < 256 and bit & lo)
              for lo in range(256)]
# For each flag word naming only fixed-size properties (delivery_mode, priority, timestamp, and
# the unused bit 1), the exact length of a header holding them; 0 for every other flag word.
# The common message is checked with one lookup and a length comparison (channel.py).
_FIXED_BITS = DELIVERY_MODE | PRIORITY | TIMESTAMP | UNUSED
FIXED_SIZE = bytes(0 if f & ~_FIXED_BITS else 14 + bool(f & DELIVERY_MODE)
                   + bool(f & PRIORITY) + 8 * bool(f & TIMESTAMP) for f in range(1 << 16))

_u32 = struct.Struct(">I")
_u64 = struct.Struct(">Q")


class PropertyError(ValueError):
    """A property block no client could decode."""


def flags(header: bytes) -> int:
    return (header[12] << 8) | header[13]


def check(header: bytes) -> None:
    """Raise PropertyError unless the property block is exactly what its flags announce and its
    headers table is one RabbitMQ (and so every client) can read: one walk over the bytes, no
    objects. The caller skips messages whose flags name only fixed-size properties and whose
    length matches them (``FIXED_SIZE``)."""
    low = header[13]
    if low & CONTINUED:
        raise PropertyError("a continued property flag word")
    end = len(header)
    pos = 14
    try:
        for kinds in (_HIGH_KINDS[header[12]], _LOW_KINDS[low]):
            for kind in kinds:
                if kind == SHORTSTR:
                    pos += 1 + header[pos]
                elif kind == OCTET:
                    pos += 1
                elif kind == STAMP:
                    pos += 8
                else:
                    start = pos + 4
                    pos = start + _u32.unpack_from(header, pos)[0]
                    if pos > end:
                        break
                    tables.check_table(header, start, pos)
    except (IndexError, struct.error):
        raise PropertyError("a property runs past the end of the content header") from None
    except tables.TableError as exc:
        raise PropertyError(f"headers: {exc}") from None
    if pos != end:
        raise PropertyError("a property runs past the end of the content header" if pos > end
                            else f"{end - pos} bytes after the last property")


def _spans(header: bytes) -> list:
    """[(bit, kind, start, stop)] of the present properties, from the raw bytes."""
    f = flags(header)
    if f & CONTINUED:
        raise errors.FrameError("cannot decode content header properties")
    spans = []
    pos = 14
    try:
        for bit, kind, _name in _LAYOUT:
            if not f & bit:
                continue
            if kind == SHORTSTR:
                stop = pos + 1 + header[pos]
            elif kind == OCTET:
                stop = pos + 1
            elif kind == STAMP:
                stop = pos + 8
            else:
                stop = pos + 4 + _u32.unpack_from(header, pos)[0]
            spans.append((bit, kind, pos, stop))
            pos = stop
    except (IndexError, struct.error):
        raise errors.FrameError("cannot decode content header properties") from None
    if pos > len(header):
        raise errors.FrameError("cannot decode content header properties")
    return spans


def _value(header: bytes, kind: str, start: int, stop: int):
    if kind == SHORTSTR:
        raw = header[start + 1:stop]
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return raw              # as pika hands it over: the bytes
    if kind == OCTET:
        return header[start]
    if kind == STAMP:
        return tables.timestamp(_u64.unpack_from(header, start)[0])
    try:
        return tables.decode_table(header, start + 4, stop)
    except tables.TableError:
        raise errors.FrameError("cannot decode content header properties") from None


class Properties:
    """The decoded properties (pamqp's attribute names); None where absent. A shortstr that is
    not UTF-8 is bytes; ``headers`` values keep their wire types (wire/tables.py)."""
    __slots__ = tuple(name for _bit, _kind, name in _LAYOUT)

    def __init__(self, **values):
        for name in self.__slots__:
            setattr(self, name, values.get(name))


def decode(header: bytes) -> Properties:
    props = Properties()
    for bit, kind, start, stop in _spans(header):
        setattr(props, _NAMES[bit], _value(header, kind, start, stop))
    return props


def peek(header: bytes, flag: int):
    """One property's value without decoding the others (a walk over the lengths before it);
    None when absent. Per message on some paths (delivery_mode for durable queues, priority,
    expiration), so it stops at the property and makes no list."""
    f = flags(header)
    if not f & flag:
        return None
    if f & CONTINUED:
        raise errors.FrameError("cannot decode content header properties")
    pos = 14
    try:
        for bit, kind, _name in _LAYOUT:
            if not f & bit:
                continue
            if kind == SHORTSTR:
                stop = pos + 1 + header[pos]
            elif kind == OCTET:
                stop = pos + 1
            elif kind == STAMP:
                stop = pos + 8
            else:
                stop = pos + 4 + _u32.unpack_from(header, pos)[0]
            if bit == flag:
                if stop > len(header):
                    break
                return _value(header, kind, pos, stop)
            pos = stop
    except (IndexError, struct.error):
        pass
    raise errors.FrameError("cannot decode content header properties")


def delivery_mode(header: bytes) -> int:
    # Per message routed to a durable queue. The common block: delivery_mode and nothing
    # before it (content type, encoding, headers) — its octet is the first property.
    if header[12] & 0xF0 == 0x10 and not header[13] & CONTINUED and len(header) > 14:
        return header[14] or 1
    return peek(header, DELIVERY_MODE) or 1


def rewrite(header: bytes, **changes) -> bytes:
    """A new content header with some properties changed (None: removed) and every other one
    copied byte for byte (dead-lettering, direct reply-to, x-delivery-count, x-delay). The
    headers table is written with each value's own type (wire/tables.py)."""
    present = {bit: (kind, start, stop) for bit, kind, start, stop in _spans(header)}
    new_flags = flags(header) & UNUSED
    parts = []
    for bit, kind, name in _LAYOUT:
        if name in changes:
            value = changes[name]
            if value is None:
                continue
            parts.append(_encode(kind, value))
        elif bit in present:
            _kind, start, stop = present[bit]
            parts.append(header[start:stop])
        else:
            continue
        new_flags |= bit
    return header[:12] + struct.pack(">H", new_flags) + b"".join(parts)


def _encode(kind: str, value) -> bytes:
    if kind == SHORTSTR:
        raw = value.encode() if isinstance(value, str) else bytes(value)
        if len(raw) > 255:
            raise errors.SyntaxError_("short string longer than 255 bytes")
        return bytes((len(raw),)) + raw
    if kind == TABLE:
        return tables.encode_table(value)
    if kind == OCTET:
        return bytes((value,))
    return tables.timestamp_bytes(value)
