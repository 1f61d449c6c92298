"""The pending messages of one delayed exchange, on disk in due-time buckets.

A pending message costs 8 bytes of RAM until it is nearly due. Each message is appended to the
file of its *bucket*: the messages due in [start, start + width) ms (wall clock), where the
width grows with the delay (``bucket_of``: about 1/64 of the delay, a power of two, 1.024 s to
18.6 h), so however the delays spread there are at most a few thousand buckets. In RAM a bucket
is one small object (file, start, width, live count) and the index key of each of its messages
((due - start) << 36 | file offset), appended as it is written. When the bucket's time comes
(``scan``) the keys are sorted into its index -- a bucket found at start-up has none in RAM, so
its file is scanned for them -- and the messages are read back by offset a batch at a time
(``read``), ahead of their due time. The exchange (broker/delayed.py) merges the buckets in due
order.

File format: records.py's self-checking records, one file per bucket ``NNNNNNNN.dlb``, opening
with a segment header (its salt). MESSAGE records carry the due time (ms since the epoch, 8
bytes) and one byte (the bucket width's exponent; FINAL: the header is stored as it will be
delivered, x-delay negated, and PERSISTENT tells its delivery mode -- files of older versions
lack both) before the raw route. A SETTLED record's seq is the *file offset* of the message it
settles (ids are per file, so files never share numbering), or, with THROUGH set, an index key:
every message of the bucket up to that key is settled (a bucket is released in index order, so
one marker per bucket per release turn stands for every message it routed). A bucket file is
deleted once every message in it is settled.

Durability: a durable exchange's files are fsynced by the group commit before the publishes they
hold are confirmed (``sync_targets``, like a queue log). A non-durable exchange's files are
scratch: never fsynced, and removed at the next start (the store removes every directory no
durable definition names). Files found at start-up are only listed (the start-up reads no
message); each is scanned, its torn tail cut, when its bucket comes due, and new messages never
go to a file found at start-up.
"""
import logging
import mmap
import os
import struct
import zlib
from array import array

from . import records
from .fileio import REAL

log = logging.getLogger("amqpd.store")

_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND
_due = struct.Struct(">Q")
_head = struct.Struct(">2sII")           # records.py: magic, crc, length
HEAD = records.HEAD_SIZE
MIN_WIDTH_MS = 1 << 10   # about a second; widths are powers of two (files record the exponent)
MAX_WIDTH_MS = 1 << 26          # 18.6 h: (due - start) fits the index's 28 bits
OFFSET_BITS = 36                # 64 GB per bucket file
OFFSET_MASK = (1 << OFFSET_BITS) - 1
SCAN_CHUNK = 1 << 20            # bytes indexed per slice (a few ms of the event loop)
FINAL = 0x40                    # flag in the exponent byte: the header is the delivered one
PERSISTENT = 0x80               # and the message's delivery mode is 2 (meaningful with FINAL)
WIDTH_BITS = 0x3F
THROUGH = 1 << 63               # a SETTLED seq with this bit: every index key up to the rest
READ_SPAN = 4 << 20             # a batch whose records lie within this many bytes: one pread
_u32 = struct.Struct(">I")
# a MESSAGE record's fixed start: magic, crc, length | type, seq, route length | due, flags
_message_head = struct.Struct(">2sIIBQHQB")
MESSAGE_HEAD = _message_head.size


def bucket_of(due_ms: int, delay_ms: int) -> tuple[int, int]:
    """(start, width) of the bucket a message due at ``due_ms`` goes to. The width is a power
    of two near delay / 64: far buckets are wide (few of them), near ones narrow (a bucket's
    index is built shortly before its start, so a short delay needs a narrow one)."""
    width = MIN_WIDTH_MS
    limit = min(delay_ms >> 6, MAX_WIDTH_MS)
    while width * 2 <= limit:
        width *= 2
    return due_ms - due_ms % width, width


class Bucket:
    __slots__ = ("number", "start", "width", "live", "pending", "size", "fd", "seed",
                 "recovered", "index", "cursor", "scanned", "sealed", "unsynced", "keys")

    def __init__(self, number: int, start: int, width: int, recovered: bool = False):
        self.number, self.start, self.width = number, start, width
        self.live = 0 if not recovered else None   # unsettled messages (None: not counted yet)
        self.pending: list = []          # framed records not yet handed to the OS
        self.size = 0                    # bytes of the file, buffered records included
        self.fd = None
        self.seed = 0
        self.recovered = recovered       # found at start-up: no appends until scanned
        self.index = None                # array('Q') of (due - start) << 36 | offset, sorted
        self.cursor = 0                  # next index position to read
        self.scanned = False
        self.sealed = recovered          # takes no new messages
        self.unsynced = False
        self.keys = None                 # array('Q'): index keys of its messages, unsorted,
                                         # kept as they are appended (None: scan the file)

    @property
    def exhausted(self) -> bool:
        return self.index is not None and self.cursor >= len(self.index)


