"""The leader's side of forwarding: one ``Session`` per origin's link, serving the proxies of
another node on this node's queues.

A forwarded publish is enqueued here and confirmed as the queue decides: at once, after this
node's fsync for a persistent message, or when a replicated queue's Ticket is done. A
subscription is a consumer of the queue whose channel is the Session: its credit is the
client consumer's prefetch (acks give it back) or, for a consumer without a prefetch or
without acks, a window of WINDOW messages given back as the origin hands them out. A link
that drops requeues what the origin held, as a channel closing does.
"""
from __future__ import annotations

import logging
from collections import deque

from .. import errors
from ..broker.consumer import Consumer
from ..broker.message import Message
from ..broker.publish import ACCEPTED, DUPLICATE, REJECTED, STORED
from ..broker.stats import Counts, retire_consumer
from .forward_wire import (ACK, CONFIRM, DELIVER, GIVE_BACK, REQUEUE, Wire, _confirm,
                           _deliver, ctl_record)
from .remote_queue import RemoteQueue

log = logging.getLogger("amqpd.cluster")

WINDOW = 256                  # deliveries in flight to a consumer without prefetch


class _LinkConn:
    """What the management API reads of a consumer's connection, for a link's consumers."""
    io = None
    peer_ip = None
    user = ""
    client_properties: dict = {}

    def __init__(self, node: str):
        self.peer = f"{node} (cluster link)"


class LinkConsumer(Consumer):
    __slots__ = ("sid", "window", "inflight", "by_ack")


