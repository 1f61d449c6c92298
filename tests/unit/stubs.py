"""Shared helpers for the sans-IO unit tests: a stub I/O edge, a pamqp-built client byte
stream, and a decoder for what the connection core writes back. No sockets anywhere."""
from __future__ import annotations

from pamqp import body as pamqp_body
from pamqp import commands as C
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header
from pamqp import heartbeat as pamqp_heartbeat

from amqpd import config as amqpd_config
from amqpd.access.control import AccessControl
from amqpd.amqp.connection import Connection
from amqpd.broker.broker import Broker
from amqpd.broker.clock import ManualClock
from amqpd.broker.message import Message

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
CLIENT_CAPS = {"authentication_failure_close": True, "consumer_cancel_notify": True,
               "basic.nack": True, "publisher_confirms": True}


class StubIO:
    """The I/O edge the core talks to: records every wake/close call."""

    def __init__(self):
        self.woken: list = []
        self.closed: list = []
        self.lingering: list = []
        self.heartbeats: list = []      # intervals the core asked the edge to tick at

    def wake(self, conn) -> None:
        self.woken.append(conn)

    def close(self, conn) -> None:
        self.closed.append(conn)

    def linger(self, conn, seconds: float, reading: bool = True) -> None:
        self.lingering.append((conn, seconds, reading))

    def start_heartbeat(self, conn, interval: float) -> None:
        self.heartbeats.append(interval)

    def published(self, conn, count: int) -> None:
        self.publishes += count

    publishes = 0                       # publishes the core reported, over all reads


def make_broker(clock=None, store=None, **cfg) -> Broker:
    """A broker with the configuration's users and a clock that stands still: memory-only,
    or on ``store``."""
    config = amqpd_config.from_dict(cfg)
    return Broker(config, store, AccessControl(config), clock or ManualClock())


# -- the domain without a connection ------------------------------------------------------------
def message(body: bytes = b"", routing_key: str = "", exchange: str = "", **props) -> Message:
    """A message as a channel hands it to ``VHost.publish``: raw route and content-header
    bytes (the header built by pamqp from ``props``, e.g. expiration="100", priority=3,
    headers={...})."""
    header = pamqp_header.ContentHeader(0, len(body), C.Basic.Properties(**props)).marshal()
    route = _shortstr(exchange) + _shortstr(routing_key)
    return Message(exchange, routing_key, route, header, body)


def _shortstr(text: str) -> bytes:
    raw = text.encode()
    return bytes((len(raw),)) + raw


def declare_queue(vhost, name: str, durable: bool = False, **arguments):
    """A shared queue with these x-arguments, as queue.declare makes it (``durable`` changes
    nothing without a store, but quorum queues must say it)."""
    return vhost.declare_queue(name, None, False, durable, False, False, arguments)


def declare_exchange(vhost, name: str, kind: str = "fanout", **arguments):
    return vhost.declare_exchange(name, kind, False, False, False, False, arguments)


def bodies(queue) -> list:
    """Take every ready message (the basic.get path) and settle it: the bodies in order."""
    out = []
    while (entry := queue.take()) is not None:
        queue.settle(entry)
        out.append(entry.message.body)
    return out


# -- client bytes (all built with pamqp) --------------------------------------------------------
def method(channel: int, m) -> bytes:
    return pamqp_frame.marshal(m, channel)


def content(channel: int, body: bytes, properties=None, frame_max: int = 131072) -> bytes:
    props = properties if properties is not None else C.Basic.Properties()
    out = [pamqp_frame.marshal(pamqp_header.ContentHeader(0, len(body), props), channel)]
    step = frame_max - 8
    for i in range(0, len(body), step):
        out.append(pamqp_frame.marshal(pamqp_body.ContentBody(body[i:i + step]), channel))
    return b"".join(out)


def publish(channel: int, body: bytes, exchange: str = "", routing_key: str = "",
            properties=None, frame_max: int = 131072, **kw) -> bytes:
    return (method(channel, C.Basic.Publish(exchange=exchange, routing_key=routing_key, **kw))
            + content(channel, body, properties, frame_max))


def heartbeat() -> bytes:
    return pamqp_frame.marshal(pamqp_heartbeat.Heartbeat(), 0)


def start_ok(user: str = "guest", password: str = "guest", caps: dict | None = None,
             mechanism: str = "PLAIN") -> bytes:
    props = {"product": "stub-client", "version": "0",
             "capabilities": dict(CLIENT_CAPS if caps is None else caps)}
    return method(0, C.Connection.StartOk(client_properties=props, mechanism=mechanism,
                                          response=f"\x00{user}\x00{password}",
                                          locale="en_US"))


