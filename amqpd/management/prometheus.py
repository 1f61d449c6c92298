"""The Prometheus scrape endpoint, as RabbitMQ's rabbitmq_prometheus plugin serves it on port
15692: ``GET /metrics`` (node-wide, aggregated) and ``GET /metrics/per-object`` (plus one
series per queue). The text is prometheus_client's exposition (``generate_latest``) of the
families ``metrics.py`` reads; it runs on the broker's event loop, so a scrape is one read of
the node between two batches of frames. The listener is the management API's
(``listener.HTTPListener``).
"""
from aiohttp import web
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

from .metrics import MetricsSource, QueueFamily

# The 0.0.4 text format, as RabbitMQ labels it (prometheus_client's own label names 1.0.0,
# which older Prometheus servers do not know; the text itself is the same).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class NodeCollector:
    """A prometheus_client collector (``collect()`` yields metric families) over families
    read from the node."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        for fam in self.families:
            kind = fam.kind
            # prometheus_client names a counter family without its _total suffix and adds it
            # back when it writes the TYPE line and the samples.
            base = fam.name[:-6] if kind == "counter" and fam.name.endswith("_total") \
                else fam.name
            metric = Metric(base, fam.help, "unknown" if kind == "untyped" else kind)
            for labels, value in fam.samples:
                metric.add_sample(fam.name, labels, value)
            yield metric


def exposition(source: MetricsSource, per_object: bool = False) -> bytes:
    families = source.families(per_object)
    node = [f for f in families if not isinstance(f, QueueFamily)]
    text = generate_latest(NodeCollector(node))
    per_queue = [f for f in families if isinstance(f, QueueFamily)]
    if not per_queue:
        return text
    return text + queue_exposition(per_queue)


def queue_exposition(families) -> bytes:
    """The per-queue series in the same text format, written directly: prometheus_client
    builds a Sample and a sorted label string per series (0.7 s for 10,000 queues, on the
    broker's loop); here each queue's label string is made once and shared by its four
    series."""
    rows = families[0].rows
    labels = [f'{{queue="{_escape(row[1])}",vhost="{_escape(row[0])}"}} ' for row in rows]
    out = []
    for fam in families:
        i = fam.column + 2
        out.append(f"# HELP {fam.name} {fam.help}\n# TYPE {fam.name} gauge\n")
        name = fam.name
        out.append("".join([f"{name}{lab}{row[i]}\n" for lab, row in zip(labels, rows)]))
    return "".join(out).encode()


def _escape(value: str) -> str:
    """A label value as the text format quotes it."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def make_app(source: MetricsSource) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return _reply(request, exposition(source))

    async def per_object(request: web.Request) -> web.Response:
        return _reply(request, exposition(source, per_object=True))

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/metrics/", metrics)
    app.router.add_get("/metrics/per-object", per_object)
    app.router.add_get("/metrics/per-object/", per_object)
    return app


def _reply(request: web.Request, body: bytes) -> web.Response:
    response = web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        response.enable_compression()      # Prometheus asks for it; 10k queues compress 10x
    return response

