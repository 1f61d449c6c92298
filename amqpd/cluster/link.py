"""Node-to-node links: the listener (``cluster.listen``) and one connection from this node
to each other running node.

Every node listens there and advertises the address in its etcd record, so the port is
taken, checked and known from the first start. What a link carries so far is a greeting:
each side sends one JSON line ``{"cluster", "node", "version", "link"}``, and a peer from
another cluster (or not the node its record named), or one that speaks another version of
the node-to-node protocol (``link``: LINK_PROTOCOL), is told so and dropped. ``Links`` keeps a link
open to every running node of the view, again after the peer restarts; the management API
lists them as RabbitMQ lists its ``cluster_links``. Forwarding (forward.py) runs its origin
side over these connections (``Links.protocol``), its leader side as the listener's
"forward" role.
"""
from __future__ import annotations

import asyncio
import json
import logging

from ..edge.listeners import listen_error
from ..version import __version__
from .tasks import cancel_all

log = logging.getLogger("amqpd.cluster")

GREETING_TIMEOUT = 5.0
# The node-to-node protocol's version: forwarding's records, replication's frames, what a
# greeting means. Raised on any change a node of the previous version would misread: nodes
# of two versions refuse each other's links (and say why) rather than misread each other.
LINK_PROTOCOL = 1

_told: set = set()             # (peer, its protocol) already logged: once, not every retry


def greeting(cluster: str, node: str, role: str | None = None) -> bytes:
    hello = {"cluster": cluster, "node": node, "version": __version__, "link": LINK_PROTOCOL}
    if role is not None:
        hello["role"] = role
    return json.dumps(hello, separators=(",", ":")).encode() + b"\n"


