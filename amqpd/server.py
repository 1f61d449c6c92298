"""The asyncio edge: listeners, one Protocol per socket, timers, output flushing, signals and
graceful shutdown. Everything below this module is sans-IO."""
import asyncio
import errno
import ipaddress
import logging
import signal
import socket
import ssl

from concurrent.futures import ThreadPoolExecutor

from . import alarms as alarms_mod
from . import definitions, gc_policy
from .amqp.connection import CLOSED, DETACHED, RUNNING, Connection
from .config import ConfigError

log = logging.getLogger("amqpd.server")

CLOSE_OK_TIMEOUT = 3.0          # how long a shutdown waits for clients to answer connection.close
WRITE_HIGH_WATER = 4 << 20      # transport buffer above this pauses deliveries
# Bytes one connection may feed us per event-loop turn. libuv keeps reading a busy socket up to
# 32 times per turn, so without a budget a fast publisher starves every consumer's acks; a small
# read buffer keeps one turn short, so consumers (whose rate is prefetch x turns) keep up.
READ_SIZE = 8 << 10     # measured: 8 KiB gives s2 (acks) 88k/s where 64 KiB gave 16k/s
READ_BUDGET = READ_SIZE


class AMQPProtocol(asyncio.BufferedProtocol):
    def __init__(self, server: "Server", tls: bool = False):
        self.server = server
        self.tls = tls
        self.blocked = False          # a resource alarm stopped reading from this publisher
        self.rate_paused = False      # over the user's publish rate: reading resumes later
        self.transport_paused = False
        self.loop = server.loop
        self.transport = None
        self.conn: Connection | None = None
        self.timers: list = []
        self.heartbeat_on = False
        self.close_timer = None
        self.closing = False
        self.deaf = False             # a closing connection whose input is no longer read
        self.read_budget = READ_BUDGET
        self.reading_paused = False
        self.rbuf = bytearray(READ_SIZE)
        self.rview = memoryview(self.rbuf)

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
            self._set_reading()
            self.loop.call_soon(self._resume_reading)
        if conn.has_published and self.server.alarms and not self.blocked:
            self.server.block(self)       # RabbitMQ blocks a connection when it publishes
        if conn.published:
            self._rate_limit()
        if conn.heartbeat and not self.heartbeat_on and conn.state >= RUNNING - 1:
            self.heartbeat_on = True
            self.timers.append(self.loop.call_later(conn.heartbeat / 2, self._heartbeat))

    def _resume_reading(self) -> None:
        self.read_budget = READ_BUDGET
        self.reading_paused = False
        self._set_reading()

    def _set_reading(self) -> None:
        """Reading stops for any of: the per-turn budget, a resource alarm, a rate limit."""
        paused = self.reading_paused or self.blocked or self.rate_paused or self.deaf
        if self.transport is None:
            return
        if paused != self.transport_paused and not self.transport.is_closing():
            self.transport_paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _rate_limit(self) -> None:
        """Per-user publish rate (messages/s): a token bucket shared by the user's
        connections, holding one second's worth; overdrawn, reading pauses until it refills."""
        conn = self.conn
        count, conn.published = conn.published, 0
        rate = conn.user_record.max_publish_rate
        now = self.loop.time()
        bucket = self.server.buckets.get(conn.user)
        if bucket is None:
            bucket = self.server.buckets[conn.user] = [float(max(rate, 1.0)), now]
        tokens = min(max(rate, 1.0), bucket[0] + (now - bucket[1]) * rate) - count
        bucket[0], bucket[1] = tokens, now
        if tokens < 0 and not self.rate_paused:
            self.rate_paused = True
            self._set_reading()
            self.timers.append(self.loop.call_later(-tokens / rate, self._rate_resume))

    def _rate_resume(self) -> None:
        self.rate_paused = False
        self._set_reading()

    def set_blocked(self, blocked: bool, reason: str = "") -> None:
        if blocked == self.blocked:
            return
        self.blocked = blocked
        if blocked:
            self.conn.block(reason)
        else:
            self.conn.unblock()
        if self.transport is not None:
            self._set_reading()

    def pause_writing(self) -> None:
        self.conn.set_writable(False)

    def resume_writing(self) -> None:
        self.conn.set_writable(True)

    def connection_lost(self, exc) -> None:
        if self not in self.server.protocols:      # dropped at accept
            return
        self.server.protocols.discard(self)
        self.server.blocked.discard(self)
        self.server.dirty.pop(self, None)
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
        self.server.closed_event()

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

    # -- timers -------------------------------------------------------------------------------
    def _handshake_timeout(self) -> None:
        if self.conn.state < RUNNING and self.transport and not self.transport.is_closing():
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
        if conn.out and not self.transport.is_closing():
            self.transport.write(conn.take_output())
        elif conn.out:
            conn.take_output()
        if self.closing:
            self.transport.close()
        elif conn.starved:
            conn.resume_deliveries()


