"""AMQP field tables that keep each value's wire type.

A decoded value carries the type it had on the wire, so writing it back gives the same bytes and
an error text can name the type the client sent, as RabbitMQ does:

==== =================== ===========================================================
tag  RabbitMQ's name     decoded as
==== =================== ===========================================================
t    bool                ``bool`` (any non-zero octet is true; written back as 1)
b B  byte unsignedbyte   ``Byte``, ``UnsignedByte`` (int subclasses, as below)
s u  short unsignedshort ``Short``, ``UnsignedShort``
I i  signedint unsignedint ``SignedInt``, ``UnsignedInt``
l L  long                ``Long``, ``LongL`` (both signed 64-bit, as RabbitMQ reads them)
f d  float double        ``Float`` (a float subclass), plain ``float``
D    decimal             ``decimal.Decimal`` (scale and signed 32-bit mantissa kept)
T    timestamp           ``Timestamp`` (a UTC datetime) or ``FarTimestamp`` beyond year 9999
S    longstr             ``str`` when UTF-8, else ``bytes``
x    binary              ``bytearray``
F A  table array         ``dict`` (keys ``str``, or ``bytes`` when not UTF-8), ``list``
V    void                ``None``
==== =================== ===========================================================

That is exactly the set RabbitMQ's parser accepts; anything else (an unknown tag, a length past
the end of its table, nesting deeper than ``MAX_DEPTH``) is malformed. A key that occurs twice
keeps its first value, the one RabbitMQ's lookups find.

Plain Python values from amqpd itself encode the way common clients send them: ``int`` as a
32-bit ``I`` or else a 64-bit ``l`` (pika, the Java client), ``float`` as a double, ``str`` and
``bytes`` as longstr, ``bytearray`` as binary, ``datetime`` as a timestamp.

Nothing here touches pamqp's global settings.
"""
import datetime
import struct
from decimal import Decimal

MAX_DEPTH = 100          # nested tables/arrays; deeper ones are refused (clients recurse too)
_UTC = datetime.timezone.utc
_MAX_DATETIME = 253402300799     # 9999-12-31T23:59:59Z: the last second a datetime can hold


class TableError(ValueError):
    """Bytes that are not a field table RabbitMQ (and so every client) could read, or a value
    that cannot be written as one."""


# -- typed values ---------------------------------------------------------------------------------
class _Int(int):
    __slots__ = ()
    tag = b""
    amqp_type = ""
    _struct = None

    __str__ = int.__repr__          # prints as the number it is, in texts and f-strings

    def __repr__(self):
        return f"{type(self).__name__}({int(self)})"


def _int_type(name: str, tag: bytes, amqp_type: str, fmt: str, doc: str):
    return type(name, (_Int,), {"__slots__": (), "tag": tag, "amqp_type": amqp_type,
                                "_struct": struct.Struct(fmt), "__doc__": doc})


Byte = _int_type("Byte", b"b", "byte", ">b", "A signed 8-bit integer ('b').")
UnsignedByte = _int_type("UnsignedByte", b"B", "unsignedbyte", ">B",
                         "An unsigned 8-bit integer ('B').")
Short = _int_type("Short", b"s", "short", ">h", "A signed 16-bit integer ('s').")
UnsignedShort = _int_type("UnsignedShort", b"u", "unsignedshort", ">H",
                          "An unsigned 16-bit integer ('u').")
SignedInt = _int_type("SignedInt", b"I", "signedint", ">i", "A signed 32-bit integer ('I').")
UnsignedInt = _int_type("UnsignedInt", b"i", "unsignedint", ">I",
                        "An unsigned 32-bit integer ('i').")
Long = _int_type("Long", b"l", "long", ">q",
                 "A signed 64-bit integer ('l'), as RabbitMQ sends x-death counts and "
                 "x-delivery-count (Java clients cast them to Long).")
LongL = _int_type("LongL", b"L", "long", ">q",
                  "The 'L' tag: also a signed 64-bit long as RabbitMQ and pika read it, kept so "
                  "it is written back with its own tag.")


class FarTimestamp(_Int):
    """A timestamp beyond what a datetime holds (year 9999), e.g. milliseconds sent by a client
    that passed ``Date.now()``: kept as its raw 64-bit value."""
    __slots__ = ()
    tag = b"T"
    amqp_type = "timestamp"
    _struct = struct.Struct(">Q")


class Float(float):
    """A 32-bit float ('f'); plain ``float`` is a double ('d'). A NaN keeps its raw bytes
    (converting a signalling NaN to a double and back would change them)."""
    __slots__ = ("raw",)
    amqp_type = "float"

    __str__ = float.__repr__

    def __repr__(self):
        return f"Float({float(self)!r})"


