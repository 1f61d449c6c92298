"""Splitting a byte stream into AMQP frames (sans-IO).

A frame is ``type:u8 channel:u16 size:u32 payload[size] 0xCE``. The reader never copies the
buffer it is handed except to keep an incomplete tail for the next read.
"""
import struct

from .. import errors

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"
FRAME_MIN_SIZE = 4096
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

_frame_header = struct.Struct(">BHI")
unpack_frame_header = _frame_header.unpack_from
pack_frame_header = _frame_header.pack


class FrameReader:
    """Accumulates bytes and yields complete frames as ``(type, channel, payload)``.

    A framing error does not discard the good frames read before it: ``feed`` returns them and
    leaves the error in ``error`` for the caller to raise once they are handled.
    """

    __slots__ = ("chunks", "have", "need", "frame_max", "error")

    def __init__(self, frame_max: int):
        self.chunks: list = []      # an incomplete tail, kept as pieces until it can complete
        self.have = 0
        self.need = 0               # bytes the tail's first frame needs (0: not known yet)
        # Before tune-ok the peer may only send frames up to the server's proposal.
        self.frame_max = frame_max
        self.error = None

    @property
    def buf(self) -> bytes:
        return b"".join(self.chunks)

    @buf.setter
    def buf(self, value: bytes) -> None:
        self.chunks = [value] if value else []
        self.have = len(value)
        self.need = 0

    def feed(self, data: bytes) -> list:
        if self.chunks:
            self.chunks.append(data)
            self.have += len(data)
            if self.have < self.need:
                return []           # a large frame still arriving: no re-copying per read
            buf = b"".join(self.chunks)
        else:
            buf = data
        frames = []
        pos = 0
        end = len(buf)
        limit = self.frame_max
        while end - pos >= 7:
            ftype, channel, size = unpack_frame_header(buf, pos)
            # The spec counts the 8 bytes of framing in frame_max; RabbitMQ only refuses
            # payloads larger than frame_max, and clients rely on that slack.
            if limit and size > limit:
                self.error = errors.FrameError(
                    f"type {ftype}, frame payload {size} exceeds frame_max {limit}")
                self.buf = b""
                return frames
            stop = pos + 7 + size
            if stop >= end:
                self.chunks = [buf[pos:]]
                self.have = end - pos
                self.need = size + 8
                return frames
            if buf[stop] != FRAME_END:
                self.error = errors.FrameError(
                    f"type {ftype}, frame end octet 0x{buf[stop]:02x} is not 0xce")
                self.buf = b""
                return frames
            frames.append((ftype, channel, buf[pos + 7:stop]))
            pos = stop + 1
        self.buf = buf[pos:] if pos < end else b""
        return frames


def frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return pack_frame_header(ftype, channel, len(payload)) + payload + FRAME_END_BYTE


HEARTBEAT_FRAME = frame(FRAME_HEARTBEAT, 0, b"")
