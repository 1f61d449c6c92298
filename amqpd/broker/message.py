"""A published message: raw header and body bytes, shared by every queue it is routed to."""
from ..wire import properties


class Message:
    __slots__ = ("exchange", "routing_key", "raw_route", "header", "body", "_persistent", "_props",
                 "cc")

    def __init__(self, exchange: str, routing_key: str, route: bytes, header: bytes, body: bytes):
        self.exchange = exchange
        self.routing_key = routing_key
        self.raw_route = route      # raw "exchange + routing key" shortstrs, re-emitted verbatim
        self.header = header        # raw content-header payload, re-emitted verbatim
        self.body = body
        self._persistent = None
        self._props = None
        self.cc = None              # extra routing keys from CC/BCC headers (sender_selected.py)

    @property
    def persistent(self) -> bool:
        """delivery_mode=2, peeked from the raw header only when a durable queue asks."""
        if self._persistent is None:
            self._persistent = properties.delivery_mode(self.header) == 2
        return self._persistent

    @property
    def properties(self):
        """Decoded on first use only: most messages never need it."""
        if self._props is None:
            self._props = properties.decode(self.header)
        return self._props

    @property
    def headers(self) -> dict | None:
        if not properties.flags(self.header) & properties.HEADERS:
            return None
        return self.properties.headers


READY, OUT, GONE = 0, 1, 2       # an entry's place: in the ready list, delivered, removed


class Entry:
    """A message's place in one queue. ``seq`` orders the queue, so a requeued message goes
    back to its original position."""

    __slots__ = ("seq", "message", "redelivered", "segment", "expires", "state", "deliveries",
                 "priority")

    def __init__(self, seq: int, message: Message, redelivered: bool = False, segment=None):
        self.seq = seq
        self.message = message
        self.redelivered = redelivered
        self.segment = segment      # the log segment holding it, for persistent messages
        self.expires = None         # monotonic deadline (TTL), or None
        self.state = READY          # tracked only by queues that need it (TTL)
        self.deliveries = 0         # counted only by queues with a delivery limit
        self.priority = 0           # only in priority queues


def from_route(route: bytes, header: bytes, body: bytes, routes: dict | None = None) -> Message:
    """Rebuild a message from its stored raw parts. ``routes`` caches the decoded
    exchange/routing key (and shares the bytes) across the messages of a recovery."""
    parsed = routes.get(route) if routes is not None else None
    if parsed is None:
        n = route[0]
        parsed = (route[1:1 + n].decode(), route[2 + n:].decode(), route)
        if routes is not None:
            routes[route] = parsed
    msg = Message(parsed[0], parsed[1], parsed[2], header, body)
    msg._persistent = True
    return msg


def with_routing_key(message: Message, key: str) -> Message:
    """The same message as routed with another routing key (CC/BCC routing)."""
    copy = Message(message.exchange, key, message.raw_route, message.header, message.body)
    copy._props = message._props
    return copy
