"""A quorum queue of a cluster (``x-queue-type: quorum``), as one node holds it.

On its leader the queue is a ``Queue`` whose log's file changes are shipped to the other
members (replication.py): ``enqueue`` answers a ``Ticket`` confirmed once every in-sync
member (this node included: ``ticket.stored``) has the message on disk. On the other members
it is a stand-in that holds no log of its own (the replication follower writes the leader's
files where this node's log of the queue would be) and accepts no publish: nothing is ever
confirmed that is not replicated. (Forwarding, stage 3, replaces the stand-in by a proxy to
the leader.)

RabbitMQ's quorum queues keep every message, whatever its delivery mode: so does this one.

With ``x-delivery-limit`` every delivery writes a DELIVERED marker (a plain queue writes one,
at the first), so a new leader counts them (``delivery_counts``) and the limit and
``x-delivery-count`` go on from where the old leader was. (A compaction keeps one marker
per message: a count then restarts at 1.)
"""
from __future__ import annotations

import os
from array import array
from collections import Counter

from ..broker.message import Entry, Message, from_route
from ..broker.publish import REJECTED, STORED, Ticket
from ..broker.queue import Queue, with_delivery_count
from ..store import records
from ..wire.properties import EXPIRES, FLAGS_HIGH


class ReplicatedQueue(Queue):
    leading = False
    leader = None            # replication.Leading while this node leads the queue
    _log = None

    def __init__(self, vhost, name, durable, exclusive_owner, auto_delete, arguments,
                 leading: bool = False):
        self.leading = leading
        super().__init__(vhost, name, durable, exclusive_owner, auto_delete, arguments)

    def __repr__(self):
        return f"<ReplicatedQueue {self.name!r} {'leader' if self.leading else 'follower'}>"

    @property
    def log(self):
        return self._log

    @log.setter
    def log(self, value):
        if value is not None and not self.leading:
            # a follower's copy: its files belong to the replication follower
            store = self.vhost.broker.store
            if store is not None:
                store.replica_path(self.vhost.name, self.name)
                store.drop_queue_log(self.vhost.name, self.name)
            value = None
        self._log = value

    recovered_counts = None          # seq -> deliveries made by an earlier leader

    def delivering(self, entry) -> None:
        counts = self.recovered_counts
        if counts:
            n = counts.pop(entry.seq, 0)
            if n:
                entry.deliveries += n
                entry.message = with_delivery_count(entry.message, n)
        again = entry.redelivered and entry.segment is not None and self._log is not None \
            and self.opts.delivery_limit is not None
        super().delivering(entry)
        if again:                    # every delivery counted on disk, so on every member
            self._log.delivered(entry.seq)
            self.vhost.broker.commit.mark_dirty(self._log)

    def enqueue(self, message):
        if not self.leading or self.leader is None or self._log is None:
            return REJECTED
        if not message.persistent:
            copy = Message(message.exchange, message.routing_key, message.raw_route,
                           message.header, message.body)
            copy._persistent = True
            message = copy
        verdict = super().enqueue(message)
        if verdict is STORED:
            ticket = Ticket()
            ticket.stored = True
            self.leader.commits.add(ticket)
            return ticket
        return verdict

    def discard(self) -> None:
        super().discard()
        if self.leader is not None:
            self.leader.deleted()
        elif not self.leading:
            repl = getattr(self.vhost.broker, "replication", None)
            if repl is not None:
                repl.follower_queue_deleted(self)


def delivery_counts(directory: str) -> Counter:
    """{seq: DELIVERED markers} over the log's segments."""
    counts: Counter = Counter()
    for name in sorted(os.listdir(directory)):
        if not (name.endswith(".seg") and name[:-4].isdigit()):
            continue
        try:
            with open(os.path.join(directory, name), "rb") as f:
                data = f.read()
        except OSError:
            continue
        for kind, seq, _at, _end in records.scan_positions(data):
            if kind == records.DELIVERED:
                counts[seq] += 1
    return counts


def recover_messages(q: Queue, redelivered: bool) -> int:
    """Load a queue's messages from its log (the restart path of Broker.recover, for one
    queue): its files were written by this node as leader or as a follower. With
    ``redelivered`` every message comes back marked redelivered (a failover: the old leader
    may have handed any of them out)."""
    broker = q.vhost.broker
    if q.opts.delivery_limit is not None and isinstance(q, ReplicatedQueue):
        q.recovered_counts = delivery_counts(q.log.path) or None
    if q.pager is not None:
        from ..store.paging import REDELIVERED
        limited = q.opts.max_bytes is not None
        runs, expiries, top = q.log.recover_positions(sizes=limited,
                                                      prios=bool(q.opts.max_priority))
        if redelivered:
            for run in runs:
                run.offs = array("I", [o | REDELIVERED for o in run.offs])
        n = q.recover_paged(runs, expiries, broker.clock(), broker.wallclock())
        if limited:
            q.ready_bytes = q.log.recovered_bytes
        q.next_seq = max(q.next_seq, top)
        return n
    live, top = q.log.recover()
    routes: dict = {}
    now, wall = broker.clock(), broker.wallclock()
    for seq, route, header, body, delivered, segment, expiry in live:
        entry = Entry(seq, from_route(route, header, body, routes), delivered or redelivered,
                      segment)
        if q.tracks_entries or header[FLAGS_HIGH] & EXPIRES:
            deadline = None if expiry is None else now + (expiry / 1000.0 - wall)
            q._prepare(entry, deadline)
        q.ready.append(entry)
    q.next_seq = max(q.next_seq, top)
    return len(live)
