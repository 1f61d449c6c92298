"""AMQP 0-9-1 wire pieces the fuzzer builds by hand, because it must be able to get them wrong:
frames, method arguments from pamqp's schema (with lengths that may lie), field tables (with
unknown type codes, wrong sizes, deep nesting), content headers; plus the framing model that
says how many bytes a broker still waits for, and a small reader for the broker's replies."""
import struct

from pamqp import commands as C

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
FRAME_MAX = 131072          # what amqpd (and RabbitMQ) propose in connection.tune

_head = struct.Struct(">BHI")
_ids = struct.Struct(">HH")
pack_head = _head.pack
unpack_head = _head.unpack_from


def frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return _head.pack(ftype, channel, len(payload)) + payload + b"\xce"


def method_frame(channel: int, class_id: int, method_id: int, args: bytes = b"") -> bytes:
    return frame(FRAME_METHOD, channel, _ids.pack(class_id, method_id) + args)


def heartbeat(channel: int = 0) -> bytes:
    return frame(FRAME_HEARTBEAT, channel, b"")


# -- method schema (from pamqp: argument names and AMQP types, in wire order) -----------------
def _schema() -> dict:
    out = {}
    for index, cls in C.INDEX_MAPPING.items():
        out[cls.name] = (index >> 16, index & 0xFFFF,
                         tuple((a, cls.amqp_type(a)) for a in cls.attributes()))
    return out


SCHEMA = _schema()          # "Queue.Declare" -> (50, 10, (("ticket", "short"), ...))
NAMES = {(c, m): name for name, (c, m, _a) in SCHEMA.items()}


def method_name(payload: bytes) -> str:
    if len(payload) < 4:
        return "short-method"
    ids = _ids.unpack_from(payload)
    return NAMES.get(ids, f"{ids[0]}.{ids[1]}")


# -- scalar encoders ----------------------------------------------------------------------------
def octet(v: int) -> bytes:
    return struct.pack(">B", v & 0xFF)


def short(v: int) -> bytes:
    return struct.pack(">H", v & 0xFFFF)


def long_(v: int) -> bytes:
    return struct.pack(">I", v & 0xFFFFFFFF)


def longlong(v: int) -> bytes:
    return struct.pack(">Q", v & 0xFFFFFFFFFFFFFFFF)


def shortstr(v: bytes, declared: int | None = None) -> bytes:
    """A short string; ``declared`` makes the length octet lie."""
    return octet(len(v) if declared is None else declared) + v


def longstr(v: bytes, declared: int | None = None) -> bytes:
    return long_(len(v) if declared is None else declared) + v


def as_bytes(v) -> bytes:
    return v.encode() if isinstance(v, str) else bytes(v)


# -- field tables -------------------------------------------------------------------------------
class Raw:
    """A field value given as its type code and encoded bytes, exactly as they go on the wire
    (the generator's way to write unknown type codes, lying sizes and the like)."""
    __slots__ = ("code", "data")

    def __init__(self, code: bytes, data: bytes):
        self.code, self.data = code, data


class Typed:
    """A value with an explicit RabbitMQ field type code (b B s u I i l f d D T ...)."""
    __slots__ = ("code", "value")

    def __init__(self, code: str, value):
        self.code, self.value = code, value


class Table:
    """Entries (key, value) in order (duplicates allowed); ``declared`` makes the size lie."""
    __slots__ = ("entries", "declared")

    def __init__(self, entries, declared: int | None = None):
        self.entries = list(entries.items()) if isinstance(entries, dict) else list(entries)
        self.declared = declared


class Array:
    __slots__ = ("items", "declared")

    def __init__(self, items, declared: int | None = None):
        self.items, self.declared = list(items), declared


_fixed = {"b": ">b", "B": ">B", "s": ">h", "u": ">H", "I": ">i", "i": ">I", "l": ">q",
          "f": ">f", "d": ">d", "T": ">Q"}


