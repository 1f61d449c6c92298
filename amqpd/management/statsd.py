"""Push the node's metrics to a StatsD or DogStatsD collector over UDP (asyncio-dgram), every
``metrics.statsd.interval`` seconds: the same counters and gauges as the Prometheus endpoint's
``/metrics`` (node-wide; no per-queue series).

Names: ``<prefix>.<the Prometheus name without rabbitmq_ and _total>``, e.g.
``amqpd.queue_messages_ready:12|g`` and ``amqpd.global_messages_received:40|c`` (a counter is
sent as the increase since the previous push, as StatsD counters are). Plain StatsD drops the
constant labels (protocol="amqp091"...); DogStatsD sends them as tags
(``|#protocol:amqp091``). The info metrics (build, identity) are sent only to DogStatsD, as a
gauge of 1 with their labels as tags.

Fire and forget: a collector that is down, a host that does not resolve, a full socket buffer
cost at most one log line per outage, never a wait on the broker's loop (the address is
resolved off the loop by asyncio, sends are bounded by a timeout).
"""
import asyncio
import logging

import asyncio_dgram

log = logging.getLogger("amqpd.statsd")

MAX_DATAGRAM = 1432       # fits an Ethernet MTU with IP/UDP headers: never fragmented
SEND_TIMEOUT = 1.0
CONNECT_TIMEOUT = 5.0


def stat_name(prefix: str, metric: str) -> str:
    name = metric[len("rabbitmq_"):] if metric.startswith("rabbitmq_") else metric
    if name.endswith("_total"):
        name = name[:-len("_total")]
    return f"{prefix}.{name}" if prefix else name


def _tag(text: str) -> str:
    # DogStatsD tags cannot hold the separators of its own format
    return text.replace(",", "_").replace("|", "_").replace("#", "_")


class StatsDLines:
    """Turns reads of the node into StatsD lines; remembers counters between reads so each
    push carries the increase."""

    def __init__(self, prefix: str, dogstatsd: bool):
        self.prefix = prefix
        self.dogstatsd = dogstatsd
        self.last: dict = {}

    def lines(self, families) -> list:
        out = []
        for fam in families:
            name = stat_name(self.prefix, fam.name)
            for labels, value in fam.samples:
                tags = ""
                if self.dogstatsd and labels:
                    tags = "|#" + ",".join(f"{_tag(k)}:{_tag(str(v))}"
                                           for k, v in sorted(labels.items()))
                if fam.kind == "counter":
                    key = (fam.name, tuple(sorted(labels.items())))
                    before = self.last.get(key, 0)
                    self.last[key] = value
                    delta = value - before
                    if delta > 0:
                        out.append(f"{name}:{_number(delta)}|c{tags}")
                elif fam.kind == "untyped" and fam.name.endswith("_info"):
                    if self.dogstatsd:
                        out.append(f"{name}:1|g{tags}")
                else:
                    out.append(f"{name}:{_number(value)}|g{tags}")
        return out


def _number(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def datagrams(lines: list, limit: int = MAX_DATAGRAM) -> list:
    """Lines joined by newlines into datagrams of at most ``limit`` bytes (StatsD and
    DogStatsD both read several metrics per packet)."""
    out, current, size = [], [], 0
    for line in lines:
        data = line.encode()
        if current and size + 1 + len(data) > limit:
            out.append(b"\n".join(current))
            current, size = [], 0
        current.append(data)
        size += len(data) + (1 if size else 0)
    if current:
        out.append(b"\n".join(current))
    return out


class StatsDPusher:
    """A task on the broker's loop: read, format, send, sleep ``interval``."""

    def __init__(self, source, config):
        self.source = source
        self.config = config
        self.format = StatsDLines(config.prefix, config.dogstatsd)
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
        packets = datagrams(self.format.lines(self.source.families()))
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
