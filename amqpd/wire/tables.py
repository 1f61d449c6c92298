"""Field-table helpers shared by error texts and argument checks."""
import datetime
import struct
from decimal import Decimal

from pamqp import encode as pamqp_encode


def type_name(value) -> str:
    """The name RabbitMQ gives a field's AMQP type, for a decoded value.

    pamqp does not keep the wire type of an integer, so an integer is named as the common
    clients send it (pika, the Java and Go clients): 32-bit ``signedint`` when it fits, else
    ``long``.
    """
    if value is None:
        return "void"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "signedint" if -(1 << 31) <= value < (1 << 31) else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, Decimal):
        return "decimal"
    if isinstance(value, (str, bytes)):
        return "longstr"
    if isinstance(value, (bytearray, memoryview)):
        return "binary"
    if isinstance(value, datetime.datetime):
        return "timestamp"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


class Long(int):
    """An integer that must go on the wire as a 64-bit signed long ('l'), as RabbitMQ sends
    x-death counts and x-delivery-count (Java clients cast them to Long)."""


def _table_integer(value: int) -> bytes:
    if type(value) is Long:
        return b"l" + struct.pack(">q", value)
    return _pamqp_table_integer(value)


# pamqp picks the smallest integer type for every table value; teach it about Long.
_pamqp_table_integer = pamqp_encode.table_integer
pamqp_encode.table_integer = _table_integer