def field_value(v) -> bytes:
    """Type code + encoding of one field value (RabbitMQ's type codes)."""
    if isinstance(v, Raw):
        return v.code + v.data
    if isinstance(v, Typed):
        code = v.code
        if code in _fixed:
            fmt = _fixed[code]
            try:
                return code.encode() + struct.pack(fmt, v.value)
            except (struct.error, OverflowError):
                return code.encode() + struct.pack(fmt, 0)
        if code == "D":
            scale, value = v.value
            return b"D" + struct.pack(">Bi", scale & 0xFF, value)
        if code == "x":
            return b"x" + longstr(as_bytes(v.value))
        if code == "t":
            return b"t" + octet(1 if v.value else 0)
        if code == "V":
            return b"V"
        raise ValueError(code)
    if v is None:
        return b"V"
    if isinstance(v, bool):
        return b"t" + octet(int(v))
    if isinstance(v, int):
        if -2 ** 31 <= v < 2 ** 31:
            return b"I" + struct.pack(">i", v)
        return b"l" + struct.pack(">q", max(-2 ** 63, min(2 ** 63 - 1, v)))
    if isinstance(v, float):
        return b"d" + struct.pack(">d", v)
    if isinstance(v, (str, bytes, bytearray)):
        return b"S" + longstr(as_bytes(v))
    if isinstance(v, (Table, dict)):
        return b"F" + table(v)
    if isinstance(v, (Array, list, tuple)):
        return b"A" + array(v)
    raise TypeError(type(v))


def table(t) -> bytes:
    if isinstance(t, dict):
        t = Table(t)
    body = b"".join(shortstr(as_bytes(k)) + field_value(v) for k, v in t.entries)
    return long_(len(body) if t.declared is None else t.declared) + body


def array(a) -> bytes:
    if not isinstance(a, Array):
        a = Array(a)
    body = b"".join(field_value(v) for v in a.items)
    return long_(len(body) if a.declared is None else a.declared) + body


# -- method arguments ----------------------------------------------------------------------------
def encode_args(name: str, values: dict) -> bytes:
    """Encode a method's arguments in schema order. A value may be ``Raw`` (its ``data`` is
    used as is, so a string can carry a lying length); missing values get zero defaults."""
    out = []
    bits = -1
    nbit = 0
    for arg, kind in SCHEMA[name][2]:
        v = values.get(arg)
        if kind == "bit":
            if bits < 0:
                bits, nbit = 0, 0
            if v:
                bits |= 1 << nbit
            nbit += 1
            if nbit == 8:
                out.append(octet(bits))
                bits = -1
            continue
        if bits >= 0:
            out.append(octet(bits))
            bits = -1
        if isinstance(v, Raw):
            out.append(v.data)
        elif kind == "shortstr":
            out.append(shortstr(as_bytes(v or b"")))
        elif kind == "longstr":
            out.append(longstr(as_bytes(v or b"")))
        elif kind == "octet":
            out.append(octet(v or 0))
        elif kind == "short":
            out.append(short(v or 0))
        elif kind == "long":
            out.append(long_(v or 0))
        elif kind in ("longlong", "timestamp"):
            out.append(longlong(v or 0))
        elif kind == "table":
            out.append(table(v if v is not None else {}))
        else:
            raise ValueError(kind)
    if bits >= 0:
        out.append(octet(bits))
    return b"".join(out)


def method(channel: int, name: str, values: dict | None = None) -> bytes:
    class_id, method_id, _args = SCHEMA[name]
    return method_frame(channel, class_id, method_id, encode_args(name, values or {}))


# -- content header ------------------------------------------------------------------------------
# Basic properties in flag order (bit 15 first).
PROPERTIES = (("content_type", "shortstr"), ("content_encoding", "shortstr"),
              ("headers", "table"), ("delivery_mode", "octet"), ("priority", "octet"),
              ("correlation_id", "shortstr"), ("reply_to", "shortstr"),
              ("expiration", "shortstr"), ("message_id", "shortstr"),
              ("timestamp", "longlong"), ("type", "shortstr"), ("user_id", "shortstr"),
              ("app_id", "shortstr"), ("cluster_id", "shortstr"))