class Timestamp(datetime.datetime):
    """A 'T' timestamp (whole seconds since the epoch, UTC)."""
    amqp_type = "timestamp"


_TYPE_NAMES = {bool: "bool", float: "double", Decimal: "decimal", str: "longstr",
               bytes: "longstr", bytearray: "binary", dict: "table", list: "array",
               tuple: "array", type(None): "void"}


def type_name(value) -> str:
    """The name RabbitMQ gives a value's AMQP type (its error texts say 'short', 'longstr'...).
    A plain int is named as the common clients send it: ``signedint`` when it fits 32 bits,
    else ``long``."""
    name = getattr(value, "amqp_type", None)
    if name is not None:
        return name
    name = _TYPE_NAMES.get(type(value))
    if name is not None:
        return name
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "signedint" if -(1 << 31) <= value < (1 << 31) else "long"
    if isinstance(value, datetime.datetime):
        return "timestamp"
    for cls, name in _TYPE_NAMES.items():
        if isinstance(value, cls):
            return name
    return type(value).__name__


def text(value) -> str:
    """A longstr (or shortstr) as text: ``bytes`` that are not UTF-8 read as Latin-1, the way
    RabbitMQ's ``~ts`` prints them in its error texts."""
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return bytes(value).decode("latin-1")
    return value


# -- decoding -------------------------------------------------------------------------------------
_u32 = struct.Struct(">I")
_decimal = struct.Struct(">Bi")
_f32 = struct.Struct(">f")
_f64 = struct.Struct(">d")
_u64 = struct.Struct(">Q")
_FIXED = {ord(cls.tag): cls for cls in (Byte, UnsignedByte, Short, UnsignedShort, SignedInt,
                                         UnsignedInt, Long, LongL)}


def decode_table(buf, pos: int = 0, end: int | None = None, depth: int = 0) -> dict:
    """The table whose entries fill ``buf[pos:end]`` (without the 4-byte length in front)."""
    if end is None:
        end = len(buf)
    if depth > MAX_DEPTH:
        raise TableError(f"tables nested deeper than {MAX_DEPTH}")
    table: dict = {}
    while pos < end:
        kend = pos + 1 + buf[pos]
        if kend > end:
            raise TableError("field name runs past the end of its table")
        key = bytes(buf[pos + 1:kend])
        try:
            key = key.decode()
        except UnicodeDecodeError:
            pass
        value, pos = _decode_value(buf, kend, end, depth)
        if key not in table:
            table[key] = value
    return table


def decode_array(buf, pos: int, end: int, depth: int = 0) -> list:
    if depth > MAX_DEPTH:
        raise TableError(f"arrays nested deeper than {MAX_DEPTH}")
    items = []
    while pos < end:
        value, pos = _decode_value(buf, pos, end, depth)
        items.append(value)
    return items


def decode_field_table(buf, pos: int = 0):
    """A length-prefixed table at ``pos`` -> (table, position after it)."""
    if pos + 4 > len(buf):
        raise TableError("table length runs past the end")
    end = pos + 4 + _u32.unpack_from(buf, pos)[0]
    if end > len(buf):
        raise TableError("table runs past the end")
    return decode_table(buf, pos + 4, end), end


