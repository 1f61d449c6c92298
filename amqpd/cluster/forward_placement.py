"""Placement of shared classic queues (forward.py's ``Forwarding`` is a ``Placing``): which
node leads each, and the right object for it in ``vhost.queues``.

A durable, non-exclusive queue declared on a node is led by that node: it claims the
queue's placement record (``Placements.claim``, type "classic", members = [this node])
right after the declare (and at start for its queues that have none); a declare-ok waits
until etcd has the placement and the definition (``announce``). A node whose claim loses
makes its queue a proxy. When a placement's leader changes, the object is replaced
(``VHost.replace_queue``): consumers hear basic.cancel, publishes in flight are nacked, and a
local copy that holds messages forwards them to the new leader (``_drain``).
"""
from __future__ import annotations

import asyncio
import logging

from ..broker.queue import Queue
from .placement import q as _q, record
from .remote_queue import RemoteQueue

log = logging.getLogger("amqpd.cluster")

ANNOUNCE_WAIT = 5.0           # the longest a declare-ok waits for etcd
UNPLACED_WAIT = 5.0           # a queue from the cluster without a placement, then claimed
DRAIN_BATCH = 512             # messages of a replaced copy in flight to the leader
DRAIN_RETRY = 1.0             # seconds between tries while the leader cannot take them


