"""What became of a publish: the verdict every path that puts messages into queues reports
(the channel, dead-lettering, the delayed exchange, forwarding between nodes), so the
publisher hears the right confirm.

A queue whose confirm someone else decides (a queue led by another node, a replicated
queue waiting for its in-sync replicas) answers with a ``Ticket`` instead of a
``PublishResult``: the channel confirms that publish once the ticket is done (nacks it if
the ticket failed). Callers that confirm nothing (dead-lettering, the delayed exchange, a
transaction's commit) simply drop it."""
import enum


class PublishResult(enum.IntEnum):
    ACCEPTED = 0     # in memory wherever it routed: confirm at once
    STORED = 1       # a durable queue (or delayed exchange) logged it: confirm once durable
    REJECTED = 2     # a queue refused it (x-overflow reject-publish): nack
    DUPLICATE = 3    # a queue had its deduplication id already: dropped, confirm at once
    UNROUTABLE = 4   # no queue took it: confirm at once, basic.return when mandatory


ACCEPTED, STORED, REJECTED, DUPLICATE, UNROUTABLE = PublishResult


class Ticket:
    """A publish's confirm, decided elsewhere. ``ok`` is None while open, then True (ack)
    or False (nack). ``stored``: a local durable queue logged the message too, so the
    confirm also waits for this node's fsync. Whoever waits registers with ``wait(w)`` and
    has ``w.flush_confirms()`` called once it is done."""
    __slots__ = ("ok", "stored", "_waiters", "_parent")

    def __init__(self):
        self.ok = None
        self.stored = False
        self._waiters = None
        self._parent = None

    def wait(self, waiter) -> None:
        if self.ok is not None:
            waiter.flush_confirms()
            return
        if self._waiters is None:
            self._waiters = {}
        self._waiters[waiter] = None

    def resolve(self, ok: bool = True) -> None:
        """Done (once; later calls are ignored): every waiter hears it."""
        if self.ok is not None:
            return
        self.ok = bool(ok)
        waiters, self._waiters = self._waiters, None
        if self._parent is not None:
            self._parent.child_done(self)
        for waiter in waiters or ():
            waiter.flush_confirms()

    @classmethod
    def all(cls, tickets: list) -> "Ticket":
        """One ticket for several: ok once all are, failed as soon as one fails."""
        if len(tickets) == 1:
            return tickets[0]
        parent = AllTickets(tickets)
        for t in tickets:
            if t.ok is None:
                t._parent = parent
        parent.check()
        return parent


class AllTickets(Ticket):
    __slots__ = ("open",)

    def __init__(self, tickets: list):
        super().__init__()
        self.open = tickets

    def child_done(self, _child) -> None:
        self.check()

    def check(self) -> None:
        if any(t.ok is False for t in self.open):
            self.resolve(False)
        elif all(t.ok for t in self.open):
            self.resolve(True)


def with_tickets(result, tickets: list):
    """The verdict of a publish that reached queues answering ``result`` (the merged
    PublishResult, None if only tickets) and queues answering ``tickets``: REJECTED stays
    REJECTED; otherwise one ticket, which also waits for the local fsync when a queue
    logged it here (``result`` STORED)."""
    if result is REJECTED:
        return REJECTED
    ticket = Ticket.all(tickets)
    if result is STORED or any(t.stored for t in tickets):
        ticket.stored = True
    return ticket