def _decode_value(buf, pos: int, end: int, depth: int):
    if pos >= end:
        raise TableError("field value missing")
    tag = buf[pos]
    pos += 1
    cls = _FIXED.get(tag)
    if cls is not None:
        stop = pos + cls._struct.size
        if stop > end:
            raise TableError("field value runs past the end of its table")
        return cls(cls._struct.unpack_from(buf, pos)[0]), stop
    if tag in (0x53, 0x78, 0x46, 0x41):          # S x F A: 4-byte length, then the content
        if pos + 4 > end:
            raise TableError("field length runs past the end of its table")
        start = pos + 4
        stop = start + _u32.unpack_from(buf, pos)[0]
        if stop > end:
            raise TableError("field value runs past the end of its table")
        if tag == 0x53:
            raw = bytes(buf[start:stop])
            try:
                return raw.decode(), stop
            except UnicodeDecodeError:
                return raw, stop
        if tag == 0x78:
            return bytearray(buf[start:stop]), stop
        if tag == 0x46:
            return decode_table(buf, start, stop, depth + 1), stop
        return decode_array(buf, start, stop, depth + 1), stop
    if tag == 0x74:                                # t
        if pos >= end:
            raise TableError("field value runs past the end of its table")
        return buf[pos] != 0, pos + 1
    if tag == 0x56:                                # V
        return None, pos
    if tag == 0x64:                                # d
        if pos + 8 > end:
            raise TableError("field value runs past the end of its table")
        return _f64.unpack_from(buf, pos)[0], pos + 8
    if tag == 0x66:                                # f
        if pos + 4 > end:
            raise TableError("field value runs past the end of its table")
        value = Float(_f32.unpack_from(buf, pos)[0])
        if value != value:
            value.raw = bytes(buf[pos:pos + 4])
        return value, pos + 4
    if tag == 0x54:                                # T
        if pos + 8 > end:
            raise TableError("field value runs past the end of its table")
        return timestamp(_u64.unpack_from(buf, pos)[0]), pos + 8
    if tag == 0x44:                                # D
        if pos + 5 > end:
            raise TableError("field value runs past the end of its table")
        scale, mantissa = _decimal.unpack_from(buf, pos)
        digits = tuple(int(c) for c in str(abs(mantissa)))
        return Decimal((mantissa < 0, digits, -scale)), pos + 5
    raise TableError(f"unknown field type {bytes([tag])!r}")


def timestamp(seconds: int):
    """A 'T' value: a UTC ``Timestamp``, or a ``FarTimestamp`` past year 9999."""
    if seconds > _MAX_DATETIME:
        return FarTimestamp(seconds)
    return Timestamp.fromtimestamp(seconds, _UTC)


# -- validating without decoding --------------------------------------------------------------
# Bytes after the tag, for the fixed-size types; -1: a 4-byte length and that many bytes;
# -2 / -3: a nested table / array. Tags not listed are malformed.
_SIZES = [None] * 256
for _tag, _size in {"t": 1, "b": 1, "B": 1, "s": 2, "u": 2, "I": 4, "i": 4, "l": 8, "L": 8,
                    "f": 4, "d": 8, "D": 5, "T": 8, "V": 0, "S": -1, "x": -1, "F": -2,
                    "A": -3}.items():
    _SIZES[ord(_tag)] = _size


def check_table(buf, pos: int, end: int, depth: int = 0) -> None:
    """Raise TableError unless ``buf[pos:end]`` holds exactly the entries of a valid table: one
    walk over the bytes, no objects made."""
    if depth > MAX_DEPTH:
        raise TableError(f"tables nested deeper than {MAX_DEPTH}")
    sizes = _SIZES
    unpack = _u32.unpack_from
    try:
        while pos < end:
            pos += 1 + buf[pos]                  # the field name
            size = sizes[buf[pos]]               # IndexError: the name ran past the buffer
            if size >= 0:                        # TypeError: an unknown field type (None)
                pos += 1 + size
                continue
            stop = pos + 5 + unpack(buf, pos + 1)[0]
            if stop > end:
                break
            if size == -2:
                check_table(buf, pos + 5, stop, depth + 1)
            elif size == -3:
                check_array(buf, pos + 5, stop, depth + 1)
            pos = stop
    except (IndexError, struct.error):
        raise TableError("field runs past the end of its table") from None
    except TypeError:
        raise TableError(f"unknown field type {bytes([buf[pos]])!r}") from None
    if pos != end:
        raise TableError("field runs past the end of its table")


