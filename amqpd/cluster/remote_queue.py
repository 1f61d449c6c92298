"""A queue led by another node, as this node sees it: a ``broker.queue.Queue`` (so routing,
bindings, listings, definitions and every isinstance check treat it as the queue it stands
for) that holds no messages and keeps no log. What a client does with it goes to the
queue's leader over the node-to-node link (forward.py, forward_origin.py):

    enqueue          PUBLISH to the leader; the verdict is a Ticket the leader's CONFIRM
                     resolves (nack when the leader refused it, or the link dropped first)
    add_consumer     SUBSCRIBE at the leader with credit = the consumer's prefetch; what the
                     leader DELIVERs waits here per consumer until the client's channel may
                     take it (its prefetch, the global prefetch, a socket that drains)
    settle / requeue / reject    SETTLE the leader's delivery (ack / requeue / reject)
    ask(op, ...)     basic.get, queue.declare's counts, purge, delete: one round trip
    message_count, unacked, consumer_count   the leader's figures, pushed every 0.5 s

Once replaced (``deleted``: the queue's leader moved, or the link to it dropped and its
consumers were cancelled), acks of what it delivered are taken and dropped.
"""
from __future__ import annotations

from collections import deque

from .. import errors
from ..broker.queue import Queue
from ..broker.stats import retire_consumer


RESUBSCRIBE_QUIET = 2.0     # seconds: a subscription lost sooner after it was made again...
RESUBSCRIBE_STRIKES = 5     # ...this many times running is refused, not a leader change


class RemoteEntry:
    """A message the leader delivered or gave (basic.get) through this node."""
    __slots__ = ("message", "redelivered", "tag", "peer", "gen", "no_ack")

    def __init__(self, message, redelivered: bool, tag: int, peer, gen: int, no_ack: bool):
        self.message = message
        self.redelivered = redelivered
        self.tag = tag               # the leader's delivery tag on this link
        self.peer = peer             # the link (forward_origin.Peer) and its connection generation
        self.gen = gen
        self.no_ack = no_ack


