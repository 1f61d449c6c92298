"""Push datagrams to a StatsD or DogStatsD collector over UDP (asyncio-dgram) every
``metrics.statsd.interval`` seconds; what they say is management/statsd.py's.

Fire and forget: a collector that is down, a host that does not resolve, a full socket buffer
cost at most one log line per outage, never a wait on the broker's loop (the address is
resolved off the loop by asyncio, sends are bounded by a timeout).
"""
import asyncio
import logging

import asyncio_dgram

log = logging.getLogger("amqpd.statsd")

SEND_TIMEOUT = 1.0
CONNECT_TIMEOUT = 5.0


class StatsDPusher:
    """A task on the broker's loop: read, format, send, sleep ``interval``."""

    def __init__(self, packets, config):
        self.packets = packets        # () -> the datagrams of one push
        self.config = config
        self.task = None
        self.stream = None
        self.failing = False          # an outage is logged once, its end once
        self.sent = 0                 # datagrams handed to the socket (for tests, debugging)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="amqpd-statsd")
        cfg = self.config
        log.info("StatsD%s: pushing metrics to %s:%d every %gs (prefix %r)",
                 " (DogStatsD tags)" if cfg.dogstatsd else "", cfg.host, cfg.port,
                 cfg.interval, cfg.prefix)

    async def stop(self) -> None:
        if self.task is not None:
            task, self.task = self.task, None
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._close()

    async def _run(self) -> None:
        while True:
            try:
                await self.push()
            except asyncio.CancelledError:
                raise
            except Exception as exc:      # monitoring never takes the broker down
                self._failed(exc)
            await asyncio.sleep(self.config.interval)

    async def push(self) -> None:
        """One read of the node, sent. The push counts as failed when the socket reports an
        error: on a connected UDP socket a collector that is not listening shows up as
        ECONNREFUSED on the send after the one that reached nobody."""
        packets = self.packets()
        if self.stream is None:
            cfg = self.config
            self.stream = await asyncio.wait_for(asyncio_dgram.connect((cfg.host, cfg.port)),
                                                 CONNECT_TIMEOUT)
        error = None
        for packet in packets:
            for _attempt in (1, 2):     # the error is an earlier packet's: send this one again
                try:
                    await asyncio.wait_for(self.stream.send(packet), SEND_TIMEOUT)
                except OSError as exc:
                    error = exc
                    continue
                except (asyncio.TimeoutError, asyncio_dgram.TransportClosed) as exc:
                    self._close()       # a full buffer, a closed socket: start afresh next time
                    self._failed(exc)
                    return
                self.sent += 1
                break
        if error is not None:
            self._failed(error)
        elif self.failing:
            self.failing = False
            log.info("StatsD: sending to %s:%d again", self.config.host, self.config.port)

    def _failed(self, exc: BaseException) -> None:
        if not self.failing:
            self.failing = True
            log.warning("StatsD: cannot send metrics to %s:%d (%s); retrying every %gs "
                        "without further messages", self.config.host, self.config.port,
                        exc or type(exc).__name__, self.config.interval)

    def _close(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            try:
                stream.close()
            except Exception:
                pass