class Session(Wire):
    """The leader's side of one origin's link: the channel-like object of the origin's
    subscriptions (``can_deliver``, ``deliver``, ``queue_deleted``, ``unacked``), and the
    publishes it forwarded, confirmed as the queues decide."""

    number = 0

    def __init__(self, forwarding, node: str, writer=None):
        super().__init__(forwarding.loop)
        self.fw = forwarding
        self.broker = forwarding.broker
        self.node = node
        self.writer = writer
        self.conn = _LinkConn(node)
        self.counts = Counts()
        self.queues: dict = {}        # qid -> (vhost, name)
        self.consumers: dict = {}     # sid -> LinkConsumer
        self.unacked: dict = {}       # tag -> (queue, entry, consumer or None)
        self.next_tag = 0
        self.pending_sync: deque = deque()   # (corr, write generation) awaiting the fsync
        self.tickets: list = []       # (corr, Ticket, generation or 0)
        self.sent_stats: dict = {}    # qid -> figures last pushed
        self.closed = False

    def queue(self, qid: int):
        where = self.queues.get(qid)
        if where is None:
            return None
        vhost = self.broker.vhosts.get(where[0])
        q = vhost.queues.get(where[1]) if vhost is not None else None
        if q is None or isinstance(q, RemoteQueue):
            return None                # not here, or not led here any more
        return q

    # -- publishes ------------------------------------------------------------------------
    def on_publish(self, qid, corr, route, header, body) -> None:
        q = self.queue(qid)
        if q is None or q.deleted:
            self.put(_confirm.pack(CONFIRM, corr, 0))
            return
        exchange, key = self.fw.route(route)
        verdict = q.enqueue(Message(exchange, key, route, header, body))
        if verdict is STORED:
            commit = self.broker.commit
            if not self.pending_sync:
                commit.wait(self)
            self.pending_sync.append((corr, commit.next_gen))
        elif verdict is ACCEPTED or verdict is DUPLICATE:
            self.put(_confirm.pack(CONFIRM, corr, 1))
        elif verdict is REJECTED:
            self.put(_confirm.pack(CONFIRM, corr, 0))
        else:                          # a Ticket (a replicated queue)
            gen = self.broker.commit.next_gen if verdict.stored else 0
            self.tickets.append((corr, verdict, gen))
            verdict.wait(self)

    def flush_confirms(self) -> None:
        """The commit path (or a ticket) says something is done."""
        if self.closed:
            return
        commit = self.broker.commit
        pending = self.pending_sync
        if pending:
            synced = commit.synced_gen
            while pending and pending[0][1] <= synced:
                self.put(_confirm.pack(CONFIRM, pending.popleft()[0], 1))
            if pending:
                commit.wait(self)
        if self.tickets:
            left = []
            for corr, ticket, gen in self.tickets:
                if ticket.ok is None:
                    left.append((corr, ticket, gen))
                elif not ticket.ok:
                    self.put(_confirm.pack(CONFIRM, corr, 0))
                elif gen:
                    if not pending:
                        commit.wait(self)
                    pending.append((corr, gen))
                else:
                    self.put(_confirm.pack(CONFIRM, corr, 1))
            self.tickets = left
            if pending and pending[0][1] <= commit.synced_gen:
                self.flush_confirms()

    def nack_generations(self, lo: int, hi: int) -> None:
        keep = deque()
        for corr, gen in self.pending_sync:
            if lo < gen <= hi:
                self.put(_confirm.pack(CONFIRM, corr, 0))
            else:
                keep.append((corr, gen))
        self.pending_sync = keep

    # -- subscriptions: this object is their channel --------------------------------------
    def can_deliver(self, consumer) -> bool:
        return consumer.inflight < consumer.window

    def deliver(self, consumer, entry) -> None:
        self.next_tag = tag = self.next_tag + 1
        queue = consumer.queue
        if consumer.no_ack:
            queue.settle(entry)
        else:
            self.unacked[tag] = (queue, entry, consumer)
            consumer.unacked += 1
        consumer.inflight += 1
        consumer.delivered += 1
        if entry.redelivered:
            consumer.redelivered += 1
        msg = entry.message
        route, header, body = msg.raw_route, msg.header, msg.body
        self.out += _deliver.pack(DELIVER, consumer.sid, tag, entry.redelivered, len(route),
                                  len(header), len(body))
        self.out += route
        self.out += header
        self.put(body)

    def queue_deleted(self, consumer) -> None:
        """The queue went (or is no longer led here): the origin cancels its consumer (what
        it held of a queue whose messages move on comes back by ``give_back``)."""
        if self.consumers.pop(consumer.sid, None) is not None:
            retire_consumer(consumer)
            self.put(ctl_record({"op": "cancelled", "sid": consumer.sid}))

    def give_back(self, queue) -> None:
        """``queue``'s messages move to its new leader (``draining``): what the origin
        held of it comes back now, whether its subscription is still here or was ended
        first (the origin saw the move before this node did), and from basic.get too. The
        origin drops its client's acks of them."""
        for tag, (q, entry, consumer) in list(self.unacked.items()):
            if q is queue:
                del self.unacked[tag]
                if consumer is not None:
                    consumer.unacked -= 1
                q.requeue(entry)

    def on_credit(self, sid, n) -> None:
        consumer = self.consumers.get(sid)
        if consumer is not None and not consumer.by_ack:
            consumer.inflight -= n
            self.broker.schedule(consumer.queue)

    def on_settle(self, op, tag) -> None:
        record_ = self.unacked.pop(tag, None)
        if record_ is None:
            return
        queue, entry, consumer = record_
        if consumer is not None:
            consumer.unacked -= 1
            if consumer.by_ack or op == GIVE_BACK:
                consumer.inflight -= 1
            self.broker.schedule(queue)
            if queue.sac_waiting is consumer and not consumer.unacked:
                queue.sac_waiting = None
        if queue.deleted and not getattr(queue, "draining", False):
            queue.settle(entry)
        elif op == ACK:
            queue.settle(entry)
        elif op == REQUEUE:
            queue.requeue(entry)
        elif op == GIVE_BACK:
            was = entry.redelivered
            queue.requeue(entry)
            entry.redelivered = was
        else:
            queue.reject(entry)

    # -- control --------------------------------------------------------------------------
    def on_ctl(self, head, payload) -> None:
        op = head.get("op")
        if op == "bind":
            self.queues[head["qid"]] = (head["vhost"], head["name"])
            self.sent_stats.pop(head["qid"], None)
            self.fw.stats_soon(self)
            return
        if op == "sub":
            self._subscribe(head)
        elif op == "unsub":
            consumer = self.consumers.pop(head.get("sid"), None)
            if consumer is not None:
                consumer.queue.remove_consumer(consumer)
        elif "rid" in head:
            try:
                self._answer(op, head)
            except errors.AMQPError as exc:
                self.put(ctl_record({"op": "reply", "rid": head["rid"],
                                     "error": [exc.code, exc.text],
                                     "method": [exc.class_id, exc.method_id]}))

    def _subscribe(self, head) -> None:
        """A consumer of the origin's: with a ``rid``, the origin's client waits for its
        consume-ok, so it hears a refusal (403, exclusive use) as its channel's error."""
        sid, rid = head["sid"], head.get("rid")
        q = self.queue(head["qid"])
        if q is None or q.deleted:         # moved meanwhile: the client consumes again
            if rid is not None:
                self.put(ctl_record({"op": "reply", "rid": rid}))
            self.put(ctl_record({"op": "cancelled", "sid": sid}))
            return
        prefetch = head.get("prefetch") or 0
        no_ack = bool(head.get("no_ack"))
        consumer = LinkConsumer(head.get("tag", ""), self, q, no_ack,
                                bool(head.get("exclusive")), head.get("priority") or 0,
                                prefetch, {})
        consumer.sid = sid
        consumer.by_ack = not no_ack and prefetch > 0
        consumer.window = prefetch if consumer.by_ack else WINDOW
        consumer.inflight = 0
        try:
            q.add_consumer(consumer)
        except errors.AMQPError as exc:
            log.info("cluster: %s's consumer on %s refused: %s", self.node, q.label,
                     exc.reply_text)
            if rid is None:
                self.put(ctl_record({"op": "cancelled", "sid": sid}))
            else:
                self.put(ctl_record({"op": "reply", "rid": rid, "error": [exc.code, exc.text],
                                     "method": [60, 20]}))
            return
        self.consumers[sid] = consumer
        if rid is not None:
            self.put(ctl_record({"op": "reply", "rid": rid}))
        if q.opts.expires:
            q.touch()

    def _answer(self, op: str, head: dict) -> None:
        rid = head["rid"]
        q = self.queue(head["qid"])
        if q is None:
            where = self.queues.get(head["qid"], ("?", "?"))
            raise errors.NotFound(f"no queue '{where[1]}' in vhost '{where[0]}'")
        reply = {"op": "reply", "rid": rid}
        payload = b""
        if op == "counts":
            if q.opts.expires:
                q.touch()
            reply.update(messages=q.message_count, consumers=len(q.consumers))
        elif op == "get":
            no_ack = bool(head.get("no_ack"))
            entry = q.take()
            reply["no_ack"] = no_ack
            if entry is not None:
                self.next_tag = tag = self.next_tag + 1
                if no_ack:
                    q.settle(entry)
                    q.counts.gets_no_ack += 1
                else:
                    self.unacked[tag] = (q, entry, None)
                    q.counts.gets += 1
                msg = entry.message
                payload = msg.raw_route + msg.header + msg.body
                reply.update(tag=tag, redelivered=entry.redelivered, count=q.message_count,
                             lengths=[len(msg.raw_route), len(msg.header)])
            else:
                q.counts.gets_empty += 1
        elif op == "purge":
            reply["count"] = q.purge()
        elif op == "delete":
            if head.get("if_unused") and q.consumers:
                raise errors.PreconditionFailed(f"{q.label} in use", 50, 40)
            if head.get("if_empty") and q.message_count:
                raise errors.PreconditionFailed(f"{q.label} not empty", 50, 40)
            reply["count"] = q.message_count
            q.vhost.delete_queue(q)
        else:
            raise errors.NotImplemented_(f"forwarded {op}")
        self.put(ctl_record(reply, payload))

    def push_stats(self) -> None:
        figures = {}
        for qid in self.queues:
            q = self.queue(qid)
            now = (q.message_count, q.unacked, len(q.consumers)) if q is not None \
                else (0, 0, 0)
            if self.sent_stats.get(qid) != now:
                self.sent_stats[qid] = now
                figures[str(qid)] = now
        if figures:
            self.put(ctl_record({"op": "stats", "queues": figures}))

    def close(self) -> None:
        """The link ended: the subscriptions go, what they held goes back (redelivered), as
        when a channel closes; publishes not confirmed yet are the origin's to nack."""
        self.closed = True
        self.writer = None
        for consumer in list(self.consumers.values()):
            consumer.queue.remove_consumer(consumer)
        self.consumers.clear()
        unacked, self.unacked = self.unacked, {}
        for queue, entry, consumer in unacked.values():
            if consumer is not None:
                consumer.unacked -= 1
                self.broker.schedule(queue)
                if queue.sac_waiting is consumer and not consumer.unacked:
                    queue.sac_waiting = None
            if queue.deleted and not getattr(queue, "draining", False):
                queue.settle(entry)
            else:
                queue.requeue(entry)
        self.pending_sync.clear()
        self.tickets = []
