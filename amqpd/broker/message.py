"""A published message: raw header and body bytes, shared by every queue it is routed to."""
from ..wire import properties


class Message:
    __slots__ = ("exchange", "routing_key", "route", "header", "body", "persistent", "_props")

    def __init__(self, exchange: str, routing_key: str, route: bytes, header: bytes, body: bytes):
        self.exchange = exchange
        self.routing_key = routing_key
        self.route = route          # raw "exchange + routing key" shortstrs, re-emitted verbatim
        self.header = header        # raw content-header payload, re-emitted verbatim
        self.body = body
        self.persistent = False
        self._props = None

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


class Entry:
    """A message's place in one queue. ``seq`` orders the queue, so a requeued message goes
    back to its original position."""

    __slots__ = ("seq", "message", "redelivered")

    def __init__(self, seq: int, message: Message, redelivered: bool = False):
        self.seq = seq
        self.message = message
        self.redelivered = redelivered
