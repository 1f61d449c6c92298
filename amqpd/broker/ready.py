"""The ready list of a queue: entries in order of their sequence number.

``Ready`` is a deque (C speed for append/popleft on the hot path) that can also put an entry
back at its original position. ``PriorityReady`` keeps one such list per priority (x-max-priority)
and serves the highest non-empty one first: FIFO within a priority.
"""
from collections import deque


class Ready(deque):
    def put_back(self, entry) -> None:
        """Insert by sequence: usually at the front (a requeue of the oldest delivery)."""
        if not self or entry.seq < self[0].seq:
            self.appendleft(entry)
        elif entry.seq > self[-1].seq:
            self.append(entry)
        else:
            lo, hi = 0, len(self)
            while lo < hi:
                mid = (lo + hi) // 2
                if self[mid].seq < entry.seq:
                    lo = mid + 1
                else:
                    hi = mid
            self.insert(lo, entry)


class PriorityReady:
    def __init__(self, max_priority: int):
        self.levels = [Ready() for _ in range(max_priority + 1)]
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def __iter__(self):
        for level in reversed(self.levels):
            yield from level

    def append(self, entry) -> None:
        self.levels[entry.priority].append(entry)
        self.count += 1

    def put_back(self, entry) -> None:
        self.levels[entry.priority].put_back(entry)
        self.count += 1

    def popleft(self):
        for level in reversed(self.levels):
            if level:
                self.count -= 1
                return level.popleft()
        raise IndexError("pop from an empty queue")

    def clear(self) -> None:
        for level in self.levels:
            level.clear()
        self.count = 0
