"""One durable queue's append-only log: numbered segment files of records (records.py).

Records are framed as they are appended and buffered; ``write`` hands them to the OS once per
event-loop turn, and the group commit (store.py) fsyncs what ``sync_targets`` names. A segment
is deleted once every message in it and in every older segment is settled: a later segment may
hold the SETTLED markers of earlier messages, so segments go oldest first, and disk use follows
the live backlog.

A replicated queue's leader sets ``tap`` (None otherwise: nothing is reported and nothing
costs anything): an object told of every change this log makes to the files of its directory,
in the order it makes them, so a follower can make byte-identical copies (cluster/replica.py):
``append(name, offset, data)`` (bytes written to a segment at that offset; a new file starts
at 0), ``truncate(name, size)`` (a failed write cut back), ``unlink(name)`` and
``rewrite(name)`` (the file was replaced or written whole: compaction, a segment summary),
and ``written()`` once ``write`` has handed every buffered record to the OS (the changes
reported so far carry every record appended before it). Names are file names inside the
log's directory.

Durability rules followed here (see fileio.py): a new segment file, and a new queue directory,
are durable only once their directory is fsynced, so the group commit fsyncs those directories
before anything written there is confirmed. A failed write leaves no partial record behind:
the file is cut back to its last complete record, or, if even that fails, the segment is retired
and the next record starts a new one.
"""
import logging
import os
from array import array

from . import records, segment_index
from .segment_index import SegmentIndex
from .fileio import REAL

log = logging.getLogger("amqpd.store")

SEGMENT_SIZE = 16 << 20
COMPACT_AFTER = 2        # fully settled segments kept for an older live one: compact it
COMPACT_LIMIT = 4096     # live messages one compaction may copy (it runs on the loop)
_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND
ROLL = None          # in ``pending``: the records after it go to the next segment
_settled = records.marker
_message = records.message_parts
_MARKER_SIZE = len(records.marker(records.SETTLED, 0))
_SETTLED, _DELIVERED = records.SETTLED, records.DELIVERED