class RemoteQueue(Queue):
    forwarded = True                 # handlers.py asks the leader for gets, counts, purge...
    keeps_no_log = True              # vhost.py journals its definition only

    def __init__(self, vhost, name: str, durable: bool, exclusive_owner, auto_delete: bool,
                 arguments: dict, forwarding=None, leader: str | None = None):
        super().__init__(vhost, name, durable, exclusive_owner, auto_delete, arguments)
        self.forwarding = forwarding
        self.leader = leader         # None: its placement is not known here yet
        self.cached_messages = 0     # the leader's figures (its Session's stats)
        self.cached_consumers = 0
        self.waiting: dict = {}      # consumer -> deque of RemoteEntry the client may take
        self.subs: dict = {}         # consumer -> (peer, subscription id)
        self.resubscribed: dict = {}  # consumer -> (when it was last subscribed again, strikes)
        self.made_at = forwarding.loop.time() if forwarding is not None else 0.0

    def __repr__(self):
        return f"<RemoteQueue {self.name!r} led by {self.leader}>"

    # -- what the leader reports ----------------------------------------------------------
    @property
    def message_count(self) -> int:
        return self.cached_messages

    @property
    def consumer_count(self) -> int:
        """Every consumer of the queue, on every node (the leader's count)."""
        return max(self.cached_consumers, len(self.consumers))

    def _peer(self):
        """The link to the leader; 404 as RabbitMQ says it when that node is not there."""
        peer = self.forwarding.peer(self.leader) if self.leader is not None else None
        if peer is None or not peer.usable():
            raise errors.NotFound(
                f"home node '{self.leader or '?'}' of durable {self.label} is down or "
                "inaccessible")
        return peer

    # -- messages -------------------------------------------------------------------------
    def enqueue(self, message):
        peer = self.forwarding.peer(self.leader) if self.leader is not None else None
        return self.forwarding.publish(peer, self, message)

    def settle(self, entry) -> None:
        if not entry.no_ack and not self.deleted:
            entry.peer.settle(entry, 0)

    def requeue(self, entry) -> None:
        if not self.deleted:
            entry.peer.settle(entry, 1)

    def reject(self, entry) -> None:
        if not self.deleted:
            entry.peer.settle(entry, 2)

    def give_back(self, entry) -> None:
        """A message the client never saw goes back as it was (not marked redelivered)."""
        if not entry.no_ack and not self.deleted:
            entry.peer.settle(entry, 3)

    def take(self):
        return None                  # basic.get goes through ask("get")

    def purge(self) -> int:
        """The management API's purge: asked of the leader; the count is the last known."""
        n = self.cached_messages
        try:
            self.ask("purge", {}, None)
        except errors.AMQPError:
            pass
        return n

    def ask(self, op: str, fields: dict, callback) -> None:
        """One round trip to the leader: ``callback(answer dict or AMQPError)``."""
        self._peer().request(self, op, fields, callback)

    def discard(self) -> None:
        """Deleted here: what waited goes back, the subscriptions at the leader end."""
        for consumer in list(self.waiting):
            self._give_back_waiting(consumer)
        subs, self.subs = self.subs, {}
        for peer, sid in subs.values():
            peer.unsubscribe(sid)
        peer = self.forwarding.peers.get(self.leader) if self.leader is not None else None
        if peer is not None:
            peer.forget(self)

    # -- consumers ------------------------------------------------------------------------
    def add_consumer(self, consumer, answered=None) -> None:
        """A consumer here is a subscription at the leader; ``answered(reply or
        AMQPError)`` when the leader took it or refused it (handlers.py's consume-ok)."""
        if consumer.exclusive and self.consumers or self.consumers and \
                self.consumers[0].exclusive:
            raise errors.AccessRefused(f"queue '{self.name}' in vhost '{self.vhost.name}' in "
                                       "exclusive use")
        peer = self._peer()
        self.subs[consumer] = (peer, peer.subscribe(self, consumer, answered))
        self.waiting[consumer] = deque()
        self.consumers.append(consumer)
        self.had_consumer = True

    def remove_consumer(self, consumer) -> None:
        self.resubscribed.pop(consumer, None)
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        retire_consumer(consumer)
        self._give_back_waiting(consumer)
        sub = self.subs.pop(consumer, None)
        if sub is not None:
            sub[0].unsubscribe(sub[1])

    def _give_back_waiting(self, consumer) -> None:
        waiting = self.waiting.pop(consumer, None)
        for entry in waiting or ():
            if not entry.no_ack:
                entry.peer.settle(entry, 3)

    def subscription_lost(self, consumer) -> None:
        """The leader cancelled it, or the link dropped: the client hears basic.cancel. A
        client that cannot hear one (no ``consumer_cancel_notify``) keeps its consumer: it
        is subscribed again at the leader (``resubscribe``: the link back, or the queue's
        new object after a leader change, vhost.replace_queue)."""
        self.subs.pop(consumer, None)
        self.waiting.pop(consumer, None)
        if consumer not in self.consumers:
            return
        capabilities = getattr(consumer.channel.conn, "capabilities", None)
        if capabilities is not None and not capabilities.get("consumer_cancel_notify") \
                and not self.deleted and self.forwarding is not None \
                and not self._refused_again(consumer):
            self.forwarding.orphaned.add(self)
            return
        self.consumers.remove(consumer)
        self.resubscribed.pop(consumer, None)
        consumer.channel.queue_deleted(consumer)

    def _refused_again(self, consumer) -> bool:
        """Lost within RESUBSCRIBE_QUIET of being subscribed again, RESUBSCRIBE_STRIKES
        times running: the leader refuses it (exclusive use there), so it ends."""
        at, strikes = self.resubscribed.get(consumer, (None, 0))
        now = self.forwarding.loop.time()
        strikes = strikes + 1 if at is not None and now - at < RESUBSCRIBE_QUIET else 0
        self.resubscribed[consumer] = (None, strikes)
        return strikes >= RESUBSCRIBE_STRIKES

    def adopt(self, consumer) -> None:
        """A consumer moved here from the queue's previous object (vhost.replace_queue, for
        a client that cannot hear basic.cancel): subscribed at the leader now, or once its
        link is up."""
        try:
            self.add_consumer(consumer)
        except errors.NotFound:
            self.consumers.append(consumer)
            self.had_consumer = True
            self.forwarding.orphaned.add(self)

    def resubscribe(self) -> bool:
        """Consumers without a subscription (above) subscribe again if the leader's link is
        up; whether none is left waiting."""
        if self.deleted:
            return True
        try:
            peer = self._peer()
        except errors.NotFound:
            return False
        now = self.forwarding.loop.time()
        for consumer in [c for c in self.consumers if c not in self.subs]:
            self.subs[consumer] = (peer, peer.subscribe(self, consumer))
            self.waiting[consumer] = deque()
            self.resubscribed[consumer] = (now, self.resubscribed.get(consumer, (0, 0))[1])
        return True

    def delivered(self, consumer, entry) -> None:
        """The leader delivered ``entry`` to ``consumer`` (forward_origin.py)."""
        waiting = self.waiting.get(consumer)
        if waiting is None:
            if not entry.no_ack:
                entry.peer.settle(entry, 3)
            return
        waiting.append(entry)
        self.vhost.broker.schedule(self)

    def dispatch(self) -> None:
        """Hand what the leader delivered to the clients, as far as their channels take it."""
        for consumer in self.consumers:
            waiting = self.waiting.get(consumer)
            if not waiting:
                continue
            handed = 0
            deliver = consumer.channel.deliver
            while waiting and consumer.has_credit():
                deliver(consumer, waiting.popleft())
                handed += 1
            if handed:
                sub = self.subs.get(consumer)
                if sub is not None:
                    sub[0].handed(sub[1], handed)

    # -- what a local queue does and a proxy does not -------------------------------------
    def start_paging(self, scratch=None) -> None:
        pass

    def touch(self) -> None:
        pass            # x-expires is the leader's (declares through other nodes: not seen)

    def check_unused(self) -> None:
        pass

    def expire(self) -> None:
        pass

    def _trim_head(self) -> None:
        pass
