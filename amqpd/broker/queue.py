"""A queue: messages ready in order, consumers served round-robin by priority."""
from collections import deque

from ..amqp import errors
from ..wire.tables import type_name
from .message import Entry

# Arguments RabbitMQ compares when a queue is re-declared (rabbit_amqqueue declare_args).
EQUIVALENCE_ARGS = ("x-expires", "x-message-ttl", "x-dead-letter-exchange",
                    "x-dead-letter-routing-key", "x-max-length", "x-max-length-bytes",
                    "x-max-priority", "x-overflow", "x-queue-mode", "x-queue-type",
                    "x-single-active-consumer", "x-delivery-limit", "x-queue-master-locator",
                    "x-max-in-memory-length", "x-max-in-memory-bytes")


class Queue:
    def __init__(self, vhost, name: str, durable: bool, exclusive_owner, auto_delete: bool,
                 arguments: dict):
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner   # the declaring connection, or None
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        self.ready: deque = deque()
        self.consumers: list = []
        self.unacked = 0
        self.next_seq = 0
        self.rr = 0                      # round-robin position among consumers
        self.priorities = False          # any consumer with a non-zero x-priority
        self.had_consumer = False
        self.sources: set = set()        # exchanges with a binding to this queue
        self.deleted = False
        self.log = None                  # QueueLog when durable and the broker has a store

    def __repr__(self):
        return f"<Queue {self.name!r}>"

    @property
    def label(self) -> str:
        return f"queue '{self.name}' in vhost '{self.vhost.name}'"

    # -- messages -----------------------------------------------------------------------------
    def enqueue(self, message) -> bool:
        """Append a message; True when it went to the log and a confirm must wait for fsync."""
        self.next_seq = seq = self.next_seq + 1
        entry = Entry(seq, message)
        self.ready.append(entry)
        if self.consumers:
            self.vhost.broker.schedule(self)
        if self.log is not None and message.persistent:
            entry.segment = self.log.append_message(seq, message.route, message.header,
                                                    message.body)
            self.vhost.broker.store.mark_dirty(self.log)
            return True
        return False

    def requeue(self, entry: Entry) -> None:
        """Back to its original position (by sequence), marked redelivered."""
        entry.redelivered = True
        self.unacked -= 1
        ready = self.ready
        if not ready or entry.seq < ready[0].seq:
            ready.appendleft(entry)
        elif entry.seq > ready[-1].seq:
            ready.append(entry)
        else:
            lo, hi = 0, len(ready)
            while lo < hi:
                mid = (lo + hi) // 2
                if ready[mid].seq < entry.seq:
                    lo = mid + 1
                else:
                    hi = mid
            ready.insert(lo, entry)
        if self.consumers:
            self.vhost.broker.schedule(self)

    def settle(self, entry: Entry) -> None:
        """The message left the queue for good (ack, or a no-ack delivery)."""
        self.unacked -= 1
        if entry.segment is not None and self.log is not None:
            self.log.settle(entry.seq, entry.segment)
            self.vhost.broker.store.mark_dirty(self.log)

    def delivering(self, entry: Entry) -> None:
        """First hand-over of a stored message: recorded, so a crash brings it back marked
        redelivered."""
        self.unacked += 1
        if entry.segment is not None and not entry.redelivered and self.log is not None:
            self.log.delivered(entry.seq)
            self.vhost.broker.store.mark_dirty(self.log)

    def take(self) -> Entry | None:
        if not self.ready:
            return None
        entry = self.ready.popleft()
        self.delivering(entry)
        return entry

    def purge(self) -> int:
        n = len(self.ready)
        if self.log is not None:
            for entry in self.ready:
                if entry.segment is not None:
                    self.log.settle(entry.seq, entry.segment)
            self.vhost.broker.store.mark_dirty(self.log)
        self.ready.clear()
        return n

    @property
    def message_count(self) -> int:
        return len(self.ready)

    # -- consumers ----------------------------------------------------------------------------
    def add_consumer(self, consumer) -> None:
        if consumer.exclusive and self.consumers:
            raise errors.AccessRefused(f"queue '{self.name}' in vhost '{self.vhost.name}' in "
                                       "exclusive use")
        if self.consumers and self.consumers[0].exclusive:
            raise errors.AccessRefused(f"queue '{self.name}' in vhost '{self.vhost.name}' in "
                                       "exclusive use")
        self.consumers.append(consumer)
        self.had_consumer = True
        if consumer.priority:
            self.priorities = True
        self.vhost.broker.schedule(self)

    def remove_consumer(self, consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        self.priorities = any(c.priority for c in self.consumers)
        if not self.consumers and self.auto_delete and self.had_consumer and not self.deleted:
            self.vhost.delete_queue(self)

    def next_consumer(self):
        """Round-robin over consumers with credit; the highest priority group wins."""
        consumers = self.consumers
        n = len(consumers)
        start = self.rr
        best = None
        best_i = 0
        for i in range(n):
            j = (start + i) % n
            c = consumers[j]
            if c.has_credit():
                if not self.priorities:
                    self.rr = j + 1
                    return c
                if best is None or c.priority > best.priority:
                    best, best_i = c, j
        if best is not None:
            self.rr = best_i + 1
        return best

    def dispatch(self) -> None:
        ready = self.ready
        while ready and self.consumers:
            consumer = self.next_consumer()
            if consumer is None:
                return
            entry = ready.popleft()
            self.delivering(entry)
            consumer.channel.deliver(consumer, entry)

    # -- declaration --------------------------------------------------------------------------
    def check_equivalent(self, durable: bool, auto_delete: bool, arguments: dict) -> None:
        if durable != self.durable:
            self._inequivalent("durable", _flag(durable), _flag(self.durable))
        if auto_delete != self.auto_delete:
            self._inequivalent("auto_delete", _flag(auto_delete), _flag(self.auto_delete))
        arguments = arguments or {}
        for key in EQUIVALENCE_ARGS:
            new, old = arguments.get(key), self.arguments.get(key)
            if not same_value(new, old):
                self._inequivalent(key, describe(new, old), describe(old, new))

    def _inequivalent(self, arg: str, received: str, current: str):
        raise errors.PreconditionFailed(
            f"inequivalent arg '{arg}' for {self.label}: received {received} but current is "
            f"{current}")


def _flag(value: bool) -> str:
    return "'true'" if value else "'false'"


def describe(value, other) -> str:
    """How RabbitMQ prints an argument in an inequivalence error: with its AMQP type when the
    other side is missing."""
    if value is None:
        return "none"
    shown = value.decode(errors="replace") if isinstance(value, bytes) else value
    if isinstance(shown, bool):
        shown = "true" if shown else "false"
    if other is None:
        return f"the value '{shown}' of type '{type_name(value)}'"
    return f"'{shown}'"


def type_class(value):
    """RabbitMQ compares arguments by type class: all integer widths are one class."""
    if isinstance(value, bool):
        return bool
    if isinstance(value, (bytes, str)):
        return str
    return type(value)


def same_value(a, b) -> bool:
    if a is None or b is None:
        return a is b
    if type_class(a) is not type_class(b):
        return False
    if isinstance(a, bytes):
        a = a.decode(errors="replace")
    if isinstance(b, bytes):
        b = b.decode(errors="replace")
    return a == b
