"""The x-delayed-message exchange (semantics of RabbitMQ's delayed-message plugin).

Declared with ``x-delayed-type`` (the routing semantics: direct, topic, ...). A message with an
``x-delay`` header (milliseconds) is held and routed when its time comes; without one (or with
x-delay <= 0) it is routed at once. One timer is armed, for the earliest entry of a heap ordered
by due time, so holding a million costs O(log n) per message and nothing per tick.

With a data directory, held messages live on disk, not in RAM (store/delayed_log.py: 8 bytes of
RAM each, its index key): each goes to the file of its due-time bucket; a durable exchange's
files are fsynced before the publish is confirmed, a non-durable one's are scratch. The heap then
holds only what is nearly due: a bucket is represented by one *control* entry (message None)
keyed AHEAD seconds before its start; when that comes, the bucket's index is sorted (or, for a
file found at start-up, built by a scan in slices) and its first BATCH messages are read back as
the bucket's *run* (one heap entry, keyed by its next message's due time), with another control
entry keyed AHEAD before the next unread one, whose batch is appended to the same run. So the
buckets are merged in due order, each read ahead of time, and RAM holds at most a few batches
per bucket in progress. A message whose bucket's time has come already (short delays) goes
straight to the heap on its own (its file copy is for a restart). Without a data directory
every held message is in the heap.

A held message is kept as it will be delivered: its x-delay negated (as the plugin delivers it)
when it is taken aside, by rewriting only that entry's bytes, so releasing one is a route and an
enqueue and nothing else. Release routes at most RELEASE_SLICE messages per event-loop turn;
more due than that continue at the next turn, so other clients are served in between.
"""
import functools
import heapq
import itertools
import logging
import math
import struct

from .. import errors
from ..store import delayed_log
from ..wire import properties, tables
from ..wire.tables import Long, SignedInt, TableError, text
from .exchange import Exchange, check_type
from .message import Message, from_route
from .publish import ACCEPTED, STORED

log = logging.getLogger("amqpd.delayed")

AHEAD = 1.0          # seconds: a bucket is indexed, and each batch read, this long before due
AHEAD_MS = int(AHEAD * 1000)
BATCH = 512          # messages read from a bucket's file at a time
RELEASE_SLICE = 256  # messages routed per event-loop turn at most (a backlog due at once)
READ_COST = 32       # a batch read back counts as this many of them (reads ~BATCH records)
TICK = 0.001         # s between releases at least: at 10,000 due per second, one turn routes
                     # ~10 (the turn's writes and fsync shared) instead of one; a message is
                     # late by less than this, never early

MAX_DELAY = 2 ** 32 - 1       # the plugin routes longer delays at once


