"""The one clock the domain reads. It is injected: the I/O edge hands the broker the event
loop's (``edge/clock.py``); unit tests and offline tools use ``ManualClock``, which stands still
until it is told to move, so a TTL or a delay is tested without sleeping.

A clock has ``time()`` (monotonic seconds: deadlines), ``wall()`` (seconds since the epoch: what
outlives the process, such as a TTL deadline written to disk or x-death's time) and
``call_at(deadline, callback)`` returning a handle with ``cancel()``."""
import heapq
import itertools


class _Call:
    __slots__ = ("deadline", "callback", "cancelled")

    def __init__(self, deadline: float, callback):
        self.deadline, self.callback, self.cancelled = deadline, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """Time moves only by ``advance``; callbacks due by then run in deadline order."""

    def __init__(self, start: float = 1000.0, wall_start: float = 1_800_000_000.0):
        self.now = start
        self.wall_offset = wall_start - start
        self._calls: list = []
        self._n = itertools.count()

    def time(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self.wall_offset

    def call_at(self, deadline: float, callback) -> _Call:
        call = _Call(deadline, callback)
        heapq.heappush(self._calls, (deadline, next(self._n), call))
        return call

    def advance(self, seconds: float = 0.0) -> None:
        """Move time forward, running every callback due by the new time (and those they
        schedule within it); ``advance(0)`` runs what is due now."""
        target = self.now + seconds
        calls = self._calls
        while calls and calls[0][0] <= target:
            deadline, _, call = heapq.heappop(calls)
            self.now = max(self.now, deadline)
            if not call.cancelled:
                call.callback()
        self.now = target

    def pending(self) -> int:
        return sum(1 for _, _, call in self._calls if not call.cancelled)
