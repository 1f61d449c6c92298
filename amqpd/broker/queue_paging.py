"""A durable queue's bounded window: at most ``storage.queue_window`` messages (and bytes) of
its ready list in RAM, the rest of the backlog only on disk (store/paging.py holds their
positions, 12 bytes each) and read back in order ahead of the consumers.

Order is kept by construction: requeued entries (``ready.back``) come before the window, the
window before the pager. A message goes to the pager when the window is full or the pager is
not empty (so it stays behind the ones already there); the window is refilled from the pager's
head whenever it drops below half (``dispatch``, ``take``), so a consumer at the head finds
messages in RAM. A record written in this loop turn is not readable yet (it goes to the OS at
the end of the turn): the queue asks the commit path to call it back after the write.
"""
import logging
import math
from array import array
from collections import deque

from .. import errors
from ..store.paging import CHUNK, GONE as GONE_DUE, NO_DUE, SPAN, Pager, PriorityPagers, Run
from .deadletter import dead_letter
from .message import GONE, Entry, from_route
from ..wire import properties

log = logging.getLogger("amqpd.queue")

EXPIRE_SLICE = 4096      # paged messages expired per timer turn (the loop stays responsive)


class Paging:
    """Part of Queue (broker/queue.py)."""

    def start_paging(self, scratch=None) -> None:
        """Give the queue a bounded window (when the broker has a store), unless it needs
        per-entry state that cannot be paged yet (priorities, deduplication). Persistent
        messages of a durable queue page to its log, the others to a scratch log made on
        first use."""
        opts = self.opts
        if self.vhost.broker.store is None or self.pager is not None or opts.dedup:
            return
        window = self.vhost.broker.config.storage.queue_window
        self.window_messages = window.messages
        self.window_limit = window.bytes
        self.window_low = max(1, window.messages // 2)
        if opts.max_priority:
            # one pager per priority, each level read in up to its share of the window
            levels = opts.max_priority + 1
            self.level_window = max(16, window.messages // levels)
            self.level_low = max(1, self.level_window // 2)
            self.pager = PriorityPagers(self.log, scratch, levels)
            self.ready.paged = self.pager.levels
            self.ready.refill = self._page_level
            return
        self.pager = Pager(self.log, scratch)

    def _spill(self, entry) -> None:
        """A transient message (or any in a queue without a log) beyond the window. While the
        node's memory is below its paging threshold (``Broker.page_transient`` false, as
        RabbitMQ pages transient messages only under memory pressure) it stays in RAM: at
        the window's end when nothing is paged ahead of it (the window grows), else behind
        the paged ones. Under pressure it goes to the queue's scratch log; one with a TTL
        stays in RAM (its deadline holds it)."""
        pager = self.pager
        if not self.vhost.broker.page_transient:
            if not pager.count:
                self.ready.append(entry)
                self.window_bytes += len(entry.message.body)
            else:
                pager.add_entry(entry)
            return
        if entry.expires is not None:
            pager.add_entry(entry)
            return
        scratch = pager.scratch
        if scratch is None:
            scratch = pager.scratch = self.vhost.broker.store.scratch_log()
        m = entry.message
        segment = scratch.append_message(entry.seq, m.raw_route, m.header, m.body)
        pager.add(entry.seq, segment, scratch.last_offset, scratch.seed, True)
        self.vhost.broker.commit.mark_dirty(scratch)

    def _page_due(self, entry, segment: int) -> None:
        """A persistent message with a deadline beyond the window: its position and deadline
        go to the pager (16 bytes); the expiry timer is armed when it is its run's earliest."""
        qlog = self.log
        due = to_ms(entry.expires)
        now = self.vhost.broker.clock()
        if entry.expires <= now:                 # a TTL of 0: due now, not a ms later
            due = min(due, math.floor(now * 1000.0))
        at = self.pager.add_due(entry.seq, segment, qlog.last_offset, qlog.seed, due)
        if at is not None:
            self.vhost.broker.call_at(at / 1000.0, self.expire)

    def _index_extras(self, index, entry) -> None:
        """What a restart needs of a message beyond its position, kept in the summary of its
        segment (store/segment_index.py): its body size (x-max-length-bytes: the byte count)
        and its priority (x-max-priority: the level it is paged to)."""
        opts = self.opts
        if opts.max_bytes is not None:
            index.sizes.append(len(entry.message.body))
        if opts.max_priority:
            index.prios.append(entry.priority)

    def _should_page(self) -> bool:
        return bool(self.pager.count) or len(self.ready) >= self.window_messages \
            or self.window_bytes >= self.window_limit

    def _page_in(self) -> bool:
        """Refill the window from the pager's head; True if anything came in."""
        pager = self.pager
        if pager is None or not pager.count:
            return False
        if pager.__class__ is PriorityPagers:
            moved = False
            levels = self.ready.levels
            for p in range(len(levels) - 1, -1, -1):
                if pager.levels[p].count and levels[p].size() < self.level_low:
                    moved = self._page_in_from(pager.levels[p], p) or moved
            return moved
        return self._page_in_from(pager, None)

    def _page_level(self, p: int) -> bool:
        """A priority level with nothing in RAM but paged messages is about to be served
        (PriorityReady.take): read it in first."""
        pager = self.pager
        return pager is not None and self._page_in_from(pager.levels[p], p)

    def _page_in_from(self, pager, level) -> bool:
        """Refill from ``pager``: the queue's, or priority ``level``'s."""
        ready = self.ready
        moved = 0
        routes: dict = {}
        late: list = []
        now = self.vhost.broker.clock()
        while pager.count:
            if level is None:
                held = len(ready)
                room = self.window_messages - held
            else:
                held = ready.levels[level].size()
                room = self.level_window - held
            budget = self.window_limit - self.window_bytes
            if room <= 0 or (budget <= 0 and held):
                break
            run = pager.runs[0]
            if run.__class__ is deque:
                entry = run.popleft()
                pager.count -= 1
                if not run:
                    pager.runs.popleft()
                ready.append(entry)
                self.window_bytes += len(entry.message.body)
                moved += 1
                continue
            got = pager.read(run, room, budget)
            span = pager.span
            if not got:
                if span:                           # every one of them expired while paged
                    pager.advance(run, span, 0)
                    continue
                self._wait_for_write()
                break
            dues = run.dues
            if dues is not None:                   # their deadlines, in the order of got
                base = run.base
                dues = [d for d in dues[run.head:run.head + span] if d != GONE_DUE]
            pager.advance(run, span, len(got))
            segment = run.segment
            if run.scratch:
                pager.scratch.forget(segment, len(got))
                if pager.scratch.doomed:              # read back: the file can go
                    self.vhost.broker.commit.mark_dirty(pager.scratch)
                for seq, _redelivered, rec in got:
                    if rec is not None:
                        msg = from_route(rec.route, rec.header, rec.body, routes)
                        msg._persistent = None          # as published (peeked when asked)
                        entry = Entry(seq, msg)
                        if level is not None:
                            entry.priority = level
                        ready.append(entry)
                        self.window_bytes += len(rec.body)
                        moved += 1
                continue
            for k, (seq, redelivered, rec) in enumerate(got):
                if rec is None:                    # nacked and lost with its write
                    self.log.settle(seq, segment)
                    self.vhost.broker.commit.mark_dirty(self.log)
                    continue
                entry = Entry(seq, from_route(rec.route, rec.header, rec.body, routes),
                              bool(redelivered), segment)
                if level is not None:
                    entry.priority = level
                if dues is not None and dues[k] != NO_DUE:
                    at = (base + dues[k]) / 1000.0
                    self.tracks_entries = True
                    if at <= now:                  # due, its timer not run yet: not served
                        late.append(entry)
                        continue
                    self._expire_at(entry, at)
                ready.append(entry)
                self.window_bytes += len(rec.body)
                moved += 1
        for entry in late:
            if self.length_limited:
                self.ready_bytes -= len(entry.message.body)
            self._remove(entry, "expired")
        return moved > 0

    # -- expiry of paged messages ----------------------------------------------------------
    def _expire_paged(self, now: float) -> None:
        """Dead-letter (reason expired) and settle the paged messages whose deadline passed,
        wherever they sit; at most EXPIRE_SLICE per turn (the timer comes back at once for
        more). Their records are read only when someone needs the message (a dead-letter
        exchange) or its size (x-max-length-bytes)."""
        pager = self.pager
        gone = pager.take_due(now * 1000.0 + 0.001, EXPIRE_SLICE)
        qlog = self.log
        opts = self.opts
        need = opts.dlx is not None or opts.max_bytes is not None
        routes: dict = {}
        for run, i in gone:
            qlog.settle(run.seqs[i], run.segment)
            if not need:
                continue
            rec = pager.read_one(run, i)
            if rec is None:
                continue
            if self.length_limited:
                self.ready_bytes -= len(rec.body)
            dead_letter(self, from_route(rec.route, rec.header, rec.body, routes), "expired")
        if gone:
            self.vhost.broker.commit.mark_dirty(qlog)
            if qlog.wants_compaction:
                self._compact_soon()
        broker = self.vhost.broker
        if len(gone) >= EXPIRE_SLICE:
            broker.call_at(now, self.expire)
        else:
            at = pager.next_due()
            if at is not None:
                broker.call_at(at, self.expire)

    def _wait_for_write(self) -> None:
        pager = self.pager
        if not pager.waiting:
            pager.waiting = True
            self.vhost.broker.commit.after_write(self._written)

    def _written(self) -> None:
        """The log was written: what this queue could not read before can be now."""
        if self.pager is None or self.deleted:
            return
        pager = self.pager
        pager.waiting = False
        qlog, scratch = self.log, pager.scratch
        if pager.count and not (qlog is not None and qlog.pending) \
                and not (scratch is not None and scratch.pending):
            for seq, segment, in_scratch in pager.drop_unwritten():
                if in_scratch:
                    scratch.forget(segment)
                else:
                    qlog.settle(seq, segment)
                    self.vhost.broker.commit.mark_dirty(qlog)
        if self.consumers and self._page_in():
            broker = self.vhost.broker
            broker.schedule(self)
            broker.call_at(broker.clock(), _nothing)       # dispatch runs after timers

    def _refill(self) -> None:
        """Read ahead: keep the window at least half full while the pager has more."""
        if len(self.ready) < self.window_low:
            self._page_in()

    # -- compaction -----------------------------------------------------------------------------
    def _compact_soon(self) -> None:
        self.log.wants_compaction = False
        broker = self.vhost.broker
        broker.call_at(broker.clock(), self._compact_log)

    def _compact_log(self) -> None:
        """A few live messages in old segments keep fully settled later ones on disk (those
        hold the SETTLED markers of the old ones' messages): rewrite the old segments with
        just their live messages, so the others can go (QueueLog.compact). Which messages are
        live is asked of where they can be: the pager, the ready list, and the channels of
        this queue's consumers; unless that accounts for every live message the log counts
        (one held by a basic.get or an open transaction, say), nothing is done."""
        qlog = self.log
        if qlog is None or qlog.deleted or self.deleted:
            return
        targets = qlog.compaction_targets()
        if not targets:
            return
        live = {n: {} for n in targets}
        pager = self.pager
        if pager is not None:
            for run in pager.runs:
                if run.__class__ is deque:
                    for entry in run:
                        if entry.segment in live and entry.state != GONE:
                            live[entry.segment][entry.seq] = entry.redelivered
                elif not run.scratch and run.segment in live:
                    found = live[run.segment]
                    for i in pager.live_positions(run):
                        found[run.seqs[i]] = bool(run.offs[i] & 1)
        for entry in self.ready:
            if entry.segment in live and entry.state != GONE:
                live[entry.segment][entry.seq] = entry.redelivered
        holders = [c.channel for c in self.consumers]
        if self.sac_waiting is not None:
            holders.append(self.sac_waiting.channel)
        for channel in dict.fromkeys(holders):
            for queue, entry, _consumer in channel.unacked.values():
                if queue is self and entry.segment in live:
                    live[entry.segment][entry.seq] = True
        if any(len(live[n]) != qlog.live[n] for n in targets):
            return
        sync = self.vhost.broker.commit.mode != "never"
        if pager is not None:
            pager.close()
        for n in targets:
            try:
                offsets = qlog.compact(n, live[n], sync)
            except (OSError, ValueError) as exc:
                log.warning("%s: compacting segment %d failed: %s", qlog.path, n, exc)
                return
            if pager is not None:
                for run in pager.runs:
                    if run.__class__ is not deque and not run.scratch and run.segment == n:
                        offs, seqs = run.offs, run.seqs
                        for i in pager.live_positions(run):
                            offs[i] = offsets[seqs[i]] << 1 | (offs[i] & 1)
                        if run.gone:
                            _fill_gone_offsets(run)
        qlog._drop_settled_prefix()
        self.vhost.broker.commit.mark_dirty(qlog)

    # -- recovery -------------------------------------------------------------------------------
    def recover_paged(self, runs: list, expiries: dict, now: float, wall: float) -> int:
        """Rebuild the queue from positions (QueueLog.recover_positions): everything goes to
        the pager. The window of a queue larger than it is not read in here but when first
        needed (a consumer, a basic.get: ``_pop`` and ``dispatch`` page in), so a restart
        with many big queues reads no message body of a queue nobody consumes from; a queue
        that fits in its window is read in at once (what it costs is what it cost before
        paging, and it keeps the messages of small queues at hand). The TTL deadlines (``expiries``,
        per segment, ms since the epoch) become the runs' deadlines on the broker's clock
        (a restart does not extend a TTL). Returns the messages recovered."""
        pager = self.pager
        total = 0
        shift = now * 1000.0 - wall * 1000.0            # epoch ms -> ms on the clock
        lookup: dict = {}
        # one without a deadline in a queue with a TTL gets it from now on (docs/policies.md)
        ttl = self.opts.message_ttl
        default = None if ttl is None else to_ms(now + ttl / 1000.0)
        none = (array("Q"), array("Q"))
        levels = getattr(self.log, "recovered_prios", None) or {}
        for run in runs:
            total += len(run.seqs)
            exp = expiries.get(run.segment)
            if exp is not None or default is not None:
                self.tracks_entries = True
            parts = [run] if exp is None and default is None \
                else with_dues(run, exp or none, shift, lookup, default)
            prios = levels.get(run.segment)
            at = 0
            for part in parts:                 # (consecutive slices of ``run``)
                if pager.__class__ is PriorityPagers:
                    n = len(part.seqs)
                    self._sort_by_priority(part, None if prios is None else prios[at:at + n])
                    at += n
                else:
                    pager.add_run(part)
        pager.close()
        at = pager.next_due()
        if at is not None:
            self.vhost.broker.call_at(at, self.expire)
        if total <= self.window_messages:
            self._page_in()      # it all fits in the window: as before paging (see above)
        return total

    def _sort_by_priority(self, run: Run, known=None) -> None:
        """A recovered run of a priority queue: each message to its level's pager, by the
        levels its segment's summary kept (``known``); without them the records are read (in
        slices of a few MB, CRC-checked) for their headers; one that cannot be read goes to
        level 0 (reading it in later settles it)."""
        pager = self.pager
        top = self.opts.max_priority
        if known is not None:
            levels = [min(p, top) for p in known]
        else:
            levels = self._read_priorities(run, top)
        seqs, offs, dues, segment, seed = run.seqs, run.offs, run.dues, run.segment, run.seed
        for i in range(len(seqs)):
            level = pager.levels[levels[i]]
            off = offs[i]
            if dues is not None and dues[i] != NO_DUE:
                level.add_due(seqs[i], segment, off >> 1, seed, run.base + dues[i])
            else:
                level.add(seqs[i], segment, off >> 1, seed)
            level.runs[-1].offs[-1] = off

    def _read_priorities(self, run: Run, top: int) -> list:
        reader = Pager(self.log)
        levels = []
        while run.head < len(run.seqs):
            got = reader.read(run, CHUNK, 4 << 20)
            if not reader.span:
                levels += [0] * (len(run.seqs) - run.head)
                break
            for _seq, _redelivered, rec in got:
                p = 0
                if rec is not None:
                    try:
                        p = min(properties.peek(rec.header, properties.PRIORITY) or 0, top)
                    except (errors.AMQPError, ValueError, IndexError):
                        p = 0
                levels.append(p)
            run.head += reader.span
        reader.close()
        run.head = 0
        return levels

    # -- purge and delete ---------------------------------------------------------------------
    def _release_paged(self, pager: Pager, settle: bool):
        """Settle (purge) or just drop (delete) what a pager held, a slice per turn."""
        from .queue import SLICE
        qlog = self.log
        for part in pager.parts():
            yield from self._release_part(part, settle, qlog, SLICE)
        pager.close()

    def _release_part(self, pager: Pager, settle: bool, qlog, SLICE: int):
        while pager.runs:
            run = pager.runs.popleft()
            if run.__class__ is deque:
                while run:
                    for _ in range(SLICE):
                        if not run:
                            break
                        entry = run.popleft()
                        if settle and entry.state != GONE:
                            self._forget(entry)
                    yield
                continue
            if run.scratch:
                if pager.scratch is not None and not pager.scratch.deleted:
                    pager.scratch.forget(run.segment, len(run))
                    self.vhost.broker.commit.mark_dirty(pager.scratch)
                continue
            if not settle or qlog is None or self.log is not qlog:
                continue
            seqs, segment = run.seqs, run.segment
            dues = run.dues
            for start in range(run.head, len(seqs), SLICE):
                if self.log is not qlog:
                    break
                for i in range(start, min(start + SLICE, len(seqs))):
                    if dues is None or dues[i] != GONE_DUE:       # (expired: settled then)
                        qlog.settle(seqs[i], segment)
                self.vhost.broker.commit.mark_dirty(qlog)
                yield
        pager.close()


def _nothing() -> None:
    pass


def _fill_gone_offsets(run: Run) -> None:
    """After compaction the expired (GONE) positions of ``run`` point into the old file: give
    each the offset of the next live one (the last live one's at the end), so the offsets stay
    in order for the byte spans of reads (a GONE record is never parsed)."""
    offs, dues = run.offs, run.dues
    live = [i for i in range(run.head, len(offs)) if dues[i] != GONE_DUE]
    if not live:
        return
    nxt = offs[live[-1]] & ~1
    for i in range(len(offs) - 1, run.head - 1, -1):
        if dues[i] == GONE_DUE:
            offs[i] = nxt
        else:
            nxt = offs[i] & ~1


def to_ms(deadline: float) -> int:
    """A deadline (s on the broker's clock) in whole ms as the pager keeps them, rounded up (a
    paged message never expires early; within a µs counts as on the ms, against float
    noise)."""
    return math.ceil(deadline * 1000.0 - 0.001)


def with_dues(run: Run, exp: tuple, shift: float, lookup: dict, default=None) -> list:
    """Split a recovered run of a segment whose messages have deadlines into runs of at most
    CHUNK messages carrying them (``exp``: the segment's (seqs, epoch ms) arrays; ``lookup``
    caches a segment's {seq: ms} when its seqs are not exactly the run's). A message without
    one gets ``default`` (ms on the clock: the queue's TTL from now), if given."""
    seqs, offs = run.seqs, run.offs
    eseqs, eats = exp
    if eseqs == seqs:
        ats = eats
    else:
        table = lookup.get(run.segment)
        if table is None:
            table = lookup[run.segment] = dict(zip(eseqs, eats))
        ats = [table.get(seq) for seq in seqs]
    out = []
    for a in range(0, len(seqs), CHUNK):
        b = min(a + CHUNK, len(seqs))
        part = Run(run.segment, run.seed, seqs[a:b], offs[a:b])
        due = [default if at is None else math.ceil(at + shift - 0.001) for at in ats[a:b]]
        real = [d for d in due if d is not None]
        if not real:
            out.append(part)
            continue
        base = min(real)
        if max(real) - base > SPAN:       # deadlines more than 24 days apart: one by one
            out.extend(_split_by_span(part, due))
            continue
        part.dues = array("i", [NO_DUE if d is None else d - base for d in due])
        part.base = base
        part.ordered = real == sorted(real)
        part.top = max(real) - base
        out.append(part)
    return out


def _split_by_span(part: Run, due: list) -> list:
    pager = Pager(None)
    for i in range(len(part.seqs)):
        if due[i] is None:
            pager.add(part.seqs[i], part.segment, 0, part.seed)
        else:
            pager.add_due(part.seqs[i], part.segment, 0, part.seed, due[i])
        pager.runs[-1].offs[-1] = part.offs[i]
    for r in pager.runs:
        r.first = NO_DUE                 # (add_run computes it again)
    return list(pager.runs)
