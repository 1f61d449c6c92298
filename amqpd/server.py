"""The asyncio edge: listeners, one Protocol per socket, timers, output flushing, signals and
graceful shutdown. Everything below this module is sans-IO."""
import asyncio
import logging
import signal

from concurrent.futures import ThreadPoolExecutor

from .amqp.connection import CLOSED, CLOSING_, RUNNING, Connection
from .broker.broker import Broker
from .store.store import Store

log = logging.getLogger("amqpd.server")

CLOSE_OK_TIMEOUT = 3.0          # how long a closing peer gets to answer connection.close
WRITE_HIGH_WATER = 4 << 20      # transport buffer above this pauses deliveries
# Bytes one connection may feed us per event-loop turn. libuv keeps reading a busy socket up to
# 32 times per turn, so without a budget a fast publisher starves every consumer's acks; a small
# read buffer keeps one turn short, so consumers (whose rate is prefetch x turns) keep up.
READ_SIZE = 8 << 10     # measured: 8 KiB gives s2 (acks) 88k/s where 64 KiB gave 16k/s
READ_BUDGET = READ_SIZE


class AMQPProtocol(asyncio.BufferedProtocol):
    def __init__(self, server: "Server"):
        self.server = server
        self.loop = server.loop
        self.transport = None
        self.conn: Connection | None = None
        self.timers: list = []
        self.heartbeat_on = False
        self.close_timer = None
        self.closing = False
        self.read_budget = READ_BUDGET
        self.reading_paused = False
        self.rbuf = bytearray(READ_SIZE)
        self.rview = memoryview(self.rbuf)

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.conn = Connection(self.server.broker, self, peer)
        self.server.protocols.add(self)
        limit = self.server.config.limits.handshake_timeout
        if limit:
            self.timers.append(self.loop.call_later(limit, self._handshake_timeout))

    def get_buffer(self, sizehint: int):
        return self.rview

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.rview[:nbytes]))

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.data_received(data)
        self.read_budget -= len(data)
        if self.read_budget <= 0 and not self.reading_paused:
            # Yield to the other connections; read again on the next loop turn.
            self.reading_paused = True
            self.transport.pause_reading()
            self.loop.call_soon(self._resume_reading)
        if conn.heartbeat and not self.heartbeat_on and conn.state >= RUNNING - 1:
            self.heartbeat_on = True
            self.timers.append(self.loop.call_later(conn.heartbeat / 2, self._heartbeat))
        if conn.state == CLOSING_ and self.close_timer is None:
            self.close_timer = self.loop.call_later(CLOSE_OK_TIMEOUT, self.abort)

    def _resume_reading(self) -> None:
        self.read_budget = READ_BUDGET
        self.reading_paused = False
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.conn.set_writable(False)

    def resume_writing(self) -> None:
        self.conn.set_writable(True)

    def connection_lost(self, exc) -> None:
        self.server.protocols.discard(self)
        self.server.dirty.pop(self, None)
        for t in self.timers:
            t.cancel()
        if self.close_timer:
            self.close_timer.cancel()
        self.conn.connection_lost()
        self.server.closed_event()

    # -- the core's I/O interface -------------------------------------------------------------
    def wake(self, conn) -> None:
        self.server.mark_dirty(self)

    def close(self, conn) -> None:
        self.closing = True
        self.server.mark_dirty(self)

    # -- timers -------------------------------------------------------------------------------
    def _handshake_timeout(self) -> None:
        if self.conn.state < RUNNING and self.transport and not self.transport.is_closing():
            log.warning("handshake timeout from %s", self.conn.peer)
            self.abort()

    def _heartbeat(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
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
        if conn.out and not self.transport.is_closing():
            self.transport.write(conn.take_output())
        elif conn.out:
            conn.take_output()
        if self.closing:
            self.transport.close()
        elif conn.starved:
            conn.resume_deliveries()


class Server:
    def __init__(self, config):
        self.config = config
        self.store = Store(config.storage.data_dir, config.storage.fsync)
        self.broker = Broker(config, self.store)
        self.broker.recover()
        self.store.on_dirty = self.schedule_commit
        self.fsync_worker = ThreadPoolExecutor(1, thread_name_prefix="amqpd-fsync")
        self.syncing = False
        self.commit_scheduled = False
        self.loop = None
        self.protocols: set = set()
        self.dirty: dict = {}
        self.flush_scheduled = False
        self.listener = None
        self.port = None
        self._all_closed = None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        listen = self.config.listeners.amqp
        self.listener = await self.loop.create_server(
            lambda: AMQPProtocol(self), listen.host, listen.port, reuse_address=True,
            backlog=1024)
        self.port = self.listener.sockets[0].getsockname()[1]
        self.broker.set_scheduler(self.loop)       # timers (TTL, expiry, delays) run on the loop
        log.info("amqpd listening on amqp://%s:%d", listen.host, self.port)

    def mark_dirty(self, protocol: AMQPProtocol) -> None:
        self.dirty[protocol] = None
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """One write per dirty connection per loop turn."""
        self.flush_scheduled = False
        while self.dirty:
            protocols = list(self.dirty)
            self.dirty.clear()
            for p in protocols:
                p.flush()
            if self.dirty:          # a resumed delivery refilled someone: next turn
                if not self.flush_scheduled:
                    self.flush_scheduled = True
                    self.loop.call_soon(self.flush)
                return

    # -- group commit -------------------------------------------------------------------------
    def schedule_commit(self) -> None:
        if not self.commit_scheduled and self.loop is not None:
            self.commit_scheduled = True
            self.loop.call_soon(self.commit)

    def commit(self) -> None:
        """Once per loop turn: hand buffered records to the OS, then fsync them (group commit:
        writes made while an fsync runs are covered by the next one)."""
        self.commit_scheduled = False
        store = self.store
        if not store.write_pending():
            return
        mode = store.fsync_mode
        if mode == "never":
            self.broker.on_synced()
        elif mode == "always":
            job = store.begin_sync()
            if job is not None:
                Store.sync(job[1])
                store.synced(job[0])
            self.broker.on_synced()
        elif not self.syncing:
            self._start_sync()

    def _start_sync(self) -> None:
        job = self.store.begin_sync()
        if job is None:
            return
        gen, fds = job
        self.syncing = True
        future = self.loop.run_in_executor(self.fsync_worker, Store.sync, fds)
        future.add_done_callback(lambda f: self._sync_done(gen, f))

    def _sync_done(self, gen: int, future) -> None:
        self.syncing = False
        if future.cancelled() or future.exception() is not None:
            # Without a successful fsync nothing may be confirmed; stop rather than lie.
            log.critical("fsync failed: %s; stopping", future.exception())
            self.loop.call_soon(self.loop.stop)
            return
        self.store.synced(gen)
        self.broker.on_synced()
        if self.store.gen > self.store.synced_gen:
            self._start_sync()

    def closed_event(self) -> None:
        if self._all_closed is not None and not self.protocols:
            self._all_closed.set()

    async def stop(self, reason: str = "shutdown") -> None:
        """Stop accepting, close every client with 320 CONNECTION_FORCED, wait briefly."""
        if self.listener is not None:
            self.listener.close()
        self._all_closed = asyncio.Event()
        for p in list(self.protocols):
            if p.conn.state == RUNNING:
                p.conn.close(320, f"CONNECTION_FORCED - broker forced connection closure "
                                  f"with reason '{reason}'")
            else:
                p.close(p.conn)
        self.flush()
        if self.protocols:
            try:
                await asyncio.wait_for(self._all_closed.wait(), CLOSE_OK_TIMEOUT)
            except asyncio.TimeoutError:
                pass
        for p in list(self.protocols):
            p.abort()
        if self.listener is not None:
            await self.listener.wait_closed()
        self.fsync_worker.shutdown(wait=True)
        self.store.close()


async def serve(config, ready=None) -> None:
    """Run until SIGINT/SIGTERM."""
    server = Server(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    if ready is not None:
        ready(server)
    await stop.wait()
    log.info("shutting down")
    await server.stop()


def run(config) -> None:
    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is not None:
        uvloop.run(serve(config))
    else:
        asyncio.run(serve(config))
