"""The part of a queue's backlog that lives only on disk: positions in compact arrays.

A queue keeps a bounded window of messages in RAM (broker/queue_paging.py); a persistent
message that arrives while the window is full is already in the queue's log, so all the queue
keeps of it is where its record is. Consecutive such messages of one segment form a ``Run``:

    seqs  array('Q')  the message's sequence number        8 bytes
    offs  array('I')  offset << 1 | redelivered            4 bytes

12 bytes per paged message, whatever its size, and no Python object per message. A message
that cannot be paged waits in a ``deque`` run of ordinary entries at its place in the order.
``Pager.runs`` holds the runs in queue order; the window takes from its head.

**Deadlines** (a queue TTL, or a message's ``expiration``): a run that holds any gets a third
array, 4 bytes more per message (16 in all):

    dues  array('i')  deadline in ms, relative to the run's ``base``; NO_DUE: none;
                      GONE: expired while paged (skipped when read back)

Such a run holds at most CHUNK messages, and the pager keeps a heap of (earliest deadline,
run), so the queue's expiry timer looks only at runs that have a message due, and at most
CHUNK positions each (none past the first not due when the deadlines are in order, as with a
queue TTL). An expired message is marked GONE in place: the arrays are not rewritten.

Reading back (``read``): one ``pread`` of the byte range that holds the next messages of the
head run (bounded by count and bytes), each record checked (CRC, and that it holds the
expected seq: a record dropped by a failed write, whose publish was nacked, may have been
replaced by another at the same offset). Only what the OS already has is read: a record still
buffered in the log (written at the end of this loop turn) is not readable yet, and the caller
waits for the write (``QueueLog`` tells how far it has written).
"""
import heapq
import logging
import os
from array import array
from bisect import bisect_left
from collections import deque

from . import records

log = logging.getLogger("amqpd.store")

REDELIVERED = 1
NO_DUE = 0x7FFFFFFF          # in ``dues``: this message has no deadline
GONE = 0x7FFFFFFE            # in ``dues``: expired while paged
SPAN = 0x7FFFFFFD            # the largest deadline a run can hold, relative to its base
CHUNK = 1024                 # messages per run with deadlines (what one expiry pass looks at)
INF = float("inf")


class Run:
    """Paged messages of one segment, in order; ``head`` is the next to read. With deadlines:
    ``dues`` (see above), ``base`` (ms on the broker's clock), ``gone`` (GONE past the head),
    ``first`` (the earliest deadline past the head, relative; NO_DUE: none) and ``ordered``
    (the deadlines are in non-decreasing order, those without one aside: an expiry pass stops
    at the first one not due)."""
    __slots__ = ("segment", "seed", "seqs", "offs", "head", "scratch", "dues", "base", "gone",
                 "first", "ordered", "top")

    def __init__(self, segment: int, seed: int, seqs=None, offs=None, scratch: bool = False):
        self.scratch = scratch        # in the queue's scratch log (transient messages)
        self.segment = segment
        self.seed = seed
        self.seqs = seqs if seqs is not None else array("Q")
        self.offs = offs if offs is not None else array("I")
        self.head = 0
        self.dues = None
        self.base = 0
        self.gone = 0
        self.first = NO_DUE
        self.ordered = True
        self.top = -0x80000000       # the latest deadline added (relative)

    def __len__(self) -> int:
        return len(self.seqs) - self.head - self.gone

    def memory(self) -> int:
        n = self.seqs.itemsize * len(self.seqs) + self.offs.itemsize * len(self.offs)
        return n if self.dues is None else n + self.dues.itemsize * len(self.dues)

    def deadline(self, i: int):
        """Message ``i``'s deadline in seconds on the broker's clock, or None."""
        due = self.dues[i] if self.dues is not None else NO_DUE
        return None if due >= GONE else (self.base + due) / 1000.0

    def _give_dues(self, base: int) -> None:
        self.dues = array("i", [NO_DUE]) * len(self.seqs)
        self.base = base


