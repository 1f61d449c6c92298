"""Any node serves any client: each shared queue has one leader (its placement record), and
the other nodes forward what their clients do with it over the node-to-node link.

Placement. A durable, non-exclusive queue declared on a node is led by that node: it
claims the queue's placement record (``Placements.claim``, type "classic", members = [this
node]) right after the declare (and at start for its queues that have none). A node whose
claim loses makes its queue a proxy. Every node keeps, in ``vhost.queues``, the local queue
for queues it leads and a ``RemoteQueue`` for the others (``make_queue``, the broker's
queue factory); when a placement's leader changes, the object is replaced
(``VHost.replace_queue``): consumers hear basic.cancel, publishes in flight are nacked.

The link. The node that has a proxy (the *origin*) opens one connection, role "forward",
to each other running node (``Links``); the leader serves it (``Session``). Frames are
frames.py's, kind BATCH, head ``{}``, payload a run of binary records written once per loop
turn, so nothing is JSON per message:

    origin -> leader   PUBLISH(qid, corr, route, header, body)   SETTLE(op, tag)
                       CREDIT(sid, n)   CTL(json: bind, sub, unsub, get, counts, purge, delete)
    leader -> origin   CONFIRM(corr, ok)   DELIVER(sid, tag, redelivered, route, header, body)
                       CTL(json: reply, cancelled, stats)

A publish's confirm is the leader's: CONFIRM ok once its queue stored it (after the
leader's fsync for a persistent message; once its Ticket is done for a replicated queue),
nack when it refused it. A subscription is a consumer on the leader's queue whose channel is
the ``Session``: its credit is the client consumer's prefetch (acks give it back), or, for a
consumer without a prefetch or without acks, a window of WINDOW messages given back as the
origin hands them to the client. SETTLE is the client's ack / requeue / reject (or "give
back": a message the client never saw returns unmarked). A link that drops requeues on the
leader what the origin held, as a channel closing does; on the origin, it nacks the
publishes not yet confirmed, cancels the consumers (basic.cancel) and makes acks of what was
delivered through it no-ops (the leader has requeued those).
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections import deque

from .. import errors
from ..broker.consumer import Consumer
from ..broker.message import Message
from ..broker.publish import ACCEPTED, DUPLICATE, REJECTED, STORED, Ticket
from ..broker.queue import Queue
from ..broker.stats import Counts, retire_consumer
from . import frames
from .placement import q as _q, record
from .link_flow import Gate, LinkFlow
from .tasks import cancel_all
from .remote_queue import RemoteEntry, RemoteQueue

log = logging.getLogger("amqpd.cluster")

ROLE = "forward"
BATCH = 1                     # frames.py kind: a run of records
WINDOW = 256                  # deliveries in flight to a consumer without prefetch
CONNECT_WAIT = 3.0            # how long work for a running peer waits for its link
STATS_INTERVAL = 0.5          # the leader pushes its queues' figures this often
ANNOUNCE_WAIT = 5.0           # the longest a declare-ok waits for etcd
UNPLACED_WAIT = 5.0           # a queue from the cluster without a placement, then claimed
DRAIN_BATCH = 512             # messages of a replaced copy in flight to the leader
DRAIN_RETRY = 1.0             # seconds between tries while the leader cannot take them
FRAME_SPLIT = 4 << 20         # a batch frame is sealed at about this size

# records
PUBLISH, SETTLE, CREDIT, CONFIRM, DELIVER, CTL = 1, 2, 3, 4, 5, 6
ACK, REQUEUE, REJECT, GIVE_BACK = 0, 1, 2, 3
_publish = struct.Struct(">BIQHII")        # kind, qid, corr, route, header, body lengths
_settle = struct.Struct(">BBQ")            # kind, op, tag
_credit = struct.Struct(">BII")            # kind, sid, n
_confirm = struct.Struct(">BQB")           # kind, corr, ok
_deliver = struct.Struct(">BIQBHII")       # kind, sid, tag, redelivered, lengths
_ctl = struct.Struct(">BII")               # kind, json length, payload length


_ERRORS = {cls.code: cls for cls in (errors.NotFound, errors.PreconditionFailed,
                                     errors.AccessRefused, errors.ResourceLocked,
                                     errors.NotImplemented_)}


def ctl_record(head: dict, payload: bytes = b"") -> bytes:
    raw = json.dumps(head, separators=(",", ":")).encode()
    return _ctl.pack(CTL, len(raw), len(payload)) + raw + payload


def route_parts(route: bytes) -> tuple[str, str]:
    n = route[0]
    return route[1:1 + n].decode("utf-8", "surrogateescape"), \
        route[2 + n:].decode("utf-8", "surrogateescape")


class Wire:
    """Records out, written as one frame per loop turn (``kick``); records in, parsed from
    a frame's payload by ``feed`` into ``on_*`` calls."""

    def __init__(self, loop):
        self.loop = loop
        self.writer = None
        self.out = bytearray()
        self.sealed: list = []
        self.scheduled = False

    def kick(self) -> None:
        if not self.scheduled and self.writer is not None:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def put(self, data) -> None:
        self.out += data
        if len(self.out) > FRAME_SPLIT:
            self.sealed.append(frames.encode(BATCH, {}, bytes(self.out)))
            self.out = bytearray()
        self.kick()

    def flush(self) -> None:
        self.scheduled = False
        if self.writer is None:
            return
        chunks = self.sealed
        if self.out:
            chunks.append(frames.encode(BATCH, {}, bytes(self.out)))
            self.out = bytearray()
        self.sealed = []
        if chunks:
            try:
                self.writer.write(b"".join(chunks) if len(chunks) > 1 else chunks[0])
            except (OSError, RuntimeError):
                pass

    def feed(self, payload: bytes) -> None:
        view = memoryview(payload)
        pos, end = 0, len(payload)
        while pos < end:
            kind = payload[pos]
            if kind == PUBLISH:
                _k, qid, corr, rl, hl, bl = _publish.unpack_from(payload, pos)
                pos += _publish.size
                route = bytes(view[pos:pos + rl])
                pos += rl
                header = bytes(view[pos:pos + hl])
                pos += hl
                body = bytes(view[pos:pos + bl])
                pos += bl
                self.on_publish(qid, corr, route, header, body)
            elif kind == SETTLE:
                _k, op, tag = _settle.unpack_from(payload, pos)
                pos += _settle.size
                self.on_settle(op, tag)
            elif kind == CREDIT:
                _k, sid, n = _credit.unpack_from(payload, pos)
                pos += _credit.size
                self.on_credit(sid, n)
            elif kind == CONFIRM:
                _k, corr, ok = _confirm.unpack_from(payload, pos)
                pos += _confirm.size
                self.on_confirm(corr, ok)
            elif kind == DELIVER:
                _k, sid, tag, redelivered, rl, hl, bl = _deliver.unpack_from(payload, pos)
                pos += _deliver.size
                route = bytes(view[pos:pos + rl])
                pos += rl
                header = bytes(view[pos:pos + hl])
                pos += hl
                body = bytes(view[pos:pos + bl])
                pos += bl
                self.on_deliver(sid, tag, bool(redelivered), route, header, body)
            elif kind == CTL:
                _k, jl, pl = _ctl.unpack_from(payload, pos)
                pos += _ctl.size
                head = json.loads(bytes(view[pos:pos + jl]))
                pos += jl
                extra = bytes(view[pos:pos + pl])
                pos += pl
                self.on_ctl(head, extra)
            else:
                raise frames.FrameError(f"unknown forwarding record {kind}")

    def on_publish(self, qid, corr, route, header, body): raise frames.FrameError("publish")
    def on_settle(self, op, tag): raise frames.FrameError("settle")
    def on_credit(self, sid, n): raise frames.FrameError("credit")
    def on_confirm(self, corr, ok): raise frames.FrameError("confirm")
    def on_deliver(self, sid, tag, redelivered, route, header, body):
        raise frames.FrameError("deliver")
    def on_ctl(self, head, payload): raise frames.FrameError("ctl")

    async def pump(self, reader, after) -> None:
        """Read frames until the link ends; ``after()`` once per frame (dispatch)."""
        while True:
            kind, _head, payload = await frames.read(reader)
            if kind == BATCH:
                self.feed(payload)
                after()


