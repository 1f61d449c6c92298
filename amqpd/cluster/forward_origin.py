"""The origin's side of forwarding: one ``Peer`` per other node, the link through which this
node's proxies (remote_queue.py) reach the queues that node leads.

A publish's confirm is the leader's: CONFIRM ok once its queue stored it, nack when it
refused it (forward_session.py). A consumer is a subscription at the leader whose deliveries
the proxy hands to the client's channel; SETTLE carries the client's ack / requeue / reject
(or "give back": a message the client never saw returns unmarked). A Peer outlives the
connections of its link: when one drops, the publishes not yet confirmed are nacked, the
consumers cancelled (basic.cancel), requests answered with 404, and acks of what was
delivered through it become no-ops (the leader has requeued those). What it has not had
confirmed is bounded (link_flow.py).
"""
from __future__ import annotations

import asyncio
import logging

from .. import errors
from ..broker.message import Message
from ..broker.publish import Ticket
from . import frames
from .forward_wire import (CREDIT, GIVE_BACK, PUBLISH, SETTLE, Wire, _credit, _publish,
                           _settle, ctl_record)
from .link_flow import LinkFlow
from .remote_queue import RemoteEntry

log = logging.getLogger("amqpd.cluster")

CONNECT_WAIT = 3.0            # how long work for a running peer waits for its link

_ERRORS = {cls.code: cls for cls in (errors.NotFound, errors.PreconditionFailed,
                                     errors.AccessRefused, errors.ResourceLocked,
                                     errors.NotImplemented_)}


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

    def subscribe(self, rq, consumer, answered=None) -> int:
        """``answered(reply or AMQPError)`` once the leader took the consumer or refused it
        (without it, a refusal is a cancel)."""
        self.sid = sid = self.sid + 1
        self.subs[sid] = (rq, consumer)
        head = {"op": "sub", "qid": self._qid(rq), "sid": sid, "tag": consumer.tag,
                "no_ack": consumer.no_ack, "exclusive": consumer.exclusive,
                "priority": consumer.priority, "prefetch": consumer.prefetch}
        if answered is not None:
            self.rid = head["rid"] = self.rid + 1
            self.requests[self.rid] = (rq, "sub", answered)
        self.put(ctl_record(head))
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
        for rq, _op, callback in requests.values():
            if callback is not None:
                try:
                    callback(errors.NotFound(f"home node '{self.name}' of durable "
                                             f"{rq.label} is down or inaccessible"))
                except Exception:
                    log.exception("cluster: answering a request on %s failed", rq.label)
        for rq, consumer in subs.values():
            try:
                rq.subscription_lost(consumer)
            except Exception:
                log.exception("cluster: cancelling a consumer of %s failed", rq.label)
        self.fw.after_change()
