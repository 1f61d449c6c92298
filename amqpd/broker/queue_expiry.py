"""Time in a queue: message TTL (a deadline heap that expires a message wherever it sits, and
the pager's deadlines for messages beyond the RAM window) and
x-expires (a queue unused for that long deletes itself). Deadlines are armed on the broker's
one clock (``Broker.call_at``)."""
import heapq

from ..store.paging import Run
from .message import GONE, READY, Entry


class Expiry:
    """Part of Queue (broker/queue.py)."""

    def _expire_at(self, entry: Entry, deadline: float) -> None:
        entry.expires = deadline
        if self.expiring is None:
            self.expiring = []
        heap = self.expiring
        if not heap or deadline < heap[0][0]:
            self.vhost.broker.call_at(deadline, self.expire)
        heapq.heappush(heap, (deadline, entry.seq, entry))

    def expire(self) -> None:
        """Timer: drop (dead-letter) every ready message whose time is up, wherever it sits in
        the queue; RabbitMQ only looks at the head."""
        heap = self.expiring
        if self.deleted:
            return
        now = self.vhost.broker.clock()
        if heap:
            while heap and heap[0][0] <= now:
                entry = heapq.heappop(heap)[2]
                if entry.state != READY:
                    continue              # delivered (checked again if requeued) or gone
                self.expired_in_place += 1
                if self.length_limited:
                    self.ready_bytes -= len(entry.message.body)
                self._remove(entry, "expired")
            if heap:
                self.vhost.broker.call_at(heap[0][0], self.expire)
            if self.expired_in_place > 1024 and self.expired_in_place * 2 > self.ready.size():
                self._compact()
        pager = self.pager
        if pager is not None and pager.due:
            self._expire_paged(now)           # positions on disk (queue_paging.py)

    def _compact(self) -> None:
        """Many expired entries left in place: rebuild the ready list without them."""
        live = [e for e in self.ready if e.state != GONE]
        self.ready.clear()
        for e in live:
            self.ready.append(e)
        self.expired_in_place = 0
        if self.pager is not None:     # expired ones waiting in RAM behind paged messages
            self.expired_in_place = sum(1 for run in self.pager.runs
                                        if run.__class__ is not Run for e in run
                                        if e.state == GONE)

    def touch(self) -> None:
        """x-expires: the queue was used (declared, consumed from, got from)."""
        self.last_used = now = self.vhost.broker.clock()
        self.vhost.broker.call_at(now + self.opts.expires / 1000.0, self.check_unused)

    def check_unused(self) -> None:
        if self.deleted or self.consumers or self.last_used is None:
            return
        if self.vhost.broker.clock() >= self.last_used + self.opts.expires / 1000.0 - 0.001:
            self.vhost.delete_queue(self)
