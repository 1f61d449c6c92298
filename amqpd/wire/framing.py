"""Splitting a byte stream into AMQP frames (sans-IO).

A frame is ``type:u8 channel:u16 size:u32 payload[size] 0xCE``. The reader never copies the
buffer it is handed except to keep an incomplete tail for the next read.
"""
import struct

from ..amqp import errors

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
    """Accumulates bytes and yields complete frames as ``(type, channel, payload)``."""

    __slots__ = ("buf", "frame_max")

    def __init__(self, frame_max: int):
        self.buf = b""
        # Before tune-ok the peer may only send frames up to the server's proposal.
        self.frame_max = frame_max

    def feed(self, data: bytes) -> list:
        buf = self.buf + data if self.buf else data
        frames = []
        pos = 0
        end = len(buf)
        limit = self.frame_max
        while end - pos >= 7:
            ftype, channel, size = unpack_frame_header(buf, pos)
            # The spec counts the 8 bytes of framing in frame_max; RabbitMQ only refuses
            # payloads larger than frame_max, and clients rely on that slack.
            if limit and size > limit:
                self.buf = b""
                raise errors.FrameError(
                    f"type {ftype}, frame payload {size} exceeds frame_max {limit}")
            stop = pos + 7 + size
            if stop >= end:
                break
            if buf[stop] != FRAME_END:
                self.buf = b""
                raise errors.FrameError(f"type {ftype}, frame end octet 0x{buf[stop]:02x} is not 0xce")
            frames.append((ftype, channel, buf[pos + 7:stop]))
            pos = stop + 1
        self.buf = buf[pos:] if pos < end else b""
        return frames


def frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return pack_frame_header(ftype, channel, len(payload)) + payload + FRAME_END_BYTE


HEARTBEAT_FRAME = frame(FRAME_HEARTBEAT, 0, b"")
