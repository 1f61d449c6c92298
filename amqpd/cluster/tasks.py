"""Ending the cluster's background tasks when a node stops.

Python 3.11's ``asyncio.wait_for`` can swallow a cancel that arrives just as the awaited
call completes: the task then runs on as if nothing happened, and ``await task`` after
``task.cancel()`` waits forever (a node that never exits on SIGTERM). So a stop cancels
again until the tasks have ended, and gives up, saying so, after ``timeout``.
"""
from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("amqpd.cluster")

STOP_TIMEOUT = 3.0


async def cancel_all(tasks, timeout: float = STOP_TIMEOUT, what: str = "tasks") -> None:
    pending = {t for t in tasks if t is not None and not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=0.1)
        for task in done:
            if not task.cancelled():
                task.exception()         # retrieved: a failure was logged where it happened
        if pending and loop.time() > deadline:
            log.warning("stopping: %d of the cluster's %s did not end within %.0f s",
                        len(pending), what, timeout)
            return
