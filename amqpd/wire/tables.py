"""Field-table helpers shared by error texts and argument checks."""
import datetime
from decimal import Decimal


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
