"""Any node serves any client: each shared queue has one leader (its placement record), and
the other nodes forward what their clients do with it over the node-to-node link.

``Forwarding`` is what ClusterNode holds: the broker's queue factory (``make_queue``: the
local queue for queues led here, a ``RemoteQueue`` for the others), the links' both ends
and its upkeep. The concepts live beside it:

    forward_placement.py  which node leads each classic queue: claims, replacement, drain
    forward_wire.py       the link's records and their batching into frames
    forward_origin.py     Peer: this node's proxies forwarded to one leader
    forward_session.py    Session: another node's proxies served here
    link_flow.py          back-pressure across the links (watermarks, a leader's alarms)
"""
from __future__ import annotations

import asyncio
import logging

from ..broker.publish import Ticket
from ..broker.queue import Queue
from . import frames
from .forward_origin import Peer
from .forward_placement import Placing, _is_quorum
from .forward_session import Session
from .forward_wire import ROLE, ctl_record, route_parts
from .link_flow import Gate
from .tasks import cancel_all
from .remote_queue import RemoteQueue

log = logging.getLogger("amqpd.cluster")

STATS_INTERVAL = 0.5          # the leader pushes its queues' figures this often

__all__ = ["ROLE", "Forwarding", "Peer", "Session"]


class Forwarding(Placing):
    """Placement of this node's queues, the queue factory, and the links' both sides."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.node = cluster.node
        self.placements = cluster.placements
        self.loop = None
        self.broker = None
        self.after_change = lambda: None
        self.peers: dict[str, Peer] = {}
        self.sessions: set = set()
        self.claiming: dict = {}          # (vhost, name) -> task
        self.draining: set = set()        # tasks moving a replaced copy's messages
        self.orphaned: set = set()        # proxies with consumers to subscribe again
        self.applying = False             # the metadata sync is applying the cluster's
        self.local_factory = Queue        # what a queue led here is made as (replication
        self.promote = None               # sets these for quorum queues)
        self._routes: dict = {}
        self._task = None
        self._stats_due: set = set()
        self.gate = Gate()                # the edge's publish_gate (link_flow.py)
        self.edge_alarms = None           # the edge's ResourceAlarms (attach_edge)
        self.sent_alarms: list = []       # what the origins were last told
        self.placements.listen(self._placement_changed)

    # -- lifecycle ------------------------------------------------------------------------
    def install(self, broker, after_change, factory=None) -> None:
        """Before the metadata sync applies the cluster's queues: the queue factory."""
        self.loop = asyncio.get_running_loop()
        self.broker = broker
        self.after_change = after_change
        broker.queue_factory = factory or self.make_queue
        self.cluster.link.handlers[ROLE] = self.serve

    def attach_edge(self, server) -> None:
        """The edge's server: publishers into a link are held by its flow (the gate), and
        this node's alarms are told to the origins (link_flow.py)."""
        server.publish_gate = self.gate
        self.edge_alarms = server.alarms

    def alarms(self) -> list:
        return sorted(self.edge_alarms.active) if self.edge_alarms is not None else []

    def _tell_alarms(self) -> None:
        """This node's alarms changed: every origin hears them."""
        alarms = self.alarms()
        if alarms != self.sent_alarms:
            self.sent_alarms = alarms
            for session in list(self.sessions):
                session.put(ctl_record({"op": "alarms", "alarms": alarms}))

    async def start(self) -> None:
        """This node's shared queues without a placement are claimed; those led elsewhere
        become proxies."""
        for vhost in list(self.broker.vhosts.values()):
            for q in list(vhost.queues.values()):
                if not self._shared(q):
                    continue
                if self.placements.get(vhost.name, q.name) is None:
                    if not isinstance(q, RemoteQueue) and not _is_quorum(q.arguments):
                        self._claim_soon(vhost.name, q.name)
                else:
                    self.refresh(vhost.name, q.name)
        await self.claims_done()
        self.after_change()
        self._task = asyncio.ensure_future(self._maintain())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_all([task], what="forwarding tasks")
        for task in list(self.claiming.values()) + list(self.draining):
            task.cancel()

    def running(self, name: str) -> bool:
        rec = self.cluster.member.alive.get(name)
        return rec is not None and rec.get("state") == "running"

    # -- the queue factory ----------------------------------------------------------------
    @staticmethod
    def _shared(q) -> bool:
        return q.durable and q.exclusive_owner is None

    def make_queue(self, vhost, name, durable, exclusive_owner, auto_delete, arguments):
        if durable and exclusive_owner is None:
            rec = self.placements.get(vhost.name, name)
            leader = rec.get("leader") if rec else None
            if (leader is not None and leader != self.node) or (rec is None and self.applying):
                return RemoteQueue(vhost, name, durable, exclusive_owner, auto_delete,
                                   arguments, self, leader)
            if rec is None and not _is_quorum(arguments):
                self._claim_soon(vhost.name, name)
            if rec is None and not self.applying:
                q = self.local_factory(vhost, name, durable, exclusive_owner, auto_delete,
                                       arguments)
                # a client's declare: declare-ok once the cluster has it (handlers.py)
                q.announce = lambda done: self.announce(vhost.name, name, done)
                return q
        return self.local_factory(vhost, name, durable, exclusive_owner, auto_delete,
                                  arguments)

    async def _maintain(self) -> None:
        """Twice a second: push stats to the origins; drop the placement of classic queues
        this node led and no longer has (deleted)."""
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            try:
                for session in list(self.sessions):
                    session.push_stats()
                self._tell_alarms()
                self.orphaned = {rq for rq in self.orphaned if not rq.resubscribe()}
                await self._drop_stale_placements()
                self._claim_unplaced()
            except Exception:
                log.exception("cluster: forwarding upkeep failed")
    # -- the origin side ------------------------------------------------------------------
    def peer(self, name: str) -> Peer | None:
        peer = self.peers.get(name)
        if peer is None and name != self.node and name is not None:
            peer = self.peers[name] = Peer(self, name)
        return peer

    def publish(self, peer, rq, message) -> Ticket:
        if peer is None or not peer.usable():
            ticket = Ticket()
            ticket.resolve(False)
            return ticket
        return peer.publish(rq, message)

    async def link(self, name: str, reader, writer) -> None:
        """Links: a greeted connection to node ``name`` (role "forward")."""
        await self.peer(name).run(reader, writer)

    def route(self, route: bytes) -> tuple[str, str]:
        parts = self._routes.get(route)
        if parts is None:
            if len(self._routes) > 4096:
                self._routes.clear()
            parts = self._routes[route] = route_parts(route)
        return parts

    # -- the leader side ------------------------------------------------------------------
    async def serve(self, node: str, reader, writer) -> None:
        """LinkListener: an origin's connection (role "forward")."""
        session = Session(self, node, writer)
        self.sessions.add(session)
        if self.sent_alarms:
            session.put(ctl_record({"op": "alarms", "alarms": self.sent_alarms}))
        try:
            await session.pump(reader, self.after_change)
        except (asyncio.IncompleteReadError, OSError, frames.FrameError, ValueError) as exc:
            if not isinstance(exc, (asyncio.IncompleteReadError, ConnectionError)):
                log.warning("cluster: forwarding link from %s: %s", node, exc)
        except Exception:            # a bug of ours: this link ends, the origin reconnects
            log.exception("cluster: forwarding link from %s failed", node)
        finally:
            self.sessions.discard(session)
            session.close()
            self.after_change()

    def stats_soon(self, session) -> None:
        """A queue was bound: its figures go out at once (not at the next push)."""
        if session not in self._stats_due:
            self._stats_due.add(session)
            self.loop.call_soon(self._push_due)

    def _push_due(self) -> None:
        due, self._stats_due = self._stats_due, set()
        for session in due:
            if not session.closed:
                session.push_stats()
