"""A queue: messages ready in order, consumers served round-robin by priority, and the
lifecycle RabbitMQ's queue arguments give it (TTL, limits, dead-lettering, priorities, single
active consumer, delivery limit, expiry of unused queues, deduplication)."""
import heapq
import logging
from decimal import Decimal

from .. import errors
from ..wire import erlang, properties, tables
from ..wire.properties import EXPIRES, FLAGS_HIGH
from ..wire.tables import Long, type_name
from .arguments import DEDUP_HEADER, QueueOptions
from .deadletter import dead_letter
from .queue_consumers import Consumers
from .queue_expiry import Expiry
from .queue_limits import LengthLimits
from .queue_paging import Paging
from .message import GONE, OUT, READY, Entry, Message
from .publish import ACCEPTED, DUPLICATE, REJECTED, STORED, PublishResult
from .ready import PriorityReady, Ready
from .stats import Counts, QueueStats

log = logging.getLogger("amqpd.queue")

SLICE = 1024         # entries purged or freed per event-loop turn (a few ms of work)

# Arguments RabbitMQ compares when a queue is re-declared (rabbit_amqqueue declare_args).
EQUIVALENCE_ARGS = ("x-expires", "x-message-ttl", "x-dead-letter-exchange",
                    "x-dead-letter-routing-key", "x-max-length", "x-max-length-bytes",
                    "x-max-priority", "x-overflow", "x-queue-mode", "x-queue-type",
                    "x-single-active-consumer", "x-delivery-limit", "x-queue-master-locator",
                    "x-max-in-memory-length", "x-max-in-memory-bytes")


