"""The node's metrics as StatsD or DogStatsD datagrams, pushed every
``metrics.statsd.interval`` seconds: the same counters and gauges as the Prometheus endpoint's
``/metrics`` (node-wide; no per-queue series).

Names: ``<prefix>.<the Prometheus name without rabbitmq_ and _total>``, e.g.
``amqpd.queue_messages_ready:12|g`` and ``amqpd.global_messages_received:40|c`` (a counter is
sent as the increase since the previous push, as StatsD counters are). Plain StatsD drops the
constant labels (protocol="amqp091"...); DogStatsD sends them as tags
(``|#protocol:amqp091``). The info metrics (build, identity) are sent only to DogStatsD, as a
gauge of 1 with their labels as tags.

This module formats; the push itself (a timer, a UDP socket) is the I/O edge's
(edge/statsd_push.py), handed ``pusher_packets`` by the node.
"""
MAX_DATAGRAM = 1432       # fits an Ethernet MTU with IP/UDP headers: never fragmented


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


def pusher_packets(source, config):
    """What the pusher sends each time: the node's metrics as datagrams (``source``: a
    management.metrics.MetricsSource; ``config``: the ``metrics.statsd`` section)."""
    fmt = StatsDLines(config.prefix, config.dogstatsd)
    return lambda: datagrams(fmt.lines(source.families()))