class DelayedLog:
    # The commit path writes scratch queue logs (paged transient messages) its own way; a
    # delayed log, durable or not, goes through the normal write (a non-durable one is never
    # fsynced by its own rules).
    scratch = False

    def index_synced(self) -> None:
        """Queue logs write segment summaries once fsynced (store/segment_index.py); a
        delayed log indexes its buckets as it reads them, so there is nothing to do."""

    def index_failed(self) -> None:
        """See ``index_synced``."""

    def __init__(self, path: str, io=REAL, durable: bool = True):
        self.path = path
        self.io = io
        self.durable = durable
        self.buckets: dict[int, Bucket] = {}      # file number -> bucket
        self.open: dict[tuple, Bucket] = {}       # (start, width) -> the bucket taking appends
        self.next_number = 1
        self.dirty: dict = {}                     # buckets with pending records
        self.doomed: list = []                    # buckets done with: unlink at next write
        self.retired: list = []                   # descriptors to fsync (and close)
        self.written = 0
        self.dir_dirty = False
        self.deleted = False
        self.parent_dirty = io.makedirs(path) is not None

    def _file(self, number: int) -> str:
        return os.path.join(self.path, f"{number:08d}.dlb")

    # -- start-up -------------------------------------------------------------------------------
    def recover(self) -> tuple[list, int]:
        """List the bucket files (nothing is read): ([bucket, ...] by start, 0). Each file's
        start and width are in its first record, read here (a few bytes)."""
        found = []
        for name in os.listdir(self.path):
            if not (name.endswith(".dlb") and name[:-4].isdigit()):
                continue
            number = int(name[:-4])
            self.next_number = max(self.next_number, number + 1)
            path = self._file(number)
            try:
                with open(path, "rb") as f:
                    head = f.read(4096)
                    size = os.fstat(f.fileno()).st_size
            except OSError as exc:
                log.error("%s: cannot be read (%s); its messages are lost", path, exc)
                continue
            span = self._span(head)
            if span is None:
                # a file created but never written, or torn before its first message
                self.doomed.append(path)
                continue
            bucket = Bucket(number, span[0], span[1], recovered=True)
            bucket.size = size                   # a torn tail is cut when it is scanned
            self.buckets[number] = bucket
            found.append(bucket)
        self._unlink_doomed()
        found.sort(key=lambda b: (b.start, b.number))
        return found, 0

    @staticmethod
    def _span(head: bytes):
        """(start, width) from a file's first message record: the file name's bucket is
        recorded nowhere else, so it is derived from the first due time and the width the
        record's header byte holds."""
        seed, base, _ = records.segment_info(head)
        if not base:
            return None
        rec = records._record_at(head, memoryview(head), base, seed)
        if rec is None or rec.kind != records.MESSAGE or len(rec.route) < 9:
            return None
        due = _due.unpack_from(rec.route)[0]
        width = 1 << (rec.route[8] & WIDTH_BITS)
        return due - due % width, width

    # -- appends --------------------------------------------------------------------------------
    def append(self, due_ms: int, delay_ms: int, route: bytes, header: bytes, body: bytes,
               now_ms: int, ahead_ms: int, persistent: bool = False) -> tuple:
        """Buffer a message; returns (bucket, offset, direct, created). ``direct``: its bucket's
        time has come already (start - ahead_ms <= now_ms), so the caller holds the message in
        RAM (it is on disk only for a restart; such a bucket needs no index). ``created``: a
        new bucket whose time is still to come (the caller schedules its scan)."""
        key = bucket_of(due_ms, delay_ms)
        bucket = self.open.get(key)
        created = False
        if bucket is None:
            bucket = self.open[key] = Bucket(self.next_number, key[0], key[1])
            self.buckets[bucket.number] = bucket
            self.next_number += 1
            if key[0] - ahead_ms <= now_ms:
                bucket.index = array("Q")        # direct: read through from the start
                bucket.scanned = True
            else:
                created = True
                bucket.keys = array("Q")
        if bucket.size == 0:
            salt = os.urandom(8)
            bucket.seed = records.seed_of(salt)
            head = records.segment_header(salt, 0)
            bucket.pending.append(head)
            bucket.size = len(head)
        # the width's exponent follows the due time, so a file names its bucket itself
        flags = bucket.width.bit_length() - 1 | FINAL | (PERSISTENT if persistent else 0)
        rec = records.message(0, _due.pack(due_ms) + bytes((flags,)) + route, header, body,
                              bucket.seed)
        offset = bucket.size
        if bucket.keys is not None:
            bucket.keys.append(((due_ms - bucket.start) << OFFSET_BITS) | offset)
        bucket.pending.append(rec)
        bucket.size += len(rec)
        bucket.live += 1
        self.dirty[bucket] = None
        return bucket, offset, bucket.scanned, created

    def settle(self, bucket: Bucket, offset: int) -> None:
        """The message at ``offset`` was routed."""
        self._settle(bucket, offset, 1)

    def settle_through(self, bucket: Bucket, key: int, count: int) -> None:
        """``count`` messages of a bucket read back (``read``) were routed, in index order,
        the last one's index key ``key``: one marker for them all."""
        self._settle(bucket, THROUGH | key, count)

    def _settle(self, bucket: Bucket, seq: int, count: int) -> None:
        if bucket.number not in self.buckets:
            return
        if bucket.live is not None:
            bucket.live -= count
        if bucket.live == 0 and (bucket.sealed or bucket.exhausted):
            self._drop(bucket)
            return
        rec = records.marker(records.SETTLED, seq, bucket.seed)
        bucket.pending.append(rec)
        bucket.size += len(rec)
        self.dirty[bucket] = None

    def seal(self, bucket: Bucket) -> None:
        """No more appends to this bucket's file (its index is being built)."""
        bucket.sealed = True
        if self.open.get((bucket.start, bucket.width)) is bucket:
            del self.open[(bucket.start, bucket.width)]

    def _drop(self, bucket: Bucket) -> None:
        """Every message of the bucket is settled: its file goes."""
        self.buckets.pop(bucket.number, None)
        if self.open.get((bucket.start, bucket.width)) is bucket:
            del self.open[(bucket.start, bucket.width)]
        self.dirty.pop(bucket, None)
        bucket.pending.clear()
        if bucket.fd is not None:
            self.retired.append(bucket.fd)     # closed by the next sync (or release_retired)
            bucket.fd = None
        bucket.index = None
        self.doomed.append(self._file(bucket.number))
        self.dir_dirty = True

    def abandon_segment(self) -> None:
        """An fsync failed: new messages go to new files (see QueueLog.abandon_segment)."""
        for bucket in list(self.open.values()):
            self.seal(bucket)

    # -- reading back -----------------------------------------------------------------------------
    def scan(self, bucket: Bucket) -> int:
        """Build the bucket's index of unsettled messages (8 bytes each, due order); returns
        how many. A torn tail is cut off. The file takes no more appends."""
        steps = self.scan_steps(bucket)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def indexed(self, bucket: Bucket) -> bool:
        """The bucket's index keys are in RAM (appended here since it was created): its
        ``scan`` reads no file, only sorts them."""
        return bucket.keys is not None

    def scan_steps(self, bucket: Bucket):
        """``scan`` SCAN_CHUNK bytes at a time: a generator that yields after each, so a
        big bucket is indexed in slices between other clients' work; returns the count."""
        self.seal(bucket)
        self._write_bucket(bucket)
        if bucket.keys is not None:      # nothing settled yet: every message is in the index
            bucket.index = array("Q", sorted(bucket.keys))
            bucket.keys = None
            bucket.cursor = 0
            bucket.scanned = True
            return len(bucket.index)
        path = self._file(bucket.number)
        entries = array("Q")
        settled = set()
        through = -1                     # the highest THROUGH marker's key
        good_end = 0
        start = bucket.start
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise OSError("empty file")
                # mapped, not read: records are checked (CRC) in place, never copied, and the
                # pages already scanned are dropped at each slice so RSS does not grow with it
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                view = memoryview(mm)
                try:
                    seed, base, _ = records.segment_info(bytes(mm[:64]))
                    bucket.seed = seed
                    at = good_end = base
                    dropped = 0
                    next_slice = at + SCAN_CHUNK
                    head, crc32, due_at = _head.unpack_from, zlib.crc32, HEAD + 11
                    MESSAGE, SETTLED, MAGIC = records.MESSAGE, records.SETTLED, records.MAGIC
                    while at + HEAD <= size:
                        magic, crc, length = head(mm, at)
                        stop = at + HEAD + length
                        if stop > size or magic != MAGIC or not length \
                                or crc32(view[at + 6:stop], seed) != crc:
                            break                # torn or damaged: the rest is not trusted
                        kind = mm[at + HEAD]
                        if kind == MESSAGE:
                            entries.append(((_due.unpack_from(mm, at + due_at)[0] - start)
                                            << OFFSET_BITS) | at)
                        elif kind == SETTLED:
                            seq = _due.unpack_from(mm, at + HEAD + 1)[0]
                            if seq & THROUGH:
                                through = max(through, seq ^ THROUGH)
                            else:
                                settled.add(seq)
                        at = stop
                        if at >= next_slice:
                            next_slice = at + SCAN_CHUNK
                            upto = at - at % mmap.PAGESIZE
                            if upto > dropped and hasattr(mm, "madvise"):
                                mm.madvise(mmap.MADV_DONTNEED, dropped, upto - dropped)
                                dropped = upto
                            yield
                    good_end = at
                finally:
                    view.release()
                    mm.close()
        except OSError as exc:
            log.error("%s: cannot be read (%s); its messages are lost", path, exc)
        if good_end < bucket.size:
            log.warning("%s: dropped %d bytes at offset %d (torn tail or damaged record)",
                        path, bucket.size - good_end, good_end)
            self._truncate(bucket, good_end)
        if settled or through >= 0:
            entries = array("Q", (e for e in entries
                                  if e > through and (e & OFFSET_MASK) not in settled))
        bucket.index = array("Q", sorted(entries))
        bucket.cursor = 0
        bucket.scanned = True
        bucket.recovered = False
        bucket.live = len(bucket.index)
        return bucket.live

    def _truncate(self, bucket: Bucket, size: int) -> None:
        path = self._file(bucket.number)
        try:
            fd = self.io.open(path, os.O_WRONLY)
            try:
                self.io.ftruncate(fd, size)
                if self.durable:
                    self.io.fsync(fd)
            finally:
                self.io.close(fd)
        except OSError as exc:
            log.error("%s: cannot cut its torn tail: %s", path, exc)
        bucket.size = size

    def peek_due(self, bucket: Bucket) -> int | None:
        """Due time (ms since the epoch) of the bucket's next unread message."""
        if bucket.index is None or bucket.cursor >= len(bucket.index):
            return None
        return bucket.start + (bucket.index[bucket.cursor] >> OFFSET_BITS)

    def read(self, bucket: Bucket, count: int) -> list:
        """The next ``count`` messages of a scanned bucket in due order:
        [(due_ms, key, route, header, body, flags)] (``key``: its index key, for
        ``settle_through``; ``flags``: FINAL, PERSISTENT). Records close together (the usual
        case: a file is appended in about due order) come with one read; others one each."""
        index, cursor = bucket.index, bucket.cursor
        stop = min(len(index), cursor + count)
        keys = index[cursor:stop]
        out = []
        path = self._file(bucket.number)
        if keys:
            with open(path, "rb", buffering=0) as f:
                self._read_records(f.fileno(), path, bucket, keys, out)
        bucket.cursor = stop
        if stop >= len(index):
            bucket.index = array("Q")      # the index's memory goes once it is read through
            bucket.cursor = 0
        if bucket.live == 0:
            self._drop(bucket)
        return out

    def _read_records(self, fd: int, path: str, bucket: Bucket, keys, out: list) -> None:
        mask = OFFSET_MASK
        low = min(k & mask for k in keys)
        high = max(k & mask for k in keys)
        buf, base = b"", 0
        if high - low <= READ_SPAN:
            buf, base = os.pread(fd, high - low + 4096, low), low   # the last one mostly fits
        view = memoryview(buf)
        size = len(buf)
        fields, crc32, seed, u32 = _message_head.unpack_from, zlib.crc32, bucket.seed, \
            _u32.unpack_from
        MAGIC, MESSAGE = records.MAGIC, records.MESSAGE
        for key in keys:
            offset = key & mask
            data, at, data_view = buf, offset - base, view
            if at + MESSAGE_HEAD > size or at + HEAD + u32(buf, at + 6)[0] > size:
                data = os.pread(fd, 4096, offset)              # most records: one read
                if len(data) >= HEAD:
                    length = u32(data, 6)[0]
                    if len(data) < HEAD + length:
                        data = os.pread(fd, HEAD + length, offset)
                at, data_view = 0, memoryview(data)
            try:
                # magic, crc, length | type, seq, route length | due, flags (the route's start)
                magic, crc, length, kind, _, route_len, due, flags = fields(data, at)
                end = at + HEAD + length
                if magic != MAGIC or kind != MESSAGE or end > len(data) or \
                        crc32(data_view[at + 6:end], seed) != crc:
                    raise ValueError("not an intact message record")
                route_end = at + HEAD + 11 + route_len
                h = route_end + 4
                b = h + u32(data, route_end)[0]
                if b > end or route_len < 9:
                    raise ValueError("header runs past the record")
            except (ValueError, struct.error, IndexError):
                log.error("%s: record at %d unreadable; message lost", path, offset)
                bucket.live = (bucket.live or 1) - 1
                continue
            out.append((due, key, data[at + MESSAGE_HEAD:route_end], data[h:b], data[b:end],
                        flags))
        view.release()

    # -- I/O (the commit path's interface, as QueueLog's) ---------------------------------------
    def _write_bucket(self, bucket: Bucket) -> None:
        if not bucket.pending:
            return
        data = b"".join(bucket.pending)
        bucket.pending.clear()
        if bucket.fd is None:
            path = self._file(bucket.number)
            bucket.fd = self.io.open(path, _APPEND, 0o644)
            if bucket.size == len(data):
                self.dir_dirty = True       # a new file: its name needs an fsync
        try:
            self.io.write_all(bucket.fd, data)
        except OSError:
            self._write_failed(bucket, len(data))
            raise
        bucket.unsynced = True
        self.written += len(data)

    def _write_failed(self, bucket: Bucket, lost: int) -> None:
        """Leave no partial record behind; the bucket's count is unknown from here on (its
        scan counts again) and it takes no more appends."""
        good = bucket.size - lost
        try:
            self.io.ftruncate(bucket.fd, good)
        except OSError:
            pass
        bucket.size = good
        for b in self.dirty:
            b.pending.clear()
        self.dirty.clear()
        if bucket.live is not None:
            bucket.live = None
        bucket.keys = None               # some are gone: its scan finds what is there
        self.seal(bucket)

    def write(self) -> bool:
        if self.deleted:
            self.dirty.clear()
            return False
        wrote = False
        dirty = list(self.dirty)
        self.dirty.clear()
        for bucket in dirty:
            if bucket.pending:
                self._write_bucket(bucket)
                wrote = True
        self._unlink_doomed()
        return wrote or bool(self.retired)

    def _unlink_doomed(self) -> None:
        for path in self.doomed:
            try:
                self.io.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot delete %s: %s", path, exc)
        self.doomed.clear()

    def sync_targets(self) -> tuple[list, list]:
        fds, self.retired = self.retired, []
        if not self.durable:
            for fd in fds:
                self.io.close(fd)
            for bucket in self.buckets.values():
                bucket.unsynced = False
            self.dir_dirty = self.parent_dirty = False
            return [], []
        for bucket in self.buckets.values():
            if bucket.unsynced and bucket.fd is not None:
                fds.append(self.io.dup(bucket.fd))
                bucket.unsynced = False
        dirs = []
        if self.dir_dirty:
            dirs.append(self.path)
            self.dir_dirty = False
        if self.parent_dirty:
            dirs.append(os.path.dirname(self.path))
            self.parent_dirty = False
        return fds, dirs

    def release_retired(self) -> None:
        for fd in self.retired:
            self.io.close(fd)
        self.retired.clear()

    def close(self, sync: bool = True) -> None:
        error = None
        try:
            self.write()
        except OSError as exc:
            error = exc
        fds, dirs = self.sync_targets()
        for fd in fds:
            try:
                if sync:
                    self.io.fsync(fd)
            except OSError as exc:
                error = error or exc
            finally:
                self.io.close(fd)
        for bucket in self.buckets.values():
            if bucket.fd is not None:
                self.io.close(bucket.fd)
                bucket.fd = None
        for path in dirs if sync else ():
            try:
                self.io.fsync_dir(path)
            except OSError as exc:
                error = error or exc
        if error is not None:
            raise error

    def delete(self, trash: str | None = None) -> None:
        self.deleted = True
        self.dirty.clear()
        for fd in self.retired:
            self.io.close(fd)
        self.retired.clear()
        for bucket in self.buckets.values():
            bucket.pending.clear()
            if bucket.fd is not None:
                self.io.close(bucket.fd)
                bucket.fd = None
        self.buckets.clear()
        self.open.clear()
        if trash is not None:
            self.io.replace(self.path, trash)
        else:
            self.io.rmtree(self.path)
