"""One durable queue's append-only log: numbered segment files of records (records.py).

Writes are buffered and handed to the OS once per event-loop turn (``write``); the caller
fsyncs the returned descriptors. A segment is deleted once every message in it and in every
older segment is settled: a later segment may hold the SETTLED markers of earlier messages, so
segments go oldest first, and disk use follows the live backlog.
"""
import logging
import os
import shutil

from . import records

log = logging.getLogger("amqpd.store")

SEGMENT_SIZE = 16 << 20


class QueueLog:
    def __init__(self, path: str, segment_size: int = SEGMENT_SIZE):
        self.path = path
        self.segment_size = segment_size
        self.live: dict[int, int] = {}     # segment number -> unsettled messages in it
        self.active = 0
        self.active_size = 0
        self.fd = None
        self.pending: list = []
        self.seed = 0                      # CRC seed of the active segment (its salt)
        self.base_size = 0                 # bytes of the active segment's header
        self.deleted = False
        os.makedirs(path, exist_ok=True)

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
        for number in numbers:
            path = self._segment_path(number)
            with open(path, "rb") as f:
                data = f.read()
            problems: list = []
            MESSAGE, SETTLED = records.MESSAGE, records.SETTLED
            rec = None
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
            good_end = rec.offset + rec.size if rec is not None else 0
            for offset, length, reason in problems:
                log.warning("%s: dropped %d bytes at offset %d (%s)", path, length, offset, reason)
            if number == numbers[-1] and good_end < len(data):
                with open(path, "r+b") as f:
                    f.truncate(good_end)
                    os.fsync(f.fileno())
                data = data[:good_end]
            self.live[number] = 0
            if number == numbers[-1]:
                self.active, self.active_size = number, len(data)
                self.seed, self.base_size = records.segment_seed(data)
        live = []
        for seq in sorted(messages):
            if seq in settled:
                continue
            route, header, body, number = messages[seq]
            self.live[number] += 1
            live.append((seq, route, header, body, seq in delivered, number, expiries.get(seq)))
        self._drop_settled_prefix()
        return live, top

    # -- appends ------------------------------------------------------------------------------
    def append_message(self, seq: int, route: bytes, header: bytes, body: bytes) -> int:
        """Buffer a message record; returns the segment it lands in."""
        if self.active_size == 0:
            self._open_segment()
        rec = records.message(seq, route, header, body, self.seed)
        if self.active_size + len(rec) > self.segment_size and self.active_size > self.base_size:
            self._roll()
            rec = records.message(seq, route, header, body, self.seed)
        self.pending.append(rec)
        self.active_size += len(rec)
        self.live[self.active] = self.live.get(self.active, 0) + 1
        return self.active

    def settle(self, seq: int, segment: int) -> None:
        self._marker(records.SETTLED, seq)
        n = self.live[segment] - 1
        self.live[segment] = n
        if n == 0 and segment != self.active:
            self._drop_settled_prefix()

    def delivered(self, seq: int) -> None:
        self._marker(records.DELIVERED, seq)

    def expiry(self, seq: int, at_ms: int) -> None:
        if self.active_size == 0:
            self._open_segment()
        rec = records.expiry(seq, at_ms, self.seed)
        self.pending.append(rec)
        self.active_size += len(rec)

    def _marker(self, kind: int, seq: int) -> None:
        if self.active_size == 0:
            self._open_segment()
        rec = records.marker(kind, seq, self.seed)
        self.pending.append(rec)
        self.active_size += len(rec)

    def _open_segment(self) -> None:
        """A new segment starts with its own random salt (see records.py)."""
        salt = os.urandom(8)
        self.seed = records.seed_of(salt)
        header = records.segment_header(salt)
        self.pending.append(header)
        self.active_size = self.base_size = len(header)

    def _roll(self) -> None:
        """Start a new segment (the buffered records belong to the old one)."""
        self.write()
        if self.fd is not None:
            os.fsync(self.fd)      # rare (once per segment): the group commit only sees the new fd
            os.close(self.fd)
            self.fd = None
        self.active += 1
        self.live.setdefault(self.active, 0)
        self._open_segment()
        self._drop_settled_prefix()

    def _drop_settled_prefix(self) -> None:
        for number in sorted(self.live):
            if number == self.active or self.live[number]:
                return
            del self.live[number]
            try:
                os.unlink(self._segment_path(number))
            except FileNotFoundError:
                pass

    # -- I/O ------------------------------------------------------------------------------------
    def write(self):
        """Hand buffered records to the OS; returns the descriptor to fsync, or None."""
        if not self.pending or self.deleted:
            self.pending.clear()
            return None
        if self.fd is None:
            self.fd = os.open(self._segment_path(self.active),
                              os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        data = b"".join(self.pending)
        self.pending.clear()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        return self.fd

    def close(self) -> None:
        self.write()
        if self.fd is not None:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None

    def delete(self) -> None:
        """The queue is gone: remove its files."""
        self.deleted = True
        self.pending.clear()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        shutil.rmtree(self.path, ignore_errors=True)