def tune_ok(channel_max: int = 2047, frame_max: int = 131072, heartbeat: int = 60) -> bytes:
    return method(0, C.Connection.TuneOk(channel_max=channel_max, frame_max=frame_max,
                                         heartbeat=heartbeat))


def open_(vhost: str = "/") -> bytes:
    return method(0, C.Connection.Open(virtual_host=vhost))


def handshake_bytes(vhost: str = "/", frame_max: int = 131072, heartbeat: int = 60,
                    channel_max: int = 2047) -> bytes:
    return (PROTOCOL_HEADER + start_ok()
            + tune_ok(channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat)
            + open_(vhost))


# -- server bytes -------------------------------------------------------------------------------
def decode_frames(data: bytes) -> list:
    """Every frame in ``data`` as (channel, pamqp frame object); the bytes must be whole frames."""
    frames = []
    pos = 0
    view = bytes(data)
    while pos < len(view):
        used, channel, frame = pamqp_frame.unmarshal(view[pos:])
        assert used > 0
        frames.append((channel, frame))
        pos += used
    assert pos == len(view), "trailing partial frame in server output"
    return frames


class Client:
    """One Connection driven by plain calls: ``send`` bytes in, ``frames`` decoded out."""

    def __init__(self, broker: Broker | None = None, **cfg):
        self.broker = broker if broker is not None else make_broker(**cfg)
        self.io = StubIO()
        self.conn = Connection(self.broker, self.io, "stub")
        self.frame_max = 131072

    def send(self, data: bytes) -> None:
        self.conn.data_received(data)

    def send_method(self, channel: int, m) -> None:
        self.send(method(channel, m))

    def raw_output(self) -> bytes:
        return self.conn.take_output()

    def frames(self) -> list:
        return decode_frames(self.conn.take_output())

    def methods(self) -> list:
        """(channel, frame) pairs without heartbeats."""
        return [(ch, f) for ch, f in self.frames()
                if not isinstance(f, pamqp_heartbeat.Heartbeat)]

    def expect_one(self, cls, channel: int | None = None):
        got = self.methods()
        assert len(got) == 1, f"expected one {cls.__name__}, got {got!r}"
        ch, frame = got[0]
        assert isinstance(frame, cls), f"expected {cls.__name__}, got {frame!r}"
        if channel is not None:
            assert ch == channel
        return frame

    def handshake(self, vhost: str = "/", frame_max: int = 131072, heartbeat: int = 60):
        self.send(handshake_bytes(vhost=vhost, frame_max=frame_max, heartbeat=heartbeat))
        got = [f for _, f in self.methods()]
        assert [type(f) for f in got] == [C.Connection.Start, C.Connection.Tune,
                                          C.Connection.OpenOk], got
        self.frame_max = frame_max
        return got

    def open_channel(self, number: int = 1) -> None:
        self.send_method(number, C.Channel.Open())
        self.expect_one(C.Channel.OpenOk, number)

    def publish(self, channel: int, body: bytes, exchange: str = "", routing_key: str = "",
                properties=None, **kw) -> None:
        self.send(publish(channel, body, exchange, routing_key, properties,
                          frame_max=self.frame_max, **kw))

    def get(self, channel: int, queue: str, no_ack: bool = False):
        """basic.get -> (GetOk, ContentHeader, body) or (GetEmpty, None, None)."""
        self.send_method(channel, C.Basic.Get(queue=queue, no_ack=no_ack))
        return split_content(self.methods())


def split_content(frames: list):
    """[(ch, method), (ch, header), (ch, body)...] of one message -> (method, header, body)."""
    assert frames, "no frames"
    first = frames[0][1]
    if isinstance(first, (C.Basic.GetEmpty,)):
        assert len(frames) == 1
        return first, None, None
    assert isinstance(frames[1][1], pamqp_header.ContentHeader), frames
    hdr = frames[1][1]
    parts = []
    for _, f in frames[2:]:
        assert isinstance(f, pamqp_body.ContentBody), frames
        parts.append(f.value)
    body = b"".join(parts)
    assert len(body) == hdr.body_size
    return first, hdr, body


def commit_turn(store) -> None:
    """What the edge does once per loop turn with the store's commit path: write, run the
    fsync job (and the removals it carries), report how it went."""
    commit = store.commit
    commit.write_pending()
    job = commit.begin_sync()
    if job is None:
        return
    try:
        commit.sync(job)
    except OSError as exc:
        commit.finish(job, exc)
    else:
        commit.finish(job)
