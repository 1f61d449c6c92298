"""Per-segment summaries (``NNNNNNNN.idx``): what a sealed segment holds, so a restart reads a
few kilobytes per segment instead of the segment itself.

A summary lists the segment's records by kind: the seq and offset of every MESSAGE, the seqs
of its SETTLED and DELIVERED markers and its EXPIRY deadlines, with the segment's salt seed,
header size and high-water mark. The log collects it while appending (a few array appends per
record) and writes it once the segment is finished *and* fsynced (never before: a summary must
not describe records a power cut could take away); with ``storage.fsync: never`` when the
segment is finished. It is never fsynced itself: it is a cache. It is trusted only if its CRC
matches and the segment file still has the size it describes; otherwise the segment is scanned
record by record, as without it. The active (last) segment never has one and is always scanned,
which is where a torn tail can be.

    (offsets are stored shifted left by one, as store/paging.py keeps them)

    magic "AMQPDIX3" | crc32:u32 (over the rest) | byte order:u8 | size:u64 | seed:u32 |
    base:u32 | high:u64 | counts: messages, settled, delivered, expiries, sizes, priorities
    (u32 each) | seqs Q[m] | offsets I[m] | settled Q[s] | delivered Q[d] | expiry seqs Q[e] |
    at Q[e] | sizes I[z] | priorities B[y]

``sizes`` are the messages' body sizes (z = m), kept only by queues with x-max-length-bytes
(their byte count is rebuilt from them at a restart), ``priorities`` their priority levels
(y = m), kept only by priority queues (a restart sorts the positions into levels with them);
either count is 0 when not known. Older summaries are still read: "AMQPDIX2" (sizes only)
and "AMQPDIX1" (neither).
"""
import os
import struct
import sys
import zlib
from array import array

from . import records

MAGIC = b"AMQPDIX3"
MAGIC_2 = b"AMQPDIX2"
MAGIC_1 = b"AMQPDIX1"
_head = struct.Struct("<4sI")
_meta = struct.Struct("<BQIIQIIII")
_extra = struct.Struct("<II")        # AMQPDIX3: sizes, priorities
_extra_2 = struct.Struct("<I")       # AMQPDIX2: sizes
_ORDER = 1 if sys.byteorder == "little" else 2


class SegmentIndex:
    """The summary of one segment, collected while its records are appended."""
    __slots__ = ("seqs", "offs", "settled", "delivered", "exp_seqs", "exp_at", "sizes", "prios",
                 "seed", "base", "high", "valid")

    def __init__(self, seed: int = 0, base: int = 0, high: int = 0):
        self.seqs = array("Q")
        self.offs = array("I")
        self.settled = array("Q")
        self.delivered = array("Q")
        self.exp_seqs = array("Q")
        self.exp_at = array("Q")
        self.sizes = array("I")      # body sizes, when the queue keeps them (else empty)
        self.prios = array("B")      # priority levels, when the queue keeps them (else empty)
        self.seed, self.base, self.high = seed, base, high
        self.valid = True            # False once a write of the segment failed

    def known_sizes(self):
        """The body sizes of the segment's messages, or None when not kept for all."""
        return self.sizes if len(self.sizes) == len(self.seqs) else None

    def known_prios(self):
        """The priority levels of the segment's messages, or None when not kept for all."""
        return self.prios if len(self.prios) == len(self.seqs) else None

    def encode(self, size: int) -> bytes:
        sizes = self.known_sizes() or array("I")
        prios = self.known_prios() or array("B")
        arrays = (self.seqs, self.offs, self.settled, self.delivered, self.exp_seqs,
                  self.exp_at, sizes, prios)
        body = _meta.pack(_ORDER, size, self.seed, self.base, self.high, len(self.seqs),
                          len(self.settled), len(self.delivered), len(self.exp_seqs)) \
            + _extra.pack(len(sizes), len(prios)) + b"".join(a.tobytes() for a in arrays)
        return MAGIC + struct.pack("<I", zlib.crc32(body)) + body


def path_of(segment_path: str) -> str:
    return segment_path[:-4] + ".idx"


def write(segment_path: str, index: SegmentIndex, io) -> None:
    """Write the summary of a finished segment (best effort: it is only a cache)."""
    try:
        size = os.stat(segment_path).st_size
        io.write_file(path_of(segment_path), index.encode(size), sync=False)
    except OSError:
        pass


def load(segment_path: str) -> SegmentIndex | None:
    """The segment's summary if there is a valid one for the segment as it is on disk. The
    arrays are read straight from the file into their memory (no intermediate copy: a
    restart with 10 million messages reads 120 MB of them)."""
    try:
        with open(segment_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(records.HEAD_SIZE + 17)
        with open(path_of(segment_path), "rb") as f:
            top = f.read(12 + _meta.size)
            if len(top) < 12 + _meta.size or top[:8] not in (MAGIC, MAGIC_2, MAGIC_1):
                return None
            (stored_crc,) = struct.unpack_from("<I", top, 8)
            order, stored_size, seed, base, high, m, s, d, e = _meta.unpack_from(top, 12)
            if order != _ORDER or stored_size != size:
                return None
            if records.segment_info(head)[0] != seed:     # a summary of an earlier segment N
                return None
            index = SegmentIndex(seed, base, high)
            crc = zlib.crc32(top[12:])
            z = y = 0
            if top[:8] != MAGIC_1:
                extra = _extra if top[:8] == MAGIC else _extra_2
                more = f.read(extra.size)
                if len(more) < extra.size:
                    return None
                z, y = (extra.unpack(more) + (0,))[:2]
                crc = zlib.crc32(more, crc)
                if z not in (0, m) or y not in (0, m):
                    return None
            for arr, n in ((index.seqs, m), (index.offs, m), (index.settled, s),
                           (index.delivered, d), (index.exp_seqs, e), (index.exp_at, e),
                           (index.sizes, z), (index.prios, y)):
                if n:
                    arr.fromfile(f, n)
                    crc = zlib.crc32(arr, crc)
            if f.read(1) or crc != stored_crc:
                return None
    except (OSError, EOFError, ValueError):    # ValueError: torn inside an array item
        return None
    return index


def remove(segment_path: str, io) -> None:
    try:
        io.unlink(path_of(segment_path))
    except OSError:
        pass
