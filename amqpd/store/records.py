"""The on-disk record format of queue segment files.

Every record is self-delimiting and self-checking, so a message can be read back from its
(segment, offset) alone, and recovery can skip a damaged record and find the next intact one:

    magic:u16 = 0xA5 0x17 | crc32:u32 | length:u32 | payload[length]

The CRC covers the length field and the payload (contiguous, so one crc32 call), seeded with
the CRC of a random salt that opens each segment file:

    SEGMENT   type:u8=0 salt[8] high:u64 (first record of a segment, CRC seed 0; ``high`` is
                                         the highest seq written to any older segment)
    MESSAGE   type:u8=1 seq:u64 route_len:u16 route header_len:u32 header body
    SETTLED   type:u8=2 seq:u64          (acked, rejected, expired, purged, dead-lettered)
    DELIVERED type:u8=3 seq:u64          (handed to a consumer at least once: redelivered on recovery)
    EXPIRY    type:u8=4 seq:u64 at:u64   (its TTL deadline, ms since the epoch: a restart keeps it)

``route`` is the raw exchange + routing-key shortstr pair of the publish and ``header`` the raw
content-header payload, both exactly as received.

Why the salt: recovery resynchronises after a damaged record by looking for the next magic with
a valid CRC. A message body may itself contain bytes that look like a record (a publisher can
send anything); without knowing the segment's salt it cannot carry a record that validates, so
recovery never invents a message out of a body.

Why ``high``: a segment whose messages are all settled is deleted, but the deletion becomes
durable only when its directory is next fsynced. After a restart the queue must never reuse a
sequence number that such a deleted segment holds: if a power cut later brought that segment
back, its SETTLED markers would settle the new messages. The last segment always survives, so
its header carries the high-water mark. Format-1 headers (9 bytes, no ``high``) are still read.
"""
import struct
import zlib

MAGIC = b"\xa5\x17"
SEGMENT, MESSAGE, SETTLED, DELIVERED, EXPIRY = 0, 1, 2, 3, 4

_head = struct.Struct(">2sII")           # magic, crc, length
_len = struct.Struct(">I")
_msg_head = struct.Struct(">BQH")        # type, seq, route_len
_u32 = struct.Struct(">I")
_marker = struct.Struct(">BQ")
_expiry = struct.Struct(">BQQ")
_u64 = struct.Struct(">Q")
_len_marker = struct.Struct(">IBQ")      # length, type, seq: a marker's CRC'd bytes
_len_msg_head = struct.Struct(">IBQH")   # length, type, seq, route_len
HEAD_SIZE = _head.size
_MSG_FIXED = _msg_head.size + 4          # type, seq, route_len + header_len
_magic_crc = struct.Struct(">HI").pack
_MAGIC16 = int.from_bytes(MAGIC, "big")
MAX_RECORD = 1 << 31


def _frame(payload_parts: list, seed: int) -> bytes:
    body = _len.pack(sum(map(len, payload_parts))) + b"".join(payload_parts)
    return MAGIC + _u32.pack(zlib.crc32(body, seed)) + body


def segment_header(salt: bytes, high: int = 0) -> bytes:
    return _frame([bytes([SEGMENT]), salt, _u64.pack(high)], 0)


def seed_of(salt: bytes) -> int:
    return zlib.crc32(salt)


def message(seq: int, route: bytes, header: bytes, body: bytes, seed: int = 0) -> bytes:
    magic_crc, rest = message_parts(seq, route, header, body, seed)
    return magic_crc + rest


def message_parts(seq: int, route: bytes, header: bytes, body: bytes, seed: int = 0):
    """A message record in two pieces, (magic + crc, the rest): the same bytes as
    _frame([...]), built with one copy of the body and one crc call. It runs once per
    persistent message; the log joins the pieces when it writes."""
    rl = len(route)
    rest = b"".join((_len_msg_head.pack(_MSG_FIXED + rl + len(header) + len(body), MESSAGE, seq,
                                        rl), route, _u32.pack(len(header)), header, body))
    return _magic_crc(_MAGIC16, _crc32(rest, seed)), rest


def marker(kind: int, seq: int, seed: int = 0) -> bytes:
    # once or twice per persistent message (DELIVERED, SETTLED): one pack, one crc
    body = _len_marker.pack(_marker.size, kind, seq)
    return _magic_crc(_MAGIC16, _crc32(body, seed)) + body


def expiry(seq: int, at_ms: int, seed: int = 0) -> bytes:
    return _frame([_expiry.pack(EXPIRY, seq, at_ms)], seed)


def segment_seed(data: bytes) -> tuple[int, int]:
    """(CRC seed, bytes the segment header takes) of a segment's bytes; (0, 0) without one."""
    seed, size, _ = segment_info(data)
    return seed, size


def segment_info(data: bytes) -> tuple[int, int, int]:
    """(CRC seed, header size, high-water seq) of a segment's bytes; (0, 0, 0) without a
    header."""
    rec = _record_at(data, memoryview(data), 0, 0, header=True)
    if rec is None:
        return 0, 0, 0
    return seed_of(rec.body[:8]), rec.size, rec.seq


class Record:
    __slots__ = ("kind", "seq", "route", "header", "body", "offset", "size")

    def __init__(self, kind, seq, route, header, body, offset, size):
        self.kind, self.seq, self.route, self.header, self.body = kind, seq, route, header, body
        self.offset, self.size = offset, size