def check_array(buf, pos: int, end: int, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise TableError(f"arrays nested deeper than {MAX_DEPTH}")
    sizes = _SIZES
    unpack = _u32.unpack_from
    try:
        while pos < end:
            size = sizes[buf[pos]]
            if size >= 0:
                pos += 1 + size
                continue
            stop = pos + 5 + unpack(buf, pos + 1)[0]
            if stop > end:
                break
            if size == -2:
                check_table(buf, pos + 5, stop, depth + 1)
            elif size == -3:
                check_array(buf, pos + 5, stop, depth + 1)
            pos = stop
    except (IndexError, struct.error):
        raise TableError("field runs past the end of its array") from None
    except TypeError:
        raise TableError(f"unknown field type {bytes([buf[pos]])!r}") from None
    if pos != end:
        raise TableError("field runs past the end of its array")


# -- encoding -------------------------------------------------------------------------------------
_i32 = struct.Struct(">i")
_i64 = struct.Struct(">q")


def encode_table(table: dict | None) -> bytes:
    """A field table with its 4-byte length, each value written with its own type."""
    out: list = []
    for key, value in (table or {}).items():
        _put_key(out, key)
        _put_value(out, value, 0)
    data = b"".join(out)
    return _u32.pack(len(data)) + data


def _utf8(value: str) -> bytes:
    """Text as UTF-8; bytes escaped on the way in (surrogateescape) go back as they were."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise TableError(f"cannot write {value!r} as UTF-8") from None


def _put_key(out: list, key) -> None:
    raw = _utf8(key) if isinstance(key, str) else bytes(key)
    if len(raw) > 255:
        raise TableError(f"field name longer than 255 bytes: {raw[:20]!r}...")
    out.append(bytes((len(raw),)))
    out.append(raw)


def _put_value(out: list, value, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise TableError(f"tables nested deeper than {MAX_DEPTH}")
    encoder = _ENCODERS.get(type(value))
    if encoder is None:
        encoder = _encoder_for(value)
    encoder(out, value, depth)


def _put_typed_int(out, value, depth):
    try:
        out.append(value.tag + value._struct.pack(value))
    except struct.error:
        raise TableError(f"{int(value)} does not fit a {value.amqp_type}") from None


def _put_int(out, value, depth):
    if -(1 << 31) <= value < (1 << 31):
        out.append(b"I" + _i32.pack(value))
    elif -(1 << 63) <= value < (1 << 63):
        out.append(b"l" + _i64.pack(value))
    else:
        raise TableError(f"integer {value} does not fit 64 bits")


def _put_bool(out, value, depth):
    out.append(b"t\x01" if value else b"t\x00")


def _put_double(out, value, depth):
    out.append(b"d" + _f64.pack(value))


def _put_float32(out, value, depth):
    raw = getattr(value, "raw", None)
    if raw is None:
        try:
            raw = _f32.pack(value)
        except OverflowError:
            raise TableError(f"{float(value)} does not fit a float") from None
    out.append(b"f" + raw)


def _put_longstr(out, value, depth):
    raw = _utf8(value) if isinstance(value, str) else bytes(value)
    out.append(b"S" + _u32.pack(len(raw)))
    out.append(raw)


def _put_binary(out, value, depth):
    out.append(b"x" + _u32.pack(len(value)))
    out.append(bytes(value))


def _put_table(out, value, depth):
    inner: list = []
    for key, item in value.items():
        _put_key(inner, key)
        _put_value(inner, item, depth + 1)
    data = b"".join(inner)
    out.append(b"F" + _u32.pack(len(data)))
    out.append(data)


def _put_array(out, value, depth):
    inner: list = []
    for item in value:
        _put_value(inner, item, depth + 1)
    data = b"".join(inner)
    out.append(b"A" + _u32.pack(len(data)))
    out.append(data)


def _put_void(out, value, depth):
    out.append(b"V")


def _put_decimal(out, value, depth):
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        raise TableError(f"cannot write {value} as a decimal")
    mantissa = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    scale = -exponent
    if scale < 0:                         # 1E+2: scale the exponent into the mantissa
        mantissa *= 10 ** exponent
        scale = 0
    if scale > 255 or not -(1 << 31) <= mantissa < (1 << 31):
        raise TableError(f"decimal {value} does not fit scale 0-255, 32-bit mantissa")
    out.append(b"D" + _decimal.pack(scale, mantissa))


def _put_timestamp(out, value, depth):
    out.append(b"T" + timestamp_bytes(value))


def timestamp_bytes(value) -> bytes:
    """A datetime (naive: UTC) or a FarTimestamp as the 8 bytes of a 'T' value."""
    if isinstance(value, int):
        seconds = int(value)
    else:
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            value = value.replace(tzinfo=_UTC)
        seconds = int(value.timestamp())
    try:
        return _u64.pack(seconds)
    except struct.error:
        raise TableError(f"timestamp {seconds} does not fit 64 bits unsigned") from None


_ENCODERS = {bool: _put_bool, int: _put_int, float: _put_double, Float: _put_float32,
             str: _put_longstr, bytes: _put_longstr, bytearray: _put_binary, dict: _put_table,
             list: _put_array, tuple: _put_array, type(None): _put_void, Decimal: _put_decimal,
             datetime.datetime: _put_timestamp, Timestamp: _put_timestamp,
             FarTimestamp: _put_timestamp}
_ENCODERS.update({cls: _put_typed_int for cls in _FIXED.values()})


def _encoder_for(value):
    """Subclasses of the types above (rare): the encoder of the nearest known base."""
    for cls in type(value).__mro__[1:]:
        encoder = _ENCODERS.get(cls)
        if encoder is not None:
            return encoder
    raise TableError(f"cannot write a {type(value).__name__} in a field table")
