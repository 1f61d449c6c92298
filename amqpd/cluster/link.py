"""The node-to-node listener (``cluster.listen``).

Every node listens there and advertises the address in its etcd record, so the port is
taken, checked and known from the first start. What it carries so far is a greeting: each
side sends one JSON line ``{"cluster", "node", "version"}``, and a peer from another cluster
is told so and dropped. Forwarding publishes and deliveries between nodes will run over these
connections (docs/clustering.md, "Not yet").
"""
from __future__ import annotations

import asyncio
import json
import logging

from ..edge.listeners import listen_error
from ..version import __version__

log = logging.getLogger("amqpd.cluster")

GREETING_TIMEOUT = 5.0


def greeting(cluster: str, node: str) -> bytes:
    return json.dumps({"cluster": cluster, "node": node, "version": __version__},
                      separators=(",", ":")).encode() + b"\n"


class LinkListener:
    def __init__(self, config):
        self.config = config                  # config.Cluster
        self.server: asyncio.AbstractServer | None = None
        self.port: int | None = None
        self._peers: set[asyncio.StreamWriter] = set()

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
                writer.write(json.dumps({"error": f"this is node {self.config.node} of "
                                         f"cluster {self.config.name}"}).encode() + b"\n")
                return
            while await reader.read(65536):     # nothing is spoken after the greeting yet
                pass
        except (asyncio.TimeoutError, OSError):
            pass
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
