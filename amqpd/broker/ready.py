"""The ready list of a queue: entries in order of their sequence number.

``Ready`` is a deque (C speed for append/popleft on the hot path) of entries that have never been
delivered, plus ``back``, a heap of requeued entries. A requeued entry was delivered while every
entry still in the deque had a higher sequence (entries leave in sequence order, and new ones get
higher numbers), so the heap's entries always come before the deque's: requeueing is O(log n)
whatever order entries come back in, where inserting each into the deque at its position was
O(n) and stalled the broker for seconds when 50,000 interleaved unacked messages came back.

``PriorityReady`` keeps one such list per priority (x-max-priority) and serves the highest
non-empty one first: FIFO within a priority. In a paged queue each level has its own pager
(behind the level's RAM entries): a level with nothing in RAM but messages on disk is read in
before a lower one is served.
"""
import heapq
from collections import deque


class Ready(deque):
    __slots__ = ("back",)

    def __init__(self):
        super().__init__()
        self.back: list = []          # heap of (seq, entry): requeued, older than the deque's

    def put_back(self, entry) -> None:
        """A requeued entry goes back to its original position (by sequence)."""
        heapq.heappush(self.back, (entry.seq, entry))

    def take(self):
        """The oldest entry (the caller checks that there is one)."""
        if self.back:
            return heapq.heappop(self.back)[1]
        return self.popleft()

    def size(self) -> int:
        return len(self) + len(self.back)

    def __iter__(self):
        """Every entry in queue order (requeued ones first)."""
        if self.back:
            for _seq, entry in sorted(self.back, key=_first):
                yield entry
        yield from deque.__iter__(self)

    def clear(self) -> None:
        deque.clear(self)
        self.back = []


def _first(pair):
    return pair[0]


class PriorityReady:
    back = ()           # requeued entries wait in each level's own heap
    paged = None        # a paged queue's per-level pagers (store/paging.py PriorityPagers)
    refill = None       # reads a level in: refill(level) -> True if anything came

    def __init__(self, max_priority: int):
        self.levels = [Ready() for _ in range(max_priority + 1)]
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def size(self) -> int:
        return self.count

    def __iter__(self):
        for level in reversed(self.levels):
            yield from level

    def append(self, entry) -> None:
        self.levels[entry.priority].append(entry)
        self.count += 1

    def put_back(self, entry) -> None:
        self.levels[entry.priority].put_back(entry)
        self.count += 1

    def take(self):
        paged = self.paged
        levels = self.levels
        for i in range(len(levels) - 1, -1, -1):
            level = levels[i]
            if level or level.back:
                self.count -= 1
                return level.take()
            # nothing of this priority in RAM, but some on disk: they come before any lower
            if paged is not None and paged[i].count and self.refill(i) and (level or level.back):
                self.count -= 1
                return level.take()
        raise IndexError("take from an empty queue")

    popleft = take

    def clear(self) -> None:
        for level in self.levels:
            level.clear()
        self.count = 0
