"""The x-delayed-message exchange (semantics of RabbitMQ's delayed-message plugin).

Declared with ``x-delayed-type`` (the routing semantics: direct, topic, ...). A message with an
``x-delay`` header (milliseconds) is held and routed when its time comes; without one (or with
x-delay <= 0) it is routed at once. Pending messages sit in a heap ordered by due time, so holding
a million costs O(log n) per message and nothing per tick: one timer is armed, for the earliest.

A durable delayed exchange logs its pending messages (store: one log per exchange, each record's
route field prefixed with the due time in ms since the epoch), so they survive a restart; the
record is settled once the message is routed.
"""
import heapq
import itertools
import logging
import math
import struct

from .. import errors
from ..wire import properties
from ..wire.tables import Long, SignedInt, TableError, text
from .exchange import Exchange, check_type
from .message import Message
from .publish import ACCEPTED, STORED

log = logging.getLogger("amqpd.delayed")

_due = struct.Struct(">Q")
MAX_DELAY = 2 ** 32 - 1       # the plugin routes longer delays at once


def _milliseconds(value):
    """x-delay as the plugin reads it: integers, numeric strings and floats."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode(errors="replace")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, float) and not math.isfinite(value):
        return None                  # NaN and infinities are no delay (int() would raise)
    if isinstance(value, (int, float)) or hasattr(value, "to_integral_value"):
        return int(value)
    return None


def _delivered_copy(message):
    """The plugin delivers the message with x-delay negated, as a signedint; every other
    header keeps its value and wire type."""
    try:
        headers = dict(message.headers or {})
        delay = _milliseconds(headers.get("x-delay"))
        if delay is None:
            return message
        headers["x-delay"] = SignedInt(-delay) if -delay >= -(1 << 31) else Long(-delay)
        header = properties.rewrite(message.header, headers=headers)
    except (errors.AMQPError, TableError) as exc:
        log.error("cannot negate x-delay of a delayed message (%s): routed as it is", exc)
        return message
    copy = Message(message.exchange, message.routing_key, message.raw_route, header, message.body)
    copy._persistent = message._persistent
    return copy


class DelayedExchange(Exchange):
    kind = "x-delayed-message"
    delays_messages = True

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        kind = text(self.arguments.get("x-delayed-type"))
        # The routing index is an exchange of the underlying type, holding the same bindings.
        self.inner = self.vhost.types[kind](self.vhost, self.name, self.durable, False, False, {})
        # The bindings live here; an index-free type (headers) routes by scanning them.
        self.inner.bindings = self.bindings
        self.pending: list = []            # heap of (due, n, message, log seq or None)
        self._n = itertools.count()
        self.log = None                    # QueueLog of pending messages when durable
        self.log_seq = 0
        self.segments: dict = {}           # log seq -> segment

    @classmethod
    def validate_arguments(cls, label: str, arguments: dict, types=None) -> None:
        """``types``: the exchange types by name (the vhost's registry, which names this
        class, so it is passed in rather than imported)."""
        super().validate_arguments(label, arguments)
        kind = text(arguments.get("x-delayed-type"))
        if not isinstance(kind, str):
            raise errors.PreconditionFailed(
                "Invalid argument, 'x-delayed-type' must be an existing exchange type")
        if kind == cls.kind:
            raise errors.PreconditionFailed(
                "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'")
        # the plugin checks the type like a declare does: a connection error
        check_type(kind, types)

    def validate_binding(self, key, args):
        self.inner.validate_binding(key, args)

    def _index(self, dest, key, args):
        self.inner._index(dest, key, args)

    def _unindex(self, dest, key, args):
        self.inner._unindex(dest, key, args)

    def route(self, message):
        return self.inner.route(message)

    # -- holding ----------------------------------------------------------------------------
    def take_aside(self, message):
        """Called before routing a publish. None: route it now. Otherwise it is held and the
        result is the publish verdict (STORED when logged, so the confirm waits for it)."""
        headers = message.headers
        delay = _milliseconds(headers.get("x-delay")) if headers else None
        if delay is None or delay <= 0 or delay > MAX_DELAY:
            return None
        broker = self.vhost.broker
        return self._hold(message, broker.clock() + delay / 1000.0,
                          broker.wallclock() + delay / 1000.0)

    def _hold(self, message, due: float, due_wall: float, seq=None):
        stored = ACCEPTED
        if self.log is not None and seq is None:
            self.log_seq = seq = self.log_seq + 1
            route = _due.pack(int(due_wall * 1000)) + message.raw_route
            self.segments[seq] = self.log.append_message(seq, route, message.header,
                                                         message.body)
            self.vhost.broker.commit.mark_dirty(self.log)
            stored = STORED
        heapq.heappush(self.pending, (due, next(self._n), message, seq))
        if self.pending[0][2] is message:
            self.vhost.broker.call_at(due, self.release)
        return stored

    def release(self) -> None:
        """Timer: route every message whose time has come."""
        pending = self.pending
        if self.vhost.exchanges.get(self.name) is not self:
            return                          # deleted meanwhile
        now = self.vhost.broker.clock()
        while pending and pending[0][0] <= now:
            _, _, message, seq = heapq.heappop(pending)
            self.vhost.publish(self, _delivered_copy(message), take_aside=False)
            if seq is not None and self.log is not None:
                self.log.settle(seq, self.segments.pop(seq))
                self.vhost.broker.commit.mark_dirty(self.log)
        if pending:
            self.vhost.broker.call_at(pending[0][0], self.release)

    def recover(self, live: list, top: int) -> int:
        """Re-arm logged messages after a restart (due times are wall-clock)."""
        from .message import from_route
        clock, wall = self.vhost.broker.clock(), self.vhost.broker.wallclock()
        routes: dict = {}
        for seq, route, header, body, _delivered, segment, _expiry in live:
            due_wall = _due.unpack_from(route)[0] / 1000.0
            message = from_route(route[8:], header, body, routes)
            self.segments[seq] = segment
            # overdue ones get deadlines in the past, so they still come out in due order
            self._hold(message, clock + (due_wall - wall), due_wall, seq)
        self.log_seq = top
        return len(live)
