"""What every management endpoint reads: the broker, access control, the edge's server (its
live connections), the configuration, and the node's name and start time."""
import socket
import time
import weakref


class ManagementContext:
    def __init__(self, broker, access, server, config, store=None, node_name=None):
        self.broker = broker
        self.access = access
        self.server = server            # edge.server.Server: .protocols are the live sockets
        self.config = config
        self.store = store
        self.node_name = node_name or f"amqpd@{socket.gethostname()}"
        self.started_at = time.time()   # wall clock: shown to people (uptime, start time)
        self.started_mono = time.monotonic()
        self.admin = None               # admin.Admin: run-time users, vhosts, permissions
        self.definitions = None         # the definitions module (export / import)
        self.http_port = None
        self._seen = weakref.WeakKeyDictionary()

    def now(self) -> float:
        """Monotonic seconds from the broker's clock (what rates are computed against)."""
        return self.broker.clock()

    def uptime_ms(self) -> int:
        return int((time.monotonic() - self.started_mono) * 1000)

    def connected_at(self, conn) -> int:
        """Milliseconds since the epoch: when the connection opened, as far as the API knows
        (the first time it listed it; the edge keeps no open time)."""
        try:
            return self._seen.setdefault(conn, int(time.time() * 1000))
        except TypeError:
            return int(self.started_at * 1000)

    def connections(self):
        """The AMQP connections that are open (handshake done, not closing) — a connection
        closed by the broker whose client does not read is no longer listed."""
        from ..amqp.connection import RUNNING
        for p in list(self.server.protocols):
            conn = getattr(p, "conn", None)
            if conn is not None and conn.state == RUNNING and conn.vhost is not None \
                    and not p.closing:
                yield conn
