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
from collections import deque

from ..store.paging import Pager, Run
from .message import GONE, Entry, from_route

log = logging.getLogger("amqpd.queue")


class Paging:
    """Part of Queue (broker/queue.py)."""

    def start_paging(self, scratch=None) -> None:
        """Give the queue a bounded window (when the broker has a store), unless it needs
        per-entry state that cannot be paged yet (priorities, a queue TTL, deduplication). Persistent messages of a durable queue page to its log, the
        others to a scratch log made on first use."""
        opts = self.opts
        if self.vhost.broker.store is None or self.pager is not None or opts.max_priority \
                or opts.message_ttl is not None or opts.dedup:
            return
        window = self.vhost.broker.config.storage.queue_window
        self.window_messages = window.messages
        self.window_limit = window.bytes
        self.window_low = max(1, window.messages // 2)
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

    def _should_page(self) -> bool:
        return bool(self.pager.count) or len(self.ready) >= self.window_messages \
            or self.window_bytes >= self.window_limit

    def _page_in(self) -> bool:
        """Refill the window from the pager's head; True if anything came in."""
        pager = self.pager
        if pager is None or not pager.count:
            return False
        ready = self.ready
        moved = 0
        routes: dict = {}
        while pager.count:
            room = self.window_messages - len(ready)
            budget = self.window_limit - self.window_bytes
            if room <= 0 or (budget <= 0 and len(ready)):
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
            if not got:
                self._wait_for_write()
                break
            pager.advance(run, len(got))
            segment = run.segment
            if run.scratch:
                pager.scratch.forget(segment, len(got))
                if pager.scratch.doomed:              # read back: the file can go
                    self.vhost.broker.commit.mark_dirty(pager.scratch)
                for seq, _redelivered, rec in got:
                    if rec is not None:
                        msg = from_route(rec.route, rec.header, rec.body, routes)
                        msg._persistent = None          # as published (peeked when asked)
                        ready.append(Entry(seq, msg))
                        self.window_bytes += len(rec.body)
                        moved += 1
                continue
            for seq, redelivered, rec in got:
                if rec is None:                    # nacked and lost with its write
                    self.log.settle(seq, segment)
                    self.vhost.broker.commit.mark_dirty(self.log)
                    continue
                ready.append(Entry(seq, from_route(rec.route, rec.header, rec.body, routes),
                                   bool(redelivered), segment))
                self.window_bytes += len(rec.body)
                moved += 1
        return moved > 0

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
                    for i in range(run.head, len(run.seqs)):
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
                        for i in range(run.head, len(seqs)):
                            offs[i] = offsets[seqs[i]] << 1 | (offs[i] & 1)
        qlog._drop_settled_prefix()
        self.vhost.broker.commit.mark_dirty(qlog)

    # -- recovery -------------------------------------------------------------------------------
    def recover_paged(self, runs: list, expiries: dict, now: float, wall: float) -> int:
        """Rebuild the queue from positions (QueueLog.recover_positions): everything goes to
        the pager, then the window is read in. A message with a TTL deadline is loaded into
        RAM at its place (its deadline is armed). Returns the messages recovered."""
        pager = self.pager
        total = 0
        for run in runs:
            total += len(run.seqs)
            if not expiries:
                pager.add_run(run)
                continue
            part = Run(run.segment, run.seed)
            for i in range(len(run.seqs)):
                seq, off = run.seqs[i], run.offs[i]
                at = expiries.get(seq)
                if at is None:
                    part.seqs.append(seq)
                    part.offs.append(off)
                    continue
                pager.add_run(part)
                part = Run(run.segment, run.seed)
                probe = Run(run.segment, run.seed)
                probe.seqs.append(seq)
                probe.offs.append(off)
                (got,) = pager.read(probe, 1, 1)
                if got[2] is None:
                    total -= 1
                    continue
                rec = got[2]
                entry = Entry(seq, from_route(rec.route, rec.header, rec.body), bool(got[1]),
                              run.segment)
                self._prepare(entry, now + (at / 1000.0 - wall))
                pager.add_entry(entry)
            pager.add_run(part)
        pager.close()
        self._page_in()
        return total

    # -- purge and delete ---------------------------------------------------------------------
    def _release_paged(self, pager: Pager, settle: bool):
        """Settle (purge) or just drop (delete) what a pager held, a slice per turn."""
        from .queue import SLICE
        qlog = self.log
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
            for start in range(run.head, len(seqs), SLICE):
                if self.log is not qlog:
                    break
                for i in range(start, min(start + SLICE, len(seqs))):
                    qlog.settle(seqs[i], segment)
                self.vhost.broker.commit.mark_dirty(qlog)
                yield
        pager.close()


def _nothing() -> None:
    pass
