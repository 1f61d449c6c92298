"""Replicated (``x-queue-type: quorum``) queues: log shipping, the in-sync set, failover.

Each quorum queue has a placement record (placement.py): its members, its leader, its epoch
and its in-sync set (ISR). On the leader the queue is a ReplicatedQueue whose QueueLog
reports every change it makes to its files (the log's ``tap``); ``Leading`` ships each change
to every member over a link of role "replicate" (one connection per queue and member), each
operation numbered (``s``) within the leader's epoch (``e``). A member (``serve``) writes
the same bytes into the directory this node's log of the queue would have, fsyncs them (in
batches, on a worker thread) and acks the highest operation it has on disk. An operation
shipped while a publish waits for its record to be written is marked urgent (``u``) and
flushed at once; the others (acks' records, summaries, unlinks) within ``LAZY`` or with the
next urgent one, so a member fsyncs about once per publish turn rather than once per
operation. A publish's ticket waits on the last operation of the log write that carried its
record (the tap's ``written``).

Commit rule: a publish is confirmed once the operation carrying its record is fsynced on
every ISR member (the leader's own fsync: ``ticket.stored``), while the ISR holds a majority
of the members, while this node's lease is known to be valid and its epoch is the record's.
A member that has not acked what it was sent within ``ack_timeout`` (or whose link is down
that long) leaves the ISR by a compare-and-swap on the record before anything it lacks is
confirmed; never below a majority (confirms then wait). A member catches up on connecting:
it reports its files (name, size, sha1); the leader copies what it lacks in chunks read on a
worker thread, at the member's pace (catch_up.py: appends only, acknowledging nothing), then
in one synchronous step sends what was written meanwhile, whole files where they differ and
unlinks of those the leader does not have (how a deposed leader drops what was never
committed), and streams from there; once it has acked everything confirmed it is added back
to the ISR (CAS; confirms wait for it from that decision on: ``joining``). A member added at
run time (queue_members.py) is a learner until then: no vote in the majority.

Failover: when the leader's node record goes (its lease expired) an alive ISR member takes
the record by CAS {epoch + 1, leader: itself, isr: the alive ones}; it stops following,
recovers the queue from its files (the restart path) with every message marked redelivered,
and leads. Members refuse frames of an older epoch than they know (the record, or a newer
leader's greeting), so a deposed leader confirms nothing; it also stops confirming when
its lease is in doubt (member.lease_ok) or lost. A node that finds a record naming it
leader while it does not lead (a restart, a handover) takes it by CAS too (epoch + 1). A
graceful stop hands each queue it leads to an ISR member that has everything.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import threading
import time

from ..broker.queue import Queue
from ..store.definitions import decode_args, encode_args
from ..broker.queue_policy import refresh_queue
from . import frames
from .catch_up import CatchUp
from .etcd import EtcdError, EtcdUnavailable
from .link import connect
from .member import STOPPING
from .placement import record
from .remote_queue import RemoteQueue
from .tasks import cancel_all
from .replica import Commits, ReplicaFiles, file_state, fsync_all, majority
from .replicated_queue import ReplicatedQueue, recover_messages

log = logging.getLogger("amqpd.cluster")

ROLE = "replicate"
HELLO, STATE, OP, SYNCED, ACK, REFUSE = 1, 2, 3, 4, 5, 6
RETRY = 0.2
TICK = 0.1
FSYNC_THREADS = 4     # a member's flushes in flight at once (over all its queues)
LAZY = 0.05          # how long a member may hold an operation no confirm waits on unflushed


def send(writer, kind: int, head: dict, payload: bytes = b"") -> bool:
    return put(writer, frames.encode(kind, head, payload))


def put(writer, frame: bytes) -> bool:
    """Write a frame unless the connection is gone (uvloop raises on a closed transport;
    the reading side notices and ends the link)."""
    if writer is None or writer.is_closing():
        return False
    try:
        writer.write(frame)
        return True
    except (RuntimeError, OSError):
        return False


def is_quorum(arguments) -> bool:
    value = (arguments or {}).get("x-queue-type")
    return value in ("quorum", b"quorum")


def choose_members(vhost: str, name: str, me: str, running, size: int) -> list:
    """The declaring node and up to size-1 of the other running nodes, chosen by rendezvous
    hashing on the queue's name (the same nodes whoever computes it)."""
    def weight(node):
        return hashlib.sha1(f"{vhost}\0{name}\0{node}".encode()).digest()
    others = sorted((n for n in running if n != me), key=weight)
    return [me] + others[:max(0, size - 1)]


