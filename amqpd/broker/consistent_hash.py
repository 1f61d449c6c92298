"""The x-consistent-hash exchange (semantics of RabbitMQ's bundled plugin).

A binding's routing key is its weight. Each binding puts ``weight * POINTS`` points on a hash
ring; a message goes to the destination owning the first point at or after the hash of its
routing key (or of the ``hash-header`` header / ``hash-property`` property named by the
exchange's arguments). A given key always lands on the same destination, the spread follows the
weights, and removing a destination moves only the keys it owned.
"""
import bisect
import hashlib

from ..amqp import errors
from ..wire import properties
from .exchange import Exchange

POINTS = 1000         # ring points per unit of weight: spread within a few % with small weights
HASH_PROPERTIES = {"message_id": properties.MESSAGE_ID,
                   "correlation_id": properties.CORRELATION_ID,
                   "timestamp": properties.TIMESTAMP}


def _hash(value) -> int:
    """64 well-mixed bits (crc32 of similar keys clusters on the ring and skews the spread)."""
    if not isinstance(value, bytes):
        value = str(value).encode()
    return int.from_bytes(hashlib.blake2b(value, digest_size=8).digest(), "big")


class ConsistentHashExchange(Exchange):
    kind = "x-consistent-hash"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.points: list = []        # (hash, binding id, n, destination), sorted
        self.ring: list = []          # the points' hashes, for bisect
        self.owners: list = []        # destination of each point
        header = self.arguments.get("hash-header")
        prop = self.arguments.get("hash-property")
        self.hash_header = header.decode() if isinstance(header, bytes) else header
        prop = prop.decode() if isinstance(prop, bytes) else prop
        self.hash_flag = HASH_PROPERTIES.get(prop) if prop else None

    @classmethod
    def validate_arguments(cls, label: str, arguments: dict) -> None:
        super().validate_arguments(label, arguments)
        if "hash-header" in arguments and "hash-property" in arguments:
            raise errors.PreconditionFailed(
                "hash-header and hash-property are mutually exclusive")
        prop = arguments.get("hash-property")
        if prop is not None:
            prop = prop.decode() if isinstance(prop, bytes) else prop
            if prop not in HASH_PROPERTIES:
                raise errors.PreconditionFailed(f"Unsupported property: {prop}")

    def validate_binding(self, key: str, args) -> None:
        if not key.lstrip("-").isdigit():
            raise errors.PreconditionFailed(
                f'The binding key must be an integer: <<"{key}">>')
        if int(key) < 1:
            raise errors.PreconditionFailed("The binding key must be greater than 0")

    def _points(self, dest, key: str) -> list:
        base = f"{type(dest).__name__}:{dest.name}:{key}:"
        return [(_hash(f"{base}{i}"), base, i) for i in range(int(key) * POINTS)]

    def _index(self, dest, key, args):
        self.points.extend((h, base, i, dest) for h, base, i in self._points(dest, key))
        self._rebuild()

    def _unindex(self, dest, key, args):
        base = f"{type(dest).__name__}:{dest.name}:{key}:"
        self.points = [p for p in self.points if p[1] != base or p[3] is not dest]
        self._rebuild()

    def _rebuild(self) -> None:
        """Bindings change rarely: re-sort the ring (O(n log n)) rather than insert point by
        point."""
        self.points.sort(key=lambda p: p[:3])
        self.ring = [p[0] for p in self.points]
        self.owners = [p[3] for p in self.points]

    def _key(self, message):
        if self.hash_header is not None:
            return (message.headers or {}).get(self.hash_header)
        if self.hash_flag is not None:
            return properties.peek(message.header, self.hash_flag)
        return message.routing_key

    def route(self, message):
        if not self.ring:
            return ()
        key = self._key(message)
        if key is None:
            return ()          # nothing to hash on: not routed (as the plugin)
        i = bisect.bisect_left(self.ring, _hash(key))
        return (self.owners[i if i < len(self.ring) else 0],)
