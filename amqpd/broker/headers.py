"""Headers-exchange matching with RabbitMQ semantics.

Facts taken from RabbitMQ's rabbit_exchange_type_headers:

* x-match is 'all' (the default when absent), 'any', 'all-with-x' or
  'any-with-x'.  Binding validation rejects any other longstr value and any
  non-longstr type.  At routing time an unrecognised value counts as 'all'
  (RabbitMQ keeps this for bindings created before validation existed).
* The 'x-match' binding key itself never takes part in matching.  Other
  binding keys starting with 'x-' are ignored by 'all'/'any' and take part
  in the '-with-x' modes.
* 'all' with no remaining keys matches every message; 'any' with no
  remaining keys matches none.
* A void binding value means "header present, any value".
* RabbitMQ compares values with Erlang '==', ignoring the AMQP type tag at
  the top level.  Consequences mirrored here: longstr and byte-array are both
  binaries so str/bytes/bytearray with the same UTF-8 bytes are equal;
  booleans are atoms so True != 1; integers and floats compare numerically
  so 1 == 1.0; decimals are {Scale, Mantissa} tuples so Decimal("1.0") !=
  Decimal("1") and a decimal never equals an int or float.

Deliberate deviations, where following Erlang term order would surprise more
than help: a timestamp only equals another timestamp (RabbitMQ would equal
it to an integer of the same epoch seconds), and nested tables compare
independently of key order (RabbitMQ compares nested tables as ordered,
typed lists).
"""

from __future__ import annotations

import datetime as _dt
from decimal import Decimal
from typing import Any
from ..wire.erlang import float_text
from ..wire.tables import type_name

__all__ = ["X_MATCH_MODES", "validate_binding_args", "headers_match", "values_equal"]

X_MATCH_MODES = frozenset({"all", "any", "all-with-x", "any-with-x"})

_MISSING = object()
_BYTES_LIKE = (bytes, bytearray, memoryview)
_STRINGISH = (str, bytes, bytearray, memoryview)
_UTC = _dt.timezone.utc


# --------------------------------------------------------------------------
# Binding validation


def validate_binding_args(args: dict | None) -> str | None:
    """Return None if the binding arguments are acceptable, else the text
    RabbitMQ puts after "PRECONDITION_FAILED - " in its 406 reply."""
    if not args:
        return None
    value = args.get("x-match", _MISSING)
    if value is _MISSING:
        # RabbitMQ allows omitting x-match; it then means 'all'.
        return None
    # pamqp hands over a non-UTF-8 longstr as bytes, so bytes is still the
    # longstr type; bytearray is what pamqp decodes the 'x' byte-array type
    # to, which RabbitMQ rejects as the wrong type.
    if isinstance(value, (str, bytes)):
        if _mode_name(value) in X_MATCH_MODES:
            return None
        return (
            f"Invalid x-match field value {_erl_term(value)}; "
            "expected all, any, all-with-x, or any-with-x"
        )
    return (
        f"Invalid x-match field type {type_name(value)} "
        f"(value {_erl_term(value)}); expected longstr"
    )


