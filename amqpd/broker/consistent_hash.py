"""The x-consistent-hash exchange (semantics of RabbitMQ's bundled plugin).

A binding's routing key is its weight (an integer >= 1, as Erlang's list_to_integer reads it).
A message goes to one destination, chosen by hashing its routing key (or the ``hash-header``
header / ``hash-property`` property named by the exchange's arguments). A given key always lands
on the same destination, the spread follows the weights, and removing a destination moves only
the keys it owned.

The plugin gives a binding one bucket per unit of weight and picks a bucket with jump consistent
hashing, so a binding costs O(weight) there. Here a binding is one entry whatever its weight:
weighted rendezvous hashing scores every binding for the message's key (``weight / -ln(u)``,
``u`` a uniform hash of key and binding) and the highest score wins. Binding is O(1) and
memory O(bindings) for any weight a shortstr can spell; routing costs one hash per binding.
"""
import hashlib
import math
import re

from .. import errors
from ..wire import properties
from ..wire.tables import text, type_name
from .exchange import Exchange

HASH_PROPERTIES = {"message_id": properties.MESSAGE_ID,
                   "correlation_id": properties.CORRELATION_ID,
                   "timestamp": properties.TIMESTAMP}
_WEIGHT = re.compile(r"[+-]?[0-9]+")          # Erlang's list_to_integer: sign and ASCII digits
_M64 = (1 << 64) - 1


def _hash(value) -> int:
    """64 well-mixed bits of a key."""
    if not isinstance(value, bytes):
        value = str(value).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(value, digest_size=8).digest(), "big")


def _unit(key: int, salt: int) -> float:
    """A uniform number in (0, 1) for a (key, binding) pair (splitmix64's finaliser)."""
    z = (key ^ salt) + 0x9E3779B97F4A7C15 & _M64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _M64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _M64
    z ^= z >> 31
    return ((z >> 12) + 0.5) / 4503599627370496.0        # 52 bits, never 0 or 1


class ConsistentHashExchange(Exchange):
    kind = "x-consistent-hash"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.members: list = []       # (salt, weight, destination, routing key) per binding
        header = self.arguments.get("hash-header")
        prop = self.arguments.get("hash-property")
        # a header name that is not UTF-8 stays bytes: it matches a header key sent that way
        self.hash_header = bytes(header) if isinstance(header, bytearray) else header
        self.hash_flag = HASH_PROPERTIES.get(text(prop)) if prop else None

    @classmethod
    def validate_arguments(cls, label: str, arguments: dict, types=None) -> None:
        super().validate_arguments(label, arguments)
        if "hash-header" in arguments and "hash-property" in arguments:
            raise errors.PreconditionFailed(
                "hash-header and hash-property are mutually exclusive")
        for arg in ("hash-header", "hash-property"):
            value = arguments.get(arg)
            if arg in arguments and not isinstance(value, (str, bytes)):
                raise errors.PreconditionFailed(
                    f"invalid type '{type_name(value)}' for arg '{arg}' in {label}")
        prop = arguments.get("hash-property")
        if prop is not None:
            prop = text(prop)
            if prop not in HASH_PROPERTIES:
                raise errors.PreconditionFailed(f"Unsupported property: {prop}")

    def validate_binding(self, key: str, args) -> None:
        if not _WEIGHT.fullmatch(key):
            raise errors.PreconditionFailed(
                f"The binding key must be an integer: {_binary(key)}")
        if int(key) < 1:
            raise errors.PreconditionFailed("The binding key must be greater than 0")

    def _index(self, dest, key, args):
        salt = _hash(f"{type(dest).__name__}:{dest.name}:{key}")
        self.members.append((salt, float(int(key)), dest, key))

    def _unindex(self, dest, key, args):
        for i, member in enumerate(self.members):
            if member[2] is dest and member[3] == key:
                del self.members[i]
                return

    def _key(self, message):
        if self.hash_header is not None:
            return (message.headers or {}).get(self.hash_header)
        if self.hash_flag is not None:
            return properties.peek(message.header, self.hash_flag)
        return message.routing_key

    def route(self, message):
        if not self.members:
            return ()
        key = self._key(message)
        if key is None:
            return ()          # nothing to hash on: not routed (as the plugin)
        k = _hash(key)
        best, best_cost = None, math.inf
        log = math.log
        for salt, weight, dest, _key in self.members:
            cost = -log(_unit(k, salt)) / weight     # the lowest cost is the highest score
            if cost < best_cost:
                best, best_cost = dest, cost
        return (best,)


def _binary(key: str) -> str:
    """The key as Erlang's ~p prints a binary: its bytes as text when printable (Latin-1),
    else as a list of numbers."""
    raw = key.encode()
    if all(32 <= b <= 126 or b >= 160 for b in raw):
        return '<<"' + key.replace("\\", "\\\\").replace('"', '\\"') + '">>'
    return "<<" + ",".join(map(str, raw)) + ">>"
