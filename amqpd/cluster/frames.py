"""The node-to-node frame: what links carry after their greeting.

    length (4 bytes, big-endian: everything after it) | kind (1 byte) |
    head length (4 bytes) | head (JSON object) | payload (raw bytes)

The head carries the few named fields a frame needs (a queue, a correlation id, an epoch);
the payload carries bytes that must not be decoded on the way (a message's route, header
and body, a log's appended bytes). ``kind`` is a small integer each protocol (forwarding,
replication) defines for itself.
"""
from __future__ import annotations

import json
import struct

_prefix = struct.Struct(">IBI")
MAX_FRAME = 256 << 20


class FrameError(Exception):
    """The peer sent something that is not a frame: drop the link."""


def encode(kind: int, head: dict, payload: bytes = b"") -> bytes:
    raw = json.dumps(head, separators=(",", ":")).encode()
    return _prefix.pack(5 + len(raw) + len(payload), kind, len(raw)) + raw + payload


def write(writer, kind: int, head: dict, payload: bytes = b"") -> None:
    writer.write(encode(kind, head, payload))


async def read(reader) -> tuple[int, dict, bytes]:
    """The next frame from ``reader`` (an asyncio StreamReader); IncompleteReadError at
    the end of the stream, FrameError on garbage."""
    length, kind, head_len = _prefix.unpack(await reader.readexactly(_prefix.size))
    if length > MAX_FRAME or head_len > length - 5:
        raise FrameError(f"frame of {length} bytes (head {head_len})")
    rest = await reader.readexactly(length - 5)
    try:
        head = json.loads(rest[:head_len])
    except ValueError as exc:
        raise FrameError(f"frame head is not JSON: {exc}") from None
    if not isinstance(head, dict):
        raise FrameError("frame head is not an object")
    return kind, head, rest[head_len:]
