"""A node: one amqpd, composed in one place from its configuration.

    configuration -> store (or none: memory only) -> access control -> broker -> listeners

Every object gets its collaborators in its constructor. ``Node`` is what the command line runs
and what embedding builds on: it installs no signal handlers and changes nothing global in the
host process (the CLI adds signals and the garbage-collection policy of a standalone broker).
With ``storage.data_dir: null`` the node keeps everything in memory: durable queues and
persistent messages work as usual but do not survive the process.
"""
import dataclasses
import logging

from . import definitions
from .broker.broker import Broker
from .edge.server import Server
from .store.store import Store

log = logging.getLogger("amqpd.node")


def build(config, docs=(), clock=None):
    """Store, access control and broker: the data directory taken (when there is one),
    durable state recovered, the definitions files' users and topology applied. Returns
    (store or None, access, broker); the caller closes the store."""
    data_dir = config.storage.data_dir
    store = Store(data_dir, config.storage.fsync) if data_dir is not None else None
    try:
        stored = store.read_access() if store is not None else None
        access, layer = definitions.build_access(config, stored, docs)
        if docs and store is not None:
            store.save_access(layer.to_document())
        config = dataclasses.replace(config, vhosts=tuple(access.vhosts))
        broker = Broker(config, store, access, clock)
        for vhost in broker.vhosts.values():
            record = access.vhosts.get(vhost.name)
            vhost.max_queues = record.max_queues if record is not None else None
        broker.recover()
        definitions.declare_topology(broker, docs)
    except BaseException:
        if store is not None:
            store.close()
        raise
    return store, access, broker


class Node:
    """Start in the order that makes a failed start quick and leaves nothing on disk: the
    checks that create nothing (definitions files, the data dir, TLS files), then the ports
    are bound (not yet accepting), then the data dir is taken and recovered, and only then do
    the listeners accept clients."""

    def __init__(self, config, import_files=()):
        self.config = config
        self.import_files = tuple(import_files)
        self.server = Server(config)
        self.store = self.access = self.broker = None
        self.prometheus = self.statsd = None       # monitoring (docs/metrics.md)

    async def start(self) -> "Node":
        docs = definitions.prepare(self.config, self.import_files)
        await self.server.bind()
        try:
            self.store, self.access, self.broker = build(self.config, docs,
                                                         self.server.clock())
            self.server.attach(self.broker, self.store)
            # before clients are let in: importing aiohttp takes the loop for a moment, and a
            # busy metrics port must stop start-up before anyone connected
            await self._start_monitoring()
            await self.server.serve()
        except BaseException:
            await self._stop_monitoring()
            await self.server.close_listeners()
            if self.store is not None:
                self.store.close()
                self.store = None
            raise
        return self

    async def stop(self, reason: str = "shutdown") -> None:
        """Close every client (320 CONNECTION_FORCED), finish background work, write out and
        release the data directory."""
        await self._stop_monitoring()
        await self.server.stop(reason)
        if self.store is not None:
            self.store.close()
            self.store = None

    # -- monitoring: the Prometheus endpoint and the StatsD pusher (docs/metrics.md) ----------
    async def _start_monitoring(self) -> None:
        prom = self.config.listeners.prometheus
        statsd = self.config.metrics.statsd
        if prom is None and statsd is None:
            return
        from .edge.listeners import listen_error
        from .management.metrics import MetricsSource
        source = MetricsSource(self.broker, self.server, self.config)
        if prom is not None:
            from .management.prometheus import PrometheusServer
            self.prometheus = PrometheusServer(source, prom)
            try:
                await self.prometheus.start()
            except OSError as exc:
                self.prometheus = None
                raise listen_error("prometheus", prom, exc) from None
        if statsd is not None:
            from .management.statsd import StatsDPusher
            self.statsd = StatsDPusher(source, statsd)
            self.statsd.start()

    async def _stop_monitoring(self) -> None:
        if self.statsd is not None:
            statsd, self.statsd = self.statsd, None
            await statsd.stop()
        if self.prometheus is not None:
            prom, self.prometheus = self.prometheus, None
            await prom.stop()

    @property
    def prometheus_port(self) -> int | None:
        return self.prometheus.port if self.prometheus is not None else None

    @property
    def port(self) -> int | None:
        return self.server.port

    @property
    def tls_port(self) -> int | None:
        return self.server.tls_port

    @property
    def protocols(self) -> set:
        """The open client sockets (for tests and, later, the management API)."""
        return self.server.protocols
