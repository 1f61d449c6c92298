"""The forwarding link's records and how they travel (forward.py's links, both sides).

A link is a connection of role "forward" between the node that has a queue's proxy (the
*origin*) and the queue's leader. Its frames are frames.py's, kind BATCH, head ``{}``,
payload a run of binary records written once per loop turn, so nothing is JSON per message:

    origin -> leader   PUBLISH(qid, corr, route, header, body)   SETTLE(op, tag)
                       CREDIT(sid, n)   CTL(json: bind, sub, unsub, get, counts, purge, delete)
    leader -> origin   CONFIRM(corr, ok)   DELIVER(sid, tag, redelivered, route, header, body)
                       CTL(json: reply, cancelled, stats, alarms)

``Wire`` is what both ends share: records out, batched into one frame per loop turn (sealed
at FRAME_SPLIT), and records in, parsed from a frame into ``on_*`` calls.
"""
from __future__ import annotations

import json
import struct

from . import frames

ROLE = "forward"
BATCH = 1                     # frames.py kind: a run of records
FRAME_SPLIT = 4 << 20         # a batch frame is sealed at about this size

# records
PUBLISH, SETTLE, CREDIT, CONFIRM, DELIVER, CTL = 1, 2, 3, 4, 5, 6
ACK, REQUEUE, REJECT, GIVE_BACK = 0, 1, 2, 3
_publish = struct.Struct(">BIQHII")        # kind, qid, corr, route, header, body lengths
_settle = struct.Struct(">BBQ")            # kind, op, tag
_credit = struct.Struct(">BII")            # kind, sid, n
_confirm = struct.Struct(">BQB")           # kind, corr, ok
_deliver = struct.Struct(">BIQBHII")       # kind, sid, tag, redelivered, lengths
_ctl = struct.Struct(">BII")               # kind, json length, payload length


def ctl_record(head: dict, payload: bytes = b"") -> bytes:
    raw = json.dumps(head, separators=(",", ":")).encode()
    return _ctl.pack(CTL, len(raw), len(payload)) + raw + payload


def route_parts(route: bytes) -> tuple[str, str]:
    n = route[0]
    return route[1:1 + n].decode("utf-8", "surrogateescape"), \
        route[2 + n:].decode("utf-8", "surrogateescape")


class Wire:
    """Records out, written as one frame per loop turn (``kick``); records in, parsed from
    a frame's payload by ``feed`` into ``on_*`` calls."""

    def __init__(self, loop):
        self.loop = loop
        self.writer = None
        self.out = bytearray()
        self.sealed: list = []
        self.scheduled = False

    def kick(self) -> None:
        if not self.scheduled and self.writer is not None:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def put(self, data) -> None:
        self.out += data
        if len(self.out) > FRAME_SPLIT:
            self.sealed.append(frames.encode(BATCH, {}, bytes(self.out)))
            self.out = bytearray()
        self.kick()

    def flush(self) -> None:
        self.scheduled = False
        if self.writer is None:
            return
        chunks = self.sealed
        if self.out:
            chunks.append(frames.encode(BATCH, {}, bytes(self.out)))
            self.out = bytearray()
        self.sealed = []
        if chunks:
            try:
                self.writer.write(b"".join(chunks) if len(chunks) > 1 else chunks[0])
            except (OSError, RuntimeError):
                pass

    def feed(self, payload: bytes) -> None:
        view = memoryview(payload)
        pos, end = 0, len(payload)
        while pos < end:
            kind = payload[pos]
            if kind == PUBLISH:
                _k, qid, corr, rl, hl, bl = _publish.unpack_from(payload, pos)
                pos += _publish.size
                route, header, body, pos = _message_at(view, pos, rl, hl, bl)
                self.on_publish(qid, corr, route, header, body)
            elif kind == SETTLE:
                _k, op, tag = _settle.unpack_from(payload, pos)
                pos += _settle.size
                self.on_settle(op, tag)
            elif kind == CREDIT:
                _k, sid, n = _credit.unpack_from(payload, pos)
                pos += _credit.size
                self.on_credit(sid, n)
            elif kind == CONFIRM:
                _k, corr, ok = _confirm.unpack_from(payload, pos)
                pos += _confirm.size
                self.on_confirm(corr, ok)
            elif kind == DELIVER:
                _k, sid, tag, redelivered, rl, hl, bl = _deliver.unpack_from(payload, pos)
                pos += _deliver.size
                route, header, body, pos = _message_at(view, pos, rl, hl, bl)
                self.on_deliver(sid, tag, bool(redelivered), route, header, body)
            elif kind == CTL:
                _k, jl, pl = _ctl.unpack_from(payload, pos)
                pos += _ctl.size
                head = json.loads(bytes(view[pos:pos + jl]))
                pos += jl
                extra = bytes(view[pos:pos + pl])
                pos += pl
                self.on_ctl(head, extra)
            else:
                raise frames.FrameError(f"unknown forwarding record {kind}")

    def on_publish(self, qid, corr, route, header, body): raise frames.FrameError("publish")
    def on_settle(self, op, tag): raise frames.FrameError("settle")
    def on_credit(self, sid, n): raise frames.FrameError("credit")
    def on_confirm(self, corr, ok): raise frames.FrameError("confirm")
    def on_deliver(self, sid, tag, redelivered, route, header, body):
        raise frames.FrameError("deliver")
    def on_ctl(self, head, payload): raise frames.FrameError("ctl")

    async def pump(self, reader, after) -> None:
        """Read frames until the link ends; ``after()`` once per frame (dispatch)."""
        while True:
            kind, _head, payload = await frames.read(reader)
            if kind == BATCH:
                self.feed(payload)
                after()


def _message_at(view, pos: int, rl: int, hl: int, bl: int):
    """A PUBLISH or DELIVER record's route, header and body (copied out of the frame), and
    where the next record starts."""
    header_at = pos + rl
    body_at = header_at + hl
    end = body_at + bl
    return (bytes(view[pos:header_at]), bytes(view[header_at:body_at]),
            bytes(view[body_at:end]), end)
