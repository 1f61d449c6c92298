"""One AMQP connection as a sans-IO state machine: bytes in (``data_received``), bytes out
(``out``, drained by the I/O edge). Frame dispatch, the channel table, heartbeats (the I/O edge
calls ``heartbeat_tick`` on a timer) and close in both directions; opening is handshake.py, the
output buffer output.py. Every AMQP error raised while handling a frame is turned into
channel.close or connection.close here, in ``_frame_failed``.
"""
import logging
import struct

from pamqp import commands as C

from ..wire import methods
from ..wire.framing import (FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
                            FRAME_MIN_SIZE, HEARTBEAT_FRAME, FrameReader)
from .. import errors
from ..broker.stats import ConnectionStats, IOCounts
from .channel import CLOSING, OPEN, Channel
from .handshake import Handshake, _text, client_label
from .output import Output
from . import handlers
from .handlers import class_method
from .state import CLOSE_SENT, CLOSED, ENDED, HEADER, OPENING, RUNNING

# pamqp's global settings are left as they are: the only tables it encodes for us are
# Connection.Start's server properties (strings and booleans, the same under any setting);
# everything else is written with wire/tables.py.

log = logging.getLogger("amqpd.connection")

_class_method = struct.Struct(">HH").unpack_from
PUBLISH = (60 << 16) | 40
ACKS = {(60 << 16) | 80: 80, (60 << 16) | 90: 90, (60 << 16) | 120: 120}
SERVER_CONTENT = {(60 << 16) | 50, (60 << 16) | 60, (60 << 16) | 71}   # return, deliver, get-ok

CLOSE_WAIT_MAX = 30.0     # RabbitMQ's ?CLOSE_SENTTIMEOUT: the longest a closing peer gets


class _Detached:
    """The I/O edge of a connection whose socket is gone: output goes nowhere."""

    @staticmethod
    def wake(conn) -> None:
        pass

    @staticmethod
    def close(conn) -> None:
        pass

    @staticmethod
    def linger(conn, seconds: float, reading: bool = True) -> None:
        pass

    @staticmethod
    def start_heartbeat(conn, interval: float) -> None:
        pass

    @staticmethod
    def published(conn, count: int) -> None:
        pass


DETACHED = _Detached()


class Deferred:
    """A reply's place in a connection's output (``Connection.defer``)."""
    __slots__ = ("conn", "chunk", "done")

    def __init__(self, conn):
        self.conn = conn
        self.chunk = bytearray()      # a placeholder no other chunk is (identity)
        self.done = False

    def reply(self, data: bytes) -> None:
        """Fill the place in (once) and let the output go when no other reply is due."""
        if self.done:
            return
        self.done = True
        conn = self.conn
        conn.deferred -= 1
        conn.held_until = conn.journal_hold or conn.deferred
        out = conn.out
        for i in range(len(out) - 1, -1, -1):
            if out[i] is self.chunk:
                out[i] = data
                conn.out_size += len(data)
                break
        if not conn.deferred and conn.out:
            conn._dirty = True
            conn.io.wake(conn)