class QueueLog:
    def __init__(self, path: str, segment_size: int = SEGMENT_SIZE, io=REAL):
        self.path = path
        self.segment_size = segment_size
        self.io = io
        self.live: dict[int, int] = {}     # segment number -> unsettled messages in it
        # Append side: where the next record goes.
        self.active = 0
        self.active_size = 0               # bytes of the active segment, buffered ones included
        self.seed = 0                      # CRC seed of the active segment (its salt)
        self.base_size = 0                 # bytes of the active segment's header
        self.high = 0                      # highest seq appended (goes into segment headers)
        self.pending: list = []            # framed records, ROLL between segments
        self.rolls = 0                     # ROLLs in pending
        # Write side: the file the OS has.
        self.fd = None
        self.writing = 0                   # segment number the next written bytes belong to
        self.file_size = 0                 # bytes of that file known to be complete records
        self.written = 0                   # bytes handed to the OS, ever (disk alarm estimate)
        self.retired: list = []            # descriptors of finished segments, to fsync and close
        self.doomed: list = []             # settled segments to unlink once written
        self.dir_dirty = False             # a segment file was created: fsync the directory
        self.deleted = False
        self.scratch = False               # transient messages paged out: never fsynced
        self.clean_until: dict = {}        # compacted segment -> first segment it may need
        self.wants_compaction = False      # settled segments are kept only for their markers
        self.last_offset = 0               # offset of the last message appended
        # Segment summaries (segment_index.py): the active segment's, collected as records
        # are appended; finished ones wait for their segment to be written, then fsynced.
        self.index = SegmentIndex()
        self.index.valid = False           # until a segment is opened here
        self.sealed: list = []             # (number, index): finished, records still buffered
        self.unsynced_index: list = []     # written to the OS, waiting for the next fsync
        self.syncing_index: list = []      # covered by the fsync running now
        self.parent_dirty = io.makedirs(path) is not None     # a new directory: fsync parent
        self.tap = None                    # a replicated queue's file-change listener

    def _segment_path(self, number: int) -> str:
        return os.path.join(self.path, f"{number:08d}.seg")

    def _segments_on_disk(self) -> list[int]:
        return sorted(int(n[:-4]) for n in os.listdir(self.path)
                      if n.endswith(".seg") and n[:-4].isdigit())

    # -- recovery -----------------------------------------------------------------------------
    def recover(self) -> tuple[list, int]:
        """Read every segment; return (live messages sorted by seq, highest seq seen).

        Each live message is (seq, route, header, body, delivered, segment, expiry), expiry
        being its TTL deadline in ms since the epoch, or None. A damaged record
        is skipped and logged; a torn tail of the last segment is cut off so appends continue
        from a clean end.
        """
        messages: dict[int, tuple] = {}
        settled: set[int] = set()
        delivered: set[int] = set()
        expiries: dict[int, int] = {}
        top = 0
        numbers = self._segments_on_disk()
        unreadable = None
        for number in numbers:
            path = self._segment_path(number)
            try:
                data = self.io.read(path)
            except OSError as exc:
                unreadable = number
                self._set_aside(path, exc)
                continue
            problems: list = []
            MESSAGE, SETTLED = records.MESSAGE, records.SETTLED
            rec = None
            seed, base, high = records.segment_info(data)
            if high > top:
                top = high
            for rec in records.scan(data, problems):
                seq = rec.seq
                if seq > top:
                    top = seq
                kind = rec.kind
                if kind == MESSAGE:
                    messages[seq] = (rec.route, rec.header, rec.body, number)
                elif kind == SETTLED:
                    settled.add(seq)
                elif kind == records.DELIVERED:
                    delivered.add(seq)
                else:
                    expiries[seq] = rec.body
            good_end = rec.offset + rec.size if rec is not None else base
            for offset, length, reason in problems:
                log.warning("%s: dropped %d bytes at offset %d (%s)", path, length, offset, reason)
            if number == numbers[-1] and good_end < len(data):
                self._truncate(path, good_end)
                data = data[:good_end]
            self.live[number] = 0
            if number == numbers[-1]:
                self.active = self.writing = number
                self.active_size = self.file_size = len(data)
                self.seed, self.base_size = seed, base
        if unreadable is not None and unreadable == numbers[-1]:
            self.active = self.writing = unreadable + 1     # never append to it
            self.active_size = self.file_size = 0
        live = []
        for seq in sorted(messages):
            if seq in settled:
                continue
            route, header, body, number = messages[seq]
            self.live[number] += 1
            live.append((seq, route, header, body, seq in delivered, number, expiries.get(seq)))
        self.high = top
        self._drop_settled_prefix()
        self._unlink_doomed()
        return live, top

    def recover_positions(self, sizes: bool = False, prios: bool = False):
        """Like ``recover``, but keeps no message in memory: returns (runs, expiries, top),
        ``runs`` being store.paging.Run objects holding the positions of the live messages
        in seq order (the redelivered bit set for those with a DELIVERED marker),
        ``expiries`` {segment: (seqs, ats)}: the TTL deadlines (ms since the epoch) of the
        messages of that segment that have one, as arrays in seq order (an EXPIRY record is
        written right after its message, in the same segment; compaction keeps them
        together), so that no object per message is made. With ``sizes`` (x-max-length-bytes)
        ``recovered_bytes`` is set to the body bytes of the live messages, from the summaries'
        sizes (a segment whose summary has none is scanned instead). With ``prios`` (a
        priority queue) ``recovered_prios`` is set to {segment: priority levels aligned with
        that segment's run's seqs}, for the segments whose summary kept them or that were
        scanned (the others are missing: the caller reads those records)."""
        from .paging import REDELIVERED, Run
        segs = []
        body_sizes: dict = {}                # segment -> sizes aligned with its run's seqs
        levels: dict = {}                    # segment -> priorities, the same
        settled: set[int] = set()
        delivered: set[int] = set()
        expiries: dict[int, tuple] = {}
        top = 0
        numbers = self._segments_on_disk()
        unreadable = None
        MESSAGE, SETTLED, DELIVERED = records.MESSAGE, records.SETTLED, records.DELIVERED
        for number in numbers:
            path = self._segment_path(number)
            if number != numbers[-1]:
                ix = segment_index.load(path)
                if ix is not None and sizes and ix.known_sizes() is None:
                    ix = None                 # the byte count needs what it lacks: scan
                if ix is not None:            # a sealed segment's summary: no need to read it
                    if sizes:
                        body_sizes[number] = ix.sizes
                    if prios and ix.known_prios() is not None:
                        levels[number] = ix.prios
                    top = max(top, ix.high, ix.seqs[-1] if ix.seqs else 0)
                    settled.update(ix.settled)
                    delivered.update(ix.delivered)
                    if ix.exp_seqs:
                        expiries[number] = (ix.exp_seqs, ix.exp_at)
                    segs.append(Run(number, ix.seed, ix.seqs, ix.offs))
                    self.live[number] = 0
                    continue
            try:
                data = self.io.read(path)
            except OSError as exc:
                unreadable = number
                self._set_aside(path, exc)
                continue
            problems: list = []
            seed, base, high = records.segment_info(data)
            if high > top:
                top = high
            run = Run(number, seed)
            ix = SegmentIndex(seed, base, high)
            seqs, offs = run.seqs, run.offs
            if sizes:
                body_sizes[number] = ix.sizes
            if prios:
                levels[number] = ix.prios
            rec = None
            for rec in records.scan_positions(data, problems):
                kind, seq, at, end = rec
                if seq > top:
                    top = seq
                if kind == MESSAGE:
                    seqs.append(seq)
                    offs.append(at << 1)
                    if sizes:
                        ix.sizes.append(_body_size(data, at, end))
                    if prios:
                        ix.prios.append(min(_priority(data, at), 255))
                elif kind == SETTLED:
                    settled.add(seq)
                    ix.settled.append(seq)
                elif kind == DELIVERED:
                    delivered.add(seq)
                    ix.delivered.append(seq)
                else:
                    ix.exp_seqs.append(seq)
                    ix.exp_at.append(records.expiry_at(data, at))
            good_end = rec[3] if rec is not None else base
            for offset, length, reason in problems:
                log.warning("%s: dropped %d bytes at offset %d (%s)", path, length, offset, reason)
            if number == numbers[-1] and good_end < len(data):
                self._truncate(path, good_end)
                data = data[:good_end]
            segs.append(run)
            if ix.exp_seqs:
                expiries[number] = (ix.exp_seqs, ix.exp_at)
            self.live[number] = 0
            if number == numbers[-1]:
                self.active = self.writing = number
                self.active_size = self.file_size = len(data)
                self.seed, self.base_size = seed, base
                # appends go on in this segment: its summary so far, for when it is sealed
                ix.seqs.extend(seqs)
                ix.offs.extend(offs)
                ix.valid = not problems and good_end > 0
                self.index = ix
            del data
        if unreadable is not None and unreadable == numbers[-1]:
            self.active = self.writing = unreadable + 1     # never append to it
            self.active_size = self.file_size = 0
        runs = []
        last = 0
        gone = array("Q", sorted(settled))
        seen = array("Q", sorted(delivered))
        nbytes = 0
        for run in segs:
            seqs, offs = run.seqs, run.offs
            if not seqs:
                self.live[run.segment] = 0
                continue
            lo, hi = seqs[0], seqs[-1]
            if lo <= last or hi < lo:
                runs = None                   # out of order (never written so): sort all
            lengths = body_sizes.get(run.segment)
            if _any_in(gone, lo, hi) or _any_in(seen, lo, hi):
                keep = [(seqs[i], offs[i] | (REDELIVERED if seqs[i] in delivered else 0))
                        for i in range(len(seqs)) if seqs[i] not in settled]
                if lengths is not None:
                    nbytes += sum(lengths[i] for i in range(len(seqs))
                                  if seqs[i] not in settled)
                if run.segment in levels:
                    was = levels[run.segment]
                    levels[run.segment] = array("B", [was[i] for i in range(len(seqs))
                                                      if seqs[i] not in settled])
                run.seqs = array("Q", [k[0] for k in keep])
                run.offs = array("I", [k[1] for k in keep])
            elif lengths is not None:
                nbytes += sum(lengths)
            last = max(last, hi)
            self.live[run.segment] = len(run.seqs)
            if runs is not None:
                runs.append(run)
        if runs is None:
            runs = _resplit(segs)
            levels = {}                       # no longer aligned: read them
        self.recovered_bytes = nbytes if sizes else None
        self.recovered_prios = levels
        self.high = top
        self._drop_settled_prefix()
        self._unlink_doomed()
        return [r for r in runs if r.seqs], expiries, top

    def _set_aside(self, path: str, exc: OSError) -> None:
        """A segment that cannot be read at all (EIO, or EBADMSG from a file system whose
        metadata was lost): its messages cannot be recovered, but the queue and the others
        can. It is renamed out of the way, kept for inspection."""
        log.error("%s: cannot be read (%s); its records are skipped and the file is kept as "
                  "%s.unreadable", path, exc, os.path.basename(path))
        try:
            self.io.replace(path, path + ".unreadable")
        except OSError as err:
            log.error("%s: cannot rename it either: %s", path, err)
        if self.tap is not None:
            self.tap.unlink(os.path.basename(path))

    def _truncate(self, path: str, size: int) -> None:
        io = self.io
        fd = io.open(path, os.O_WRONLY)
        try:
            io.ftruncate(fd, size)
            io.fsync(fd)
        finally:
            io.close(fd)

    # -- appends ------------------------------------------------------------------------------
    def append_message(self, seq: int, route: bytes, header: bytes, body: bytes) -> int:
        """Buffer a message record; returns the segment it lands in."""
        if self.active_size == 0:
            self._open_segment()
        magic_crc, rest = _message(seq, route, header, body, self.seed)
        size = 6 + len(rest)
        if self.active_size + size > self.segment_size and self.active_size > self.base_size:
            self._roll()
            magic_crc, rest = _message(seq, route, header, body, self.seed)
        self.last_offset = offset = self.active_size   # where it lands (a paged message's place)
        ix = self.index
        ix.seqs.append(seq)
        ix.offs.append(offset << 1)
        pending = self.pending
        pending.append(magic_crc)
        pending.append(rest)
        self.active_size = offset + size
        self.high = seq
        live, active = self.live, self.active
        live[active] = live.get(active, 0) + 1
        return active

    def settle(self, seq: int, segment: int) -> None:
        if self.active_size == 0:
            self._open_segment()
        self.pending.append(_settled(_SETTLED, seq, self.seed))
        self.index.settled.append(seq)
        self.active_size += _MARKER_SIZE
        live = self.live
        n = live[segment] = live[segment] - 1
        if n == 0 and segment != self.active:
            self._drop_settled_prefix()

    def forget(self, segment: int, n: int = 1) -> None:
        """Scratch logs: ``n`` messages of ``segment`` were read back (no marker: a scratch
        log is never recovered); a segment nobody needs any more is deleted."""
        left = self.live[segment] - n
        self.live[segment] = left
        if left == 0 and segment != self.active:
            self._drop_settled_prefix()

    def delivered(self, seq: int) -> None:
        if self.active_size == 0:
            self._open_segment()
        self.pending.append(_settled(_DELIVERED, seq, self.seed))
        self.index.delivered.append(seq)
        self.active_size += _MARKER_SIZE

    def expiry(self, seq: int, at_ms: int) -> None:
        if self.active_size == 0:
            self._open_segment()
        rec = records.expiry(seq, at_ms, self.seed)
        self.index.exp_seqs.append(seq)
        self.index.exp_at.append(at_ms)
        self.pending.append(rec)
        self.active_size += len(rec)

    def _marker(self, kind: int, seq: int) -> None:
        if self.active_size == 0:
            self._open_segment()
        rec = records.marker(kind, seq, self.seed)
        if kind == records.SETTLED:
            self.index.settled.append(seq)
        else:
            self.index.delivered.append(seq)
        self.pending.append(rec)
        self.active_size += len(rec)

    def _open_segment(self) -> None:
        """A new segment starts with its own random salt (see records.py)."""
        salt = os.urandom(8)
        self.seed = records.seed_of(salt)
        header = records.segment_header(salt, self.high)
        self.pending.append(header)
        self.active_size = self.base_size = len(header)
        self.index = SegmentIndex(self.seed, self.base_size, self.high)

    def _roll(self, open_next: bool = True) -> None:
        """Start a new segment; what is buffered so far still goes to the old one."""
        self.pending.append(ROLL)
        self.rolls += 1
        self.sealed.append((self.active, self.index))
        self.index = SegmentIndex()
        self.index.valid = False            # until the next segment is opened
        self.active += 1
        self.live.setdefault(self.active, 0)
        if open_next:
            self._open_segment()
        else:
            self.active_size = 0          # the next record opens it
        self._drop_settled_prefix()

    def _drop_settled_prefix(self) -> None:
        """Forget the segments that hold nothing live and that no older segment needs (a
        later segment may hold the SETTLED markers of an older one's messages, so normally
        they go oldest first; a compacted segment holds only live messages and no longer
        needs the segments up to ``clean_until``); their files go at the next write (after
        any of their records still buffered). Fully settled segments kept only for their
        markers ask for a compaction (``wants_compaction``)."""
        barrier = None
        pinned = 0
        for number in sorted(self.live):
            if number == self.active:
                break
            if self.live[number]:
                clean = self.clean_until.get(number, number + 1)
                barrier = clean if barrier is None else min(barrier, clean)
                continue
            if barrier is None or number < barrier:
                del self.live[number]
                self.clean_until.pop(number, None)
                self.doomed.append(number)
            else:
                pinned += 1
        if pinned >= COMPACT_AFTER:
            self.wants_compaction = True

    def compaction_targets(self) -> list:
        """The live segments to rewrite so that the fully settled ones behind them can go:
        every live sealed segment older than the last fully settled one, if together they
        hold at most COMPACT_LIMIT messages (the rewrite runs on the loop); else []."""
        numbers = sorted(self.live)
        last_empty = None
        for number in numbers:
            if number >= min(self.active, self.writing):
                break
            if not self.live[number]:
                last_empty = number
        if last_empty is None:
            return []
        # Every live one, compacted before or not: rewriting a segment drops the SETTLED
        # markers it holds for older segments' messages, so those must go from them too.
        targets = [n for n in numbers if n < last_empty and self.live[n]]
        if not any(self.clean_until.get(n, n + 1) <= last_empty for n in targets) \
                or sum(self.live[n] for n in targets) > COMPACT_LIMIT:
            return []
        return targets

    def compact(self, number: int, keep: dict, sync: bool) -> dict:
        """Rewrite sealed segment ``number`` with only the messages in ``keep`` ({seq:
        delivered}) and their EXPIRY records, a DELIVERED marker for those delivered; same
        header (salt, high), so the records are copied byte for byte. Atomic (temporary
        file, fsync, rename, fsync of the directory unless ``sync`` is false). Returns {seq:
        new offset}."""
        path = self._segment_path(number)
        data = self.io.read(path)
        seed, base, _high = records.segment_info(data)
        out = [data[:base]]
        size = base
        offsets = {}
        marked = set()
        MESSAGE, EXPIRY, DELIVERED = records.MESSAGE, records.EXPIRY, records.DELIVERED
        for kind, seq, pos, end in records.scan_positions(data):
            if seq not in keep or kind == records.SETTLED:
                continue
            if kind == MESSAGE:
                offsets[seq] = size
            elif kind == DELIVERED:
                marked.add(seq)
            elif kind != EXPIRY:
                continue
            out.append(data[pos:end])
            size += end - pos
        for seq, delivered in keep.items():
            if delivered and seq not in marked and seq in offsets:
                rec = records.marker(DELIVERED, seq, seed)
                out.append(rec)
                size += len(rec)
        if len(offsets) != len(keep):
            raise ValueError(f"segment {number} lacks {len(keep) - len(offsets)} live message(s)")
        tmp = path + ".compact"
        io = self.io
        fd = io.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            io.write_all(fd, b"".join(out))
            if sync:
                io.fsync(fd)
        finally:
            io.close(fd)
        io.replace(tmp, path)
        if sync:
            io.fsync_dir(self.path)
        segment_index.remove(path, io)
        if self.tap is not None:
            self.tap.unlink(f"{number:08d}.idx")
            self.tap.rewrite(f"{number:08d}.seg")
        self.clean_until[number] = self.active
        return offsets

    def abandon_segment(self) -> None:
        """An fsync of this log failed: the kernel may have dropped the segment's unsynced
        pages and a later fsync could still report success (PostgreSQL's "fsyncgate"), so
        nothing more is added to it; the next record starts a new segment."""
        self.index.valid = False
        for _number, index in self.syncing_index + self.unsynced_index + self.sealed:
            index.valid = False
        if self.active_size:
            self._roll(open_next=False)

    # -- I/O ------------------------------------------------------------------------------------
    def write(self) -> bool:
        """Hand buffered records to the OS (and unlink segments that are done). True if there
        is something to fsync. On a write error the records not yet written are dropped, the
        log is left readable (see ``_write_failed``) and the OSError is raised: the caller
        nacks what this turn held."""
        if self.deleted:
            self.pending.clear()
            return False
        wrote = False
        if self.pending:
            try:
                if self.rolls:
                    self._write_segments()
                else:
                    data = b"".join(self.pending)
                    self.pending.clear()
                    self._write_chunk(data)
            except OSError:
                self._write_failed()
                raise
            wrote = True
        if self.doomed:
            self._unlink_doomed()
        if wrote and self.tap is not None:
            self.tap.written()
        return wrote or bool(self.retired)

    def _write_segments(self) -> None:
        """Buffered records that span a segment boundary (rare: once per segment)."""
        pending, self.pending, self.rolls = self.pending, [], 0
        chunk: list = []
        for rec in pending:
            if rec is ROLL:
                if chunk:
                    self._write_chunk(b"".join(chunk))
                    chunk = []
                self._retire()
                self.writing += 1
            else:
                chunk.append(rec)
        if chunk:
            self._write_chunk(b"".join(chunk))

    def _write_chunk(self, data: bytes) -> None:
        if self.fd is None:
            self.fd = self.io.open(self._segment_path(self.writing), _APPEND, 0o644)
            if self.file_size == 0:
                self.dir_dirty = True       # (probably) a new file: its name needs an fsync
        self.io.write_all(self.fd, data)
        if self.tap is not None:
            self.tap.append(f"{self.writing:08d}.seg", self.file_size, data)
        self.file_size += len(data)
        self.written += len(data)

    def _retire(self) -> None:
        """The segment being written is finished: its descriptor waits for the next fsync."""
        if self.fd is not None:
            self.retired.append(self.fd)
            self.fd = None
        self.file_size = 0
        if self.sealed and self.sealed[0][0] == self.writing:
            self.unsynced_index.append(self.sealed.pop(0))

    def _write_failed(self) -> None:
        """Leave no partial record: cut the file back to its last complete record and go on
        in the same segment; if the cut fails too, retire the segment (its torn tail is then
        in the middle of the log, where recovery skips it) and start a new one."""
        self.pending.clear()
        self.rolls = 0
        self.index.valid = False            # its summary no longer matches the file
        for _number, index in self.sealed:
            index.valid = False
        self.sealed.clear()
        cut = False
        if self.fd is not None:
            try:
                self.io.ftruncate(self.fd, self.file_size)
                cut = True
                if self.tap is not None:
                    self.tap.truncate(f"{self.writing:08d}.seg", self.file_size)
            except OSError:
                pass
        if cut and self.writing == self.active:
            # The records of this turn are gone; the header stays if it was written before.
            self.active_size = self.file_size
            return
        self._retire()
        if self.writing == self.active:
            self.active += 1
            self.live.setdefault(self.active, 0)
        self.writing = self.active
        self.active_size = 0                  # the next record opens a fresh segment

    def _unlink_doomed(self) -> None:
        tap = self.tap
        for number in self.doomed:
            segment_index.remove(self._segment_path(number), self.io)
            try:
                self.io.unlink(self._segment_path(number))
            except FileNotFoundError:
                pass
            except OSError as exc:            # (EIO) left behind; settled, so harmless
                log.warning("%s: cannot delete segment %d: %s", self.path, number, exc)
            if tap is not None:
                tap.unlink(f"{number:08d}.idx")
                tap.unlink(f"{number:08d}.seg")
        self.doomed.clear()

    def sync_targets(self) -> tuple[list, list]:
        """(descriptors, directories) the next fsync must cover for what was written so far.
        The descriptors belong to the caller, who closes them: the current file's is a
        duplicate, so a segment retired meanwhile cannot make it fsync a reused number."""
        fds = self.retired
        self.retired = []
        if self.unsynced_index:
            self.syncing_index += self.unsynced_index
            self.unsynced_index = []
        if self.fd is not None:
            fds.append(self.io.dup(self.fd))
        dirs = []
        if self.dir_dirty:
            dirs.append(self.path)
            self.dir_dirty = False
        if self.parent_dirty:
            dirs.append(os.path.dirname(self.path))
            self.parent_dirty = False
        return fds, dirs

    def release_retired(self) -> None:
        """Close finished segments without fsync (storage.fsync = never)."""
        for fd in self.retired:
            self.io.close(fd)
        self.retired.clear()
        self.syncing_index += self.unsynced_index
        self.unsynced_index = []
        self.index_synced()

    def index_synced(self) -> None:
        """The fsync that covered finished segments succeeded: their summaries may be
        written now."""
        done, self.syncing_index = self.syncing_index, []
        if self.deleted or self.scratch:
            return
        for number, index in done:
            if index.valid:
                segment_index.write(self._segment_path(number), index, self.io)
                if self.tap is not None:
                    self.tap.rewrite(f"{number:08d}.idx")

    def index_failed(self) -> None:
        """That fsync failed: no summary for those segments (a restart scans them)."""
        self.syncing_index = []

    def close(self, sync: bool = True) -> None:
        """Write what is buffered, fsync (unless told not to) and close. Raises the first
        OSError, but only after every descriptor is closed."""
        error = None
        try:
            self.write()
        except OSError as exc:
            error = exc
        fds, dirs = self.sync_targets()
        if self.fd is not None:
            self.io.close(self.fd)
            self.fd = None
        for fd in fds:
            try:
                if sync:
                    self.io.fsync(fd)
            except OSError as exc:
                error = error or exc
            finally:
                self.io.close(fd)
        for path in dirs if sync else ():
            try:
                self.io.fsync_dir(path)
            except OSError as exc:
                error = error or exc
        if error is not None:
            self.index_failed()
            raise error
        self.index_synced()

    def delete(self, trash: str | None = None) -> None:
        """The queue is gone: move its directory to ``trash`` (someone else removes it), or
        remove its files now."""
        self.deleted = True
        self.pending.clear()
        self.rolls = 0
        for fd in self.retired + ([self.fd] if self.fd is not None else []):
            self.io.close(fd)
        self.retired.clear()
        self.fd = None
        if trash is not None:
            self.io.replace(self.path, trash)
        else:
            self.io.rmtree(self.path)