class StartError(Exception):
    """The configuration is sound but the broker cannot start now (its port is taken)."""


class Server:
    def __init__(self, config):
        self.config = config
        # Set by start(): the data dir (lock), users/vhosts/permissions, recovery.
        self.store = self.access = self.broker = None
        self.monitor = None
        self.alarms: set = set()          # resource alarms in force: "memory", "disk"
        self.blocked: set = set()         # protocols not read from because of them
        self.buckets: dict = {}           # user -> [tokens, time] for publish rate limits
        self.check_timer = None
        self.tls_listener = None
        self.tls_port = None
        self.tls_verifies = False
        self.fsync_worker = ThreadPoolExecutor(1, thread_name_prefix="amqpd-fsync")
        self.syncing = False
        self.commit_scheduled = False
        self.disk_check_at = float("inf")   # store.written at which to measure the disk again
        self.loop = None
        self.protocols: set = set()
        self.dirty: dict = {}
        self.flush_scheduled = False
        self.listener = None
        self.port = None
        self._all_closed = None

    async def start(self) -> None:
        """In the order that makes a failed start quick and leave nothing on disk: the checks
        that create nothing (TLS files, definitions files, the data dir), then the ports are
        bound (not yet listening), then the data dir is taken and recovered, and only then do
        the listeners accept clients."""
        self.loop = asyncio.get_running_loop()
        config = self.config
        listen = config.listeners.amqp
        tls = config.listeners.amqps
        context = tls_context(tls) if tls is not None else None
        docs = definitions.prepare(config)
        try:
            if listen is not None:
                self.listener = await self._bind("amqp", listen, lambda: AMQPProtocol(self))
                self.port = self.listener.sockets[0].getsockname()[1]
            if tls is not None:
                self.tls_verifies = context.verify_mode != ssl.CERT_NONE
                self.tls_listener = await self._bind(
                    "amqps", tls, lambda: AMQPProtocol(self, tls=True), ssl=context,
                    ssl_handshake_timeout=config.limits.handshake_timeout or None)
                self.tls_port = self.tls_listener.sockets[0].getsockname()[1]
            self.store, self.access, self.broker = definitions.open_broker(config, docs=docs)
            self.store.on_dirty = self.schedule_commit
            self.monitor = alarms_mod.ResourceMonitor(config.resources, self.store.data_dir)
            self.broker.set_scheduler(self.loop)   # timers (TTL, expiry, delays) run on the loop
            for name, listener in (("amqp", self.listener), ("amqps", self.tls_listener)):
                if listener is not None:
                    try:
                        await listener.start_serving()
                    except OSError as exc:     # another process bound the port meanwhile
                        raise listen_error(name, getattr(config.listeners, name), exc) \
                            from None
        except BaseException:
            await self._close_listeners()
            if self.store is not None:
                self.store.close()
            raise
        if listen is not None:
            log.info("amqpd listening on amqp://%s:%d", listen.host, self.port)
        if tls is not None:
            log.info("amqpd listening on amqps://%s:%d", tls.host, self.tls_port)
        if config.resources.check_interval:
            log.info("resource limits: %s", self.monitor.describe())
            self._check_resources()

    async def _bind(self, name: str, listener, factory, **kwargs):
        """The listening socket bound but not accepting yet (clients are refused until
        start_serving, as before the broker existed)."""
        try:
            return await self.loop.create_server(
                factory, listener.host, listener.port, reuse_address=True, backlog=1024,
                start_serving=False, **kwargs)
        except OSError as exc:
            raise listen_error(name, listener, exc) from None

    async def _close_listeners(self) -> None:
        for listener in (self.listener, self.tls_listener):
            if listener is not None:
                listener.close()
                await listener.wait_closed()

    # -- resource alarms ----------------------------------------------------------------------
    def _check_resources(self) -> None:
        self.set_alarms(self.monitor.check())
        self._arm_disk_check()
        self.check_timer = self.loop.call_later(self.config.resources.check_interval,
                                                self._check_resources)

    def _arm_disk_check(self) -> None:
        """Measure again as soon as the store has written what the disk had left above its
        limit, rather than at the next timer tick: a fast publisher cannot fill the disk
        between two ticks."""
        headroom = self.monitor.disk_headroom()
        self.disk_check_at = float("inf") if headroom is None else self.store.written + headroom

    def _check_disk_now(self) -> None:
        self.set_alarms(self.monitor.check())
        self._arm_disk_check()

    def set_alarms(self, alarms: set) -> None:
        """Raise or clear resource alarms. As in RabbitMQ, a connection is blocked when it
        next publishes (``has_published`` is re-armed here and checked after each read), so
        connections that only consume keep going; all are unblocked when every alarm clears."""
        alarms = set(alarms)
        before, self.alarms = self.alarms, alarms
        if alarms and not before:
            for p in self.protocols:
                p.conn.has_published = False
        elif before and not alarms:
            for p in list(self.blocked):
                p.set_blocked(False)
            self.blocked.clear()
            self.flush()

    def block(self, protocol: AMQPProtocol) -> None:
        if protocol.conn.state != RUNNING:     # a closing connection must still be read
            return
        self.blocked.add(protocol)
        protocol.set_blocked(True, alarms_mod.blocked_reason(self.alarms))

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
        writes made while an fsync runs are covered by the next one). A failed write or fsync
        nacks the publishes it held (Store._failed) and the broker carries on."""
        self.commit_scheduled = False
        store = self.store
        if not store.write_pending():
            return
        if store.written >= self.disk_check_at:
            self._check_disk_now()
        mode = store.fsync_mode
        if mode == "never":
            self.broker.on_synced()
        elif mode == "always":
            job = store.begin_sync()
            if job is not None:
                try:
                    store.sync(job)
                except OSError as exc:
                    store.sync_failed(job, exc)
                else:
                    store.synced(job)
            self.broker.on_synced()
        elif not self.syncing:
            self._start_sync()

    def _start_sync(self) -> None:
        job = self.store.begin_sync()
        if job is None:
            return
        self.syncing = True
        future = self.loop.run_in_executor(self.fsync_worker, self.store.sync, job)
        future.add_done_callback(lambda f: self._sync_done(job, f))

    def _sync_done(self, job, future) -> None:
        self.syncing = False
        if future.cancelled():            # the loop is shutting down; Store.close syncs
            return
        exc = future.exception()
        if exc is None:
            self.store.synced(job)
        else:
            if not isinstance(exc, OSError):
                log.error("fsync worker failed", exc_info=exc)
                exc = OSError(str(exc))
            self.store.sync_failed(job, exc)
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
        if self.tls_listener is not None:
            self.tls_listener.close()
        if self.check_timer is not None:
            self.check_timer.cancel()
        for p in list(self.protocols):       # read the close-ok of blocked publishers too
            p.blocked = p.rate_paused = False
            if p.transport is not None:
                p._set_reading()
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
        if self.tls_listener is not None:
            await self.tls_listener.wait_closed()
        if self.broker is not None:
            self.broker.finish_background()     # a purge in progress is written out in full
        self.fsync_worker.shutdown(wait=True)
        if self.store is not None:
            self.store.close()


def tls_context(tls) -> ssl.SSLContext:
    """The AMQPS listener's context: TLS 1.2 or later; client certificates requested when
    verify_peer is on (required with fail_if_no_peer_cert), checked against cafile.

    A file that will not do is a ConfigError naming its key and path, and why: missing,
    unreadable, no PEM certificate or key in it, an encrypted key, a key that is not the
    certificate's."""
    for key in ("certfile", "keyfile", "cafile"):
        if getattr(tls, key):
            _readable(key, getattr(tls, key))
    _has_certificate("certfile", tls.certfile)
    key_in = "keyfile" if tls.keyfile else "certfile"
    key_path = tls.keyfile or tls.certfile
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.certfile, tls.keyfile, password=_no_password)
    except _EncryptedKey:
        raise ConfigError(f"listeners.amqps.{key_in}: the private key in {key_path} is "
                          f"encrypted; amqpd needs it unencrypted") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"listeners.amqps.{key_in}: the private key in {key_path} does "
                              f"not belong to the certificate in {tls.certfile}") from None
        hint = "" if tls.keyfile else " (set listeners.amqps.keyfile if the key is elsewhere)"
        raise ConfigError(f"listeners.amqps.{key_in}: no PEM private key in {key_path}"
                          f"{hint}") from None
    if tls.cafile:
        _has_certificate("cafile", tls.cafile)
        context.load_verify_locations(tls.cafile)
    if tls.fail_if_no_peer_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.verify_peer:
        context.verify_mode = ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