class Pager:
    """The paged tail of one queue. ``count`` is how many messages it holds (disk and RAM
    runs)."""

    def __init__(self, qlog, scratch=None):
        self.qlog = qlog              # the durable queue's log (None for a transient queue)
        self.scratch = scratch        # its scratch log, once a transient message was paged
        self.runs: deque = deque()
        self.count = 0
        self.waiting = False        # a read found its record not yet written: wait for it
        self.due: list = []         # heap of (earliest deadline ms, n, run) of runs with dues
        self._n = 0
        self._fd = None
        self._fd_segment = None

    def __len__(self) -> int:
        return self.count

    def add(self, seq: int, segment: int, offset: int, seed: int, scratch: bool = False):
        runs = self.runs
        run = runs[-1] if runs else None
        if run is None or run.__class__ is not Run or run.segment != segment \
                or run.scratch != scratch:
            run = Run(segment, seed, scratch=scratch)
            runs.append(run)
        elif run.dues is not None:
            if len(run.seqs) >= CHUNK:
                run = Run(segment, seed)
                runs.append(run)
            else:
                run.dues.append(NO_DUE)
        run.seqs.append(seq)
        run.offs.append(offset << 1)
        self.count += 1

    def add_due(self, seq: int, segment: int, offset: int, seed: int, due: int):
        """A paged message with a deadline (``due``: ms on the broker's clock). Returns the
        deadline if it is now the earliest of its run (the caller arms a timer), else None."""
        runs = self.runs
        run = runs[-1] if runs else None
        if run is None or run.__class__ is not Run or run.segment != segment or run.scratch \
                or len(run.seqs) >= CHUNK \
                or run.dues is not None and not -0x80000000 <= due - run.base <= SPAN:
            run = Run(segment, seed)
            runs.append(run)
        if run.dues is None:
            run._give_dues(due)
        rel = due - run.base
        if rel < run.top:
            run.ordered = False
        else:
            run.top = rel
        run.dues.append(rel)
        run.seqs.append(seq)
        run.offs.append(offset << 1)
        self.count += 1
        if rel < run.first:
            run.first = rel
            self._push(run)
            return due
        return None

    def _push(self, run: Run) -> None:
        self._n += 1
        heapq.heappush(self.due, (run.base + run.first, self._n, run))

    def add_run(self, run: Run) -> None:
        if len(run):
            self.runs.append(run)
            self.count += len(run)
            if run.dues is not None:
                run.first = _first_due(run)
                if run.first != NO_DUE:
                    self._push(run)

    def next_due(self):
        """The earliest deadline (s) of a paged message, or None (stale heap items first
        dropped)."""
        heap = self.due
        while heap:
            at, _n, run = heap[0]
            if run.first != NO_DUE and run.base + run.first == at and len(run):
                return at / 1000.0
            heapq.heappop(heap)
        return None

    def take_due(self, now_ms: int, most: int) -> list:
        """Mark GONE up to ``most`` paged messages whose deadline is ``now_ms`` or earlier;
        returns [(run, index)] so the caller settles (and dead-letters) them."""
        heap = self.due
        out: list = []
        while heap and heap[0][0] <= now_ms and len(out) < most:
            at, _n, run = heapq.heappop(heap)
            if run.first == NO_DUE or run.base + run.first != at or not len(run):
                continue                                   # stale
            dues, base = run.dues, run.base
            limit = now_ms - base
            first = NO_DUE
            i, n = run.head, len(dues)
            while i < n:
                due = dues[i]
                if due >= GONE:
                    pass
                elif due <= limit and len(out) < most:
                    dues[i] = GONE
                    run.gone += 1
                    out.append((run, i))
                elif due < first:
                    first = due
                    if run.ordered:
                        break
                i += 1
            run.first = first
            if first != NO_DUE:
                self._push(run)
            if not len(run):
                self._drop(run)
        self.count -= len(out)
        return out

    def _drop(self, run: Run) -> None:
        """A run whose every message expired leaves the order."""
        try:
            self.runs.remove(run)
        except ValueError:
            return
        if (run.scratch, run.segment) == self._fd_segment:
            self.close()

    def add_entry(self, entry) -> None:
        """A message that stays in RAM (transient, or with a TTL) behind paged ones."""
        runs = self.runs
        run = runs[-1] if runs else None
        if run is None or run.__class__ is not deque:
            run = deque()
            runs.append(run)
        run.append(entry)
        self.count += 1

    def memory(self) -> int:
        """Bytes of the position arrays (what the paged messages cost in RAM)."""
        return sum(r.memory() for r in self.runs if r.__class__ is Run)

    # -- reading back ---------------------------------------------------------------------------
    def readable(self, run: Run) -> int:
        """How many messages of ``run`` from its head are on the OS's side of the log."""
        qlog = self.scratch if run.scratch else self.qlog
        if run.segment < qlog.writing:
            return len(run)
        if run.segment > qlog.writing:
            return 0
        return bisect_left(run.offs, qlog.file_size << 1, run.head) - run.head

    def read(self, run: Run, most: int, budget: int) -> list:
        """Up to ``most`` records from the head of ``run``, their byte span about ``budget``
        at most (always at least one): [(seq, redelivered, record or None)]; None when the
        record is not there any more (its write failed: the publish was nacked). Messages
        that expired while paged are left out; ``self.span`` tells how many positions from
        the head the read covered (what ``advance`` takes)."""
        n = min(most, self.readable(run))
        self.span = 0
        if n <= 0:
            return []
        offs = run.offs
        head = run.head
        first = offs[head] >> 1
        # bound the span by bytes: the last record read starts at most ``budget`` bytes on
        limit = bisect_left(offs, (first + max(budget, 1)) << 1, head, head + n)
        n = max(1, limit - head)
        last = offs[head + n - 1] >> 1
        fd = self._open(run)
        data = os.pread(fd, last - first + records.HEAD_SIZE, first)
        if len(data) >= last - first + records.HEAD_SIZE:
            (length,) = records._len.unpack_from(data, last - first + 6)
            more = last - first + records.HEAD_SIZE + length - len(data)
            if more > 0:
                data += os.pread(fd, more, first + len(data))
        view = memoryview(data)
        seqs = run.seqs
        dues = run.dues
        out = []
        self.span = n
        for i in range(head, head + n):
            if dues is not None and dues[i] == GONE:
                continue
            off = offs[i]
            seq = seqs[i]
            rec = records._record_at(data, view, (off >> 1) - first, run.seed)
            if rec is None or rec.kind != records.MESSAGE or rec.seq != seq:
                log.warning("%s: segment %d: the record of message %d at offset %d is missing "
                            "(its write failed; the publish was nacked)",
                            (self.scratch if run.scratch else self.qlog).path, run.segment,
                            seq, off >> 1)
                rec = None
            out.append((seq, off & REDELIVERED, rec))
        return out

    def drop_unwritten(self) -> list:
        """After a write that failed and was cut back: the head run's records past the end of
        the file are gone for good (their publishes were nacked). Forget them; returns
        [(seq, segment)] so the caller settles them."""
        gone = []
        while self.runs:
            run = self.runs[0]
            qlog = self.scratch if run.__class__ is Run and run.scratch else self.qlog
            if run.__class__ is not Run or run.segment != qlog.writing or self.readable(run):
                break
            live = [i for i in range(run.head, len(run.seqs)) if not _is_gone(run, i)]
            for i in live:
                gone.append((run.seqs[i], run.segment, run.scratch))
            log.warning("%s: %d paged message(s) lost with a failed write (their publishes "
                        "were nacked)", qlog.path, len(run))
            self.advance(run, len(run.seqs) - run.head, len(live))
        return gone

    def advance(self, run: Run, n: int, taken: int | None = None) -> None:
        """``n`` positions of the head run were read, ``taken`` messages (the others had
        expired while paged: already uncounted)."""
        if taken is None:
            taken = n
        run.head += n
        run.gone -= n - taken
        self.count -= taken
        if run.head >= len(run.seqs):
            self.runs.popleft()
            if (run.scratch, run.segment) == self._fd_segment:
                self.close()

    def live_positions(self, run: Run):
        """Indexes of the messages ``run`` still holds (past its head, not expired)."""
        dues = run.dues
        if dues is None or not run.gone:
            return range(run.head, len(run.seqs))
        return [i for i in range(run.head, len(run.seqs)) if dues[i] != GONE]

    def _open(self, run: Run) -> int:
        key = (run.scratch, run.segment)
        if self._fd_segment != key:
            self.close()
            qlog = self.scratch if run.scratch else self.qlog
            self._fd = os.open(qlog._segment_path(run.segment), os.O_RDONLY)
            self._fd_segment = key
        return self._fd

    def clear(self) -> None:
        """Forget every position (the queue was deleted: its logs go as a whole)."""
        self.runs.clear()
        self.due = []
        self.count = 0
        self.close()

    def parts(self) -> list:
        return [self]

    def read_one(self, run: Run, i: int):
        """The record of message ``i`` of ``run`` (to dead-letter it), or None."""
        head, run.head = run.head, i
        gone = run.dues[i] if run.dues is not None else None
        if gone is not None:
            run.dues[i] = NO_DUE
        try:
            got = self.read(run, 1, 1)
        finally:
            run.head = head
            if gone is not None:
                run.dues[i] = gone
        return got[0][2] if got else None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._fd_segment = None


