"""Which nodes hold a quorum queue's replicas, changed at run time (RabbitMQ's
``rabbitmq-queues add_member / delete_member / grow / shrink``), and a node's replicas moved
to others before it is forgotten.

Every change is a compare-and-swap on the queue's placement record (placement.py), so it
races safely with the leader's own changes of the in-sync set:

- **add**: the node joins ``members`` and ``learners``, not the in-sync set. The leader
  starts shipping to it (replication.py's ``Leading.resize``); once it has everything
  confirmed the leader adds it to the in-sync set, as for any member that caught up, and it
  stops being a learner. A learner is not counted in the majority (RabbitMQ's non-voting
  member): growing a queue of one member does not stop its confirms while the copy is made.
- **delete**: the node leaves ``members`` and the in-sync set; if it led the queue, an
  in-sync member that is running leads it now (epoch + 1: the old leader is fenced as in a
  failover, its unconfirmed publishes are nacked). Its copy is removed on that node.
  Refused when no other in-sync member would remain (that copy may be the only one with
  every confirmed message), or when the in-sync set would fall below a majority of the
  voting members (confirms would stop: add a member first).
- **move** (``forget_cluster_node``): a replacement (a running node that is not a member,
  chosen by the same rendezvous hash a declare uses) is added, and the old member is
  removed only once the replacement is in the in-sync set: the queue never has fewer
  in-sync copies than before.

Both add and delete are idempotent (a member added twice is one member), as RabbitMQ's.
"""
from __future__ import annotations

import logging
import re
import time

from .etcd import EtcdError, EtcdUnavailable
from .member import RUNNING
from .replica import majority

log = logging.getLogger("amqpd.cluster")

CATCH_UP = 60.0          # the longest a move waits for a replacement to be in sync