class Replication:
    def __init__(self, cluster):
        self.cluster = cluster
        self.config = cluster.config
        self.member = cluster.member
        self.placements = cluster.placements
        self.me = cluster.config.node
        self.ack_timeout = float(getattr(self.config, "replica_ack_timeout", None)
                                 or max(1.0, self.config.lease_ttl / 3))
        self.broker = None
        self.store = None
        self.after_change = lambda: None
        self.leading: dict[tuple, Leading] = {}
        self.following: dict[tuple, Following] = {}
        self.epochs: dict[tuple, int] = {}        # highest epoch accepted per queue
        self.busy: set = set()                    # queues with a CAS of ours in flight
        self._tasks: set = set()
        self._watcher = None
        self.stopping = False
        self._stand_in_only = False                # make_queue: never a new leader
        self._flush_jobs = None                    # the members' fsync threads' queue
        self._flush_threads: list = []
        self.definitions: dict[tuple, dict] = {}   # what leaders said of their queues
        cluster.link.handlers[ROLE] = self.serve
        self.placements.listen(self._placement_changed)

    # -- wiring ----------------------------------------------------------------------------
    def attach(self, broker, store, after_change) -> None:
        self.broker, self.store, self.after_change = broker, store, after_change
        broker.replication = self

    def start(self) -> None:
        """The view is loaded: quorum queues recovered by this node's restart (plain
        queues, made before the cluster was joined) become what their record says."""
        self._watcher = asyncio.ensure_future(self._follow_members())
        self._drop_stale_replicas()
        for key in list(self.placements.records):
            self.reconcile(key)

    def _drop_stale_replicas(self) -> None:
        """Copies kept at start-up (store.remove_orphans spares a replica's directory whose
        definition this node's journal lacks) that no record names this node a member of:
        a queue deleted, or this node removed from its members, while it was down."""
        if self.store is None:
            return
        # (a copy whose definition was journaled was recovered as a plain queue's log)
        recovered = {k for k in self.store.logs
                     if (self.placements.get(*k) or {}).get("type") == "quorum"}
        for key in set(self.store.replicas) | recovered:
            rec = self.placements.get(*key)
            if rec is None and (self._local(key) is not None or key in self.definitions):
                continue
            if rec is not None and self.me in rec.get("members", ()):
                continue
            if key in self.leading:
                continue
            log.info("queue %r in vhost %r: dropping this node's copy (not a member)",
                     key[1], key[0])
            self._drop_copy(key)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self) -> None:
        """A graceful stop: hand each queue this node leads to an in-sync member, then
        drop everything."""
        self.stopping = True
        if self.member.etcd is not None and self.member.lease:
            # said first, so that no node starts a link to this one while it goes (the new
            # leaders' shippers wait for a running node)
            try:
                await self.member.set_state(STOPPING)
            except (EtcdError, EtcdUnavailable):
                pass
        if self.leading:
            await asyncio.gather(*(self._hand_over(lead) for lead in list(self.leading.values())),
                                 return_exceptions=True)
        for key in list(self.leading):
            self.step_down(key, "this node stops", replace=False)
        for f in list(self.following.values()):
            f.close()
        self.following.clear()
        tasks = list(self._tasks) + ([self._watcher] if self._watcher else [])
        await cancel_all(tasks, what="replication tasks")
        if self._flush_jobs is not None:
            for _t in self._flush_threads:
                self._flush_jobs.put(None)
            self._flush_jobs = None
            self._flush_threads = []

    # -- a member's fsyncs -----------------------------------------------------------------
    def flush(self, fds: list, dirs: list) -> asyncio.Future:
        """fsync_all on one of this node's fsync threads: a future of the loop, done (None
        or the OSError) when it is. Plain threads and a queue rather than the default
        executor: no concurrent future chained to an asyncio one per flush."""
        loop = asyncio.get_event_loop()
        fut = loop.create_future()
        if self._flush_jobs is None:
            self._flush_jobs = queue.SimpleQueue()
            for i in range(FSYNC_THREADS):
                t = threading.Thread(target=_flush_thread, args=(self._flush_jobs,),
                                     name=f"amqpd-replica-fsync-{i}", daemon=True)
                t.start()
                self._flush_threads.append(t)
        self._flush_jobs.put((loop, fut, fds, dirs))
        return fut

    def local_factory(self, vhost, name, durable, exclusive_owner, auto_delete, arguments):
        """What a queue that lives on this node is made as (forward.py's factory asks): a
        quorum queue is replicated, the others are plain queues."""
        if durable and exclusive_owner is None and is_quorum(arguments):
            return self.make_queue(vhost, name, durable, exclusive_owner, auto_delete,
                                   arguments)
        return Queue(vhost, name, durable, exclusive_owner, auto_delete, arguments)

    def make_queue(self, vhost, name, durable, exclusive_owner, auto_delete, arguments):
        """A quorum queue this node has: its leader (declared here), or a stand-in."""
        key = (vhost.name, name)
        if self.store is not None:
            self.store.replica_path(*key)
        rec = self.placements.get(*key)
        if rec is None and not self.stopping and not self._stand_in_only:
            # declared here: this node leads it; the record is claimed right after
            q = ReplicatedQueue(vhost, name, durable, exclusive_owner, auto_delete, arguments,
                                leading=True)
            size = _int((arguments or {}).get("x-quorum-initial-group-size"), 3)
            running = [n for n, up, _r in self.member.nodes() if up] or [self.me]
            rec = record("quorum", self.me, choose_members(vhost.name, name, self.me,
                                                           running, size))
            asyncio.get_event_loop().call_soon(self._start_new, q, rec)
            return q
        q = ReplicatedQueue(vhost, name, durable, exclusive_owner, auto_delete, arguments)
        asyncio.get_event_loop().call_soon(self.reconcile, key)
        return q

    # -- the leader's side -----------------------------------------------------------------
    def _start_new(self, q, rec) -> None:
        """A queue declared on this node: lead it at once (confirms wait for the claim)."""
        if q.deleted or q.log is None or self.broker is None:
            return
        key = (q.vhost.name, q.name)
        lead = Leading(self, q, rec, claimed=False)
        self.leading[key] = lead
        task = self.spawn(self._claim(key, lead, rec))
        fwd = self._forwarding()
        if fwd is not None and key not in fwd.claiming:
            # the declare-ok and the metadata sync wait for the placement (forward.py)
            fwd.claiming[key] = task
            task.add_done_callback(lambda _t: fwd.claiming.pop(key, None))

    async def _claim(self, key, lead, rec) -> None:
        for attempt in range(20):
            try:
                created, existing = await self.placements.claim(key[0], key[1], rec)
                break
            except (EtcdError, EtcdUnavailable) as exc:
                log.warning("queue %r: cannot claim its placement yet (%s)", key[1], exc)
                await asyncio.sleep(0.25)
        else:
            created, existing = False, None
        if self.leading.get(key) is not lead:
            return
        if created:
            lead.claimed = True
            log.info("queue %r in vhost %r: quorum queue led by %s, members %s", key[1],
                     key[0], self.me, ", ".join(rec["members"]))
            lead.check()
        else:
            log.warning("queue %r: declared on another node at the same time; following it",
                        key[1])
            self.step_down(key, "another node's declare won")
            self.reconcile(key)

    def _forwarding(self):
        fwd = getattr(self.cluster, "forwarding", None)
        return fwd if fwd is not None and getattr(fwd, "broker", None) is not None else None

    def step_down(self, key, why: str, replace: bool = True) -> None:
        """Stop leading the queue: nothing more is confirmed (open publishes are nacked),
        consumers are cancelled, the log is no longer written (its files are left for the
        follower to bring in line with the new leader's) and the queue becomes a stand-in."""
        lead = self.leading.pop(key, None)
        if lead is None:
            return
        log.warning("queue %r in vhost %r: no longer the leader at epoch %d (%s)", key[1],
                    key[0], lead.epoch, why)
        lead.stop()
        q = lead.q
        if self.store is not None:
            self.store.drop_queue_log(*key)
        q._log = None
        q.leading = False
        vhost = q.vhost
        if replace and vhost.queues.get(q.name) is q and not q.deleted:
            fwd = self._forwarding()
            # a proxy to the new leader if the record names one, else a stand-in
            if fwd is None or not fwd.refresh(*key):
                stand_in = ReplicatedQueue(vhost, q.name, True, None, q.auto_delete,
                                           q.arguments)
                self._swap(vhost, q, stand_in)
        self.after_change()

    def _swap(self, vhost, old, new) -> None:
        """``new`` takes ``old``'s place: its bindings, its name; old's consumers are told
        with basic.cancel."""
        fwd = getattr(self.cluster, "forwarding", None)
        if fwd is not None:
            fwd._replace(vhost, old, new)       # (a proxy's subscriptions end too)
            return
        refresh_queue(new)
        for consumer in list(old.consumers):
            consumer.channel.queue_deleted(consumer)
        old.consumers.clear()
        replace = getattr(vhost, "replace_queue", None)
        if replace is not None:
            replace(old, new)
        else:
            for ex in list(old.sources):
                for bid in list(ex.by_dest.get(old, ())):
                    ex.add_binding(new, bid[1], ex.bindings[bid])
                ex.remove_dest(old)
            vhost.queues[new.name] = new
        old.deleted = True

    def promote(self, key, rec) -> bool:
        """This node won the record: recover the queue from its files and lead it."""
        vhost = self.broker.vhosts.get(key[0]) if self.broker is not None else None
        if vhost is not None and key[1] not in vhost.queues:
            self._declare_stand_in(key)
        old = vhost.queues.get(key[1]) if vhost is not None else None
        if old is None:
            log.warning("queue %r: leader by the record, but not declared here yet", key[1])
            return False
        started = time.monotonic()
        f = self.following.pop(key, None)
        if f is not None:
            f.close()
        self.epochs[key] = max(self.epochs.get(key, 0), rec["epoch"])
        if isinstance(old, ReplicatedQueue) and old.leader is not None:
            self.leading.pop(key, None)
            old.leader.stop()
        if self.store is not None:
            self.store.replica_path(*key)
            self.store.drop_queue_log(*key)
        q = ReplicatedQueue(vhost, key[1], True, None, old.auto_delete, old.arguments,
                            leading=True)
        vhost.attach_log(q)
        if q.log is None:
            return False
        count = recover_messages(q, redelivered=True)
        q.counts.not_published = q.next_seq
        self.leading[key] = Leading(self, q, rec, claimed=True)
        self._swap(vhost, old, q)
        log.info("queue %r in vhost %r: leader at epoch %d, %d message(s) recovered in "
                 "%.3f s", key[1], key[0], rec["epoch"], count, time.monotonic() - started)
        self.broker.schedule(q)
        self.after_change()
        return True

    async def _take(self, key, why: str) -> None:
        """Take the queue's leadership by CAS (epoch + 1), then lead it."""
        if key in self.busy:
            return
        self.busy.add(key)
        try:
            rec = self.placements.get(*key)
            revision = self.placements.revisions.get(key)
            if rec is None or revision is None or self.me not in rec.get("isr", ()):
                return
            alive = self.member.alive
            lead = self.leading.get(key)
            if lead is not None and lead.epoch == int(rec["epoch"]):
                return                       # (taken meanwhile: this task was late)
            if rec["leader"] != self.me and rec["leader"] in alive:
                return
            isr = [n for n in rec["isr"] if n == self.me or (n in alive and n != rec["leader"])
                   or (n == rec["leader"] == self.me)]
            new = dict(rec, epoch=int(rec["epoch"]) + 1, leader=self.me, isr=isr)
            try:
                ok = await self.placements.swap(key[0], key[1], revision, new)
            except (EtcdError, EtcdUnavailable) as exc:
                log.warning("queue %r: cannot take the leadership (%s)", key[1], exc)
                return
            if not ok:
                return                       # someone else changed it: the watch brings it
            log.info("queue %r in vhost %r: took the leadership at epoch %d (%s)", key[1],
                     key[0], new["epoch"], why)
            if not self.stopping:
                self.promote(key, new)
        finally:
            self.busy.discard(key)

    async def _hand_over(self, lead) -> None:
        """Graceful stop: let an in-sync member that has everything take the queue."""
        key = lead.key
        lead.active = False                  # nothing more is confirmed here
        deadline = time.monotonic() + 0.5
        target = None
        while time.monotonic() < deadline:
            for name in lead.isr:
                sh = lead.shippers.get(name)
                if name != self.me and sh is not None and sh.streaming \
                        and lead.commits.acked.get(name, 0) >= lead.commits.seq:
                    target = name
                    break
            if target is not None:
                break
            await asyncio.sleep(0.02)
        if target is None:
            # none has everything yet (a loaded machine): any in-sync member has every
            # confirmed message (the commit rule), what it lacks was never confirmed
            alive = self.member.alive
            target = next((n for n in lead.isr if n != self.me and n in alive
                           and (alive[n] or {}).get("state") != STOPPING), None)
        rec = self.placements.get(*key)
        revision = self.placements.revisions.get(key)
        if target is None or rec is None or rec.get("leader") != self.me:
            return
        new = dict(rec, epoch=int(rec["epoch"]) + 1, leader=target,
                   isr=[n for n in lead.isr if n != self.me])
        try:
            if await self.placements.swap(key[0], key[1], revision, new):
                log.info("queue %r in vhost %r: handed over to %s", key[1], key[0], target)
        except (EtcdError, EtcdUnavailable) as exc:
            log.warning("queue %r: could not hand over (%s)", key[1], exc)

    def lease_lost(self) -> None:
        """member.py: this node's lease ran out (a pause, etcd unreachable): whatever it led
        may have a new leader already. Stop confirming; reconcile once the view is fresh."""
        for key in list(self.leading):
            self.step_down(key, "this node's lease was lost")

    # -- following the record --------------------------------------------------------------
    def _placement_changed(self, vhost, name, old, new) -> None:
        if self.broker is None:
            return
        key = (vhost, name)
        if new is None and old is not None and old.get("type") == "quorum" \
                and key not in self.leading:
            self._forget_replica(key)       # the queue was deleted (its leader removes it)
            return
        self.reconcile(key)

    def _forget_replica(self, key) -> None:
        self.definitions.pop(key, None)
        f = self.following.pop(key, None)
        if f is not None:
            f.close()
        if self.store is not None and key in self.store.replicas:
            q = self._local(key)
            if q is not None and getattr(q, "leading", False):
                return
            # (the stand-in's or proxy's definition goes with the cluster's metadata)
            self.store.forget_replica(*key)

    async def _follow_members(self) -> None:
        while True:
            changed = self.member.changed
            await changed.wait()
            for key, rec in list(self.placements.records.items()):
                if rec.get("type") == "quorum" and self.me in rec.get("members", ()):
                    try:
                        self.reconcile(key)
                    except Exception:      # (a full disk, a bug: the other queues, and
                        # this watch, go on; a node that stops watching never fails over)
                        log.exception("queue %r: reconciling its placement failed", key[1])

    def reconcile(self, key) -> None:
        """Bring this node's part in line with the queue's record."""
        if self.broker is None or self.stopping:
            return
        rec = self.placements.get(*key)
        lead = self.leading.get(key)
        if rec is None or rec.get("type") != "quorum":
            return
        epoch = int(rec.get("epoch", 0))
        f = self.following.get(key)
        if f is not None and f.epoch < epoch:
            f.close()                        # fenced: an older leader's stream
        if self.me not in rec.get("members", ()):
            if lead is not None:
                self.step_down(key, "no longer a member")
            self._not_a_member(key)
            return
        if rec.get("leader") == self.me:
            if lead is not None and lead.epoch == epoch:
                if lead.claimed:
                    lead.resize(rec, self.placements.revisions.get(key, 0))
                return
            if lead is not None and not lead.claimed and epoch == 1:
                return
            if lead is not None:
                self.step_down(key, f"epoch {epoch} in the record")
            self._ensure_stand_in(key)
            if self.member.lease_ok() and self._local_or_known(key):
                self.spawn(self._take(key, "the record names this node"))
            return
        if lead is not None:
            self.step_down(key, f"{rec.get('leader')} leads at epoch {epoch}")
        self._ensure_stand_in(key)
        if rec.get("leader") not in self.member.alive and self.me in rec.get("isr", ()) \
                and self.member.lease_ok() and self._local_or_known(key):
            self.spawn(self._take(key, f"leader {rec.get('leader')} is gone"))

    def _not_a_member(self, key) -> None:
        """This node was removed from the queue's members (queue_members.py): it follows
        it no more and its copy goes (its queue object stays: a proxy to the leader)."""
        f = self.following.pop(key, None)
        if f is not None:
            f.close()
        if self.store is not None and key not in self.leading \
                and (key in self.store.replicas or key in self.store.logs):
            # (a copy recovered as a plain queue's log at start holds descriptors too)
            log.info("queue %r in vhost %r: this node is no longer a member; its copy is "
                     "removed", key[1], key[0])
            self._drop_copy(key)

    def _drop_copy(self, key) -> None:
        """This node's files of the queue go: its log (descriptors of one recovered as a
        plain queue's at start) and its directory."""
        self.store.drop_queue_log(*key)
        self.store.forget_replica(*key)

    def _local(self, key):
        vhost = self.broker.vhosts.get(key[0]) if self.broker is not None else None
        return vhost.queues.get(key[1]) if vhost is not None else None

    def _local_or_known(self, key):
        return self._local(key) is not None or key in self.definitions

    def _declare_stand_in(self, key) -> None:
        """This node takes over a queue it has not heard of yet from the cluster's metadata
        (which brings a declare up to a second later): declare it from what its leader said
        in its greeting. (Not at the greeting itself: a declare here would be pushed to the
        cluster and could bring back a queue deleted meanwhile.)"""
        vhost = self.broker.vhosts.get(key[0])
        head = self.definitions.get(key)
        if vhost is None or key[1] in vhost.queues or head is None:
            return
        self._stand_in_only = True
        try:
            vhost.declare_queue(key[1], None, False, True, False, bool(head.get("ad")),
                                decode_args(head["args"]))
        except Exception as exc:             # noqa: BLE001 (the metadata brings it later)
            log.warning("queue %r: cannot declare it from its leader's description (%s)",
                        key[1], exc)
        finally:
            self._stand_in_only = False
        self.after_change()

    def _ensure_stand_in(self, key) -> None:
        """A plain queue recovered by a restart (the factory was not installed yet) is
        replaced by a stand-in: its log's files are the follower's."""
        vhost = self.broker.vhosts.get(key[0])
        q = vhost.queues.get(key[1]) if vhost is not None else None
        if self.store is not None and key not in self.leading:
            self.store.replica_path(*key)
            self.store.drop_queue_log(*key)      # (a restart's plain queue had it open)
        if q is None or isinstance(q, ReplicatedQueue) or not is_quorum(q.arguments) \
                or isinstance(q, RemoteQueue):
            return
        q.log = None
        self._swap(vhost, q, ReplicatedQueue(vhost, key[1], True, None, q.auto_delete,
                                             q.arguments))

    def follower_queue_deleted(self, q) -> None:
        """The queue was deleted (through the cluster's metadata) where this node follows
        it: its files go, and its definition from this node's journal."""
        key = (q.vhost.name, q.name)
        self.definitions.pop(key, None)
        f = self.following.pop(key, None)
        if f is not None:
            f.close()
        if self.store is not None:
            q.vhost.journal({"op": "queue.delete", "name": q.name})
            self.store.forget_replica(*key)

    # -- the member's side -----------------------------------------------------------------
    async def serve(self, peer: str, reader, writer) -> None:
        """A leader ships a queue's files to this node (link role "replicate")."""
        try:
            kind, head, _ = await asyncio.wait_for(frames.read(reader), 10)
        except (asyncio.TimeoutError, frames.FrameError):
            return
        if kind != HELLO or self.broker is None or self.store is None:
            return
        key = (str(head.get("v")), str(head.get("q")))
        epoch = int(head.get("e", 0))
        rec = self.placements.get(*key)
        known = max(int(rec["epoch"]) if rec else 0, self.epochs.get(key, 0))
        lead = self.leading.get(key)
        if lead is not None:
            known = max(known, lead.epoch)
        if epoch < known or (lead is not None and lead.epoch == epoch) or self.stopping \
                or (rec is not None and self.me not in rec.get("members", ())):
            # (not a member, by the record this node has: removed, or added and the watch
            # has not brought that yet; the leader tries again)
            send(writer, REFUSE, {"epoch": known})
            return
        if lead is not None:
            self.step_down(key, f"{peer} leads at epoch {epoch}")
        self.epochs[key] = epoch
        old = self.following.pop(key, None)
        if old is not None:
            old.close()
        self._ensure_stand_in(key)
        if "args" in head:
            self.definitions[key] = {"ad": head.get("ad"), "args": head["args"]}
        path = self.store.replica_path(*key)
        f = Following(self, key, peer, epoch, ReplicaFiles(path), writer)
        self.following[key] = f
        try:
            # (on a worker thread: it reads and hashes every file of the copy)
            state = await asyncio.get_event_loop().run_in_executor(None, file_state, path)
            if f.closed:
                return
            send(writer, STATE, {"files": state})
            syncer = asyncio.ensure_future(f.sync_loop())
            try:
                while True:
                    kind, head, payload = await frames.read(reader)
                    if f.closed or self.epochs.get(key, 0) != epoch \
                            or int(head.get("e", -1)) != epoch:
                        send(writer, REFUSE, {"epoch": self.epochs.get(key, 0)})
                        break
                    if kind == OP:
                        op = head.get("op")
                        name = head.get("n")
                        if op == "append":
                            f.files.append(name, int(head["o"]), payload)
                        elif op == "whole":
                            f.files.whole(name, payload)
                        elif op == "unlink":
                            f.files.unlink(name)
                        elif op == "truncate":
                            f.files.truncate(name, int(head["o"]))
                    elif kind == SYNCED:
                        f.synced = True
                    else:
                        continue
                    f.applied = int(head.get("s", 0))
                    if kind == SYNCED or head.get("u"):
                        f.wake.set()
                    else:
                        f.later()
            finally:
                syncer.cancel()
        except (asyncio.IncompleteReadError, frames.FrameError, OSError, ValueError) as exc:
            if not isinstance(exc, asyncio.IncompleteReadError) and not f.closed:
                log.warning("queue %r: replication from %s stopped: %s", key[1], peer, exc)
        finally:
            if self.following.get(key) is f:
                del self.following[key]
            f.close()


