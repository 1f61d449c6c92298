"""Method frames other than the hot ones (wire/fastpath.py): pamqp's method classes, filled in
by a strict decoder.

pamqp's own unmarshal forgets the wire types of table values, ignores bytes left over after the
last argument and accepts a short string that is not UTF-8; RabbitMQ refuses the last two with
a 501, and names argument types as they were sent. Here every argument is read with bounds
checks, tables keep their types (wire/tables.py), and the arguments must fill the frame exactly.
"""
import struct

from pamqp import commands as C

from .. import errors
from . import tables

_u16 = struct.Struct(">H")
_u32 = struct.Struct(">I")
_u64 = struct.Struct(">Q")
_FIXED = {"octet": struct.Struct(">B"), "short": _u16, "long": _u32, "longlong": _u64}


class Undecodable(Exception):
    """The arguments do not decode; ``utf8`` when the problem is a malformed short string."""

    def __init__(self, utf8: bool = False):
        super().__init__()
        self.utf8 = utf8


def _fields(cls) -> tuple:
    fields = _CACHE.get(cls)
    if fields is None:
        fields = _CACHE[cls] = tuple((name, cls.amqp_type(name)) for name in cls.__slots__)
    return fields


_CACHE: dict = {}


def method_class(payload: bytes):
    """The pamqp class for a method payload's class/method ids, or None."""
    return C.INDEX_MAPPING.get(_u32.unpack_from(payload)[0])


def decode(cls, payload: bytes):
    """A ``cls`` instance from the arguments in ``payload[4:]``; raises Undecodable."""
    method = cls.__new__(cls)
    pos = 4
    end = len(payload)
    bit = 8                       # bits left in the current octet of packed bits
    octet = 0
    try:
        for name, kind in _fields(cls):
            if kind == "bit":
                if bit == 8:
                    if pos >= end:
                        raise Undecodable()
                    octet = payload[pos]
                    pos += 1
                    bit = 0
                setattr(method, name, bool(octet >> bit & 1))
                bit += 1
                continue
            bit = 8
            if kind == "shortstr":
                stop = pos + 1 + payload[pos]
                if stop > end:
                    raise Undecodable()
                try:
                    value = payload[pos + 1:stop].decode()
                except UnicodeDecodeError:
                    raise Undecodable(utf8=True) from None
            elif kind == "table":
                value, stop = tables.decode_field_table(payload, pos)
                if stop > end:
                    raise Undecodable()
            elif kind == "longstr":
                stop = pos + 4 + _u32.unpack_from(payload, pos)[0]
                if stop > end:
                    raise Undecodable()
                value = payload[pos + 4:stop]
                try:
                    value = value.decode()
                except UnicodeDecodeError:
                    pass                     # as pamqp hands it over (SASL responses)
            else:
                unpacker = _FIXED[kind]
                stop = pos + unpacker.size
                if stop > end:
                    raise Undecodable()
                value = unpacker.unpack_from(payload, pos)[0]
            setattr(method, name, value)
            pos = stop
    except (IndexError, struct.error, tables.TableError):
        raise Undecodable() from None
    if pos != end:
        raise Undecodable()          # bytes after the last argument
    return method


def decode_or_raise(payload: bytes, channel: int | None = None):
    """The method in a method frame payload, or the AMQP error RabbitMQ answers with:

    * unknown class/method ids: 503 COMMAND_INVALID;
    * a short string that is not UTF-8: 501 'Malformed UTF-8 in shortstr' (class/method 0, 0,
      except on channel 0);
    * arguments cut short, running past the frame or followed by more bytes, or a table
      RabbitMQ could not read: 501 'cannot decode' with the method's ids on a channel, and on
      channel 0 (the connection's own methods) 541 INTERNAL_ERROR (0, 0), as RabbitMQ's reader
      answers there. ``channel=None``: not known, taken as a channel's.
    """
    if len(payload) < 4:
        raise errors.FrameError("method frame too short for class and method ids")
    class_id, method_id = _u16.unpack_from(payload)[0], _u16.unpack_from(payload, 2)[0]
    cls = method_class(payload)
    if cls is None:
        raise errors.CommandInvalid(f"unknown method {class_id}.{method_id}", class_id,
                                    method_id)
    try:
        return decode(cls, payload)
    except Undecodable as exc:
        if exc.utf8:
            if channel == 0:
                raise errors.FrameError("Malformed UTF-8 in shortstr", class_id,
                                        method_id) from None
            raise errors.FrameError("Malformed UTF-8 in shortstr", 0, 0) from None
        if channel == 0:
            raise errors.InternalError("", 0, 0) from None
        raise errors.FrameError(f"cannot decode {cls.name} arguments", class_id,
                                method_id) from None