class MemberError(Exception):
    """A membership change refused: ``status`` is the HTTP status the API answers with."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class QueueMembers:
    def __init__(self, cluster):
        self.cluster = cluster
        self.placements = cluster.placements
        self.member = cluster.member

    # -- one queue ---------------------------------------------------------------------------
    def _quorum(self, vhost: str, name: str) -> dict:
        rec = self.placements.get(vhost, name)
        if rec is None:
            broker = self.cluster.replication.broker
            v = broker.vhosts.get(vhost) if broker is not None else None
            if v is None or name not in v.queues:
                raise MemberError(404, f"no queue '{name}' in vhost '{vhost}'")
            raise MemberError(400, f"queue '{name}' in vhost '{vhost}' is not a quorum queue")
        if rec.get("type") != "quorum":
            raise MemberError(400, f"queue '{name}' in vhost '{vhost}' is not a quorum queue")
        return rec

    def _running(self, node: str) -> bool:
        return (self.member.alive.get(node) or {}).get("state") == RUNNING

    async def _update(self, vhost: str, name: str, change) -> dict | None:
        try:
            return await self.placements.update(vhost, name, change)
        except LookupError:
            raise MemberError(404, f"no queue '{name}' in vhost '{vhost}'") from None
        except (EtcdError, EtcdUnavailable, TimeoutError) as exc:
            raise MemberError(503, f"etcd: {exc}") from None

    async def add(self, vhost: str, name: str, node: str) -> dict | None:
        """Make ``node`` a member of the queue: the record written (None: it was one)."""
        self._quorum(vhost, name)
        if node not in self.member.members and node not in self.member.alive:
            raise MemberError(404, f"node {node} is not in the cluster")

        def change(rec):
            if node in rec["members"]:
                return None
            if not self._running(node):
                raise MemberError(400, f"node {node} is not running")
            # a learner until it caught up once: not counted in the majority meanwhile
            return dict(rec, members=rec["members"] + [node],
                        learners=list(rec.get("learners", ())) + [node])
        new = await self._update(vhost, name, change)
        if new is not None:
            log.info("queue %r in vhost %r: %s added as a member (members %s)", name, vhost,
                     node, ", ".join(new["members"]))
        return new

    async def delete(self, vhost: str, name: str, node: str) -> dict | None:
        """Remove ``node`` from the queue's members: the record written (None: it was not
        one)."""
        self._quorum(vhost, name)

        def change(rec):
            if node not in rec["members"]:
                return None
            members = [m for m in rec["members"] if m != node]
            isr = [m for m in rec["isr"] if m != node]
            learners = [m for m in rec.get("learners", ()) if m != node]
            if not members:
                raise MemberError(400, f"node {node} is the last member of queue '{name}' "
                                       f"in vhost '{vhost}' (delete the queue instead)")
            if not isr:
                raise MemberError(400, f"node {node} holds the only in-sync copy of queue "
                                       f"'{name}' in vhost '{vhost}'")
            voters = [m for m in members if m not in learners]
            before = [m for m in rec["members"] if m not in rec.get("learners", ())]
            if len(isr) < majority(voters) and len(rec["isr"]) >= majority(before):
                raise MemberError(400, f"removing {node} would leave queue '{name}' in vhost "
                                       f"'{vhost}' {len(isr)} in-sync member(s) of "
                                       f"{len(voters)}, below a majority: its confirms would "
                                       f"stop (add a member first)")
            new = dict(rec, members=members, isr=isr)
            if learners:
                new["learners"] = learners
            else:
                new.pop("learners", None)
            if rec["leader"] == node:
                target = next((m for m in isr if self._running(m)), None)
                if target is None:
                    raise MemberError(400, f"no other in-sync member of queue '{name}' in "
                                           f"vhost '{vhost}' is running to lead it")
                new.update(leader=target, epoch=int(rec["epoch"]) + 1)
            return new
        new = await self._update(vhost, name, change)
        if new is not None:
            log.info("queue %r in vhost %r: %s removed from its members (members %s, "
                     "leader %s)", name, vhost, node, ", ".join(new["members"]),
                     new["leader"])
        return new

    async def in_sync(self, vhost: str, name: str, node: str, timeout: float) -> bool:
        """Until ``node`` is in the queue's in-sync set (False after ``timeout``)."""
        deadline = time.monotonic() + timeout
        seen = False                  # (the watch may not have brought the add yet)
        while True:
            rec = self.placements.get(vhost, name)
            if rec is None:
                return False
            if node in rec.get("members", ()):
                seen = True
            elif seen:
                return False          # removed meanwhile
            if node in rec.get("isr", ()):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await self.placements.changed(left)

    async def move(self, vhost: str, name: str, node: str, timeout: float = CATCH_UP) -> str:
        """Move the queue's replica off ``node``: a replacement first (when a running node
        is not a member yet), in sync, then ``node`` removed. What was done, in words."""
        from .replication import choose_members
        rec = self._quorum(vhost, name)
        if node not in rec["members"]:
            return "not a member"
        running = [n for n, up, _r in self.member.nodes() if up and self._running(n)]
        spare = [n for n in choose_members(vhost, name, node, running, len(running) + 1)
                 if n != node and n not in rec["members"]]
        moved_to = None
        if spare:
            moved_to = spare[0]
            await self.add(vhost, name, moved_to)
            if not await self.in_sync(vhost, name, moved_to, timeout):
                raise MemberError(503, f"queue '{name}' in vhost '{vhost}': {moved_to} did "
                                       f"not catch up within {timeout:.0f} s; {node} stays a "
                                       f"member")
        await self.delete(vhost, name, node)
        return f"moved to {moved_to}" if moved_to else "removed (no spare node)"

    # -- every queue -------------------------------------------------------------------------
    def quorum_queues(self, vhost_pattern: str = ".*", queue_pattern: str = ".*") -> list:
        """(vhost, name, record) of every quorum queue whose names match the patterns
        (searched, not anchored: RabbitMQ's ``re:run``)."""
        try:
            vre, qre = re.compile(vhost_pattern), re.compile(queue_pattern)
        except re.error as exc:
            raise MemberError(400, f"bad pattern: {exc}") from None
        return sorted((v, n, rec) for (v, n), rec in list(self.placements.records.items())
                      if rec.get("type") == "quorum" and vre.search(v) and qre.search(n))

    async def grow(self, node: str, strategy: str = "all", vhost_pattern: str = ".*",
                   queue_pattern: str = ".*") -> list[dict]:
        """Add ``node`` to every matching quorum queue it is not a member of (``even``:
        only those with an even number of members). One result per queue."""
        if strategy not in ("all", "even"):
            raise MemberError(400, f"strategy must be 'all' or 'even', not {strategy!r}")
        if not self._running(node):
            raise MemberError(400, f"node {node} is not running")
        results = []
        for vhost, name, rec in self.quorum_queues(vhost_pattern, queue_pattern):
            if node in rec["members"] or (strategy == "even" and len(rec["members"]) % 2):
                continue
            results.append(await self._each(vhost, name, self.add, node))
        return results

    async def shrink(self, node: str) -> list[dict]:
        """Remove ``node`` from every quorum queue it is a member of."""
        return await self._on_every(node, self.delete)

    async def move_all(self, node: str) -> list[dict]:
        """Move every quorum replica ``node`` holds (``forget_cluster_node``)."""
        return await self._on_every(node, self.move)

    async def _on_every(self, node: str, op) -> list[dict]:
        return [await self._each(vhost, name, op, node)
                for vhost, name, rec in self.quorum_queues() if node in rec["members"]]

    async def _each(self, vhost, name, op, node) -> dict:
        try:
            outcome = await op(vhost, name, node)
            ok, text = True, outcome if isinstance(outcome, str) else "ok"
        except MemberError as exc:
            outcome, ok, text = None, False, exc.reason
        # the record just written when there is one (the watch brings it a moment later)
        rec = outcome if isinstance(outcome, dict) else self.placements.get(vhost, name) or {}
        return {"vhost": vhost, "name": name, "size": len(rec.get("members", ())),
                "ok": ok, "result": text}
