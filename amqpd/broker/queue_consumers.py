"""A queue's consumers: exclusive consumers, consumer priorities, round-robin among those with
credit, single active consumer (x-single-active-consumer), and dispatch."""
from .. import errors
from .stats import retire_consumer


class Consumers:
    """Part of Queue (broker/queue.py)."""

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
        retire_consumer(consumer)
        self.priorities = any(c.priority for c in self.consumers)
        if self.opts.single_active and consumer.unacked:
            # its messages come back first (requeued in order) before the next one starts
            self.sac_waiting = consumer
        if not self.consumers:
            if self.auto_delete and self.had_consumer and not self.deleted:
                self.vhost.delete_queue(self)
                return
            if self.opts.expires:
                self.touch()
        elif self.opts.single_active:
            self.vhost.broker.schedule(self)     # the next consumer takes over

    def next_consumer(self):
        """Round-robin over consumers with credit; the highest priority group wins. With
        x-single-active-consumer only the first (oldest) consumer is served."""
        consumers = self.consumers
        if self.opts.single_active:
            c = consumers[0]
            return c if self.sac_waiting is None and c.has_credit() else None
        n = len(consumers)
        start = self.next_index
        best = None
        best_i = 0
        for i in range(n):
            j = (start + i) % n
            c = consumers[j]
            if c.has_credit():
                if not self.priorities:
                    self.next_index = j + 1
                    return c
                if best is None or c.priority > best.priority:
                    best, best_i = c, j
        if best is not None:
            self.next_index = best_i + 1
        return best

    def dispatch(self) -> None:
        self._dispatch()
        pager = self.pager
        if pager is not None and pager.count:      # read ahead of the consumers
            while len(self.ready) < self.window_low and self._page_in():
                if not self.consumers or not self._dispatch():
                    break

    def _dispatch(self) -> bool:
        """Deliver what is ready; True when the ready list ran out with credit left."""
        ready = self.ready
        while (ready or ready.back) and self.consumers:
            consumer = self.next_consumer()
            if consumer is None:
                return False
            if self.expired_in_place or ready.back:
                entry = self._pop()
                if entry is None:
                    return True
            else:
                entry = ready.popleft()
            self.delivering(entry)
            consumer.channel.deliver(consumer, entry)
        return bool(self.consumers)
