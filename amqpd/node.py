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
from .admin import Admin
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


def _import_management() -> None:
    from .management import app, listener  # noqa: F401  (imported for the node's loop)


def _import_cluster() -> None:
    from . import cluster  # noqa: F401  (aiohttp: imported off the loop, as above)


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
        self.http = None                # the management API's listener (listeners.http)
        self.management = None          # its ManagementContext
        self.admin = None               # run-time users, vhosts, permissions (admin.py)
        self.prometheus = self.statsd = None       # monitoring (docs/metrics.md)
        self.cluster = None             # cluster.ClusterNode when the config has a cluster

    async def start(self) -> "Node":
        docs = definitions.prepare(self.config, self.import_files)
        await self.server.bind()
        try:
            self.store, self.access, self.broker = build(self.config, docs,
                                                         self.server.clock())
            self.admin = Admin(self.broker, self.access, self.store)
            # after the data dir is ours (a restarted node recognises its own old record by
            # it), before clients are let in
            await self._join_cluster()
            self.server.attach(self.broker, self.store)
            if self.cluster is not None and self.store is not None:
                self.server.schedule_commit()   # what joining applied, journaled before attach
            # before clients are let in: importing aiohttp takes the loop for a moment, and a
            # busy metrics port must stop start-up before anyone connected
            await self._start_monitoring()
            await self.server.serve()
            if self.config.listeners.http is not None:
                # importing aiohttp takes a while (a second on a loaded machine): on a worker
                # thread, so the loop serves the first AMQP clients meanwhile
                await self.server.loop.run_in_executor(None, _import_management)
                self._prepare_http()
                await self._start_http()
            await self._cluster_running()
        except BaseException:
            await self._leave_cluster()
            await self._stop_monitoring()
            await self._stop_http()
            await self.server.close_listeners()
            if self.store is not None:
                self.store.close()
                self.store = None
            raise
        return self

    def _prepare_http(self) -> None:
        """The management API's context and application."""
        from .management.app import make_app
        from .management.context import ManagementContext
        from .management.listener import HTTPListener
        cluster = self.config.cluster
        ctx = ManagementContext(self.broker, self.access, self.server, self.config,
                                self.store, node_name=cluster.node if cluster else None)
        ctx.cluster = self.cluster             # /api/nodes lists the cluster's nodes
        ctx.definitions = definitions          # export / import for /api/definitions
        ctx.admin = self.admin
        self.management = ctx
        app = make_app(ctx)
        self.http = HTTPListener(lambda: app, self.config.listeners.http)

    async def _start_http(self) -> None:
        """The management API listens once the AMQP listeners serve (what it shows is then
        live)."""
        await self.http.start()
        self.management.http_port = self.http.port

    async def _stop_http(self) -> None:
        if self.http is not None:
            http, self.http = self.http, None
            await http.stop()

    async def stop(self, reason: str = "shutdown") -> None:
        """Close every client (320 CONNECTION_FORCED), finish background work, write out and
        release the data directory."""
        await self._leave_cluster()
        await self._stop_monitoring()
        await self._stop_http()
        await self.server.stop(reason)
        if self.store is not None:
            self.store.close()
            self.store = None

    # -- the cluster (docs/clustering.md) ------------------------------------------------------
    async def _join_cluster(self) -> None:
        if self.config.cluster is None:
            return
        await self.server.loop.run_in_executor(None, _import_cluster)
        from .cluster import ClusterNode
        cluster = ClusterNode(self.config.cluster, self.config.storage.data_dir)
        await cluster.start(self.admin, self._after_cluster_change)
        cluster.forwarding.attach_edge(self.server)     # flow control across the links
        self.cluster = cluster

    def _after_cluster_change(self) -> None:
        """What a change applied from the cluster made due goes out now (deliveries,
        basic.cancel to consumers of a deleted queue), and its journal lines are written."""
        self.broker.run_dispatch()
        if getattr(self.server, "commit", None) is None:
            return        # memory only, or not attached yet: attach's first commit writes it
        self.server.flush()
        self.server.schedule_commit()

    async def _cluster_running(self) -> None:
        """Every listener serves: tell the cluster, with their addresses."""
        if self.cluster is not None:
            await self.cluster.running(listeners=self._listeners())

    def _listeners(self) -> list[dict]:
        """This node's listeners as the management API's overview lists them."""
        lst = self.config.listeners
        out = []
        for protocol, conf, port in (("amqp", lst.amqp, self.port),
                                     ("amqp/ssl", lst.amqps, self.tls_port),
                                     ("http", lst.http, self.http_port),
                                     ("http/prometheus", lst.prometheus, self.prometheus_port),
                                     ("clustering", self.config.cluster.listen,
                                      self.cluster.link.port)):
            if conf is not None and port is not None:
                out.append({"protocol": protocol, "ip_address": conf.host, "port": port})
        return out

    async def _leave_cluster(self) -> None:
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            await cluster.stop()

    # -- monitoring: the Prometheus endpoint and the StatsD pusher (docs/metrics.md) ----------
    async def _start_monitoring(self) -> None:
        prom = self.config.listeners.prometheus
        statsd = self.config.metrics.statsd
        if prom is None and statsd is None:
            return
        from .management.metrics import MetricsSource
        source = MetricsSource(self.broker, self.server, self.config)
        if prom is not None:
            from .management.listener import HTTPListener
            from .management.prometheus import make_app
            self.prometheus = HTTPListener(lambda: make_app(source), prom, name="prometheus")
            await self.prometheus.start()       # a busy port: StartError, as for AMQP
        if statsd is not None:
            from .edge.statsd_push import StatsDPusher
            from .management.statsd import pusher_packets
            self.statsd = StatsDPusher(pusher_packets(source, statsd), statsd)
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
    def http_port(self) -> int | None:
        """The management API's port (None: listeners.http is off)."""
        return self.http.port if self.http is not None else None

    @property
    def management_url(self) -> str | None:
        """``http://127.0.0.1:PORT`` (https with TLS), or None when the API is off."""
        if self.http is None:
            return None
        host = self.config.listeners.http.host
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        if ":" in host:
            host = f"[{host}]"
        return f"{self.http.scheme}://{host}:{self.http.port}"

    @property
    def protocols(self) -> set:
        """The open client sockets (for tests and, later, the management API)."""
        return self.server.protocols
