"""One asyncio Protocol per client socket: bytes in to the sans-IO Connection, its output out
in one write per loop turn, and the timers and flow-control pauses the core asks for."""
import asyncio
import logging

from ..amqp.connection import CLOSED, DETACHED, Connection

log = logging.getLogger("amqpd.server")

WRITE_HIGH_WATER = 4 << 20      # transport buffer above this pauses deliveries
# What one connection may feed us per event-loop turn. libuv keeps reading a busy socket up to
# 32 times per turn, so without a budget a fast publisher starves every consumer's acks; a short
# turn keeps consumers (whose rate is prefetch x turns) up with the publishers: 8 KiB (measured:
# s2, acks, 88k/s where 64 KiB reads gave 16k/s; s4, four 1 KiB publishers, fell to a third
# with reads of 80 publishes). A publisher in confirm mode cannot flood anyone: it waits for
# its confirms, so what it sends is bounded by its own window. Its reads hold about
# PUBLISHES_PER_TURN publishes: 8 KiB held only 7 of 1 KiB, and every turn costs its socket
# writes, wake-ups and file write whatever it carries (s3: 1 KiB persistent with confirms).
READ_SIZE = 8 << 10             # a connection's read, unless it publishes with confirms
READ_MAX = 128 << 10            # the most a confirming publisher's read may take
PUBLISHES_PER_TURN = 80