class Queue(Consumers, Expiry, LengthLimits, Paging):
    # Set by broker/queue_policy.py when a policy or operator policy matches; until then
    # these class defaults answer (never mutated in place).
    policy = operator_policy = None
    policy_name = operator_policy_name = None
    effective_policy_definition: dict = {}
    stats = property(QueueStats)     # the statistics read model (broker/stats.py)

    def __init__(self, vhost, name: str, durable: bool, exclusive_owner, auto_delete: bool,
                 arguments: dict):
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner   # the declaring connection, or None
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        self.opts = opts = QueueOptions(self.arguments)
        self.ready = self._new_ready()
        self.consumers: list = []
        self.unacked = 0
        self.next_seq = 0
        self.next_index = 0              # round-robin position among consumers
        self.priorities = False          # any consumer with a non-zero x-priority
        self.had_consumer = False
        self.sources: set = set()        # exchanges with a binding to this queue
        self.deleted = False
        self.log = None                  # QueueLog when durable and the broker has a store
        self.pager = None                # the backlog beyond the RAM window (queue_paging.py)
        self.window_bytes = 0            # body bytes of ready entries in RAM, when paged
        self.expired_in_place = 0        # expired entries still in ready (removed lazily)
        self.ready_bytes = 0             # body bytes in ready, kept only with x-max-length-bytes
        self.expiring = None             # heap of (deadline, seq, entry) once TTL is in use
        # Features that cost something per message are switched on only when configured:
        self.length_limited = opts.max_length is not None or opts.max_bytes is not None
        self.tracks_entries = bool(opts.max_priority or opts.message_ttl is not None
                                   or self.length_limited or opts.delivery_limit is not None
                                   or opts.dedup)
        self.dedup_ids = {} if opts.dedup else None
        self.sac_waiting = None          # a departed single active consumer still holding messages
        self.last_used = None            # x-expires bookkeeping
        self.counts = Counts()           # statistics off the hot path (broker/stats.py)
        if opts.expires:
            self.touch()

    def __repr__(self):
        return f"<Queue {self.name!r}>"

    @property
    def label(self) -> str:
        return f"queue '{self.name}' in vhost '{self.vhost.name}'"

    # -- messages -----------------------------------------------------------------------------
    def enqueue(self, message) -> PublishResult:
        """Append a message. STORED when it went to the log (a confirm must wait for it to be
        durable), REJECTED when x-overflow refused it, DUPLICATE when deduplication dropped
        it, else ACCEPTED."""
        if self.tracks_entries:
            verdict = self._admit(message)
            if verdict is not None:
                return verdict
        self.next_seq = seq = self.next_seq + 1
        entry = Entry(seq, message)
        pager = self.pager
        paging = pager is not None and (pager.count or len(self.ready) >= self.window_messages
                                        or self.window_bytes >= self.window_limit)
        qlog = self.log
        # a per-message TTL (the expiration flag) applies on any queue
        if self.tracks_entries or message.header[FLAGS_HIGH] & EXPIRES:
            # a deadline of a message paged to the log is kept by the pager, not armed here
            self._prepare(entry, arm=not paging or qlog is None or not message.persistent)
        if self.consumers:
            self.vhost.broker.schedule(self)
        stored = ACCEPTED
        if qlog is not None and message.persistent:
            entry.segment = segment = qlog.append_message(seq, message.raw_route,
                                                          message.header, message.body)
            if self.tracks_entries:
                self._index_extras(qlog.index, entry)   # sizes, priorities: for a restart
            if entry.expires is not None:
                broker = self.vhost.broker
                left = entry.expires - broker.clock()
                qlog.expiry(seq, int((broker.wallclock() + left) * 1000))
            self.vhost.broker.commit.mark_dirty(qlog)
            stored = STORED
            if paging:
                if entry.expires is None:            # only its position stays in RAM
                    pager.add(seq, segment, qlog.last_offset, qlog.seed)
                else:                                # its position and its deadline
                    self._page_due(entry, segment)
        elif paging:
            self._spill(entry)                       # to the scratch log
        if not paging:
            self.ready.append(entry)
            if pager is not None:
                self.window_bytes += len(message.body)
        if self.length_limited:
            if self.consumers:
                self.dispatch()        # a waiting consumer takes it before the limit applies
            self._trim_head()
        if entry.expires is not None and entry.expires <= self.vhost.broker.clock():
            self._expired_on_arrival()
        return stored

    def _expired_on_arrival(self) -> None:
        """A TTL of 0: the message is dead at once unless a consumer takes it right now, as
        RabbitMQ does (so a basic.get right after the publish finds it dead-lettered)."""
        if self.consumers:
            self.dispatch()
        self.expire()

    def _taken_at_once(self) -> bool:
        """Would a consumer take a new message right now (so it never waits in the queue)?"""
        if not self.consumers:
            return False
        self.dispatch()
        return not self.message_count and any(c.has_credit() for c in self.consumers)

    def _admit(self, message):
        """x-overflow reject-publish(-dlx) and deduplication decide before a message is added."""
        opts = self.opts
        if self.dedup_ids is not None:
            key = dedup_key(message, opts.dedup_header)
            if key is not None:
                if key in self.dedup_ids:
                    return DUPLICATE
        if self.length_limited and opts.overflow != "drop-head" and self._full(len(message.body)) \
                and not self._taken_at_once():
            if opts.overflow == "reject-publish-dlx":
                dead_letter(self, message, "maxlen")
            return REJECTED
        return None

    def _prepare(self, entry: Entry, deadline: float | None = None, arm: bool = True) -> None:
        """Per-entry state for the features this queue has; ``deadline`` is a TTL deadline
        recovered from the log (a restart does not extend a TTL). Unless ``arm``, a deadline
        is only noted in ``entry.expires`` (the pager keeps it: queue_paging.py)."""
        opts = self.opts
        message = entry.message
        if opts.max_priority:
            p = properties.peek(message.header, properties.PRIORITY) or 0
            entry.priority = p = min(p, opts.max_priority)
            if self.pager is not None:
                self.pager.priority = p            # the level a paged one goes to
        ttl = opts.message_ttl
        expiration = properties.peek(message.header, properties.EXPIRATION)
        if expiration is not None:
            try:
                per_message = int(expiration)
            except ValueError:
                per_message = None
            if per_message is not None and per_message >= 0:
                ttl = per_message if ttl is None else min(ttl, per_message)
        if deadline is None and ttl is not None:
            deadline = self.vhost.broker.clock() + ttl / 1000.0
        if deadline is not None:
            if arm:
                self._expire_at(entry, deadline)
            else:
                entry.expires = deadline
            self.tracks_entries = True       # entries now need their state tracked
        if self.length_limited:
            self.ready_bytes += len(message.body)
        if self.dedup_ids is not None:
            key = dedup_key(message, opts.dedup_header)
            if key is not None:
                self.dedup_ids[key] = entry

    def requeue(self, entry: Entry) -> None:
        """Back to its original position (by sequence), marked redelivered; or dead-lettered
        when its TTL passed meanwhile or it hit the delivery limit."""
        entry.redelivered = True
        self.unacked -= 1
        self.counts.requeued += 1
        if self.tracks_entries:
            if entry.expires is not None and entry.expires <= self.vhost.broker.clock():
                self._remove(entry, "expired")
                return
            limit = self.opts.delivery_limit
            if limit is not None:
                if entry.deliveries > limit:
                    self._remove(entry, "delivery_limit")
                    return
                entry.message = with_delivery_count(entry.message, entry.deliveries)
            entry.state = READY
            if self.length_limited:
                self.ready_bytes += len(entry.message.body)
        self.ready.put_back(entry)
        if self.pager is not None:
            self.window_bytes += len(entry.message.body)
        if self.consumers:
            self.vhost.broker.schedule(self)
        if self.length_limited and self.opts.overflow == "drop-head":
            self._trim_head()

    def reject(self, entry: Entry) -> None:
        """A consumer rejected or nacked it without requeue."""
        self.unacked -= 1
        self.counts.rejected += 1
        self._remove(entry, "rejected")

    def settle(self, entry: Entry) -> None:
        """The message left the queue for good (ack, or a no-ack delivery)."""
        self.unacked -= 1
        if entry.segment is not None or self.tracks_entries:
            self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        entry.state = GONE
        if entry.segment is not None and self.log is not None:
            self.log.settle(entry.seq, entry.segment)
            self.vhost.broker.commit.mark_dirty(self.log)
            if self.log.wants_compaction:
                self._compact_soon()
        if self.dedup_ids is not None:
            key = dedup_key(entry.message, self.opts.dedup_header)
            if key is not None and self.dedup_ids.get(key) is entry:
                del self.dedup_ids[key]

    def _remove(self, entry: Entry, reason: str) -> None:
        self._forget(entry)
        dead_letter(self, entry.message, reason)

    def delivering(self, entry: Entry) -> None:
        """First hand-over of a stored message: recorded, so a crash brings it back marked
        redelivered."""
        self.unacked += 1
        if self.pager is not None:
            self.window_bytes -= len(entry.message.body)
        if entry.segment is not None and not entry.redelivered and self.log is not None:
            self.log.delivered(entry.seq)
            self.vhost.broker.commit.mark_dirty(self.log)
        if self.tracks_entries:
            entry.state = OUT
            entry.deliveries += 1
            if self.length_limited:
                self.ready_bytes -= len(entry.message.body)

    def _pop(self) -> Entry | None:
        """The next live entry of the ready list (skipping expired ones left in place)."""
        ready = self.ready
        while ready or ready.back or (self.pager is not None and self._page_in()):
            entry = ready.take()
            if entry.state != GONE:
                return entry
            self.expired_in_place -= 1
        return None

    def take(self) -> Entry | None:
        if self.opts.expires:
            self.touch()
        ready = self.ready
        if self.expired_in_place or ready.back or not ready:
            entry = self._pop()             # (it reads the window in from the pager if empty)
        else:
            entry = ready.popleft()
        if entry is not None:
            self.delivering(entry)
            pager = self.pager
            if pager is not None and pager.count and len(ready) < self.window_low:
                self._page_in()
        return entry

    def _new_ready(self):
        return PriorityReady(self.opts.max_priority) if self.opts.max_priority else Ready()

    def purge(self) -> int:
        """Empty the ready list at once (the count is exact, and new messages queue behind an
        empty list). Settling the removed messages in the log and freeing them runs in slices
        (``Broker.background``), so purging a million messages does not stall other clients."""
        n = self.message_count
        old, self.ready = self.ready, self._new_ready()
        self.expired_in_place = 0
        self.ready_bytes = 0
        self.window_bytes = 0
        pager = self.pager
        if pager is not None:
            self.pager = None
            self.start_paging(pager.scratch)
            if pager.count:
                self.vhost.broker.background(self._release_paged(pager, settle=True))
        if self.expiring:             # keep the deadlines of delivered messages only
            self.expiring = [item for item in self.expiring if item[2].state == OUT]
            heapq.heapify(self.expiring)
        if self.dedup_ids:
            self.dedup_ids = {k: e for k, e in self.dedup_ids.items() if e.state == OUT}
        if old.size():
            self.vhost.broker.background(self._release(old, settle=True))
        return n

    def discard(self) -> None:
        """The queue was deleted: free its messages in slices (its log goes as a whole)."""
        old, self.ready = self.ready, self._new_ready()
        self.expiring = None
        pager = self.pager
        if pager is not None:
            pager.clear()               # positions only: the logs go as a whole
            if pager.scratch is not None:
                self.vhost.broker.store.delete_scratch_log(pager.scratch)
                pager.scratch = None
        if old.size():
            self.vhost.broker.background(self._release(old, settle=False))

    def _release(self, entries, settle: bool):
        """Take ``entries`` apart, SLICE entries per step, settling them in the log when
        ``settle``; each popped entry is freed as soon as it is dropped."""
        while entries or entries.back:
            for _ in range(SLICE):
                if not (entries or entries.back):
                    break
                entry = entries.take()
                if settle and entry.state != GONE:
                    self._forget(entry)
            yield

    @property
    def message_count(self) -> int:
        n = self.ready.size() - self.expired_in_place
        return n if self.pager is None else n + self.pager.count

    # -- declaration --------------------------------------------------------------------------
    def check_equivalent(self, durable: bool, auto_delete: bool, arguments: dict) -> None:
        if durable != self.durable:
            self._inequivalent("durable", _flag(durable), _flag(self.durable))
        if auto_delete != self.auto_delete:
            self._inequivalent("auto_delete", _flag(auto_delete), _flag(self.auto_delete))
        arguments = arguments or {}
        for key in EQUIVALENCE_ARGS:
            new, old = arguments.get(key), self.arguments.get(key)
            if key == "x-queue-type":          # an explicit "classic" is the default
                new = None if _is_classic(new) else new
                old = None if _is_classic(old) else old
            if not same_value(new, old):
                self._inequivalent(key, describe(new, old), describe(old, new))

    def _inequivalent(self, arg: str, received: str, current: str):
        raise errors.PreconditionFailed(
            f"inequivalent arg '{arg}' for {self.label}: received {received} but current is "
            f"{current}")