def _body_size(data, at: int, end: int) -> int:
    """The body size of the MESSAGE record at ``at`` (ending at ``end``): what follows its
    route and header."""
    route_len = records._unpack_msg(data, at + records.HEAD_SIZE)[2]
    route_end = at + records.HEAD_SIZE + records._msg_head.size + route_len
    return end - (route_end + 4 + records._unpack_u32(data, route_end)[0])


def _priority(data, at: int) -> int:
    """The priority property of the MESSAGE record at ``at`` (0 when absent or unreadable)."""
    from ..wire import properties
    route_len = records._unpack_msg(data, at + records.HEAD_SIZE)[2]
    route_end = at + records.HEAD_SIZE + records._msg_head.size + route_len
    (header_len,) = records._unpack_u32(data, route_end)
    header = bytes(data[route_end + 4:route_end + 4 + header_len])
    try:
        return properties.peek(header, properties.PRIORITY) or 0
    except Exception:                 # a header that does not decode: served as priority 0
        return 0


def _any_in(sorted_seqs, lo: int, hi: int) -> bool:
    """Does the sorted array hold any value in lo..hi?"""
    from bisect import bisect_left
    i = bisect_left(sorted_seqs, lo)
    return i < len(sorted_seqs) and sorted_seqs[i] <= hi


def _resplit(runs: list) -> list:
    """Messages out of seq order across segments (never written so; kept for safety): one
    run per stretch of one segment in global seq order."""
    from .paging import Run
    items = sorted((run.seqs[i], run.offs[i], run.segment, run.seed)
                   for run in runs for i in range(len(run.seqs)))
    out: list = []
    for seq, off, segment, seed in items:
        if not out or out[-1].segment != segment:
            out.append(Run(segment, seed))
        out[-1].seqs.append(seq)
        out[-1].offs.append(off)
    return out
