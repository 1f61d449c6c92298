"""The x-message-deduplication exchange (semantics of the rabbitmq-message-deduplication
plugin): a fanout that drops a message whose ``x-deduplication-header`` value it has seen within
``x-cache-ttl`` milliseconds (exchange argument, or the message's own ``x-cache-ttl`` header).
The cache holds at most ``x-cache-size`` entries; the oldest go first when it is full.
"""
from collections import OrderedDict

from ..amqp import errors
from .exchange import FanoutExchange


class DeduplicationExchange(FanoutExchange):
    kind = "x-message-deduplication"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.cache_size = _integer(self.arguments.get("x-cache-size")) or 1
        self.cache_ttl = _integer(self.arguments.get("x-cache-ttl"))
        self.seen: OrderedDict = OrderedDict()     # value -> expiry (monotonic) or None

    @classmethod
    def validate_arguments(cls, label: str, arguments: dict) -> None:
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

    def route(self, message):
        headers = message.headers
        if not headers or "x-deduplication-header" not in headers:
            return self.dests
        key = headers["x-deduplication-header"]
        key = repr(key) if isinstance(key, (dict, list)) else key
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


def _integer(value):
    """The plugin parses integer arguments from numbers or numeric strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (str, bytes)):
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        return int(text) if text.strip().lstrip("-").isdigit() else None
    return None