class Following:
    """This node's copy of a queue led by ``leader`` at ``epoch``."""

    def __init__(self, repl, key, leader, epoch, files, writer):
        self.repl, self.key, self.leader, self.epoch = repl, key, leader, epoch
        self.files = files
        self.writer = writer
        self.applied = 0
        self.synced = False        # this link's final catch-up step (SYNCED) was applied
        self.wake = asyncio.Event()
        self.closed = False
        self.timer = None

    def later(self) -> None:
        """An operation no confirm waits on (an ack's record, a segment summary, an unlink):
        flushed with the next urgent one or within LAZY, whichever comes first. (An
        acknowledgement covers every operation up to its number, so a confirm never waits
        on less than the fsync of the operation that carried its record.)"""
        if self.timer is None and not self.wake.is_set():
            self.timer = asyncio.get_event_loop().call_later(LAZY, self._due)

    def _due(self) -> None:
        self.timer = None
        self.wake.set()

    async def sync_loop(self) -> None:
        while not self.closed:
            await self.wake.wait()
            self.wake.clear()
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            upto, synced = self.applied, self.synced   # (what the flush below covers)
            try:
                fds, dirs = self.files.sync_targets()
                if fds or dirs:
                    error = await self.repl.flush(fds, dirs)
                    if error is not None:
                        raise error
            except OSError as exc:
                if self.closed:
                    return             # (this copy was removed meanwhile: not a member)
                # nothing more is acked: the leader drops this member from the in-sync set
                # and a new link starts over from what is on disk
                log.warning("queue %r: cannot write its copy (%s); replication stopped",
                            self.key[1], exc)
                self.close()
                return
            if self.closed:
                return
            # "y": the link's whole catch-up is on disk (the leader lets a member into the
            # in-sync set only after such an acknowledgement on its current link)
            send(self.writer, ACK, {"s": upto, "y": 1} if synced else {"s": upto})

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.writer.close()
            self.files.close()


