"""The part of a queue's backlog that lives only on disk: positions in compact arrays.

A queue keeps a bounded window of messages in RAM (broker/queue_paging.py); a persistent
message that arrives while the window is full is already in the queue's log, so all the queue
keeps of it is where its record is. Consecutive such messages of one segment form a ``Run``:

    seqs  array('Q')  the message's sequence number        8 bytes
    offs  array('I')  offset << 1 | redelivered            4 bytes

12 bytes per paged message, whatever its size, and no Python object per message. A message
that cannot be paged (transient, or with a TTL, arriving behind paged ones) waits in a
``deque`` run of ordinary entries at its place in the order. ``Pager.runs`` holds the runs in
queue order; the window takes from its head.

Reading back (``read``): one ``pread`` of the byte range that holds the next messages of the
head run (bounded by count and bytes), each record checked (CRC, and that it holds the
expected seq: a record dropped by a failed write, whose publish was nacked, may have been
replaced by another at the same offset). Only what the OS already has is read: a record still
buffered in the log (written at the end of this loop turn) is not readable yet, and the caller
waits for the write (``QueueLog`` tells how far it has written).
"""
import logging
import os
from array import array
from bisect import bisect_left
from collections import deque

from . import records

log = logging.getLogger("amqpd.store")

REDELIVERED = 1


class Run:
    """Paged messages of one segment, in order; ``head`` is the next to read."""
    __slots__ = ("segment", "seed", "seqs", "offs", "head", "scratch")

    def __init__(self, segment: int, seed: int, seqs=None, offs=None, scratch: bool = False):
        self.scratch = scratch        # in the queue's scratch log (transient messages)
        self.segment = segment
        self.seed = seed
        self.seqs = seqs if seqs is not None else array("Q")
        self.offs = offs if offs is not None else array("I")
        self.head = 0

    def __len__(self) -> int:
        return len(self.seqs) - self.head

    def memory(self) -> int:
        return self.seqs.itemsize * len(self.seqs) + self.offs.itemsize * len(self.offs)


class Pager:
    """The paged tail of one queue. ``count`` is how many messages it holds (disk and RAM
    runs)."""

    def __init__(self, qlog, scratch=None):
        self.qlog = qlog              # the durable queue's log (None for a transient queue)
        self.scratch = scratch        # its scratch log, once a transient message was paged
        self.runs: deque = deque()
        self.count = 0
        self.waiting = False        # a read found its record not yet written: wait for it
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
        run.seqs.append(seq)
        run.offs.append(offset << 1)
        self.count += 1

    def add_run(self, run: Run) -> None:
        if len(run):
            self.runs.append(run)
            self.count += len(run)

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
        record is not there any more (its write failed: the publish was nacked)."""
        n = min(most, self.readable(run))
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
        out = []
        for i in range(head, head + n):
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
            for i in range(run.head, len(run.seqs)):
                gone.append((run.seqs[i], run.segment, run.scratch))
            log.warning("%s: %d paged message(s) lost with a failed write (their publishes "
                        "were nacked)", qlog.path, len(run))
            self.advance(run, len(run))
        return gone

    def advance(self, run: Run, n: int) -> None:
        """``n`` messages of the head run were taken."""
        run.head += n
        self.count -= n
        if not len(run):
            self.runs.popleft()
            if (run.scratch, run.segment) == self._fd_segment:
                self.close()

    def _open(self, run: Run) -> int:
        key = (run.scratch, run.segment)
        if self._fd_segment != key:
            self.close()
            qlog = self.scratch if run.scratch else self.qlog
            self._fd = os.open(qlog._segment_path(run.segment), os.O_RDONLY)
            self._fd_segment = key
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._fd_segment = None