def properties(props: dict, flags: int | None = None) -> bytes:
    """Flags + property values; ``flags`` may claim properties that are not there (or hide
    some that are)."""
    out = []
    computed = 0
    for i, (name, kind) in enumerate(PROPERTIES):
        if name not in props:
            continue
        computed |= 1 << (15 - i)
        v = props[name]
        if isinstance(v, Raw):
            out.append(v.data)
        elif kind == "shortstr":
            out.append(shortstr(as_bytes(v)))
        elif kind == "table":
            out.append(table(v))
        elif kind == "octet":
            out.append(octet(v))
        else:
            out.append(longlong(v))
    return short(computed if flags is None else flags) + b"".join(out)


def content_header(channel: int, body_size: int, props: dict | None = None,
                   class_id: int = 60, weight: int = 0, flags: int | None = None) -> bytes:
    payload = short(class_id) + short(weight) + longlong(body_size) + properties(props or {}, flags)
    return frame(FRAME_HEADER, channel, payload)


def body_frames(channel: int, body: bytes, split: int = FRAME_MAX - 8) -> list:
    if not body:
        return []
    return [frame(FRAME_BODY, channel, body[i:i + split]) for i in range(0, len(body), split)]


# -- the framing model -----------------------------------------------------------------------------
def missing(data: bytes, in_header: bool = False, limit: int = FRAME_MAX) -> bytes:
    """Bytes that complete the frame ``data`` ends inside of, as a broker splits frames (so
    that what the fuzzer sends next is read as the next frame and not swallowed): zeros and a
    frame end. Empty when ``data`` ends on a frame boundary, or when the broker must already
    have refused the stream (bad end octet, a frame larger than ``limit``). ``in_header``: the
    stream starts with the 8-byte protocol header; a short one is completed with zeros (which
    makes it one the broker refuses, rather than letting the next frame's bytes complete it)."""
    pos = 8 if in_header else 0
    if in_header and len(data) < 8:
        return bytes(8 - len(data))
    end = len(data)
    while pos < end:
        if end - pos < 7:
            head = data[pos:] + bytes(7 - (end - pos))
            _t, _c, size = unpack_head(head)
            if size > limit:
                return bytes(7 - (end - pos))
            return bytes(7 - (end - pos)) + bytes(size) + b"\xce"
        _t, _c, size = unpack_head(data, pos)
        if size > limit:
            return b""
        stop = pos + 7 + size
        if stop >= end:
            return bytes(stop - end) + b"\xce"
        if data[stop] != FRAME_END:
            return b""
        pos = stop + 1
    return b""


def split_frames(data: bytes) -> list:
    """Split well-framed bytes into frames (for reports); a malformed tail stays one piece."""
    out, pos = [], 0
    while len(data) - pos >= 8:
        _t, _c, size = unpack_head(data, pos)
        stop = pos + 8 + size
        if stop > len(data) or data[stop - 1] != FRAME_END:
            break
        out.append(data[pos:stop])
        pos = stop
    if pos < len(data):
        out.append(data[pos:])
    return out


def describe(chunk: bytes) -> str:
    """Short human description of a frame-ish chunk."""
    if chunk.startswith(b"AMQP"):
        return f"protocol-header {chunk[:8].hex()}"
    if len(chunk) < 7:
        return f"{len(chunk)} bytes {chunk.hex()}"
    ftype, channel, size = unpack_head(chunk)
    payload = chunk[7:7 + size]
    kind = {1: "method", 2: "header", 3: "body", 8: "heartbeat"}.get(ftype, f"type-{ftype}")
    if ftype == FRAME_METHOD:
        kind = method_name(payload)
    intact = len(chunk) == size + 8 and chunk[-1] == FRAME_END
    return f"{kind} ch{channel} size {size}{'' if intact else ' (malformed)'}"