class Placing:
    """Forwarding's placement part: claims, replacements, a replaced copy's drain, stale
    records (it uses ``cluster``, ``node``, ``placements``, ``broker``, ``peers``,
    ``claiming``, ``draining``, ``loop``, ``after_change`` and ``_shared`` of Forwarding)."""

    def announce(self, vhost: str, name: str, done) -> None:
        """``done()`` once the queue's placement and definition are in etcd (at most
        ANNOUNCE_WAIT seconds: etcd unreachable does not hold a declare forever)."""
        async def published():
            task = self.claiming.get((vhost, name))
            if task is not None:
                await asyncio.wait([task])
            metadata = self.cluster.metadata
            key = f"queues/{_q(vhost)}/{_q(name)}"
            while metadata is not None and key not in metadata.remote:
                synced = metadata.synced
                metadata.wake()
                await synced.wait()

        async def announced():
            try:
                await asyncio.wait_for(published(), ANNOUNCE_WAIT)
            except asyncio.TimeoutError:
                log.warning("cluster: queue '%s' in vhost '%s' not in etcd after %s s; "
                            "declare-ok sent anyway", name, vhost, ANNOUNCE_WAIT)
            finally:
                done()
                self.after_change()
        asyncio.ensure_future(announced())

    # -- placement ------------------------------------------------------------------------
    def _claim_soon(self, vhost: str, name: str) -> None:
        key = (vhost, name)
        if key not in self.claiming:
            self.claiming[key] = asyncio.ensure_future(self._claim(vhost, name))

    async def _claim(self, vhost: str, name: str) -> None:
        try:
            for attempt in range(20):
                try:
                    won, rec = await self.placements.claim(
                        vhost, name, record("classic", self.node, [self.node]))
                    break
                except Exception as exc:          # etcd unreachable: try again
                    if attempt == 19:
                        log.warning("cluster: cannot claim the placement of queue '%s' in "
                                    "vhost '%s': %s", name, vhost, exc)
                        return
                    await asyncio.sleep(0.25)
            if won:
                self.placements.records.setdefault((vhost, name), rec)
                if self.refresh(vhost, name):      # a proxy of a queue nobody led
                    self.after_change()
            elif rec.get("leader") != self.node:
                log.info("cluster: queue '%s' in vhost '%s' is led by %s (declared there "
                         "first)", name, vhost, rec.get("leader"))
                self.placements.records.setdefault((vhost, name), rec)
                self.refresh(vhost, name)
                self.after_change()
        finally:
            self.claiming.pop((vhost, name), None)

    async def claims_done(self) -> None:
        """Every claim started so far has ended (the metadata sync waits for this before it
        writes queues to etcd, so the others find a queue's placement with it)."""
        while self.claiming:
            await asyncio.wait(list(self.claiming.values()))

    def _placement_changed(self, vhost, name, old, new) -> None:
        if new is None or self.broker is None:
            return
        if old is not None and old.get("leader") == new.get("leader") \
                and old.get("epoch") == new.get("epoch"):
            return
        if self.refresh(vhost, name):
            self.after_change()

    def refresh(self, vhost_name: str, name: str) -> bool:
        """Make ``vhost.queues[name]`` the right kind for its placement; True if replaced."""
        vhost = self.broker.vhosts.get(vhost_name)
        q = vhost.queues.get(name) if vhost is not None else None
        rec = self.placements.get(vhost_name, name)
        if q is None or rec is None or not self._shared(q):
            return False
        leader = rec.get("leader")
        if leader == self.node:
            if not isinstance(q, RemoteQueue):
                return False
            if rec.get("type") == "quorum":
                new = self.promote(vhost, q, rec) if self.promote is not None else None
                if new is None:
                    return False
            else:
                new = Queue(vhost, name, q.durable, None, q.auto_delete, q.arguments)
                vhost.attach_log(new)
            self._replace(vhost, q, new)
            return True
        if isinstance(q, RemoteQueue):
            if q.leader == leader:
                return False
            if q.leader is None and not q.consumers:
                q.leader = leader            # its placement arrived after its definition
                return False
        new = RemoteQueue(vhost, name, q.durable, None, q.auto_delete, q.arguments, self,
                          leader)
        drain = False
        if not isinstance(q, RemoteQueue) and rec.get("type", "classic") == "classic":
            if q.message_count or q.unacked:        # on disk or, on a memory-only node, not
                drain = q.draining = True
            elif q.log is not None:
                self.broker.store.delete_queue_log(vhost_name, name)
                q.log = None
        self._replace(vhost, q, new)
        if drain:
            for session in list(self.sessions):
                session.give_back(q)
            task = asyncio.ensure_future(self._drain(vhost, q, new))
            self.draining.add(task)
            task.add_done_callback(self.draining.discard)
        log.info("cluster: queue '%s' in vhost '%s' is led by node %s: forwarded there", name,
                 vhost_name, leader)
        return True

    async def _drain(self, vhost, old, proxy) -> None:
        """A local copy that holds messages was replaced by a proxy (a claim lost to
        another node, a leader that moved, a stage-2 copy): its messages are forwarded to
        the leader, each settled here once the leader confirmed it; its log goes when it is
        empty. A restart in the middle starts again from what is left (at least once)."""
        log.warning("cluster: queue '%s' in vhost '%s' is led by node %s: forwarding the %d "
                    "message(s) this node's copy holds there", old.name, vhost.name,
                    proxy.leader, old.message_count + old.unacked)
        moved = 0
        try:
            while not proxy.deleted:
                batch = []
                while len(batch) < DRAIN_BATCH:
                    entry = old.take()
                    if entry is None:
                        break
                    batch.append((entry, proxy.enqueue(entry.message)))
                if not batch:
                    if not old.unacked:
                        break
                    await asyncio.sleep(DRAIN_RETRY)    # held by clients: acked or back
                    continue
                self.after_change()
                await _all_done([ticket for _entry, ticket in batch])
                failed = False
                for entry, ticket in batch:
                    if ticket.ok:
                        old.settle(entry)
                        moved += 1
                    else:
                        old.requeue(entry)
                        failed = True
                self.after_change()
                if failed:
                    await asyncio.sleep(DRAIN_RETRY)    # the leader is not reachable
        finally:
            if not old.message_count and not old.unacked:
                if old.log is not None:
                    self.broker.store.delete_queue_log(vhost.name, old.name)
                    old.log = None
                log.info("cluster: queue '%s' in vhost '%s': %d message(s) forwarded to "
                         "node %s; this node's copy is gone", old.name, vhost.name, moved,
                         proxy.leader)

    def _replace(self, vhost, old, new) -> None:
        """``old`` stands for the queue here no more: its consumers hear basic.cancel, its
        subscriptions at the old leader end, its publishes in flight are nacked."""
        if isinstance(old, RemoteQueue):
            for consumer in list(old.consumers):
                old._give_back_waiting(consumer)
                sub = old.subs.pop(consumer, None)
                if sub is not None:
                    sub[0].unsubscribe(sub[1])
        vhost.replace_queue(old, new)
        if isinstance(old, RemoteQueue) and old.leader is not None:
            peer = self.peers.get(old.leader)
            if peer is not None:
                peer.forget(old)

    def _claim_unplaced(self) -> None:
        """A shared queue here without a placement record is claimed: one of this node's
        whose record went, or one the cluster's metadata brought whose declaring node never
        claimed it (after UNPLACED_WAIT, so that node's claim has time to arrive)."""
        now = self.loop.time()
        for vhost in list(self.broker.vhosts.values()):
            for name, q in list(vhost.queues.items()):
                if not self._shared(q) or (vhost.name, name) in self.claiming \
                        or _is_quorum(q.arguments) \
                        or self.placements.get(vhost.name, name) is not None:
                    continue
                if isinstance(q, RemoteQueue):
                    if q.leader is not None or now - q.made_at < UNPLACED_WAIT:
                        continue
                self._claim_soon(vhost.name, name)

    async def _drop_stale_placements(self) -> None:
        for (vhost_name, name), rec in list(self.placements.records.items()):
            if rec.get("leader") != self.node or rec.get("type", "classic") != "classic" \
                    or (vhost_name, name) in self.claiming:
                continue
            vhost = self.broker.vhosts.get(vhost_name)
            q = vhost.queues.get(name) if vhost is not None else None
            if q is None:
                revision = self.placements.revisions.get((vhost_name, name))
                try:
                    await self._remove_placement(vhost_name, name, revision)
                except Exception as exc:
                    log.debug("cluster: placement of queue '%s' in vhost '%s' not removed: %s",
                              name, vhost_name, exc)

    async def _remove_placement(self, vhost: str, name: str, revision) -> None:
        """Delete a placement record unless it changed since ``revision`` (one etcd
        transaction)."""
        placements = self.placements
        key = placements.key(vhost, name)
        b64 = placements.member.etcd_b64
        await placements.member.etcd.call("/v3/kv/txn", {
            "compare": [{"key": b64(key), "target": "MOD", "mod_revision": str(revision or 0)}],
            "success": [{"request_delete_range": {"key": b64(key)}}]})


class _Done:
    """Waits on tickets: ``flush_confirms`` is what a Ticket calls when it is done."""

    def __init__(self, tickets, future):
        self.tickets, self.future = tickets, future

    def flush_confirms(self) -> None:
        if not self.future.done() and all(t.ok is not None for t in self.tickets):
            self.future.set_result(None)


async def _all_done(tickets) -> None:
    future = asyncio.get_running_loop().create_future()
    waiter = _Done(tickets, future)
    for ticket in tickets:
        ticket.wait(waiter)
    waiter.flush_confirms()
    await future


def _is_quorum(arguments) -> bool:
    return (arguments or {}).get("x-queue-type") in ("quorum", b"quorum")
