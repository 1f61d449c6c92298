"""Queue arguments: validation with RabbitMQ's 406 texts, and the parsed options a queue uses.

RabbitMQ validates each x-argument it knows when a queue is declared (rabbit_amqqueue
declare_args) and answers ``PRECONDITION_FAILED - invalid arg 'x-...' for queue 'q' in vhost
'/': <reason>``. Unknown arguments are stored and ignored, as there.

Values keep their wire types (wire/tables.py), so a type error names the type the client sent
('short', 'float', ...). A string argument that is not UTF-8 arrives as bytes: its texts show it
as RabbitMQ's logs do (Latin-1), and an exchange name made of it (dead-letter or alternate
exchange) is kept as text whose undecodable bytes are escaped, so it matches no exchange a
client could declare (those names are UTF-8).
"""
import re

from .. import errors
from ..wire.tables import text as _text, type_name

MAX_TTL = 315_360_000_000        # RabbitMQ's maximum TTL in milliseconds (ten years)
QUEUE_TYPES = ("classic", "quorum")
OVERFLOW = ("drop-head", "reject-publish", "reject-publish-dlx")
DEDUP_HEADER = "x-deduplication-header"   # the header carrying a message's deduplication id


def name_text(value) -> str:
    """A longstr used as a name: str, with the bytes of a non-UTF-8 one escaped (PEP 383), so
    it equals no UTF-8 name and encodes back to the same bytes (``surrogateescape``)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "surrogateescape")
    return value


def _int(value, *, zero_ok: bool = True, maximum: int | None = None):
    if isinstance(value, bool) or not isinstance(value, int):
        return f'"expected integer, got {type_name(value)}"'
    if value < 0:
        return f"{{value_negative,{value}}}"
    if value == 0 and not zero_ok:
        return f"{{value_zero,{value}}}"
    if maximum is not None and value > maximum:
        return (f"{{value_too_large,{value}}}" if maximum == MAX_TTL
                else f"{{max_value_exceeded,{value}}}")
    return None


def _string(value):
    if not isinstance(value, (str, bytes)):
        return f"{{unacceptable_type,{type_name(value)}}}"
    return None


def _bool(value):
    if not isinstance(value, bool):
        return f"{{unacceptable_type,{type_name(value)}}}"
    return None


VALIDATORS = {
    "x-expires": lambda v: _int(v, zero_ok=False, maximum=MAX_TTL),
    "x-message-ttl": lambda v: _int(v, maximum=MAX_TTL),
    "x-dead-letter-exchange": _string,
    "x-dead-letter-routing-key": _string,
    "x-max-length": _int,
    "x-max-length-bytes": _int,
    "x-max-priority": lambda v: _int(v, maximum=255),
    "x-overflow": lambda v: _string(v) or (None if _text(v) in OVERFLOW else "invalid_overflow"),
    "x-single-active-consumer": _bool,
    "x-delivery-limit": _int,
    "x-queue-mode": lambda v: _string(v) or (None if _text(v) in ("default", "lazy")
                                             else f"\"unsupported queue mode '{_text(v)}'\""),
    "x-queue-type": lambda v: _string(v) or (None if _text(v) in QUEUE_TYPES else
                                             f"\"unsupported queue type '{_text(v)}'\""),
    "x-message-deduplication": _bool,
    "x-deduplication-header": _string,
}

# Arguments a quorum queue on a single RabbitMQ node refuses (rabbit_quorum_queue).
QUORUM_UNSUPPORTED = ("x-max-priority", "x-queue-mode", "x-message-deduplication")


def validate(label: str, arguments: dict, durable: bool, exclusive: bool,
             auto_delete: bool) -> None:
    dlx = arguments.get("x-dead-letter-exchange")
    if "x-dead-letter-exchange" in arguments and not isinstance(dlx, (str, bytes)):
        raise errors.PreconditionFailed(
            f"invalid type '{type_name(dlx)}' for arg 'x-dead-letter-exchange' in {label}")
    for key, check in VALIDATORS.items():
        if key in arguments:
            problem = check(arguments[key])
            if problem:
                raise errors.PreconditionFailed(f"invalid arg '{key}' for {label}: {problem}")
    if "x-dead-letter-routing-key" in arguments and "x-dead-letter-exchange" not in arguments:
        raise errors.PreconditionFailed(
            f"invalid arg 'x-dead-letter-routing-key' for {label}: "
            "routing_key_but_no_dlx_defined")
    if _text(arguments.get("x-queue-type", "classic")) != "quorum":
        if "x-delivery-limit" in arguments:     # classic queues have no delivery limit
            raise errors.PreconditionFailed(
                f"invalid arg 'x-delivery-limit' for {label} of queue type rabbit_classic_queue")
    else:
        if not durable:
            raise errors.PreconditionFailed(f"invalid property 'non-durable' for {label}")
        if exclusive:
            raise errors.PreconditionFailed(f"invalid property 'exclusive-owner' for {label}")
        if auto_delete:
            raise errors.PreconditionFailed(f"invalid property 'auto-delete' for {label}")
        for key in QUORUM_UNSUPPORTED:
            if key in arguments:
                raise errors.PreconditionFailed(
                    f"invalid arg '{key}' for {label} of queue type rabbit_quorum_queue")
        overflow = _text(arguments.get("x-overflow", "drop-head"))
        if overflow == "reject-publish-dlx":
            raise errors.PreconditionFailed(
                f"invalid arg 'x-overflow' for {label}: reject-publish-dlx is not supported "
                "by quorum queues")


class QueueOptions:
    """The arguments a queue acts on, parsed once at declaration."""

    __slots__ = ("message_ttl", "expires", "dlx", "dlrk", "max_length", "max_bytes",
                 "overflow", "max_priority", "single_active", "delivery_limit", "quorum",
                 "dedup", "dedup_header")

    def __init__(self, arguments: dict):
        a = arguments
        self.message_ttl = a.get("x-message-ttl")
        self.expires = a.get("x-expires")
        self.dlx = name_text(a["x-dead-letter-exchange"]) if "x-dead-letter-exchange" in a \
            else None
        # A routing key is stored with the message (its route must stay UTF-8 to recover), so
        # one that is not UTF-8 is used as its Latin-1 reading, as RabbitMQ's logs show it.
        self.dlrk = (_text(a["x-dead-letter-routing-key"])
                     if "x-dead-letter-routing-key" in a else None)
        self.max_length = a.get("x-max-length")
        self.max_bytes = a.get("x-max-length-bytes")
        self.overflow = _text(a.get("x-overflow", "drop-head"))
        self.max_priority = a.get("x-max-priority") or None
        self.single_active = bool(a.get("x-single-active-consumer", False))
        self.quorum = _text(a.get("x-queue-type", "classic")) == "quorum"
        self.delivery_limit = a.get("x-delivery-limit") if self.quorum else None
        self.dedup = bool(a.get("x-message-deduplication", False))
        # LavinMQ's queue argument: the header that carries the id (default: the plugin's)
        self.dedup_header = a.get(DEDUP_HEADER, DEDUP_HEADER)


MAX_EXPIRATION = MAX_TTL


_ERLANG_INTEGER = re.compile(rb"[+-]?[0-9]+")


def erlang_integer(raw: bytes):
    """Erlang's string:to_integer on a string's bytes: (value, leftover bytes), or None when it
    does not start with an optional sign and ASCII digits (' 5', '--1' or a superscript two
    do not, although Python's int() would take the latter)."""
    match = _ERLANG_INTEGER.match(raw)
    if match is None:
        return None
    return int(match.group()), raw[match.end():]


def check_expiration(value) -> None:
    """The per-message expiration property, validated at publish as RabbitMQ does (406)."""
    raw = value.encode() if isinstance(value, str) else bytes(value)
    parsed = erlang_integer(raw)
    if parsed is None:
        problem = "no_integer"
    elif parsed[1]:
        problem = f"{{leftover_string,{_erlang_string(parsed[1])}}}"
    elif parsed[0] < 0:
        problem = f"{{value_negative,{parsed[0]}}}"
    elif parsed[0] > MAX_EXPIRATION:
        problem = f"{{value_too_large,{parsed[0]}}}"
    else:
        return
    raise errors.PreconditionFailed(f"invalid expiration '{_text(value)}': {problem}", 60, 40)


def _erlang_string(raw: bytes) -> str:
    """A byte list as Erlang's ~p prints it: a quoted string when printable, else a list."""
    if all(32 <= b <= 126 or 160 <= b <= 255 for b in raw):
        return '"' + raw.decode("latin-1").replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "[" + ",".join(map(str, raw)) + "]"