# -- the origin: this node's proxies, forwarded to one leader ---------------------------------
class Peer(Wire):
    """This node's side of the link to one other node, for the queues that node leads. It
    outlives connections: ``gen`` counts them, and everything of a connection that dropped
    (tickets, subscriptions, requests, deliveries) fails with it."""

    def __init__(self, forwarding, name: str):
        super().__init__(forwarding.loop)
        self.fw = forwarding
        self.name = name
        self.gen = 0
        self.connected = False
        self.qids: dict = {}          # RemoteQueue -> qid (this connection)
        self.next_qid = 0
        self.corr = 0
        self.tickets: dict = {}       # corr -> (Ticket, RemoteQueue, bytes)
        self.flow = LinkFlow(name, forwarding.gate, forwarding.loop.time)
        self.sid = 0
        self.subs: dict = {}          # sid -> (RemoteQueue, consumer)
        self.rid = 0
        self.requests: dict = {}      # rid -> (RemoteQueue, op, callback)
        self.give_up = None           # the timer failing work that waits for a connection

    def usable(self) -> bool:
        return self.connected or self.fw.running(self.name)

    def kick(self) -> None:
        if self.connected:
            super().kick()
        elif self.give_up is None:
            self.give_up = self.loop.call_later(CONNECT_WAIT, self._lost,
                                                f"no link to node {self.name}")

    # -- what proxies send ----------------------------------------------------------------
    def _qid(self, rq) -> int:
        qid = self.qids.get(rq)
        if qid is None:
            self.next_qid = qid = self.next_qid + 1
            self.qids[rq] = qid
            self.put(ctl_record({"op": "bind", "qid": qid, "vhost": rq.vhost.name,
                                 "name": rq.name}))
        return qid

    def publish(self, rq, message) -> Ticket:
        qid = self._qid(rq)
        self.corr = corr = self.corr + 1
        ticket = Ticket()
        route, header, body = message.raw_route, message.header, message.body
        size = _publish.size + len(route) + len(header) + len(body)
        self.tickets[corr] = (ticket, rq, size)
        self.flow.sent(size)
        self.out += _publish.pack(PUBLISH, qid, corr, len(route), len(header), len(body))
        self.out += route
        self.out += header
        self.put(body)
        return ticket

    def subscribe(self, rq, consumer) -> int:
        self.sid = sid = self.sid + 1
        self.subs[sid] = (rq, consumer)
        self.put(ctl_record({"op": "sub", "qid": self._qid(rq), "sid": sid,
                             "tag": consumer.tag, "no_ack": consumer.no_ack,
                             "exclusive": consumer.exclusive, "priority": consumer.priority,
                             "prefetch": consumer.prefetch}))
        return sid

    def unsubscribe(self, sid: int) -> None:
        if self.subs.pop(sid, None) is not None:
            self.put(ctl_record({"op": "unsub", "sid": sid}))

    def handed(self, sid: int, n: int) -> None:
        """The origin handed n deliveries of a subscription to its client."""
        sub = self.subs.get(sid)
        if sub is not None and (sub[1].no_ack or not sub[1].prefetch):
            self.put(_credit.pack(CREDIT, sid, n))

    def settle(self, entry, op: int) -> None:
        if entry.gen == self.gen and self.connected:
            self.put(_settle.pack(SETTLE, op, entry.tag))

    def request(self, rq, op: str, fields: dict, callback) -> None:
        self.rid = rid = self.rid + 1
        self.requests[rid] = (rq, op, callback)
        self.put(ctl_record(dict(fields, op=op, rid=rid, qid=self._qid(rq))))

    def forget(self, rq) -> None:
        """``rq`` was replaced or deleted: its publishes still open are nacked."""
        self.qids.pop(rq, None)
        for corr, (ticket, q, size) in list(self.tickets.items()):
            if q is rq:
                del self.tickets[corr]
                self.flow.confirmed(size)
                ticket.resolve(False)

    # -- what the leader sends ------------------------------------------------------------
    def on_confirm(self, corr, ok) -> None:
        item = self.tickets.pop(corr, None)
        if item is not None:
            self.flow.confirmed(item[2])
            item[0].resolve(bool(ok))

    def on_deliver(self, sid, tag, redelivered, route, header, body) -> None:
        sub = self.subs.get(sid)
        no_ack = sub is not None and sub[1].no_ack
        entry = RemoteEntry(Message("", "", route, header, body), redelivered, tag, self,
                            self.gen, no_ack)
        if sub is None:
            self.settle(entry, GIVE_BACK)      # cancelled meanwhile
            return
        sub[0].delivered(sub[1], entry)

    def on_ctl(self, head, payload) -> None:
        op = head.get("op")
        if op == "reply":
            item = self.requests.pop(head.get("rid"), None)
            if item is None:
                return
            rq, what, callback = item
            if "error" in head:
                code, text = head["error"]
                cls = _ERRORS.get(code, errors.InternalError)
                answer = cls(text, *head.get("method", (None, None)))
            else:
                answer = head
                if what == "get" and head.get("tag") is not None:
                    rl, hl = head["lengths"]
                    msg = Message("", "", payload[:rl], payload[rl:rl + hl], payload[rl + hl:])
                    answer["entry"] = RemoteEntry(msg, head["redelivered"], head["tag"], self,
                                                  self.gen, head["no_ack"])
            if callback is not None:
                callback(answer)
        elif op == "cancelled":
            sub = self.subs.pop(head.get("sid"), None)
            if sub is not None:
                sub[0].subscription_lost(sub[1])
        elif op == "alarms":
            self.flow.set_alarms(head.get("alarms") or ())
        elif op == "stats":
            by_qid = {qid: rq for rq, qid in self.qids.items()}
            for qid, (messages, unacked, consumers) in head.get("queues", {}).items():
                rq = by_qid.get(int(qid))
                if rq is not None:
                    rq.cached_messages, rq.unacked, rq.cached_consumers = \
                        messages, unacked, consumers

    # -- the connection -------------------------------------------------------------------
    async def run(self, reader, writer) -> None:
        """Links calls this with a greeted connection to the peer; returns when it ends."""
        if self.give_up is not None:
            self.give_up.cancel()
            self.give_up = None
        self.writer = writer
        self.connected = True
        self.flush()                 # what waited for the connection
        try:
            await self.pump(reader, self.fw.after_change)
        except (asyncio.IncompleteReadError, OSError, frames.FrameError, ValueError) as exc:
            if not isinstance(exc, (asyncio.IncompleteReadError, ConnectionError)):
                log.warning("cluster: forwarding link to %s: %s", self.name, exc)
        except Exception:            # a bug of ours: this link ends, Links opens another
            log.exception("cluster: forwarding link to %s failed", self.name)
        finally:
            self._lost(f"the link to node {self.name} dropped")

    def _lost(self, why: str) -> None:
        """Everything of the connection fails: publishes nacked, consumers cancelled,
        requests answered with 404, deliveries made through it forgotten."""
        self.connected = False
        self.writer = None
        if self.give_up is not None:
            self.give_up.cancel()
            self.give_up = None
        self.gen += 1
        self.out = bytearray()
        self.sealed = []
        self.qids = {}
        tickets, self.tickets = self.tickets, {}
        subs, self.subs = self.subs, {}
        requests, self.requests = self.requests, {}
        self.flow.reset()
        if tickets or subs or requests:
            log.info("cluster: %s: %d publish(es) nacked, %d consumer(s) cancelled", why,
                     len(tickets), len(subs))
        for ticket, _rq, _size in tickets.values():
            ticket.resolve(False)
        for rq, consumer in subs.values():
            try:
                rq.subscription_lost(consumer)
            except Exception:
                log.exception("cluster: cancelling a consumer of %s failed", rq.label)
        for rq, _op, callback in requests.values():
            if callback is not None:
                try:
                    callback(errors.NotFound(f"home node '{self.name}' of durable "
                                             f"{rq.label} is down or inaccessible"))
                except Exception:
                    log.exception("cluster: answering a request on %s failed", rq.label)
        self.fw.after_change()