def _mode_name(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


# --------------------------------------------------------------------------
# Matching


def headers_match(args: dict | None, headers: dict | None) -> bool:
    """True if a message with `headers` is routed by a binding with `args`."""
    if not args:
        return True  # implicit 'all' over no keys
    mode = args.get("x-match")
    if mode is not None and type(mode) is not str:
        mode = _mode_name(mode)
    if mode == "any":
        want_all, with_x = False, False
    elif mode == "any-with-x":
        want_all, with_x = False, True
    elif mode == "all-with-x":
        want_all, with_x = True, True
    else:
        want_all, with_x = True, False
    if headers is None:
        headers = {}

    for key, expected in args.items():
        if key == "x-match":
            continue
        if not with_x and _is_x_key(key):
            continue
        actual = _lookup(headers, key)
        if actual is _MISSING:
            ok = False
        elif expected is None:
            ok = True
        else:
            ok = values_equal(expected, actual)
        if ok:
            if not want_all:
                return True
        elif want_all:
            return False
    return want_all


def _is_x_key(key: Any) -> bool:
    if isinstance(key, str):
        return key.startswith("x-")
    if isinstance(key, _BYTES_LIKE):
        return bytes(key[:2]) == b"x-"
    return False


def _lookup(table: dict, key: Any) -> Any:
    value = table.get(key, _MISSING)
    if value is not _MISSING:
        return value
    # On the wire keys are just bytes; a decoder may surface the same key as
    # str on one side and bytes on the other.
    if isinstance(key, str):
        try:
            return table.get(key.encode("utf-8"), _MISSING)
        except UnicodeEncodeError:
            return _MISSING
    if isinstance(key, _BYTES_LIKE):
        try:
            return table.get(bytes(key).decode("utf-8"), _MISSING)
        except UnicodeDecodeError:
            return _MISSING
    return _MISSING


def values_equal(a: Any, b: Any) -> bool:
    """Compare two decoded field values the way RabbitMQ would."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is bool and type(b) is bool and a == b
    if isinstance(a, _STRINGISH):
        if not isinstance(b, _STRINGISH):
            return False
        if type(a) is str and type(b) is str:
            return a == b
        ab, bb = _as_bytes(a), _as_bytes(b)
        return ab is not None and ab == bb
    if isinstance(a, (int, float)):
        return isinstance(b, (int, float)) and a == b
    if isinstance(a, Decimal):
        return isinstance(b, Decimal) and _decimal_key(a) == _decimal_key(b)
    if isinstance(a, _dt.datetime):
        return isinstance(b, _dt.datetime) and _aware(a) == _aware(b)
    if isinstance(a, dict):
        if not isinstance(b, dict) or len(a) != len(b):
            return False
        for key, av in a.items():
            bv = _lookup(b, key)
            if bv is _MISSING or not values_equal(av, bv):
                return False
        return True
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return False
        return all(values_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _as_bytes(v: Any) -> bytes | None:
    if isinstance(v, str):
        try:
            return v.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates can't be on the wire
            return None
    return bytes(v)


def _decimal_key(d: Decimal) -> tuple:
    # The wire form is (scale, mantissa) and RabbitMQ compares that tuple,
    # so 1.0 (scale 1, mantissa 10) differs from 1 (scale 0, mantissa 1).
    # This mirrors how pamqp encodes a Decimal.
    exponent = d.as_tuple().exponent
    if not isinstance(exponent, int):  # NaN/Infinity never come off the wire
        return ("special", str(d))
    if exponent > 0:
        return (0, int(d))
    return (-exponent, int(d.scaleb(-exponent)))


def _aware(t: _dt.datetime) -> _dt.datetime:
    # pamqp decodes timestamps as UTC-aware and encodes naive ones as UTC;
    # aware and naive datetimes never compare equal in Python.
    return t.replace(tzinfo=_UTC) if t.tzinfo is None else t


# --------------------------------------------------------------------------
# Erlang-style rendering for error texts (approximates io_lib "~tp")


_ERL_ESCAPES = {
    '"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
    "\v": "\\v", "\b": "\\b", "\f": "\\f", "\x1b": "\\e",
}


def _erl_printable(s: str, unicode: bool) -> bool:
    for ch in s:
        c = ord(ch)
        if ch in _ERL_ESCAPES or 32 <= c <= 126:
            continue
        if 160 <= c <= 255 or (unicode and c > 255 and ch.isprintable()):
            continue
        return False
    return True


def _erl_binary(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and _erl_printable(text, unicode=True):
        body = "".join(_ERL_ESCAPES.get(ch, ch) for ch in text)
        suffix = "" if text.isascii() else "/utf8"
        return f'<<"{body}"{suffix}>>'
    latin = raw.decode("latin-1")
    if _erl_printable(latin, unicode=False):
        return '<<"' + "".join(_ERL_ESCAPES.get(ch, ch) for ch in latin) + '">>'
    return "<<" + ",".join(str(b) for b in raw) + ">>"


def _erl_term(v: Any) -> str:
    if v is None:
        return "undefined"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return float_text(float(v))
    if isinstance(v, str):
        return _erl_binary(v.encode("utf-8", "surrogatepass"))
    if isinstance(v, _BYTES_LIKE):
        return _erl_binary(bytes(v))
    if isinstance(v, Decimal):
        key = _decimal_key(v)
        return "{%s,%s}" % key if isinstance(key[0], int) else str(v)
    if isinstance(v, _dt.datetime):
        return str(int(_aware(v).timestamp()))
    if isinstance(v, dict):
        items = (
            "{%s,%s,%s}" % (_erl_term(k), type_name(x), _erl_term(x))
            for k, x in v.items()
        )
        return "[" + ",".join(items) + "]"
    if isinstance(v, (list, tuple)):
        items = ("{%s,%s}" % (type_name(x), _erl_term(x)) for x in v)
        return "[" + ",".join(items) + "]"
    return repr(v)