class Leading:
    """This node leads a queue at ``epoch``: its log's changes go to every member."""

    def __init__(self, repl, q, rec, claimed: bool = True):
        self.repl = repl
        self.q = q
        self.key = (q.vhost.name, q.name)
        self.epoch = int(rec["epoch"])
        self.members = list(rec["members"])
        self.learners = list(rec.get("learners", ()))   # added, not yet caught up once
        self.isr = list(rec["isr"])
        self.joining: set = set()            # members whose way into the ISR is in flight
        self.join_rev = 0                    # the record's revision a join's swap compared
        self.swapped = 0                     # the revision of this leader's last swap
        self.commits = Commits(self.voters())
        self.claimed = claimed
        self.active = True
        self.changing = False
        self._check_soon = False
        q.leader = self
        q.log.tap = self
        self.shippers = {m: Shipper(self, m) for m in self.members if m != repl.me}
        self.ticker = repl.spawn(self._tick())

    @property
    def me(self) -> str:
        return self.repl.me

    # -- the log's tap ---------------------------------------------------------------------
    def append(self, name: str, offset: int, data) -> None:
        self._ship({"op": "append", "n": name, "o": offset}, bytes(data))

    def truncate(self, name: str, size: int) -> None:
        self._ship({"op": "truncate", "n": name, "o": size})

    def unlink(self, name: str) -> None:
        self._ship({"op": "unlink", "n": name})

    def rewrite(self, name: str) -> None:
        try:
            with open(os.path.join(self.q.log.path, name), "rb") as fh:
                data = fh.read()
        except OSError:
            self._ship({"op": "unlink", "n": name})
            return
        self._ship({"op": "whole", "n": name}, data)

    def written(self) -> None:
        """The log wrote its buffered records: the open tickets wait on what was shipped."""
        self.commits.carry()

    def _ship(self, head: dict, payload: bytes = b"") -> None:
        commits = self.commits
        if commits.unassigned:
            head["u"] = 1    # urgent: a confirm waits on it (see Following.sync_loop)
        head["s"] = commits.op(time.monotonic(), carry=False)
        head["e"] = self.epoch
        frame = frames.encode(OP, head, payload)
        for sh in self.shippers.values():
            if sh.streaming:
                put(sh.writer, frame)
        if not self._check_soon:
            # (the tap runs inside the commit's write: confirms go out after it)
            self._check_soon = True
            asyncio.get_event_loop().call_soon(self.check)

    # -- the commit rule -------------------------------------------------------------------
    def current(self) -> bool:
        rec = self.repl.placements.get(*self.key)
        if rec is None:
            return self.claimed and self.epoch == 1
        return rec.get("leader") == self.me and int(rec.get("epoch", 0)) == self.epoch

    def check(self) -> None:
        self._check_soon = False
        if not (self.active and self.claimed and self.repl.member.lease_ok()
                and self.current()):
            return
        for ticket in self.commits.ready(self.isr, self.me, self.joining):
            ticket.resolve(True)

    # -- the in-sync set -------------------------------------------------------------------
    async def _tick(self) -> None:
        while self.active:
            await asyncio.sleep(TICK)
            if self.changing or not self.claimed:
                continue
            self.check()                  # (a lease refreshed meanwhile)
            rec = self.repl.placements.get(*self.key)
            if rec is None or rec.get("leader") != self.me \
                    or int(rec.get("epoch", 0)) != self.epoch:
                continue
            now = time.monotonic()
            timeout = self.repl.ack_timeout
            isr = list(self.isr)
            for name in isr:
                if name == self.me:
                    continue
                sh = self.shippers.get(name)
                down = sh is None or (not sh.streaming and sh.down_since is not None
                                      and now - sh.down_since > timeout)
                if (down or self.commits.lag(name, now) > timeout) \
                        and len(isr) - 1 >= majority(self.voters()):
                    await self._set_isr([n for n in isr if n != name],
                                        f"{name} is behind or unreachable")
                    break
            else:
                confirmed = self.commits.confirmed
                for name in self.members:
                    sh = self.shippers.get(name)
                    # It has everything confirmed so far (its catch-up on this link is on
                    # its disk, and its acks reach what was ever confirmed); from now on
                    # confirms wait for it too (``joining``), so it has everything
                    # confirmed once in the set. (Not "everything shipped": under a steady
                    # stream of publishes a member never catches up with the last operation
                    # at a tick.)
                    if name not in isr and sh is not None and sh.streaming \
                            and sh.synced_acked and name not in self.joining \
                            and self.commits.acked.get(name, 0) >= confirmed:
                        self.joining.add(name)
                        self.join_rev = self.repl.placements.revisions.get(self.key, 0)
                        if await self._set_isr(isr + [name], f"{name} caught up"):
                            self.joining.discard(name)
                        # else it stays joining until a record newer than the one the
                        # swap compared arrives (``resize``): a swap whose answer was lost
                        # may have landed, and then confirms must already wait for it
                        break

    def voters(self) -> list:
        """The members a majority is counted over: not those added and still catching up
        (RabbitMQ's non-voting members), or adding one to a queue of one member would stop
        its confirms until the copy is complete."""
        return [m for m in self.members if m not in self.learners]

    async def _set_isr(self, isr: list, why: str) -> bool:
        """Swap the record's in-sync set for ``isr``; whether it was."""
        rec = self.repl.placements.get(*self.key)
        revision = self.repl.placements.revisions.get(self.key)
        if rec is None or revision is None:
            return False
        new = dict(rec, isr=isr)
        learners = [n for n in rec.get("learners", ()) if n not in isr]
        if learners:
            new["learners"] = learners
        else:
            new.pop("learners", None)          # (a learner in the set votes from now on)
        self.changing = True
        try:
            ok = await self.repl.placements.swap(self.key[0], self.key[1], revision, new)
        except (EtcdError, EtcdUnavailable) as exc:
            log.warning("queue %r: cannot change its in-sync set (%s)", self.key[1], exc)
            ok = False
        finally:
            self.changing = False
        if ok:
            # records older than this one (the watch may still bring some) are not applied
            self.swapped = max(self.swapped, int(ok))
        if ok and self.active:
            self.isr = isr
            self.learners = learners
            self.commits.members = self.voters()
            log.info("queue %r in vhost %r: in-sync set %s (%s)", self.key[1], self.key[0],
                     ", ".join(isr), why)
            self.check()
        return bool(ok)

    def resize(self, rec: dict, revision: int) -> None:
        """The record changed at this leader's epoch: its members (queue_members.py: one
        added, one removed) or its in-sync set (this leader's own swap, or a removed
        member's). A new member gets a shipper and joins the in-sync set once it caught up
        (``_tick``); a removed one's link ends and confirms no longer wait for it. A record
        older than one this leader wrote (the view lags behind its own swap) is not taken."""
        if revision < self.swapped:
            return
        if revision > self.join_rev and not self.changing:
            self.joining.clear()              # (a join whose swap failed: decided now)
        members = list(rec.get("members", self.members))
        if members != self.members:
            for name in members:
                if name != self.me and name not in self.shippers:
                    self.shippers[name] = Shipper(self, name)
            for name in [n for n in self.shippers if n not in members]:
                self.shippers.pop(name).stop()
                self.commits.acked.pop(name, None)
                self.joining.discard(name)
            self.members = members
        self.learners = [n for n in rec.get("learners", ()) if n in members]
        self.commits.members = self.voters()
        self.isr = [n for n in rec.get("isr", self.isr) if n in members]
        self.check()

    def refused(self, epoch: int) -> None:
        """A member knows a newer epoch: another node leads now."""
        if epoch > self.epoch and self.repl.leading.get(self.key) is self:
            self.repl.step_down(self.key, f"a member knows epoch {epoch}")

    def deleted(self) -> None:
        """The queue was deleted here (its leader): so is its record."""
        if self.repl.leading.get(self.key) is self:
            del self.repl.leading[self.key]
        self.stop()

        async def remove():
            try:
                await self.repl.placements.remove(*self.key)
            except (EtcdError, EtcdUnavailable) as exc:
                log.warning("queue %r: could not remove its placement (%s)", self.key[1], exc)
        self.repl.spawn(remove())

    def stop(self) -> None:
        self.active = False
        for ticket in self.commits.fail_all():
            ticket.resolve(False)
        for sh in self.shippers.values():
            sh.stop()
        self.ticker.cancel()
        if self.q.leader is self:
            self.q.leader = None
        if self.q.log is not None and self.q.log.tap is self:
            self.q.log.tap = None


