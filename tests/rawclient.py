"""A raw-frame AMQP client over a plain socket (pamqp codec), for the error paths that client
libraries hide: it sees every frame, reply code and class/method id the broker sends."""
import socket
import struct
import time

from pamqp import commands as C, frame as pamqp_frame, header, body as pamqp_body
from pamqp import heartbeat
from pamqp.exceptions import UnmarshalingException

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


def sstr(raw: bytes) -> bytes:
    """A short string on the wire."""
    return bytes([len(raw)]) + raw


def table(entries: bytes) -> bytes:
    """A field table on the wire around already-encoded entries."""
    return struct.pack(">I", len(entries)) + entries


def publish_frames(channel: int, body: bytes, exchange: str = "", routing_key: str = "",
                   properties=None, frame_max: int = 131072, **kw) -> bytes:
    """basic.publish, its content header and body frames (cut at frame_max) as bytes."""
    props = properties or C.Basic.Properties()
    data = [pamqp_frame.marshal(C.Basic.Publish(exchange=exchange, routing_key=routing_key,
                                                **kw), channel),
            pamqp_frame.marshal(header.ContentHeader(0, len(body), props), channel)]
    step = frame_max - 8
    for i in range(0, len(body), step):
        data.append(pamqp_frame.marshal(pamqp_body.ContentBody(body[i:i + step]), channel))
    return b"".join(data)


class Closed(Exception):
    """The broker closed the TCP connection."""


class RawClient:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0,
                 nodelay: bool = False):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if nodelay:
            # as pika does. Without it, two small writes in a row (tune-ok, then
            # connection.open) wait ~40 ms for the broker's delayed ACK of the first, which
            # also keeps a write apart from the one before: tests that send a method right
            # after a publish count on that (the broker applies an alarm per read)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- sending ------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def method(self, channel: int, method) -> None:
        self.send(pamqp_frame.marshal(method, channel))

    def publish(self, channel: int, body: bytes, exchange: str = "", routing_key: str = "",
                properties=None, frame_max: int = 131072, **kw) -> None:
        self.send(publish_frames(channel, body, exchange, routing_key, properties, frame_max,
                                 **kw))

    # -- receiving ----------------------------------------------------------------------------
    def recv(self, timeout: float | None = None):
        """Next (channel, frame); raises Closed when the broker closed the socket."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            if len(self.buf) >= 8:
                try:
                    used, channel, frame = pamqp_frame.unmarshal(self.buf)
                except UnmarshalingException:
                    used = 0
                if used:
                    self.buf = self.buf[used:]
                    return channel, frame
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the broker")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Closed()
            self.buf += chunk

    def expect(self, cls, timeout: float | None = None):
        """Next frame that is not a heartbeat; it must be of type ``cls``."""
        while True:
            channel, frame = self.recv(timeout)
            if isinstance(frame, heartbeat.Heartbeat):
                continue
            assert isinstance(frame, cls), f"expected {cls.__name__}, got {frame!r}"
            return frame

    def raw_frame(self, timeout: float | None = None) -> tuple:
        """The next frame that is not a heartbeat, undecoded: (type, channel, payload); for
        checking the bytes the broker sends (header payloads, frame sizes)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            if len(self.buf) >= 7:
                kind, channel, size = struct.unpack_from(">BHI", self.buf)
                if len(self.buf) >= size + 8:
                    payload = self.buf[7:7 + size]
                    assert self.buf[7 + size] == 0xCE, "bad frame end"
                    self.buf = self.buf[size + 8:]
                    if kind != 8:
                        return kind, channel, payload
                    continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the broker")
            self.sock.settimeout(left)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise Closed()
            self.buf += chunk

    def read_delivery(self, cls=C.Basic.Deliver, timeout: float | None = None):
        """A message the broker sends (basic.deliver, get-ok or return: ``cls``) with its
        content: (method, content header, body)."""
        method = self.expect(cls, timeout)
        head = self.expect(header.ContentHeader, timeout)
        data = b""
        while len(data) < head.body_size:
            data += self.expect(pamqp_body.ContentBody, timeout).value
        return method, head, data

    def read_raw(self, timeout: float = 2.0) -> bytes:
        """Everything until the broker closes the socket (or the timeout)."""
        deadline = time.monotonic() + timeout
        data = self.buf
        self.buf = b""
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
        return data

    def is_closed(self, timeout: float = 2.0) -> bool:
        """True once the broker has closed the socket (frames before that are dropped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.recv(deadline - time.monotonic())
            except Closed:
                return True
            except (TimeoutError, socket.timeout):
                return False
            except OSError:
                return True
        return False

    # -- conveniences -------------------------------------------------------------------------
    def handshake(self, user: str = "guest", password: str = "guest", vhost: str = "/",
                  capabilities: dict | None = None, mechanism: str = "PLAIN",
                  heartbeat_s: int = 0, frame_max: int = 131072, channel_max: int = 0):
        self.send(PROTOCOL_HEADER)
        start = self.expect(C.Connection.Start)
        caps = {"authentication_failure_close": True, "consumer_cancel_notify": True,
                "basic.nack": True, "publisher_confirms": True}
        if capabilities is not None:
            caps = capabilities
        if mechanism == "PLAIN":
            response = f"\0{user}\0{password}"
        else:
            response = ""
        self.method(0, C.Connection.StartOk(client_properties={"capabilities": caps,
                                                                "product": "rawclient"},
                                            mechanism=mechanism, response=response))
        tune = self.expect(C.Connection.Tune)
        self.method(0, C.Connection.TuneOk(channel_max=channel_max or tune.channel_max,
                                           frame_max=frame_max, heartbeat=heartbeat_s))
        self.method(0, C.Connection.Open(virtual_host=vhost))
        self.expect(C.Connection.OpenOk)
        return start, tune

    def open_channel(self, number: int = 1) -> None:
        self.method(number, C.Channel.Open())
        self.expect(C.Channel.OpenOk)

    def call(self, channel: int, method, reply_cls):
        self.method(channel, method)
        return self.expect(reply_cls)


def open_reply(port: int, user: str = "guest", password: str = "guest", vhost: str = "/"):
    """A handshake whose connection.open may be refused: the open RawClient, or the fields of
    the Connection.Close (code, text, class id, method id) once close-ok has ended it."""
    c = RawClient(port)
    c.send(PROTOCOL_HEADER)
    c.expect(C.Connection.Start)
    c.method(0, C.Connection.StartOk(client_properties={}, mechanism="PLAIN",
                                     response=f"\0{user}\0{password}"))
    tune = c.expect(C.Connection.Tune)
    c.method(0, C.Connection.TuneOk(channel_max=tune.channel_max, frame_max=tune.frame_max,
                                    heartbeat=0))
    c.method(0, C.Connection.Open(virtual_host=vhost))
    _ch, reply = c.recv()
    if isinstance(reply, C.Connection.OpenOk):
        return c
    try:
        assert isinstance(reply, C.Connection.Close), reply
        c.method(0, C.Connection.CloseOk())
        assert c.is_closed()
    finally:
        c.close()
    return reply.reply_code, reply.reply_text, reply.class_id, reply.method_id