async def connect(config, host: str, port: int, peer: str, role: str):
    """A connection to node ``peer`` at host:port for ``role`` (a protocol registered with
    that node's ``LinkListener.handlers``), greeted both ways: (reader, writer). OSError
    when the peer cannot be reached or is not that node of this cluster."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                            GREETING_TIMEOUT)
    try:
        writer.write(greeting(config.name, config.node, role))
        line = await asyncio.wait_for(reader.readline(), GREETING_TIMEOUT)
        try:
            hello = json.loads(line) if line else {}
        except ValueError:
            hello = {}
        if not isinstance(hello, dict) or hello.get("cluster") != config.name \
                or hello.get("node") != peer:
            raise ConnectionError(f"{host}:{port} is not node {peer} of cluster "
                                  f"{config.name} (it said {line[:200]!r})")
        if hello.get("link") != LINK_PROTOCOL:
            raise ConnectionError(incompatible(peer, hello))
    except BaseException:
        writer.close()
        raise
    return reader, writer


def incompatible(peer: str, hello: dict) -> str:
    """Why a peer's link is refused (logged once per peer and protocol as an error: the
    cluster does not work across the two versions)."""
    text = (f"node {peer} speaks node-to-node protocol {hello.get('link')} (amqpd "
            f"{hello.get('version')}), this node {LINK_PROTOCOL} (amqpd {__version__}): every "
            f"node of a cluster must run the same amqpd version")
    if (peer, hello.get("link")) not in _told:
        _told.add((peer, hello.get("link")))
        log.error("cluster: %s; its links are refused", text)
    return text


class LinkListener:
    def __init__(self, config):
        self.config = config                  # config.Cluster
        self.server: asyncio.AbstractServer | None = None
        self.port: int | None = None
        self._peers: set[asyncio.StreamWriter] = set()
        # role -> ``async handler(peer node, reader, writer)``, which owns the connection
        # until it returns (a greeting without a role is an idle link: Links below)
        self.handlers: dict = {}

    async def start(self) -> None:
        listen = self.config.listen
        try:
            self.server = await asyncio.start_server(self._serve, listen.host, listen.port,
                                                     reuse_address=True)
        except OSError as exc:
            # the edge's wording, under this section's key
            err = listen_error("@", listen, exc)
            raise type(err)(str(err).replace("listeners.@", "cluster.listen")) from None
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("cluster %s: node-to-node traffic on %s:%d", self.config.name, listen.host,
                 self.port)

    async def _serve(self, reader, writer) -> None:
        self._peers.add(writer)
        try:
            writer.write(greeting(self.config.name, self.config.node))
            line = await asyncio.wait_for(reader.readline(), GREETING_TIMEOUT)
            try:
                peer = json.loads(line)
            except ValueError:
                peer = None
            if not isinstance(peer, dict) or peer.get("cluster") != self.config.name:
                if not writer.is_closing():
                    writer.write(json.dumps({"error": f"this is node {self.config.node} of "
                                             f"cluster {self.config.name}"}).encode() + b"\n")
                return
            if peer.get("link") != LINK_PROTOCOL:
                if not writer.is_closing():
                    writer.write(json.dumps({"error": incompatible(str(peer.get("node")), peer)})
                                 .encode() + b"\n")
                return
            handler = self.handlers.get(peer.get("role"))
            if handler is not None:
                await handler(str(peer.get("node")), reader, writer)
                return
            while await reader.read(65536):     # an idle link: nothing after the greeting
                pass
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, OSError, RuntimeError):
            pass          # RuntimeError: uvloop's write to a transport closed meanwhile
        finally:
            self._peers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self.server is None:
            return
        server, self.server = self.server, None
        server.close()
        for writer in list(self._peers):
            writer.close()
        await server.wait_closed()


class Links:
    """One outgoing link to each running node of ``member``'s view, opened when the node
    appears, opened again (every half second) while it runs and the link is down, closed
    when it stops."""

    RETRY = 0.5

    def __init__(self, config, member):
        self.config = config
        self.member = member
        self.up: dict[str, dict] = {}         # peer name -> what the API shows of the link
        self._tasks: dict[str, tuple] = {}    # peer name -> (its address, the link task)
        self._watcher: asyncio.Task | None = None
        # (role, ``async fn(peer name, reader, writer)``) run on each link once greeted
        # (forward_origin.py); None: an idle link
        self.protocol = None

    def start(self) -> None:
        self._watcher = asyncio.ensure_future(self._follow())

    async def stop(self) -> None:
        tasks = [task for _address, task in self._tasks.values()]
        tasks += [self._watcher] if self._watcher else []
        self._tasks.clear()
        self._watcher = None
        await cancel_all(tasks, what="node-to-node links")
        self.up.clear()

    def _peers(self) -> dict[str, tuple]:
        out = {}
        for name, running, record in self.member.nodes():
            address = record.get("cluster") or {}
            if running and name != self.config.node and address.get("port"):
                out[name] = (address.get("host"), address["port"])
        return out

    async def _follow(self) -> None:
        while True:
            changed = self.member.changed
            peers = self._peers()
            for name, (address, task) in list(self._tasks.items()):
                if peers.get(name) != address:       # stopped, or restarted elsewhere
                    del self._tasks[name]
                    task.cancel()
                    self.up.pop(name, None)
            for name, address in peers.items():
                if name not in self._tasks:
                    self._tasks[name] = (address, asyncio.ensure_future(
                        self._link(name, *address)))
            await changed.wait()

    async def _link(self, name: str, host: str, port: int) -> None:
        while True:
            writer = None
            linked = None            # the peer's record while the link was up
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), GREETING_TIMEOUT)
                role, run = self.protocol if self.protocol is not None else (None, None)
                hello = greeting(self.config.name, self.config.node, role)
                writer.write(hello)
                line = await asyncio.wait_for(reader.readline(), GREETING_TIMEOUT)
                peer = json.loads(line) if line else {}
                if peer.get("cluster") != self.config.name or peer.get("node") != name:
                    log.warning("cluster: %s:%d is not node %s of cluster %s (it said %s)",
                                host, port, name, self.config.name, line[:200])
                else:
                    sock = writer.get_extra_info("sockname")
                    linked = self.member.alive.get(name)
                    self.up[name] = {"name": name, "peer_addr": host, "peer_port": port,
                                     "sock_addr": sock[0], "sock_port": sock[1],
                                     "send_bytes": len(hello), "recv_bytes": len(line),
                                     "stats": {"send_bytes": len(hello),
                                               "send_bytes_details": {"rate": 0.0},
                                               "recv_bytes": len(line),
                                               "recv_bytes_details": {"rate": 0.0}}}
                    if run is not None:
                        await run(name, reader, writer)
                    else:
                        while await reader.read(65536):
                            pass
            except (OSError, asyncio.TimeoutError, ValueError):
                pass
            finally:
                self.up.pop(name, None)
                if writer is not None:
                    writer.close()
            if linked is not None:
                await self._check_gone(name, host, port, linked)
            await asyncio.sleep(self.RETRY)

    async def _check_gone(self, name: str, host: str, port: int, record: dict) -> None:
        """The link to a running peer dropped. If its node-to-node port now refuses
        connections, the process that listened there is gone (kill -9, a crash): its lease is
        ended at once (``Member.end_lease_of``) instead of running out, so its quorum queues
        fail over in milliseconds rather than in up to ``lease_ttl``. A hung process (SIGSTOP)
        still accepts connections, and waits for its lease. Safe whatever the cause: a node
        whose lease ends leads nothing any more (the queues' epochs fence it)."""
        if record.get("state") != "running":
            return
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                     GREETING_TIMEOUT)
        except ConnectionRefusedError:
            await self.member.end_lease_of(name, record)
        except (OSError, asyncio.TimeoutError):
            pass
        else:
            writer.close()

    def links(self) -> list[dict]:
        return [self.up[name] for name in sorted(self.up)]