# -- the leader: another node's proxies, served here ------------------------------------------
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
        """The queue went (or is no longer led here): the origin cancels its consumer. When
        its messages move to the new leader (``draining``), what the origin held comes
        back now: the origin drops its client's acks of them."""
        if self.consumers.pop(consumer.sid, None) is not None:
            retire_consumer(consumer)
            self.put(ctl_record({"op": "cancelled", "sid": consumer.sid}))
        queue = consumer.queue
        if getattr(queue, "draining", False):
            for tag, (q, entry, c) in list(self.unacked.items()):
                if c is consumer:
                    del self.unacked[tag]
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
        sid = head["sid"]
        q = self.queue(head["qid"])
        if q is None or q.deleted:
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
            self.put(ctl_record({"op": "cancelled", "sid": sid}))
            return
        self.consumers[sid] = consumer
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


# -- the node's forwarding -------------------------------------------------------------------
class Forwarding:
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
        if not isinstance(q, RemoteQueue) and rec.get("type", "classic") == "classic" \
                and q.log is not None:
            if q.message_count or q.unacked:
                drain = q.draining = True
            else:
                self.broker.store.delete_queue_log(vhost_name, name)
                q.log = None
        self._replace(vhost, q, new)
        if drain:
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
            if not old.message_count and not old.unacked and old.log is not None:
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

    async def _maintain(self) -> None:
        """Twice a second: push stats to the origins; drop the placement of classic queues
        this node led and no longer has (deleted)."""
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            try:
                for session in list(self.sessions):
                    session.push_stats()
                self._tell_alarms()
                await self._drop_stale_placements()
                self._claim_unplaced()
            except Exception:
                log.exception("cluster: forwarding upkeep failed")

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
