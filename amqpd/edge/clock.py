"""The broker's clock on a running event loop: the loop's monotonic time and timers, and the
system's wall clock."""
import time


class LoopClock:
    def __init__(self, loop):
        self.time = loop.time
        self.call_at = loop.call_at
        self.wall = time.time