def _milliseconds(value):
    """x-delay as the plugin reads it: integers, numeric strings and floats."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode(errors="replace")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, float) and not math.isfinite(value):
        return None                  # NaN and infinities are no delay (int() would raise)
    if isinstance(value, (int, float)) or hasattr(value, "to_integral_value"):
        return int(value)
    return None


_u32 = struct.Struct(">I")
_X_DELAY = b"x-delay"


def _find_x_delay(header: bytes):
    """The x-delay entry of a content header's headers table, by a walk over its bytes (the
    properties are not decoded): (value, start, stop, table_at, unique, persistent) -- the
    value as the table decoder gives it, its bytes' span (type tag included), where the
    table's length field is, whether the table names every key once, and whether the delivery
    mode (the property after the table) is 2. None: no headers or no x-delay (the first of
    several counts, as when the table is decoded)."""
    flags = properties.flags(header)
    if not flags & properties.HEADERS:
        return None
    pos = 14
    if flags & properties.CONTENT_TYPE:
        pos += 1 + header[pos]
    if flags & properties.CONTENT_ENCODING:
        pos += 1 + header[pos]
    table_at = pos
    end = pos + 4 + _u32.unpack_from(header, pos)[0]
    pos += 4
    found, keys, unique = None, set(), True
    while pos < end:
        kend = pos + 1 + header[pos]
        key = header[pos + 1:kend]
        value, stop = tables._decode_value(header, kend, end, 0)
        if key in keys:
            unique = False
        elif key == _X_DELAY:
            found = (value, kend, stop)
        keys.add(key)
        pos = stop
    if found is None:
        return None
    persistent = bool(flags & properties.DELIVERY_MODE) and header[end] == 2
    return found + (table_at, unique, persistent)


def _delivered(message, entry, delay: int):
    """The message as the plugin delivers it: x-delay negated, a signedint (a long beyond
    its range); every other header keeps its bytes. Only that entry is rewritten (and the
    table's length); a table naming a key twice is decoded and written whole, as before."""
    if entry[4]:
        _, start, stop, table_at, _, _ = entry
        value = (b"I" + SignedInt._struct.pack(-delay) if -delay >= -(1 << 31)
                 else b"l" + Long._struct.pack(-delay))
        header = message.header
        length = _u32.unpack_from(header, table_at)[0] + len(value) - (stop - start)
        header = b"".join((header[:table_at], _u32.pack(length), header[table_at + 4:start],
                           value, header[stop:]))
    else:
        try:
            headers = dict(message.headers or {})
            headers["x-delay"] = SignedInt(-delay) if -delay >= -(1 << 31) else Long(-delay)
            header = properties.rewrite(message.header, headers=headers)
        except (errors.AMQPError, TableError) as exc:
            log.error("cannot negate x-delay of a delayed message (%s): routed as it is", exc)
            return message
    copy = Message(message.exchange, message.routing_key, message.raw_route, header, message.body)
    copy._persistent = entry[5]
    return copy


def _delivered_copy(message):
    """A held message read back from a file written before held messages were stored as
    delivered (delayed_log.py's FINAL flag): x-delay negated now."""
    try:
        entry = _find_x_delay(message.header)
    except (IndexError, struct.error, TableError):
        entry = None
    delay = _milliseconds(entry[0]) if entry is not None else None
    if delay is None or delay <= 0:
        return message                  # nothing to negate (or negated already)
    return _delivered(message, entry, delay)


class _Run:
    """Messages read back from one bucket, in its index (due) order: released in that order,
    so one settle marker covers those routed in a turn (delayed_log.settle_through)."""
    __slots__ = ("dues", "keys", "messages", "at")

    def __init__(self):
        self.dues: list = []        # due times (monotonic)
        self.keys: list = []        # index keys
        self.messages: list = []
        self.at = 0                 # the next to release


class DelayedExchange(Exchange):
    kind = "x-delayed-message"
    delays_messages = True

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        kind = text(self.arguments.get("x-delayed-type"))
        # The routing index is an exchange of the underlying type, holding the same bindings.
        self.inner = self.vhost.types[kind](self.vhost, self.name, self.durable, False, False, {})
        # The bindings live here; an index-free type (headers) routes by scanning them.
        self.inner.bindings = self.bindings
        # heap of (due, n, message, bucket or None, file offset) for messages held one by one
        # (memory only, or due soon when published), (due of its next, n, run, bucket, -1)
        # for a run read back from a bucket, and control entries (due - AHEAD, n, None,
        # bucket, 0): read the bucket's next batch
        self.pending: list = []
        self.armed = None                  # deadline of the release timer set last (or None)
        self._n = itertools.count()
        self.held = 0                      # messages held (those of files found at start-up
                                           # are counted once their bucket is read)
        self.log = None                    # DelayedLog (store/delayed_log.py) or None
        self.log_key = None                # the store's name for a non-durable one's log
        self.scanning: dict = {}           # bucket being indexed -> its start (monotonic)
        self.bucket_runs: dict = {}        # bucket -> its run in the heap (read back, due)
        self.clock_offsets: dict = {}      # bucket -> monotonic - wall clock when written

    @classmethod
    def validate_arguments(cls, label: str, arguments: dict, types=None) -> None:
        """``types``: the exchange types by name (the vhost's registry, which names this
        class, so it is passed in rather than imported)."""
        super().validate_arguments(label, arguments)
        kind = text(arguments.get("x-delayed-type"))
        if not isinstance(kind, str):
            raise errors.PreconditionFailed(
                "Invalid argument, 'x-delayed-type' must be an existing exchange type")
        if kind == cls.kind:
            raise errors.PreconditionFailed(
                "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'")
        # the plugin checks the type like a declare does: a connection error
        check_type(kind, types)

    def validate_binding(self, key, args):
        self.inner.validate_binding(key, args)

    def _index(self, dest, key, args):
        self.inner._index(dest, key, args)

    def _unindex(self, dest, key, args):
        self.inner._unindex(dest, key, args)

    def route(self, message):
        return self.inner.route(message)

    # -- holding ----------------------------------------------------------------------------
    def take_aside(self, message):
        """Called before routing a publish. None: route it now. Otherwise it is held and the
        result is the publish verdict (STORED when logged, so the confirm waits for it)."""
        try:
            entry = _find_x_delay(message.header)
        except (IndexError, struct.error, TableError):
            headers = message.headers          # the decoder's verdict on a malformed table
            entry = (headers.get("x-delay"), 0, 0, 0, False, message.persistent) \
                if headers else None
        delay = _milliseconds(entry[0]) if entry is not None else None
        if delay is None or delay <= 0 or delay > MAX_DELAY:
            return None
        broker = self.vhost.broker
        return self._hold(_delivered(message, entry, delay), broker.clock() + delay / 1000.0,
                          broker.wallclock() + delay / 1000.0)

    def _hold(self, message, due: float, due_wall: float):
        """Hold ``message`` (already as it will be delivered) until ``due``."""
        self.held += 1
        dlog = self.log if self.log is not None else self._scratch_log()
        if dlog is None:                   # memory only: the heap holds it
            self._push(due, message, None, 0)
            return ACCEPTED
        broker = self.vhost.broker
        now_ms = int(broker.wallclock() * 1000)
        due_ms = math.ceil(due_wall * 1000)     # a ms up, never down: never early
        bucket, offset, direct, created = dlog.append(
            due_ms, due_ms - now_ms, message.raw_route, message.header, message.body, now_ms,
            AHEAD_MS, message.persistent)
        broker.commit.mark_dirty(dlog)
        if direct:
            self._push(due, message, bucket, offset)
        elif created:
            # due times on disk are wall clock; read back, they are turned into the monotonic
            # clock's with the offset of when they were written, so a wall clock step meanwhile
            # moves no release (a bucket found at start-up takes the offset of then)
            self.clock_offsets[bucket] = broker.clock() - broker.wallclock()
            self._push(self._mono(bucket.start) - AHEAD, None, bucket, 0)
        return STORED if dlog.durable else ACCEPTED

    def _scratch_log(self):
        """A non-durable exchange keeps its held messages in scratch files (never fsynced,
        removed at the next start) when there is a data directory."""
        store = self.vhost.broker.store
        if store is None or self.durable:
            return None
        self.log_key = "\0delayed-scratch:" + self.name
        self.log = store.delayed_log(self.vhost.name, self.log_key, durable=False)
        return self.log

    def _mono(self, wall_ms: int) -> float:
        broker = self.vhost.broker
        return broker.clock() + (wall_ms / 1000.0 - broker.wallclock())

    def _push(self, due: float, message, bucket, offset: int) -> None:
        pending = self.pending
        heapq.heappush(pending, (due, next(self._n), message, bucket, offset))
        if pending[0][0] == due:
            self._arm(due)

    def in_ram(self) -> list:
        """The held messages now in RAM (one by one, or read back in runs), in no order."""
        out = []
        for _, _, item, _, offset in self.pending:
            if offset < 0:
                out += item.messages[item.at:]
            elif item is not None:
                out.append(item)
        return out

    # -- releasing --------------------------------------------------------------------------
    def _arm(self, deadline: float) -> None:
        """One release timer at a time: a new one only when it is earlier than the one set
        (a superseded timer still fires, finds it is not the one armed, and does nothing)."""
        if self.armed is None or deadline < self.armed:
            self.armed = deadline
            self.vhost.broker.call_at(deadline, functools.partial(self._wake, deadline))

    def _wake(self, deadline: float) -> None:
        if deadline != self.armed:
            return                          # superseded by an earlier one, which ran
        self.armed = None
        self.release()

    def release(self) -> None:
        """Route the messages whose time has come, RELEASE_SLICE at most (the rest at the
        next turn), and read buckets coming due."""
        if self.vhost.exchanges.get(self.name) is not self:
            return                          # deleted meanwhile
        pending = self.pending
        vhost = self.vhost
        broker = vhost.broker
        dlog = self.log
        now = clock = broker.clock()
        if self.scanning:
            # nothing due at or after the start of a bucket still being indexed goes first
            # (the end of its scan arms the timer again)
            now = min(now, min(self.scanning.values()) - 1e-9)
        publish, pop = vhost.publish, heapq.heappop
        left = RELEASE_SLICE
        settled = False
        while left > 0 and pending and pending[0][0] <= now:
            _, _, item, bucket, offset = pop(pending)
            if item is None:
                self._read_ahead(bucket)
                left -= READ_COST
            elif offset < 0:
                left = self._release_run(item, bucket, now, left)
                settled = True
            else:
                left -= 1
                self.held -= 1
                publish(self, item, take_aside=False)
                if bucket is not None:
                    dlog.settle(bucket, offset)
                    settled = True
        if settled:
            broker.commit.mark_dirty(dlog)
        if left <= 0 and pending and pending[0][0] <= now:
            self._arm(broker.clock())       # more are due: they go on at the next turn
        elif pending and not (self.scanning and pending[0][0] <= clock):
            # (held back by a scan: its end arms it)
            self._arm(max(pending[0][0], clock + TICK))

    def _release_run(self, run, bucket, now: float, left: int) -> int:
        """Route a run's messages in order while they are due and come before the heap's
        next entry; one settle marker for them all. Returns what is left of the slice."""
        pending = self.pending
        limit = min(now, pending[0][0]) if pending else now
        dues, messages = run.dues, run.messages
        publish = self.vhost.publish
        i = start = run.at
        stop = min(len(dues), i + left)
        while i < stop and dues[i] <= limit:
            publish(self, messages[i], take_aside=False)
            messages[i] = None
            i += 1
        if i == start:              # (never: popped as due, so its first one is due)
            i += 1
            publish(self, messages[start], take_aside=False)
        run.at = i
        self.held -= i - start
        self.log.settle_through(bucket, run.keys[i - 1], i - start)
        if i < len(dues):
            heapq.heappush(pending, (dues[i], next(self._n), run, bucket, -1))
        else:
            del self.bucket_runs[bucket]
        return left - (i - start)

    def _read_ahead(self, bucket) -> None:
        """A bucket's next batch into the heap as one run (its index first, the first
        time)."""
        dlog = self.log
        if dlog is None or bucket.number not in dlog.buckets:
            self.clock_offsets.pop(bucket, None)
            return
        if not bucket.scanned and dlog.indexed(bucket):
            dlog.scan(bucket)                  # its index is in RAM: sorted, nothing read
        if not bucket.scanned:
            if bucket not in self.scanning:
                offset_s = self.clock_offsets.get(bucket)
                self.scanning[bucket] = (self._mono(bucket.start) if offset_s is None
                                         else bucket.start / 1000.0 + offset_s)
                self.vhost.broker.background(self._scan(dlog, bucket))
            return
        routes: dict = {}
        broker = self.vhost.broker
        offset_s = self.clock_offsets.get(bucket)
        if offset_s is None:
            offset_s = self.clock_offsets[bucket] = broker.clock() - broker.wallclock()
        # One run per bucket, the next batch appended to it: a bucket's messages then come
        # out in index order whatever ties and slices do, as its settle markers need.
        run = self.bucket_runs.get(bucket)
        fresh = run is None
        if fresh:
            run = _Run()
        elif run.at:
            del run.dues[:run.at], run.keys[:run.at], run.messages[:run.at]
            run.at = 0
        dues, keys, messages = run.dues, run.keys, run.messages
        for due_ms, key, route, header, body, flags in dlog.read(bucket, BATCH):
            message = from_route(route, header, body, routes)
            if flags & delayed_log.FINAL:
                message._persistent = bool(flags & delayed_log.PERSISTENT)
            else:                              # a file of an older version: negate x-delay now
                message._persistent = None
                message = _delivered_copy(message)
            dues.append(due_ms / 1000.0 + offset_s)
            keys.append(key)
            messages.append(message)
        if fresh and dues:
            self.bucket_runs[bucket] = run
            heapq.heappush(self.pending, (dues[0], next(self._n), run, bucket, -1))
        nxt = dlog.peek_due(bucket)
        if nxt is not None:
            heapq.heappush(self.pending, (nxt / 1000.0 + offset_s - AHEAD, next(self._n), None,
                                          bucket, 0))
        else:
            del self.clock_offsets[bucket]     # read through
        broker.commit.mark_dirty(dlog)     # a bucket read through may be done with

    def _scan(self, dlog, bucket):
        """Index a bucket's file one read per slice (broker.background), then read its first
        batch; messages due from the bucket's start on wait for it (``scanning``)."""
        recovered = bucket.recovered
        count = yield from dlog.scan_steps(bucket)
        del self.scanning[bucket]
        if self.log is not dlog or dlog.deleted:
            return                                  # the exchange was deleted meanwhile
        if recovered:
            self.held += count
        self._read_ahead(bucket)
        if self.pending:
            self._arm(self.pending[0][0])

    def recover(self, buckets: list, _top: int = 0) -> int:
        """After a restart: one control entry per bucket file found (nothing is read yet);
        overdue ones get deadlines in the past, so they still come out in due order."""
        for bucket in buckets:
            self._push(self._mono(bucket.start) - AHEAD, None, bucket, 0)
        return 0
