"""Field values printed the way RabbitMQ's error texts print them (Erlang's ``~tp``), so an
inequivalence or type error reads the same from amqpd: ``'1.0e3'``, ``{1,15}``,
``[{<<"k">>,longstr,<<"v">>}]``."""
import datetime
from decimal import Decimal

from .tables import text, type_name


def float_text(value: float) -> str:
    """Erlang's shortest round-trip float printing (io_lib_format:fwrite_g, OTP 25): the same
    digits as Python's repr, written plainly unless scientific notation is shorter, and always
    scientific for integral values of 2**53 and more. 1000.0 -> '1.0e3', 100.0 -> '100.0'."""
    if value != value or value in (float("inf"), float("-inf")):
        return repr(value)              # never on the wire from RabbitMQ's own encoder
    if value == 0:
        return "-0.0" if str(value).startswith("-") else "0.0"
    sign = "-" if value < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    if fraction == "0":
        fraction = ""
    all_digits = whole + fraction
    digits = all_digits.lstrip("0")
    place = len(whole) + int(exponent or 0) - (len(all_digits) - len(digits))
    digits = digits.rstrip("0") or "0"
    n = len(digits)
    scientific = f"{digits[0]}.{digits[1:] or '0'}e{place - 1}"
    if place <= 0:
        plain = "0." + "0" * -place + digits
    elif place < n:
        return sign + digits[:place] + "." + digits[place:]
    elif abs(value) >= 2.0 ** 53:
        return sign + scientific
    else:
        plain = digits + "0" * (place - n) + ".0"
    return sign + (plain if len(plain) <= len(scientific) else scientific)


def value_text(value) -> str:
    """A top-level argument value as RabbitMQ formats it in a reply text: a longstr as its
    text (``~ts``), anything else as an Erlang term (``~tp``)."""
    if isinstance(value, (str, bytes)):
        return text(value)
    return term(value)


def term(value) -> str:
    """A field value as the Erlang term RabbitMQ holds for it, printed with ``~tp``."""
    if value is None:
        return "undefined"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return float_text(value)
    if isinstance(value, Decimal):
        sign, digits, exponent = value.as_tuple()
        if not isinstance(exponent, int):
            return str(value)
        mantissa = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
        scale = 0 if exponent > 0 else -exponent
        if exponent > 0:
            mantissa *= 10 ** exponent
        return f"{{{scale},{mantissa & 0xFFFFFFFF}}}"   # RabbitMQ reads it unsigned
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return str(int(value.timestamp()))
    if isinstance(value, (str, bytes, bytearray)):
        return binary(value.encode() if isinstance(value, str) else bytes(value))
    if isinstance(value, dict):
        return "[" + ",".join(
            f"{{{binary(k.encode() if isinstance(k, str) else bytes(k))},{type_name(v)},"
            f"{term(v)}}}" for k, v in value.items()) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(f"{{{type_name(v)},{term(v)}}}" for v in value) + "]"
    return repr(value)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
            "\b": "\\b", "\f": "\\f", "\x1b": "\\e"}


def _printable(s: str, unicode: bool) -> bool:
    for ch in s:
        c = ord(ch)
        if ch in _ESCAPES or 32 <= c <= 126 or 160 <= c <= 255:
            continue
        if unicode and c > 255 and ch.isprintable():
            continue
        return False
    return True


def binary(raw: bytes) -> str:
    """An Erlang binary as ``~tp`` prints it: ``<<"abc">>``, ``<<"é"/utf8>>`` or ``<<1,2>>``."""
    try:
        decoded = raw.decode()
    except UnicodeDecodeError:
        decoded = None
    if decoded is not None and _printable(decoded, unicode=True):
        body = "".join(_ESCAPES.get(ch, ch) for ch in decoded)
        return f'<<"{body}"{"" if decoded.isascii() else "/utf8"}>>'
    latin = raw.decode("latin-1")
    if _printable(latin, unicode=False):
        return '<<"' + "".join(_ESCAPES.get(ch, ch) for ch in latin) + '">>'
    return "<<" + ",".join(str(b) for b in raw) + ">>"
