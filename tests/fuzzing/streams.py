"""The bytes a fuzz connection sends around each input, and the reader for what comes back.

Post-handshake inputs are followed by a marker: ``basic.qos`` on channel 1 (the engine's own
channel, opened in the handshake), answered by ``basic.qos-ok``. The broker answers frames in
order, so marker *n* coming back means input *n* was handled, and every frame in between
belongs to input *n*. A ``chan`` input is put on a channel opened just before it and closed
just after it, so it starts from a fresh channel and leaves nothing behind. An input that ends
inside a frame is completed with zeros and a frame end (``wire.missing``): otherwise the broker
would rightly wait for the rest and swallow the marker.
"""
import struct

from . import wire as W

MARKER_CHANNEL = 1
HANDSHAKE = b"".join([
    W.PROTOCOL_HEADER,
    W.method(0, "Connection.StartOk", {
        "client_properties": W.Table({b"product": b"amqpd-fuzz", b"capabilities": W.Table({
            b"authentication_failure_close": True, b"consumer_cancel_notify": True,
            b"publisher_confirms": True, b"basic.nack": True, b"connection.blocked": True})}),
        "mechanism": b"PLAIN", "response": b"\0guest\0guest", "locale": b"en_US"}),
    W.method(0, "Connection.TuneOk", {"channel_max": 2047, "frame_max": W.FRAME_MAX,
                                      "heartbeat": 0}),
    W.method(0, "Connection.Open", {"virtual_host": b"/"}),
    W.method(MARKER_CHANNEL, "Channel.Open"),
])
MARKER = W.method(MARKER_CHANNEL, "Basic.Qos", {"prefetch_count": 0})
CLIENT_CLOSE = W.method(0, "Connection.Close", {"reply_code": 200, "reply_text": b"fuzz"})
CLOSE_OK = W.method(0, "Connection.CloseOk")
_open = {}
_close = {}
_close_ok = {}


def channel_open(ch: int) -> bytes:
    b = _open.get(ch)
    if b is None:
        b = _open[ch] = W.method(ch, "Channel.Open")
    return b


def channel_close(ch: int) -> bytes:
    b = _close.get(ch)
    if b is None:
        b = _close[ch] = W.method(ch, "Channel.Close", {"reply_code": 200, "reply_text": b"ok"})
    return b


def channel_close_ok(ch: int) -> bytes:
    b = _close_ok.get(ch)
    if b is None:
        b = _close_ok[ch] = W.method(ch, "Channel.CloseOk")
    return b


def wrap(stage: str, data: bytes, channel: int = 0) -> bytes:
    """The bytes sent for one input (after the handshake for chan/conn; all of it for pre)."""
    if stage == "pre":
        return data + W.missing(data, in_header=True) + CLIENT_CLOSE
    if stage == "conn":
        return data + W.missing(data) + MARKER
    return channel_open(channel) + data + W.missing(data) + channel_close(channel) + MARKER


def full_stream(stage: str, data: bytes, channel: int = 0) -> bytes:
    """Everything one connection sends for one input alone (what a repro replays)."""
    if stage == "pre":
        return wrap(stage, data, channel)
    return HANDSHAKE + wrap(stage, data, channel)


# -- reading the broker's frames --------------------------------------------------------------------
_head = struct.Struct(">BHI").unpack_from
_ids = struct.Struct(">HH").unpack_from


def parse_close(payload: bytes):
    """(code, text, class_id, method_id) of a channel.close / connection.close payload."""
    try:
        code = _ids(payload, 4)[0]
        n = payload[6]
        text = payload[7:7 + n].decode("utf-8", "replace")
        c, m = _ids(payload, 7 + n)
        return code, text, c, m
    except (IndexError, struct.error):
        return 0, f"malformed close {payload.hex()}", 0, 0


class Reader:
    """Splits the broker's output into frames. ``frames(data)`` returns (type, channel,
    payload) tuples; a protocol-header reply (the broker refusing our version) is skipped;
    anything unframeable sets ``garbled``."""
    __slots__ = ("buf", "start", "garbled", "proto_reply")

    def __init__(self):
        self.buf = b""
        self.start = True
        self.garbled = ""
        self.proto_reply = False

    def frames(self, data: bytes) -> list:
        buf = self.buf + data if self.buf else data
        if self.start and len(buf) >= 4:
            self.start = False
            if buf.startswith(b"AMQP"):
                if len(buf) < 8:
                    self.start = True
                    self.buf = buf
                    return []
                self.proto_reply = True
                buf = buf[8:]
        out = []
        pos, end = 0, len(buf)
        while end - pos >= 8:
            ftype, ch, size = _head(buf, pos)
            stop = pos + 7 + size
            if stop >= end:
                break
            if buf[stop] != 0xCE or ftype not in (1, 2, 3, 8):
                self.garbled = buf[pos:pos + 32].hex()
                self.buf = b""
                return out
            out.append((ftype, ch, buf[pos + 7:stop]))
            pos = stop + 1
        self.buf = buf[pos:]
        return out
