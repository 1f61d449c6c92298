"""Clustering on etcd (docs/clustering.md): a node with a ``cluster`` section joins the
cluster of that name through etcd. Without one, nothing here is imported.

    member.py   membership: one lease per node, node records with their state, the view
    metadata.py vhosts, users, permissions, policies, exchanges, bindings, durable queues:
                one etcd key each, merged both ways with this node's
    placement.py which node leads each shared queue, its replicas and in-sync set
    queue_members.py a quorum queue's members changed at run time (add, delete, grow,
                shrink), a node's replicas moved before it is forgotten
    replication.py quorum queues: log shipping, in-sync set, failover (replica.py: its
                pure parts; replicated_queue.py: the queue on each member)
    link.py     the node-to-node listener (cluster.listen), link roles
    forward.py  any node serves any client: the queue factory, proxies (remote_queue.py)
                forwarding to each queue's leader over the links; beside it
                forward_placement.py (which node leads each classic queue: claims,
                replacement, drain), forward_wire.py (the link's records and frames),
                forward_origin.py (Peer: this node's proxies to one leader),
                forward_session.py (Session: another node's proxies served here),
                link_flow.py (back-pressure across the links: watermarks, alarms)
    frames.py   what links carry after the greeting
    etcd.py     the etcd v3 client (its JSON gateway, over aiohttp)

It sits at the node level (asyncio; the node starts and stops it) and reads the broker only
through what the node hands it.
"""
from __future__ import annotations

import logging

from ..edge.listeners import StartError
from .etcd import EtcdError, EtcdUnavailable
from .forward import ROLE as FORWARD, Forwarding
from .link import LinkListener, Links
from .member import RUNNING, Member
from .metadata import MetadataSync
from .placement import KIND as PLACEMENT, Placements
from .queue_members import QueueMembers
from .replication import Replication

log = logging.getLogger("amqpd.cluster")


class ClusterNode:
    """What node.py starts and stops: the node-to-node listener and the membership."""

    def __init__(self, config, data_dir: str | None):
        self.config = config                  # config.Cluster
        self.data_dir = data_dir
        self.link = LinkListener(config)
        self.member = Member(config, data_dir)
        self.links = Links(config, self.member)
        self.placements = Placements(self.member)      # which node leads each shared queue
        self.member.followers[PLACEMENT] = self.placements
        self.metadata = None
        # quorum queues (before forwarding: its placement listener runs first)
        self.replication = Replication(self)
        self.member.on_lease_lost.append(self.replication.lease_lost)
        self.forwarding = Forwarding(self)             # queues led elsewhere: proxies
        self.forwarding.local_factory = self.replication.local_factory
        self.links.protocol = (FORWARD, self.forwarding.link)
        self.queue_members = QueueMembers(self)        # quorum queues' members changed

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def node(self) -> str:
        return self.config.node

    async def start(self, admin, after_change) -> None:
        """Bind the node-to-node port, claim the node's name (state ``starting``), and merge
        this node's metadata with the cluster's (``admin``: the node's admin.Admin;
        ``after_change()``: run what applied changes made due)."""
        await self.link.start()
        self.replication.attach(admin.broker, admin.store, after_change)
        try:
            await self.member.join({"cluster": {"host": self.config.listen.host,
                                                "port": self.link.port}})
            self.forwarding.install(admin.broker, after_change, self.make_queue)
            self.metadata = MetadataSync(lambda: self.member.etcd, self.member.prefix, admin,
                                         after_change, self.data_dir, self.forwarding)
            try:
                await self.metadata.start()
                await self.forwarding.start()
                self.replication.start()
            except (EtcdError, EtcdUnavailable) as exc:
                raise StartError(f"cluster.etcd: cannot read the cluster's metadata "
                                 f"({exc})") from None
        except BaseException:
            await self.stop()
            raise

    async def running(self, **fields) -> None:
        """The node serves clients: say so (with its listeners) to the cluster."""
        try:
            await self.member.set_state(RUNNING, **fields)
        except (EtcdError, EtcdUnavailable) as exc:
            raise StartError(f"cluster.etcd: lost etcd while starting ({exc})") from None
        self.links.start()
        log.info("cluster %s: node %s is running", self.name, self.node)

    def make_queue(self, vhost, name, durable, exclusive_owner, auto_delete, arguments):
        """The broker's queue factory: a proxy for a shared queue led by another node, a
        local queue (``forwarding.local_factory``) for the others."""
        return self.forwarding.make_queue(vhost, name, durable, exclusive_owner, auto_delete,
                                          arguments)

    async def stop(self) -> None:
        await self.replication.stop()
        await self.forwarding.stop()
        await self.links.stop()
        if self.metadata is not None:
            await self.metadata.stop()
        await self.member.leave()
        await self.link.stop()

    def nodes(self):
        return self.member.nodes()

    def cluster_links(self) -> list[dict]:
        """This node's open links to the others (RabbitMQ's ``cluster_links``)."""
        return self.links.links()

    async def forget(self, name: str) -> tuple[str, list]:
        """Forget a node that is not running: its quorum replicas are moved to other nodes
        first (queue_members.py). (outcome, the moves): "forgotten", "running", "unknown",
        or "replicas" when a replica could not be moved (the node is not forgotten)."""
        if name not in self.member.members:
            return "unknown", []
        if (self.member.alive.get(name) or {}).get("state") is not None:
            return "running", []
        moves = await self.queue_members.move_all(name)
        if not all(m["ok"] for m in moves):
            return "replicas", moves
        return await self.member.forget(name), moves
