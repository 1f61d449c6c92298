"""The on-disk record format of queue segment files.

Every record is self-delimiting and self-checking, so a message can be read back from its
(segment, offset) alone, and recovery can skip a damaged record and find the next intact one:

    magic:u16 = 0xA5 0x17 | length:u32 | crc32:u32 | payload[length]

The CRC covers the length field and the payload. Payloads:

    MESSAGE   type:u8=1 seq:u64 route_len:u16 route header_len:u32 header body
    SETTLED   type:u8=2 seq:u64          (acked, rejected, expired, purged, dead-lettered)
    DELIVERED type:u8=3 seq:u64          (handed to a consumer at least once: redelivered on recovery)

``route`` is the raw exchange + routing-key shortstr pair of the publish and ``header`` the raw
content-header payload, both exactly as received.
"""
import struct
import zlib

MAGIC = b"\xa5\x17"
MESSAGE, SETTLED, DELIVERED = 1, 2, 3

_head = struct.Struct(">2sII")           # magic, length, crc
_len = struct.Struct(">I")
_msg_head = struct.Struct(">BQH")        # type, seq, route_len
_u32 = struct.Struct(">I")
_marker = struct.Struct(">BQ")
HEAD_SIZE = _head.size
MAX_RECORD = 1 << 31


def _frame(payload_parts: list) -> bytes:
    payload = b"".join(payload_parts)
    length = _len.pack(len(payload))
    crc = zlib.crc32(payload, zlib.crc32(length))
    return MAGIC + length + _u32.pack(crc) + payload


def message(seq: int, route: bytes, header: bytes, body: bytes) -> bytes:
    return _frame([_msg_head.pack(MESSAGE, seq, len(route)), route, _u32.pack(len(header)),
                   header, body])


def marker(kind: int, seq: int) -> bytes:
    return _frame([_marker.pack(kind, seq)])


class Record:
    __slots__ = ("kind", "seq", "route", "header", "body", "offset", "size")

    def __init__(self, kind, seq, route, header, body, offset, size):
        self.kind, self.seq, self.route, self.header, self.body = kind, seq, route, header, body
        self.offset, self.size = offset, size


def decode_payload(payload: bytes, offset: int, size: int) -> Record | None:
    if not payload:
        return None
    kind = payload[0]
    if kind == MESSAGE:
        if len(payload) < _msg_head.size + 4:
            return None
        _, seq, route_len = _msg_head.unpack_from(payload)
        at = _msg_head.size
        route = payload[at:at + route_len]
        at += route_len
        (header_len,) = _u32.unpack_from(payload, at)
        at += 4
        header = payload[at:at + header_len]
        if len(route) != route_len or len(header) != header_len:
            return None
        return Record(MESSAGE, seq, route, header, payload[at + header_len:], offset, size)
    if kind in (SETTLED, DELIVERED) and len(payload) == _marker.size:
        _, seq = _marker.unpack(payload)
        return Record(kind, seq, None, None, None, offset, size)
    return None


def scan(data: bytes, problems: list | None = None):
    """Yield every intact record of a segment's bytes, in order.

    A record whose CRC does not match (a flipped byte, a torn write) is skipped by searching for
    the next magic that starts a valid record. Each skipped range is appended to ``problems`` as
    (offset, length, reason); a damaged tail shows up as the last problem.
    """
    pos, end = 0, len(data)
    while pos < end:
        rec = _record_at(data, pos)
        if rec is not None:
            yield rec
            pos += rec.size
            continue
        nxt = data.find(MAGIC, pos + 1)
        while nxt != -1 and _record_at(data, nxt) is None:
            nxt = data.find(MAGIC, nxt + 1)
        stop = end if nxt == -1 else nxt
        if problems is not None:
            reason = "torn tail" if nxt == -1 else "corrupt record"
            problems.append((pos, stop - pos, reason))
        pos = stop


def _record_at(data: bytes, pos: int) -> Record | None:
    if pos + HEAD_SIZE > len(data):
        return None
    magic, length, crc = _head.unpack_from(data, pos)
    if magic != MAGIC or length > MAX_RECORD:
        return None
    start = pos + HEAD_SIZE
    payload = data[start:start + length]
    if len(payload) != length:
        return None
    if zlib.crc32(payload, zlib.crc32(data[pos + 2:pos + 6])) != crc:
        return None
    return decode_payload(payload, pos, HEAD_SIZE + length)


def read_at(path: str, offset: int) -> Record | None:
    """Read one record back by position (for queues larger than memory)."""
    with open(path, "rb") as f:
        f.seek(offset)
        head = f.read(HEAD_SIZE)
        if len(head) < HEAD_SIZE:
            return None
        _, length, _ = _head.unpack(head)
        return _record_at(head + f.read(length), 0)