class Connection(Handshake, Output):
    stats = property(ConnectionStats)    # io statistics (broker/stats.py)

    """``io`` is the I/O edge, told of every effect the core decides: ``wake(conn)`` (output
    is pending), ``close(conn)`` (drop the transport once pending output is written),
    ``linger(conn, seconds, reading)`` (closing: keep the socket that long at most),
    ``start_heartbeat(conn, interval)`` and ``published(conn, count)`` (a read held publishes:
    resource alarms and rate limits apply)."""

    def __init__(self, broker, io, peer: str = "?", peer_ip: str | None = None,
                 tls: dict | None = None):
        self.broker = broker
        self.io = io
        self.peer = peer
        self.peer_ip = peer_ip        # None: not a network socket (unit tests): loopback
        self.tls = tls                # None, or {"peercert": dict | None, "verified": bool}
        self.config = broker.config
        self.access = broker.access
        self.grant = None             # the user's permissions in the vhost, once open
        self._authz: dict = {}        # (permission, kind, name) -> allowed, per connection
        self._everything: dict = {}   # permission -> the grant allows every name
        self.counted = False          # registered in access's live connection tables
        self.close_reason = ""
        self.close_logged = False
        self.blocked_sent = False     # connection.blocked went out, unblocked is due
        self.publish_rate = 0.0       # the user's publish rate limit (messages/s), 0: none
        self.published = 0            # publishes in the current read
        limits = self.config.limits
        self.state = HEADER
        self.reader = FrameReader(limits.frame_max or 0)
        self.out: list = []
        self.out_size = 0
        self.writable = True          # cleared by the I/O edge while the socket is not draining
        self.starved = False          # a delivery was held back by output pressure
        self.channels: dict[int, Channel] = {}
        self.closing_channels: set = set()
        self.confirms: dict = {}      # channels with publisher confirms due at end of batch
        self.confirming = False       # a channel is in confirm mode: the publisher waits for us
        self.channel_max = limits.channel_max
        self.frame_max = limits.frame_max or 131072
        self.heartbeat = 0
        self.max_message_size = limits.max_message_size
        self.user = None
        self.vhost = None
        self.client_properties: dict = {}
        self.capabilities: dict = {}
        self.exclusive_queues: set = set()
        self.received = True          # heartbeat bookkeeping, set per read (no clock calls)
        self.sent = True
        self.silent_ticks = 0
        # Until the batch after tune-ok, frame sizes are checked here: before tune-ok the
        # limit is 4096 (as RabbitMQ: a 131 KB start-ok used to cost 0.27 s of decoding), and
        # frames pipelined behind tune-ok were split before the new limit was known.
        self.size_checked = True
        self.frame_limit = FRAME_MIN_SIZE
        # statistics: octets and reads in here, octets and writes out (take_output)
        self.recv_oct = self.recv_cnt = self.send_oct = self.send_cnt = 0
        self.io_counts = IOCounts()

    # -- output -------------------------------------------------------------------------------
    # -- durable definitions: replies wait for the disk ----------------------------------------
    journal_hold = 0      # the generation a durable declare/delete of this read must reach
    deferred = 0          # replies another node gives (defer()) not in yet
    held_until = 0        # truthy while either holds: the edge asks ``output_held()`` then

    def _hold_output(self, commit) -> None:
        """A durable declare or delete in this read journaled a line: everything written to
        this connection from now on (declare-ok first) waits until that line is durable."""
        self.journal_hold = self.held_until = commit.journal_gen
        commit.wait(self)

    def output_held(self) -> bool:
        """Must the edge keep this connection's output back for now?"""
        if self.deferred:
            return True
        return bool(self.journal_hold) and self.journal_hold > self.broker.commit.synced_gen

    def flush_confirms(self) -> None:
        """The commit path made generations durable: release the output if ours is."""
        commit = self.broker.commit
        if self.journal_hold and self.journal_hold <= commit.synced_gen:
            self.journal_hold = 0
            self.held_until = self.deferred
            self.io.wake(self)
        elif self.journal_hold:
            commit.wait(self)

    def defer(self) -> "Deferred":
        """A reply another node gives (clustering: basic.get, queue.declare's counts, purge
        and delete of a queue led elsewhere). Its place in the output is kept here, and
        everything written after it waits until ``Deferred.reply`` fills it in, so the
        client hears every frame in the order it asked."""
        slot = Deferred(self)
        self.out.append(slot.chunk)
        self.deferred += 1
        self.held_until = self.journal_hold or self.deferred
        return slot

    def nack_generations(self, lo: int, hi: int) -> None:
        """Writing or syncing failed: if the journal line our client waits for was in it, the
        declare or delete it is waiting to hear about is not durable. Nothing held goes out;
        the connection is closed (541), as when the write itself fails."""
        if lo < self.journal_hold <= hi:
            self.out.clear()
            self.out_size = 0
            self._connection_error(errors.InternalError(
                "cannot write to the data directory: a definition change was not made durable"))

    # -- input --------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.received = True
        self.recv_oct += len(data)
        self.recv_cnt += 1
        commit = self.broker.commit
        journaled = commit.journal_gen if commit is not None else 0
        try:
            if self.state == HEADER:
                data = self._protocol_header(data)
                if not data:
                    return
            if self.state == CLOSED:
                return
            reader = self.reader
            frames = reader.feed(data)
            if frames:
                self._frames(frames)
                if self.state >= OPENING:
                    self.size_checked = False
            if reader.error is not None:
                exc, reader.error = reader.error, None
                self._lost_sync(exc)
            self.broker.run_dispatch()
            if self.confirms:
                for ch in self.confirms:
                    ch.flush_confirms()
                self.confirms.clear()
            if self.published:
                count, self.published = self.published, 0
                self.io.published(self, count)
            if commit is not None and commit.journal_gen != journaled:
                self._hold_output(commit)
        except Exception as exc:      # a bug of ours outside a frame handler (closing, requeue)
            self._internal_error(exc)

    def _internal_error(self, exc: Exception) -> None:
        """A bug of ours escaped: the connection ends with 541 (not a silent socket drop) and
        the broker carries on."""
        log.exception("internal error on connection %s", self.peer)
        try:
            self._connection_error(errors.InternalError(f"{type(exc).__name__}: {exc}"))
        except Exception:
            log.exception("cannot close connection %s cleanly", self.peer)
            self.state = CLOSED
            self.io.close(self)

    def _frames(self, frames: list) -> None:
        channels = self.channels
        for ftype, number, payload in frames:
            if self.size_checked and len(payload) > self.frame_limit > 0:
                self._lost_sync(errors.FrameError(
                    f"type {ftype}, frame payload {len(payload)} exceeds frame_max "
                    f"{self.frame_limit}"))
                return
            if self.state >= CLOSE_SENT:
                if ftype == FRAME_METHOD and number == 0 and self.state != CLOSED:
                    self._closing_method(payload)
                continue
            ch = channels.get(number) if number else None
            try:
                if ch is not None and ch.state == OPEN:
                    if ftype == FRAME_METHOD:
                        if len(payload) < 4:
                            raise errors.FrameError("method frame too short for class and "
                                                    "method ids")
                        index = (payload[0] << 24) | (payload[1] << 16) | (payload[2] << 8) | payload[3]
                        if ch.publishing is not None:
                            ch.content_interrupted()
                        if index == PUBLISH:
                            ch.on_publish(payload)
                            self.published += 1
                        elif index in ACKS:
                            ch.on_ack(payload, ACKS[index])
                        elif index in SERVER_CONTENT:
                            ch.on_content_method(payload)
                        else:
                            handlers.handle(ch, self._decode(payload))
                    elif ftype == FRAME_BODY:
                        ch.on_body(payload)
                    elif ftype == FRAME_HEADER:
                        ch.on_header(payload)
                    else:
                        self._other_frame(ftype, number, payload)
                    continue
                self._slow_frame(ftype, number, payload, ch)
            except errors.AMQPError as exc:
                if exc.class_id is None and ftype == FRAME_METHOD and len(payload) >= 4:
                    exc.class_id, exc.method_id = _class_method(payload)
                self._frame_failed(exc, number)
            except Exception as exc:  # a bug of ours must never take the broker down
                log.exception("internal error handling a frame from %s", self.peer)
                self._connection_error(errors.InternalError(f"{type(exc).__name__}: {exc}"))

    def _decode(self, payload: bytes, channel: int | None = None):
        """A method frame other than publish and acks (those take wire/fastpath.py): strict
        about lengths and left-over bytes, with argument tables that keep their wire types
        (wire/methods.py). ``channel`` 0 gets RabbitMQ's 541 for undecodable arguments."""
        return methods.decode_or_raise(payload, channel)

    def _other_frame(self, ftype: int, number: int, payload: bytes = b"") -> None:
        if ftype == FRAME_HEARTBEAT:
            if number:
                raise errors.UnexpectedFrame(_octets(ftype, payload))
            if payload:
                raise errors.FrameError("heartbeat frame with a payload")
            return
        raise errors.FrameError(_octets(ftype, payload) + ": unknown_frame")

    def _slow_frame(self, ftype: int, number: int, payload: bytes, ch) -> None:
        """Everything but traffic on an open channel: handshake, channel 0, closing channels."""
        if ch is not None and ch.state == CLOSING:
            self._closing_channel_frame(ch, ftype, payload)
            return
        if ftype != FRAME_METHOD:
            if ftype in (FRAME_HEADER, FRAME_BODY):
                if number and ch is None and self.state == RUNNING:
                    raise errors.ChannelErrorConn("expected 'channel.open'")
                raise errors.UnexpectedFrame(_octets(ftype, payload))
            self._other_frame(ftype, number, payload)
            return
        method = self._decode(payload, number)
        if number == 0:
            self._connection_method(method)
            return
        if self.state != RUNNING:
            raise errors.ChannelErrorConn(f"channel {number} used before connection.open",
                                          *class_method(method))
        if ch is None:
            if isinstance(method, C.Channel.Open):
                self._open_channel(number)
                return
            raise errors.ChannelErrorConn("expected 'channel.open'", *class_method(method))

    def _closing_channel_frame(self, ch: Channel, ftype: int, payload: bytes) -> None:
        """We closed this channel and wait for its close-ok: its methods are dropped, but its
        content frames must still come in order (RabbitMQ still assembles them: a stray body
        frame is 505), and a second channel.open is an error."""
        if ftype == FRAME_HEADER:
            ch.on_header(payload)
        elif ftype == FRAME_BODY:
            ch.on_body(payload)
        elif ftype != FRAME_METHOD:
            self._other_frame(ftype, ch.number, payload)
        elif len(payload) >= 4 and _class_method(payload) == (60, 40):
            if ch.publishing is not None:
                ch.content_interrupted()
            ch.discard_content()
        else:
            if ch.publishing is not None:
                ch.content_interrupted()
            try:
                method = self._decode(payload)
            except errors.AMQPError:
                return
            if isinstance(method, C.Channel.Open):
                raise errors.ChannelErrorConn("second 'channel.open' seen", 20, 10)
            if isinstance(method, C.Channel.CloseOk):
                del self.channels[ch.number]
            elif isinstance(method, C.Channel.Close):
                self.send_method(ch.number, C.Channel.CloseOk())

    def _open_channel(self, number: int) -> None:
        # As in RabbitMQ, channel_max bounds how many channels are open, not their numbers.
        if self.channel_max and len(self.channels) >= self.channel_max:
            raise errors.NotAllowed(
                f"number of channels opened ({len(self.channels)}) has reached the "
                f"negotiated channel_max ({self.channel_max})", 0, 0)
        limit = self.user_record.max_channels if self.user_record is not None else None
        if limit is not None and self.access.user_channels(self.user) >= limit:
            raise errors.NotAllowed(
                f"number of channels opened for user '{self.user}' has reached the maximum "
                f"allowed user limit of ({limit})", 0, 0)
        self.channels[number] = Channel(self, number)
        self.broker.counters.channels_opened += 1
        self.send_method(number, C.Channel.OpenOk())

    def close_channel(self, ch: Channel, client_initiated: bool) -> None:
        """Confirms that are due go out before the close-ok, as RabbitMQ sends them; the
        others are never sent (nothing may reach a channel number after its close-ok, which
        the client may already have reused)."""
        ch.flush_confirms()
        ch.cleanup()
        ch.state = CLOSING
        if client_initiated:
            del self.channels[ch.number]
            self.send_method(ch.number, C.Channel.CloseOk())

    def authorize(self, permission: str, kind: str, name: str) -> None:
        """Check the user's configure/write/read permission on a resource; raise
        AccessRefused (403) when refused. Every method handler calls this the way RabbitMQ's
        permission table says. Results are cached per connection until access control says
        the user's permissions changed (``permissions_changed``); a grant of ``.*`` needs no
        lookup at all."""
        if self._everything.get(permission):
            return
        key = (permission, kind, name)
        allowed = self._authz.get(key)
        if allowed is None:
            grant = self.grant
            if kind == "exchange" and not name:
                name = "amq.default"       # as RabbitMQ names the default exchange here
            allowed = grant is not None and grant.allows(permission, name)
            if len(self._authz) >= 4096:   # names made up per call must not grow it forever
                self._authz.clear()
            self._authz[key] = allowed
        if not allowed:
            if kind == "exchange" and not name:
                name = "amq.default"
            raise errors.AccessRefused(
                f"access to {kind} '{name}' in vhost '{self.vhost.name}' refused for user "
                f"'{self.user}'")

    def permissions_changed(self) -> None:
        """Access control changed this user (permissions granted, revoked, the user deleted
        or edited): forget every cached decision, so the next operation is checked against
        what is in force now (LavinMQ does the same; RabbitMQ clears its channels'
        permission caches)."""
        access = self.access
        self.grant = grant = access.grant(self.user, self.vhost.name)
        self._authz.clear()
        self._everything = ({p: grant.allows_everything(p) for p in ("configure", "write", "read")}
                            if grant is not None else {})
        for ch in self.channels.values():
            ch.write_checked = False
        record = access.user(self.user)
        self.user_record = record if record is not None else self.user_record
        self.publish_rate = record.max_publish_rate if record is not None else 0.0

    def confirm_due(self, ch: Channel) -> None:
        self.confirms[ch] = None

    # -- errors -------------------------------------------------------------------------------
    def _frame_failed(self, exc: errors.AMQPError, number: int) -> None:
        ch = self.channels.get(number) if number else None
        if exc.connection_level or ch is None or ch.state != OPEN:
            self._connection_error(exc)
            return
        log.warning("channel error on connection %s, channel %d: %s caused %d %s",
                    self.describe(), number, method_name(exc.class_id, exc.method_id),
                    exc.code, exc.reply_text)
        ch.cleanup()
        ch.state = CLOSING
        self.send_method(number, C.Channel.Close(reply_code=exc.code, reply_text=exc.reply_text,
                                                 class_id=exc.class_id or 0,
                                                 method_id=exc.method_id or 0))

    def _connection_error(self, exc: errors.AMQPError) -> None:
        if self.state < CLOSE_SENT:
            log.warning("connection error on %s: %s caused %d %s; closing the connection",
                        self.describe(), method_name(exc.class_id, exc.method_id), exc.code,
                        exc.reply_text)
        self.close(exc.code, exc.reply_text, exc.class_id or 0, exc.method_id or 0)

    # -- resource alarms ----------------------------------------------------------------------
    def block(self, reason: str) -> None:
        """A resource alarm stops reading from this publishing connection (the I/O edge does
        that): tell the client why, if it asked to be told."""
        if not self.blocked_sent and self.state == RUNNING \
                and self.capabilities.get("connection.blocked"):
            self.send_method(0, C.Connection.Blocked(reason=reason))
            self.blocked_sent = True

    def unblock(self) -> None:
        if self.blocked_sent:
            self.blocked_sent = False
            if self.state == RUNNING:
                self.send_method(0, C.Connection.Unblocked())

    def close(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        """Server-initiated close: send connection.close and wait for close-ok, as long as
        RabbitMQ does (the I/O edge drops the socket when the wait is over). Unacked messages
        are requeued right away."""
        if self.state >= CLOSE_SENT:
            return
        self.close_reason = f"closed by the broker: {code} {text}"
        wait = self._close_wait()
        self.state = CLOSE_SENT
        self._release()
        self.send_method(0, C.Connection.Close(reply_code=code, reply_text=errors.shorten(text),
                                               class_id=class_id, method_id=method_id))
        self.io.linger(self, wait)

    def _close_wait(self) -> float:
        """How long a closing peer gets: min(heartbeat, 30 s) once tuned, 3 s before."""
        if self.state < OPENING:
            return self.config.limits.close_timeout
        return min(self.heartbeat, CLOSE_WAIT_MAX) if self.heartbeat else CLOSE_WAIT_MAX

    def _lost_sync(self, exc: errors.AMQPError) -> None:
        """A framing error that leaves the byte stream unreadable (bad frame-end octet, frame
        too large): send connection.close, read nothing more (not even close-ok), and drop the
        socket after 3 s, as RabbitMQ does."""
        self._connection_error(exc)
        self.state = CLOSED
        self.io.linger(self, self.config.limits.close_timeout, reading=False)

    def _closing_method(self, payload: bytes) -> None:
        """Channel 0 while closing (CLOSE_SENT) or closed (ENDED): close-ok means "drop the
        socket now"; a connection.close is answered with close-ok. Everything else is dropped."""
        try:
            method = self._decode(payload, 0)
        except errors.AMQPError:
            return
        if isinstance(method, C.Connection.CloseOk):
            self._shutdown()
        elif isinstance(method, C.Connection.Close):
            self.send_method(0, C.Connection.CloseOk())
            if self.state == CLOSE_SENT:
                self._shutdown()

    def _client_closed(self, method) -> None:
        """Everything the client sent before its close has been handled (frames are handled
        in order). Answer close-ok, then leave the socket to the client: closing it ourselves
        while it still flushes publishes makes its writes fail (amqplib: 'write EPIPE'). As in
        RabbitMQ, what still comes is read and dropped until the client closes, for at most
        min(heartbeat, 30 s)."""
        if method.reply_code and method.reply_code != 200:
            self.close_reason = f"closed by the client: {method.reply_code} {method.reply_text}"
        else:
            self.close_reason = "closed by the client"
        wait = self._close_wait()
        for ch in self.channels.values():
            ch.flush_confirms()        # due confirms before the close-ok, none after
        self._release()
        self.state = ENDED
        self.send_method(0, C.Connection.CloseOk())
        self.io.linger(self, wait)

    def _shutdown(self) -> None:
        self._release()
        self.state = CLOSED
        self.io.close(self)

    def connection_lost(self) -> None:
        """The transport is gone (clean or not): requeue what was in flight, and log the one
        line a closed connection gets (if it ever got as far as connection.open)."""
        try:
            self._release()
        except Exception:            # a bug of ours must not leave the edge half torn down
            log.exception("internal error releasing connection %s", self.peer)
        self.state = CLOSED
        if self.vhost is not None and not self.close_logged:
            self.close_logged = True
            product = _text(self.client_properties.get("product")) or "?"
            version = (_text(self.client_properties.get("version"))
                       or _text(self.client_properties.get("product_version")) or "?")
            log.info("connection %s closed: user '%s' vhost '%s' client %s %s (%s)", self.peer,
                     self.user, self.vhost.name, product, version,
                     self.close_reason or "connection lost")

    def describe(self) -> str:
        """The client as an operator needs it in a log line: address, user, vhost, client
        library (product, version, platform) and the connection name the client gave."""
        parts = [self.peer]
        if self.user is not None:
            parts.append(f"user '{self.user}'")
        if self.vhost is not None:
            parts.append(f"vhost '{self.vhost.name}'")
        if self.client_properties:
            parts.append("client " + client_label(self.client_properties))
        return "(" + ", ".join(parts) + ")" if len(parts) > 1 else parts[0]

    def _release(self) -> None:
        opened = self.broker.connections
        if self in opened:
            opened.discard(self)
            self.broker.counters.connections_closed += 1
        if self.counted:
            self.counted = False
            self.access.closed(self, self.user, self.vhost.name)
        for ch in list(self.channels.values()):
            ch.cleanup()
        self.channels.clear()
        for q in list(self.exclusive_queues):
            q.vhost.delete_queue(q)
        self.exclusive_queues.clear()
        self.broker.run_dispatch()

    # -- heartbeats ---------------------------------------------------------------------------
    def heartbeat_tick(self) -> bool:
        """Called every heartbeat/2 seconds. Returns False when the peer has been silent for
        two heartbeat intervals: the caller then drops the TCP connection (RabbitMQ does not
        send connection.close in that case)."""
        if self.received:
            self.received = False
            self.silent_ticks = 0
        else:
            self.silent_ticks += 1
            if self.silent_ticks >= 4:
                log.warning("missed heartbeats from %s, closing", self.peer)
                self.connection_lost()
                return False
        if not self.sent:
            self.write(HEARTBEAT_FRAME)
        self.sent = False
        return True

    # -- connection class methods -------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.state == RUNNING

    @property
    def handshake_done(self) -> bool:
        return self.state >= RUNNING


def method_name(class_id, method_id) -> str:
    """``queue.declare`` for class 50 method 10; 'a frame' when no method was involved."""
    if not class_id:
        return "a frame"
    cls = C.INDEX_MAPPING.get((class_id << 16) | (method_id or 0))
    return cls.name.lower() if cls is not None else f"method {class_id}.{method_id}"


def _octets(ftype: int, payload: bytes) -> str:
    """RabbitMQ's description of a frame it did not expect: its type and every octet of its
    payload, as Erlang prints a binary."""
    if payload and all(32 <= b < 127 for b in payload):
        text = payload.decode().replace("\\", "\\\\").replace('"', '\\"')
        return f'type {ftype}, all octets = <<"{text}">>'
    return f"type {ftype}, all octets = <<{','.join(map(str, payload))}>>"