class _EncryptedKey(Exception):
    pass


def _no_password():
    """Asked for a key's password: without this OpenSSL would prompt on the terminal."""
    raise _EncryptedKey


def _readable(key: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise ConfigError(f"listeners.amqps.{key}: {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"listeners.amqps.{key}: {path} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"listeners.amqps.{key}: {path} is not readable "
                          f"({exc.strerror})") from None


def _has_certificate(key: str, path: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(path)
    except ssl.SSLError as exc:
        why = "" if exc.reason == "NO_CERTIFICATE_OR_CRL_FOUND" else f" ({exc.reason or exc})"
        raise ConfigError(f"listeners.amqps.{key}: {path} holds no PEM certificate{why}") \
            from None


def listen_error(name: str, listener, exc: OSError) -> Exception:
    """A failed bind as the operator needs to read it: ConfigError when the configuration
    must change (an address that does not resolve or is not this machine's, a port that needs
    privileges), StartError when the port is in use."""
    where = f"{listener.host}:{listener.port}"
    if isinstance(exc, socket.gaierror):
        return ConfigError(f"listeners.{name}.host: {listener.host!r} does not resolve "
                           f"({exc.strerror})")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"listeners.{name}.host: {listener.host!r} is not an address of "
                           f"this machine")
    if exc.errno == errno.EACCES:
        return ConfigError(f"listeners.{name}.port: cannot listen on {where}: permission "
                           f"denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)")
    if exc.errno == errno.EADDRINUSE:
        return StartError(f"listeners.{name}: {where} is already in use")
    return ConfigError(f"listeners.{name}: cannot listen on {where}: "
                       f"{exc.strerror or exc}")


def reaches_loopback(listener) -> bool:
    """Whether clients on this machine can connect from a loopback address (127.0.0.1, ::1):
    the listener is on one, or on every address."""
    try:
        infos = socket.getaddrinfo(listener.host or None, listener.port,
                                   type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False
    for _family, _kind, _proto, _name, address in infos:
        ip = ipaddress.ip_address(address[0].split("%")[0])
        if ip.is_loopback or ip.is_unspecified:
            return True
    return False


def check_listener(name: str, listener) -> str | None:
    """What binding at start-up would say, without listening or keeping the port: raises
    ConfigError as ``listen_error``; returns a note when the port is in use (by the running
    broker, most likely)."""
    try:
        infos = socket.getaddrinfo(listener.host or None, listener.port,
                                   type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise listen_error(name, listener, exc) from None
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                error = listen_error(name, listener, exc)
                if isinstance(error, StartError):
                    return f"{error} (by the running broker?): start-up fails while it is"
                raise error from None
    return None


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
    gc_policy.install(loop)
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