class AMQPProtocol(asyncio.BufferedProtocol):
    """Implements the core's I/O interface (``wake``, ``close``, ``linger``,
    ``start_heartbeat``, ``published``) for one socket."""

    def __init__(self, server, tls: bool = False):
        self.server = server
        self.tls = tls
        self.blocked = False          # a resource alarm stopped reading from this publisher
        self.rate_paused = False      # over the user's publish rate: reading resumes later
        self.holds = None             # {holder: reason or None}: see hold() (clustering)
        self.transport_paused = False
        self.loop = server.loop
        self.transport = None
        self.conn: Connection | None = None
        self.timers: list = []
        self.close_timer = None
        self.closing = False
        self.deaf = False             # a closing connection whose input is no longer read
        self.read_size = READ_SIZE    # this connection's budget (see PUBLISHES_PER_TURN)
        self.read_budget = READ_SIZE
        self.reading_paused = False
        self.last_read = 0

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple):
            peer, peer_ip = f"{peername[0]}:{peername[1]}", peername[0]
        else:
            peer, peer_ip = str(peername), None
        tls = None
        if self.tls:      # asyncio calls connection_made once the TLS handshake is done
            tls = {"peercert": transport.get_extra_info("peercert"),
                   "verified": self.server.tls_verifies}
        self.conn = Connection(self.server.broker, self, peer, peer_ip, tls)
        server = self.server
        limit = server.config.limits.max_connections
        if limit and len(server.protocols) >= 2 * limit:
            # Over the limit, clients hear 530 at connection.open; this far over, the socket
            # is dropped at once so a flood cannot exhaust file descriptors.
            log.warning("refusing connection from %s: %d sockets open (limit %d)", peer,
                        len(server.protocols), limit)
            self.conn.state = CLOSED
            self.conn.io = DETACHED
            transport.abort()
            return
        server.protocols.add(self)
        limit = self.server.config.limits.handshake_timeout
        if limit:
            self.timers.append(self.loop.call_later(limit, self._handshake_timeout))

    def get_buffer(self, sizehint: int):
        # One buffer for every connection of the loop: asyncio fills it and calls
        # buffer_updated at once, which copies the bytes out.
        return self.server.read_view[:self.read_size]

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.server.read_view[:nbytes]))

    def data_received(self, data: bytes) -> None:
        self.last_read = len(data)
        self.conn.data_received(data)
        self.read_budget -= len(data)
        if self.read_budget <= 0 and not self.reading_paused:
            # Yield to the other connections; read again on the next loop turn.
            self.reading_paused = True
            self._set_reading()
            self.loop.call_soon(self._resume_reading)

    def _resume_reading(self) -> None:
        self.read_budget = self.read_size
        self.reading_paused = False
        self._set_reading()

    def _set_reading(self) -> None:
        """Reading stops for any of: the per-turn budget, a resource alarm, a rate limit."""
        paused = self.reading_paused or self.blocked or self.rate_paused or self.deaf \
            or bool(self.holds)
        if self.transport is None:
            return
        if paused != self.transport_paused and not self.transport.is_closing():
            self.transport_paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _rate_resume(self) -> None:
        self.rate_paused = False
        self._set_reading()

    def set_blocked(self, blocked: bool, reason: str = "") -> None:
        if blocked == self.blocked:
            return
        self.blocked = blocked
        if blocked:
            self.conn.block(reason)
        elif not self._held_with_reason():
            self.conn.unblock()
        if self.transport is not None:
            self._set_reading()

    def hold(self, holder, reason: str | None = None) -> None:
        """Something other than this node's alarms stops reading from this publisher until
        ``release(holder)``: a cluster link to the leader of a queue it publishes to is over
        its watermark (no reason: the client is not told, as RabbitMQ's credit flow), or that
        leader has an alarm (``reason``: connection.blocked, as a local alarm)."""
        if self.holds is None:
            self.holds = {}
        self.holds[holder] = reason
        if reason:
            self.conn.block(reason)
        if self.transport is not None:
            self._set_reading()

    def release(self, holder) -> None:
        holds = self.holds
        if not holds or holder not in holds:
            return
        reason = holds.pop(holder)
        if reason and not self.blocked and not self._held_with_reason():
            self.conn.unblock()
        if self.transport is not None:
            self._set_reading()

    def _held_with_reason(self) -> bool:
        return bool(self.holds) and any(self.holds.values())

    def unpause(self) -> None:
        """Shutdown: read again whatever paused it, so close-ok gets through."""
        self.blocked = self.rate_paused = False
        self.holds = None
        if self.transport is not None:
            self._set_reading()

    def pause_writing(self) -> None:
        self.conn.set_writable(False)

    def resume_writing(self) -> None:
        self.conn.set_writable(True)

    def connection_lost(self, exc) -> None:
        server = self.server
        if self not in server.protocols:      # dropped at accept
            return
        server.protocols.discard(self)
        server.alarms.forget(self.conn)
        server.dirty.pop(self, None)
        for t in self.timers:
            t.cancel()
        if self.close_timer:
            self.close_timer.cancel()
        self.conn.connection_lost()
        # Break the reference cycles (core <-> edge, timers -> bound methods) so the closed
        # connection is freed at once by reference counting: full garbage collections are rare
        # (see gc_policy.py).
        self.conn.io = DETACHED
        self.timers = []
        self.close_timer = None
        self.transport = None
        server.closed_event()

    # -- the core's I/O interface -------------------------------------------------------------
    def wake(self, conn) -> None:
        self.server.mark_dirty(self)

    def close(self, conn) -> None:
        self.closing = True
        self.server.mark_dirty(self)

    def linger(self, conn, seconds: float, reading: bool = True) -> None:
        """The core is closing the connection: keep the socket at most ``seconds`` longer
        (still reading, unless ``reading`` is false), for the peer to answer or hang up."""
        if self.close_timer is not None:
            self.close_timer.cancel()
        self.close_timer = self.loop.call_later(seconds, self.abort)
        if not reading:
            self.deaf = True
            self._set_reading()

    def start_heartbeat(self, conn, interval: float) -> None:
        """Tune-ok agreed on a heartbeat: tick every interval/2 seconds."""
        self.timers.append(self.loop.call_later(interval / 2, self._heartbeat))

    def published(self, conn, count: int) -> None:
        """The read just handled held ``count`` publishes: alarms and rate limits apply, and
        a confirming publisher's next reads are sized to hold about PUBLISHES_PER_TURN."""
        if conn.confirming:
            size = self.last_read * PUBLISHES_PER_TURN // count
            self.read_size = READ_SIZE if size < READ_SIZE else min(size, READ_MAX)
        server = self.server
        if server.alarms.should_block(conn):
            self.set_blocked(True, server.alarms.block(conn))
        if server.publish_gate is not None:
            server.publish_gate(self)       # clustering: the links' flow control
        rate = conn.publish_rate
        if rate:
            pause = server.rates.charge(conn.user, rate, count, self.loop.time())
            if pause and not self.rate_paused:
                self.rate_paused = True
                self._set_reading()
                self.timers.append(self.loop.call_later(pause, self._rate_resume))

    # -- timers -------------------------------------------------------------------------------
    def _handshake_timeout(self) -> None:
        if not self.conn.handshake_done and self.transport and not self.transport.is_closing():
            log.warning("handshake timeout from %s", self.conn.peer)
            self.abort()

    def _heartbeat(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.transport_paused:
            # Not reading is our doing (alarm, rate limit): the peer is not silent. RabbitMQ
            # pauses its heartbeat monitor for blocked connections the same way.
            self.conn.received = True
        if not self.conn.heartbeat_tick():
            self.abort()
            return
        self.timers.append(self.loop.call_later(self.conn.heartbeat / 2, self._heartbeat))
        if len(self.timers) > 8:
            self.timers = self.timers[-2:]

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def flush(self) -> None:
        conn = self.conn
        if conn.held_until and conn.output_held():
            return          # a durable declare/delete is answered once it is on disk
        if conn.out and not self.transport.is_closing():
            self.transport.write(conn.take_output())
        elif conn.out:
            conn.take_output()
        if self.closing:
            self.transport.close()
        elif conn.starved:
            conn.resume_deliveries()
