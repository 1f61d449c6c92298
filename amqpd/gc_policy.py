"""Garbage collection without multi-second pauses, for the standalone broker.

CPython's cyclic collector visits every tracked object in a full (generation 2) collection. With
a backlog of millions of queued messages that is 0.7 s per 3 million messages, during which no
client is served: a publisher flooding a slow queue made an unrelated client's round trip reach
1.7 s, every time the collector decided the heap had grown by a quarter.

Queued messages never form reference cycles (they are freed by reference counting when they leave
their queue), and a closed connection breaks its own cycles (``AMQPProtocol.connection_lost``),
so almost nothing needs a full collection. The standalone broker therefore turns *automatic* full
collections off and runs one itself, on a timer, only while the heap is small enough for it to
take a few milliseconds. Young collections stay automatic. An embedded broker (tests, the
embedding API) leaves the host process's collector alone.
"""
import gc
import sys

FULL_EVERY = 30.0        # seconds between attempts at a full collection
CHEAP_BLOCKS = 250_000   # allocated blocks under which a full collection takes ~20 ms or less


def install(loop) -> None:
    """Take over full collections for this process (``loop``: anything with call_later)."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1 << 30)
    loop.call_later(FULL_EVERY, _tick, loop)


def _tick(loop) -> None:
    if sys.getallocatedblocks() < CHEAP_BLOCKS:
        gc.collect()
    loop.call_later(FULL_EVERY, _tick, loop)