def scan(data: bytes, problems: list | None = None):
    """Yield every intact record of a segment's bytes, in order.

    A record whose CRC does not match (a flipped byte, a torn write) is skipped by searching for
    the next magic that starts a valid record. Each skipped range is appended to ``problems`` as
    (offset, length, reason); a damaged tail shows up as the last problem.
    """
    view = memoryview(data)
    seed, pos = segment_seed(data)
    end = len(data)
    while pos < end:
        rec = _record_at(data, view, pos, seed)
        if rec is not None:
            yield rec
            pos += rec.size
            continue
        nxt = data.find(MAGIC, pos + 1)
        while nxt != -1 and _record_at(data, view, nxt, seed) is None:
            nxt = data.find(MAGIC, nxt + 1)
        stop = end if nxt == -1 else nxt
        if problems is not None:
            reason = "torn tail" if nxt == -1 else "corrupt record"
            problems.append((pos, stop - pos, reason))
        pos = stop


def scan_positions(data: bytes, problems: list | None = None):
    """Like ``scan``, but copies nothing: yields (kind, seq, offset, end) of every intact
    record (for an EXPIRY, ``expiry_at(data, offset)`` reads its deadline)."""
    view = memoryview(data)
    seed, pos = segment_seed(data)
    end = len(data)
    while pos < end:
        rec = _position_at(data, view, pos, seed)
        if rec is not None:
            yield rec
            pos = rec[3]
            continue
        nxt = data.find(MAGIC, pos + 1)
        while nxt != -1 and _position_at(data, view, nxt, seed) is None:
            nxt = data.find(MAGIC, nxt + 1)
        stop = end if nxt == -1 else nxt
        if problems is not None:
            problems.append((pos, stop - pos, "torn tail" if nxt == -1 else "corrupt record"))
        pos = stop


def expiry_at(data: bytes, offset: int) -> int:
    return _expiry.unpack_from(data, offset + HEAD_SIZE)[2]


def _position_at(data, view, pos: int, seed: int):
    if pos + HEAD_SIZE > len(data):
        return None
    magic, crc, length = _unpack_head(data, pos)
    start = pos + HEAD_SIZE
    stop = start + length
    if magic != MAGIC or stop > len(data) or length == 0:
        return None
    if _crc32(view[pos + 6:stop], seed) != crc:
        return None
    kind = data[start]
    if kind == MESSAGE:
        if length < _msg_head.size + 4:
            return None
        _, seq, route_len = _unpack_msg(data, start)
        route_end = start + _msg_head.size + route_len
        if route_end + 4 > stop or route_end + 4 + _unpack_u32(data, route_end)[0] > stop:
            return None
        return (MESSAGE, seq, pos, stop)
    if (kind == SETTLED or kind == DELIVERED) and length == _marker.size:
        return (kind, _unpack_marker(data, start)[1], pos, stop)
    if kind == EXPIRY and length == _expiry.size:
        return (EXPIRY, _expiry.unpack_from(data, start)[1], pos, stop)
    return None


_unpack_head = _head.unpack_from
_unpack_msg = _msg_head.unpack_from
_unpack_marker = _marker.unpack_from
_unpack_u32 = _u32.unpack_from
_crc32 = zlib.crc32


def _record_at(data: bytes, view: memoryview, pos: int, seed: int,
               header: bool = False) -> Record | None:
    """Parse and check the record at pos; markers are decoded without copying."""
    if pos + HEAD_SIZE > len(data):
        return None
    magic, crc, length = _unpack_head(data, pos)
    start = pos + HEAD_SIZE
    stop = start + length
    if magic != MAGIC or stop > len(data) or length == 0:
        return None
    if _crc32(view[pos + 6:stop], seed) != crc:
        return None
    kind = data[start]
    size = HEAD_SIZE + length
    if header:
        if kind != SEGMENT or length not in (9, 17):
            return None
        high = _u64.unpack_from(data, start + 9)[0] if length == 17 else 0
        return Record(SEGMENT, high, None, None, data[start + 1:start + 9], pos, size)
    if kind == MESSAGE:
        if length < _msg_head.size + 4:
            return None
        _, seq, route_len = _unpack_msg(data, start)
        at = start + _msg_head.size
        route_end = at + route_len
        (header_len,) = _unpack_u32(data, route_end)
        header_at = route_end + 4
        body_at = header_at + header_len
        if body_at > stop:
            return None
        return Record(MESSAGE, seq, data[at:route_end], data[header_at:body_at],
                      data[body_at:stop], pos, size)
    if (kind == SETTLED or kind == DELIVERED) and length == _marker.size:
        return Record(kind, _unpack_marker(data, start)[1], None, None, None, pos, size)
    if kind == EXPIRY and length == _expiry.size:
        _, seq, at_ms = _expiry.unpack_from(data, start)
        return Record(EXPIRY, seq, None, None, at_ms, pos, size)     # body holds the deadline
    return None


def read_at(path: str, offset: int) -> Record | None:
    """Read one record back by position (for queues larger than memory)."""
    with open(path, "rb") as f:
        seed, _ = segment_seed(f.read(HEAD_SIZE + 17))
        f.seek(offset)
        head = f.read(HEAD_SIZE)
        if len(head) < HEAD_SIZE:
            return None
        _, _, length = _head.unpack(head)
        data = head + f.read(length)
        return _record_at(data, memoryview(data), 0, seed)
