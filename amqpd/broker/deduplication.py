"""The x-message-deduplication exchange (semantics of the rabbitmq-message-deduplication
plugin): a fanout that drops a message whose ``x-deduplication-header`` value it has seen within
``x-cache-ttl`` milliseconds (exchange argument, or the message's own ``x-cache-ttl`` header).
The cache holds at most ``x-cache-size`` entries; the oldest go first when it is full. As in
LavinMQ, the exchange argument ``x-deduplication-header`` may name another header to take the
id from.
"""
import re
from collections import OrderedDict

from .. import errors
from .arguments import DEDUP_HEADER
from .exchange import FanoutExchange
from .queue import dedup_key


class DeduplicationExchange(FanoutExchange):
    kind = "x-message-deduplication"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.cache_size = _integer(self.arguments.get("x-cache-size")) or 1
        self.cache_ttl = _integer(self.arguments.get("x-cache-ttl"))
        self.seen: OrderedDict = OrderedDict()     # value -> expiry (monotonic) or None
        self.header = self.arguments.get(DEDUP_HEADER, DEDUP_HEADER)

    @classmethod
    def validate_arguments(cls, label: str, arguments: dict, types=None) -> None:
        super().validate_arguments(label, arguments)
        size = _integer(arguments.get("x-cache-size"))
        if size is None or size <= 0:
            raise errors.PreconditionFailed(
                "Missing or invalid argument, 'x-cache-size' must be an integer greater than 0")
        if "x-cache-ttl" in arguments:
            ttl = _integer(arguments["x-cache-ttl"])
            if ttl is None or ttl <= 0:
                raise errors.PreconditionFailed(
                    "Invalid argument, 'x-cache-ttl' must be an integer greater than 0")
        persistence = arguments.get("x-cache-persistence", "memory")
        if isinstance(persistence, bytes):
            persistence = persistence.decode(errors="replace")
        if persistence not in ("memory", "disk"):
            raise errors.PreconditionFailed(
                "Invalid argument, 'x-cache-persistence' must be either 'disk' or 'memory'")
        if DEDUP_HEADER in arguments and not isinstance(arguments[DEDUP_HEADER], (str, bytes)):
            raise errors.PreconditionFailed(
                f"Invalid argument, '{DEDUP_HEADER}' must be a string")

    def route(self, message):
        key = dedup_key(message, self.header)
        if key is None:
            return self.dests
        headers = message.headers
        now = self.vhost.broker.clock()
        expiry = self.seen.get(key, False)
        if expiry is not False and (expiry is None or expiry > now):
            return ()                       # a duplicate: not routed
        ttl = _integer(headers["x-cache-ttl"]) if "x-cache-ttl" in headers else self.cache_ttl
        self.seen[key] = now + ttl / 1000.0 if ttl is not None and ttl > 0 else None
        self.seen.move_to_end(key)
        while len(self.seen) > self.cache_size:
            self.seen.popitem(last=False)
        return self.dests


_INTEGER = re.compile(rb"[+-]?[0-9]+")


def _integer(value):
    """The plugin takes integer arguments as numbers or as numeric strings (Elixir's
    Integer.parse: an optional sign and ASCII digits; '--5' or ' 5' are not numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, (str, bytes)):
        raw = value.encode() if isinstance(value, str) else value
        return int(raw) if _INTEGER.fullmatch(raw) else None
    return None