def _flag(value: bool) -> str:
    return "'true'" if value else "'false'"


def describe(value, other) -> str:
    """How RabbitMQ prints an argument in an inequivalence error: its text or Erlang term, with
    its AMQP type when the other side is missing ("the value '2000' of type 'short'")."""
    if value is None:
        return "none"
    if other is None:
        return f"the value '{erlang.value_text(value)}' of type '{type_name(value)}'"
    return f"'{erlang.value_text(value)}'"


_INTEGER_TYPES = frozenset(("byte", "unsignedbyte", "short", "unsignedshort", "signedint",
                            "unsignedint", "long", "decimal"))


def type_class(value) -> str:
    """RabbitMQ compares arguments by type class (rabbit_misc:type_class): every integer width
    (and decimal) is one class, float and double another; other types are their own."""
    name = type_name(value)
    if name in _INTEGER_TYPES:
        return "int"
    if name in ("float", "double"):
        return "float"
    return name


def same_value(a, b) -> bool:
    """Erlang's == on the values of two arguments of the same type class."""
    if a is None or b is None:
        return a is b
    if type_class(a) != type_class(b):
        return False
    if isinstance(a, (dict, list, tuple, Decimal)) or isinstance(b, (dict, list, tuple, Decimal)):
        try:       # nested values compare with their types, as Erlang compares the terms
            return tables.encode_table({"": a}) == tables.encode_table({"": b})
        except tables.TableError:
            return False
    if isinstance(a, (bytes, bytearray, str)):
        return _raw(a) == _raw(b)
    return a == b


def _raw(value) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)


def dedup_key(message, header=DEDUP_HEADER):
    """The value of a message's deduplication header (``x-deduplication-header`` unless the
    queue names another, as LavinMQ allows), hashable; None when it has none."""
    if not properties.flags(message.header) & properties.HEADERS:
        return None
    key = (message.headers or {}).get(header)
    if isinstance(key, bytearray):
        return bytes(key)
    if isinstance(key, (dict, list)):
        return repr(key)
    return key


def with_delivery_count(message: Message, count: int) -> Message:
    """Quorum queues tell consumers how often a message was delivered before (a long, as
    RabbitMQ sends it); every other header keeps its bytes."""
    try:
        headers = dict(message.headers or {})
        headers["x-delivery-count"] = Long(count)
        header = properties.rewrite(message.header, headers=headers)
    except (errors.AMQPError, tables.TableError):
        log.warning("cannot add x-delivery-count to a message whose properties do not decode")
        return message
    copy = Message(message.exchange, message.routing_key, message.raw_route, header, message.body)
    copy._persistent = message._persistent
    return copy


def _is_classic(value) -> bool:
    return value in ("classic", b"classic")