BULK_HIGH = 2 << 20       # a catch-up's unsent bytes above which it waits for the member
FINAL_BYTES = 2 << 20     # left for the final (synchronous) step of a catch-up, at most...
ROUNDS = 20               # ...or after this many passes of the bulk copy...
FINAL_MAX = 16 << 20      # ...this much (a member slower than the log's writes goes on)
STREAM_LIMIT = 64 << 20   # a streaming member's unsent bytes above which its link is dropped
STATE_TIMEOUT = 300       # a member hashes its copy (maybe gigabytes) before it answers


class Shipper:
    """The leader's connection to one member for one queue.

    On connecting, the member reports its files (STATE); the leader brings them in line
    with its own in two phases. The bulk (``_catch_up``, catch_up.py) copies what the member
    lacks in chunks read on a worker thread, waiting for the member between chunks (drain),
    while this node goes on serving its clients: memory stays at a few chunks whatever the
    backlog. Then one synchronous step (``_sync``) sends what is left (the tails written
    meanwhile, files replaced, unlinked or held differently by the member), SYNCED, and
    switches to streaming: every change after that step is streamed (Leading._ship), every
    change before it is in the files it read.

    Acknowledgements: an operation sent during the bulk carries ``s`` 0, so the member's
    ACK after flushing it claims nothing (``acked`` only grows). It must not carry the
    current operation number: the member would acknowledge, say, s=40 after flushing a chunk
    while it lacks operations before 40 (they come later, or in the final step), and a
    member still in the in-sync set would then count towards confirming publishes it does
    not have. The final step's operations and SYNCED carry ``s`` = the operation number at
    that step, as before: once the member has flushed them its files hold every operation
    up to it. Meanwhile the member is not streaming, so it is not added to the in-sync set,
    and if it is in it, it leaves it by the usual rules (down, or not acknowledging within
    the timeout) when the bulk takes long.

    Back-pressure: once streaming, a member whose connection's unsent bytes pass
    STREAM_LIMIT (it reads or flushes too slowly) has its link dropped at once (``_overflow``):
    it stops acknowledging, so it leaves the in-sync set by the timeout, and it catches up
    from the files when the link is made again."""

    def __init__(self, lead: Leading, peer: str):
        self.lead = lead
        self.peer = peer
        self.writer = None
        self.streaming = False
        self.down_since = time.monotonic()
        self.catch_up = None              # the catch-up in progress (its ``copied`` bytes)
        self.synced_acked = False         # the member acked this link's catch-up, flushed
        self.warned = False               # a drop for a full buffer was logged as a warning
        self.task = lead.repl.spawn(self.run())

    def stop(self) -> None:
        self.task.cancel()
        if self.writer is not None:
            self.writer.close()

    async def run(self) -> None:
        lead = self.lead
        repl = lead.repl
        while lead.active:
            record_ = repl.member.alive.get(self.peer) or {}
            address = record_.get("cluster") or {}
            if not address.get("port") or record_.get("state") == STOPPING:
                changed = repl.member.changed
                try:
                    await asyncio.wait_for(changed.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
                continue
            writer = None
            cu = None
            self.synced_acked = False
            try:
                reader, writer = await connect(repl.config, address.get("host"),
                                               address["port"], self.peer, ROLE)
                send(writer, HELLO, {"v": lead.key[0], "q": lead.key[1],
                                             "e": lead.epoch, "leader": repl.me,
                                             "ad": lead.q.auto_delete,
                                             "args": encode_args(lead.q.arguments)})
                kind, head, _ = await asyncio.wait_for(frames.read(reader), STATE_TIMEOUT)
                if kind == REFUSE:
                    lead.refused(int(head.get("epoch", 0)))
                    raise ConnectionError("refused")
                if kind != STATE or not lead.active:
                    raise ConnectionError("no state")
                cu = await self._catch_up(writer, head.get("files") or {})
                self._sync(writer, cu)
                cu.close()
                cu = self.catch_up = None
                while True:
                    kind, head, _ = await frames.read(reader)
                    if kind == ACK:
                        s = int(head.get("s", 0))
                        if head.get("y"):
                            self.synced_acked = True
                        if s > lead.commits.acked.get(self.peer, 0):
                            lead.commits.acked[self.peer] = s
                            if self.peer in lead.isr or self.peer in lead.joining:
                                lead.check()
                    elif kind == REFUSE:
                        lead.refused(int(head.get("epoch", 0)))
                        break
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                    frames.FrameError, ValueError):
                pass
            finally:
                if cu is not None:
                    cu.close()                # (after a thread's read still running, if any)
                    self.catch_up = None
                if self.streaming or self.down_since is None:
                    self.down_since = time.monotonic()
                self.streaming = False
                self.synced_acked = False
                self.writer = None
                if writer is not None:
                    writer.close()
            await asyncio.sleep(RETRY)

    def _alive(self, writer) -> None:
        if not self.lead.active or writer.is_closing():
            raise ConnectionError("the catch-up ended")

    async def _catch_up(self, writer, theirs: dict) -> CatchUp:
        """The bulk: copy what the member lacks, a chunk at a time (read on a worker
        thread), waiting for the member between chunks, in passes (each copies what the
        log wrote during the one before) until what is left is small: FINAL_BYTES, or
        FINAL_MAX after ROUNDS passes. A member that never gets there (it takes the bytes
        more slowly than the log writes them) goes on copying: it is out of the in-sync set
        meanwhile, and the leader's memory holds a few chunks. Only ever extends the
        member's files (catch_up.py says why that is safe whatever the log does meanwhile)."""
        lead = self.lead
        qlog = lead.q.log
        if qlog is None:
            raise ConnectionError("the queue has no log here any more")
        cu = self.catch_up = CatchUp(qlog.path, theirs)
        cu.started = time.monotonic()
        try:
            loop = asyncio.get_event_loop()
            writer.transport.set_write_buffer_limits(high=BULK_HIGH)
            head = {"op": "append", "s": 0, "e": lead.epoch}     # s 0: see the class
            rounds = 0
            while True:
                todo = cu.survey()
                if all(c.check is None for c in todo) and (
                        cu.pending <= FINAL_BYTES
                        or (rounds >= ROUNDS and cu.pending <= FINAL_MAX)):
                    break
                rounds += 1
                for copy in todo:
                    if copy.check is not None:
                        ok = await loop.run_in_executor(None, cu.threaded(cu.verify, copy))
                        self._alive(writer)
                        if not ok:
                            continue
                    while copy.sent < copy.limit:
                        op = await loop.run_in_executor(None, cu.threaded(cu.read, copy))
                        self._alive(writer)
                        send(writer, OP, dict(head, n=op[1], o=op[2]), op[3])
                        await writer.drain()
            await writer.drain()
            self._alive(writer)
        except BaseException:
            cu.close()
            self.catch_up = None
            raise
        return cu

    def _sync(self, writer, cu: CatchUp) -> None:
        """The final step, synchronous: what the bulk left (CatchUp.plan), SYNCED, then
        stream. Every change after it is streamed, every one before is in the files read
        here; its operations carry the current operation number (see the class)."""
        lead = self.lead
        ops = cu.plan()
        seq = lead.commits.seq
        final = sum(len(op[-1]) for op in ops if op[0] in ("append", "whole"))
        # (the final step's own bytes do not count against the member)
        self._watch(writer, writer.transport.get_write_buffer_size() + final + 256 * len(ops)
                    + STREAM_LIMIT)
        for op in ops:
            kind, name = op[0], op[1]
            head = {"op": kind, "n": name, "s": seq, "e": lead.epoch}
            payload = b""
            if kind == "append":
                head["o"], payload = op[2], op[3]
            elif kind == "whole":
                payload = op[2]
            send(writer, OP, head, payload)
        send(writer, SYNCED, {"s": seq, "e": lead.epoch})
        self.writer = writer
        self.streaming = True
        self.down_since = None
        if cu.copied or final > 64 << 10:
            log.info("queue %r in vhost %r: member %s caught up: %.1f MiB copied in %.2f s, "
                     "%.1f MiB in the final step", lead.key[1], lead.key[0], self.peer,
                     cu.copied / 2**20, time.monotonic() - cu.started, final / 2**20)

    def _watch(self, writer, high: int) -> None:
        """Drop the link when its unsent bytes pass ``high``: the transport tells its
        protocol (pause_writing) the moment a write takes its buffer above the high-water
        mark. Set before the final step's writes, after the bulk's last drain (so the
        protocol is not paused: the next crossing is reported)."""
        transport = writer.transport
        protocol = transport.get_protocol()
        pause = protocol.pause_writing

        def pause_writing():
            pause()
            self._overflow(writer)
        protocol.pause_writing = pause_writing
        transport.set_write_buffer_limits(high=high)

    def _overflow(self, writer) -> None:
        if self.writer is not writer or not self.streaming:
            return
        # no more operations go to it from now on (Leading._ship writes only to streaming
        # members); it stops acknowledging, so it leaves the in-sync set by the timeout, and
        # catches up from the files on the next link
        self.streaming = False
        self.down_since = time.monotonic()
        size = writer.transport.get_write_buffer_size()
        lead = self.lead
        say = log.info if self.warned else log.warning
        self.warned = True
        say("queue %r in vhost %r: member %s is too slow (%d MiB unsent); its link is "
            "dropped and it will catch up from the files", lead.key[1], lead.key[0],
            self.peer, size >> 20)
        # (not inside the transport's write that reported it)
        asyncio.get_event_loop().call_soon(writer.transport.abort)


def _flush_thread(jobs) -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        loop, fut, fds, dirs = job
        try:
            fsync_all(fds, dirs)
            error = None
        except OSError as exc:
            error = exc
        except BaseException as exc:          # (reported like a failed write)
            error = OSError(str(exc))
        try:
            loop.call_soon_threadsafe(_settle, fut, error)
        except RuntimeError:                  # the loop is closed: nobody waits
            pass


def _settle(fut, error) -> None:
    if not fut.done():
        fut.set_result(error)


def _int(value, default: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return default
    return n if n > 0 else default