def _is_gone(run: Run, i: int) -> bool:
    return run.dues is not None and run.dues[i] == GONE


def _first_due(run: Run) -> int:
    """The earliest deadline past the head of ``run`` (relative), NO_DUE if none."""
    dues = run.dues
    first = NO_DUE
    for i in range(run.head, len(dues)):
        due = dues[i]
        if due < first and due < GONE:
            first = due
            if run.ordered:
                break
    return first


class PriorityPagers:
    """The paged tails of a priority queue (x-max-priority): one Pager per priority level, so
    the order within a priority is kept and a level's next message is found without looking
    at the others. It answers what the queue asks of a Pager (counts, deadlines, the runs);
    the queue reads each level in (broker/queue_paging.py). ``priority`` is the level of the
    message being added (set by the queue before it adds one)."""

    def __init__(self, qlog, scratch, levels: int):
        self.levels = [Pager(qlog, scratch) for _ in range(levels)]
        self.qlog = qlog
        self._scratch = scratch
        self.priority = 0
        self.waiting = False

    @property
    def count(self) -> int:
        return sum(p.count for p in self.levels)

    def __len__(self) -> int:
        return self.count

    @property
    def scratch(self):
        return self._scratch

    @scratch.setter
    def scratch(self, log) -> None:
        self._scratch = log
        for p in self.levels:
            p.scratch = log

    @property
    def runs(self) -> list:
        """Every level's runs (to look at, not to change)."""
        return [run for p in self.levels for run in p.runs]

    @property
    def due(self) -> bool:
        return any(p.due for p in self.levels)

    def add(self, seq: int, segment: int, offset: int, seed: int, scratch: bool = False):
        self.levels[self.priority].add(seq, segment, offset, seed, scratch)

    def add_due(self, seq: int, segment: int, offset: int, seed: int, due: int):
        return self.levels[self.priority].add_due(seq, segment, offset, seed, due)

    def add_entry(self, entry) -> None:
        self.levels[entry.priority].add_entry(entry)

    def next_due(self):
        dues = [at for at in (p.next_due() for p in self.levels) if at is not None]
        return min(dues) if dues else None

    def take_due(self, now_ms: float, most: int) -> list:
        out: list = []
        for p in self.levels:
            if p.due and len(out) < most:
                out += p.take_due(now_ms, most - len(out))
        return out

    def read_one(self, run: Run, i: int):
        return self.levels[0].read_one(run, i)

    def live_positions(self, run: Run):
        return self.levels[0].live_positions(run)

    def drop_unwritten(self) -> list:
        return [item for p in self.levels for item in p.drop_unwritten()]

    def memory(self) -> int:
        return sum(p.memory() for p in self.levels)

    def clear(self) -> None:
        for p in self.levels:
            p.clear()

    def close(self) -> None:
        for p in self.levels:
            p.close()

    def parts(self) -> list:
        return self.levels
