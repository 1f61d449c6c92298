"""The listeners and what runs on the event loop for every connection at once: one write per
dirty connection per turn, the resource-alarm timer, and the fsync worker threads the commit
path (store/commit.py) hands its jobs to. The node (node.py) composes it with the broker."""
import asyncio
import logging
import queue
import ssl
import threading

from ..amqp.connection import RUNNING
from ..amqp.flow import PublishRates, ResourceAlarms
from . import resources
from .clock import LoopClock
from .listeners import listen_error, tls_context
from .protocol import READ_MAX, AMQPProtocol

log = logging.getLogger("amqpd.server")

# fsync jobs running at once (store/commit.py: a job may start while an earlier one runs, so a
# write made just after an fsync began need not wait for it to end first)
SYNCS_IN_FLIGHT = 2


class Server:
    def __init__(self, config):
        self.config = config
        self.loop = None
        self.broker = self.store = self.commit = None     # attach()
        self.monitor = None
        self.alarms = ResourceAlarms()
        # clustering sets it: publish_gate(protocol) after each read that held publishes
        # (AMQPProtocol.hold/release), so forwarded publishes stay bounded
        self.publish_gate = None
        self.rates = PublishRates()
        self.check_timer = None
        self.listener = self.tls_listener = None
        self.port = self.tls_port = None
        self.tls_verifies = False
        self.fsync_jobs = None            # the fsync threads' queue (None: no threads)
        self.fsync_threads: list = []
        self.syncing = 0                  # jobs handed to the threads, not yet done
        self.syncs_stopped = False        # stop(): Store.close syncs the rest
        self.commit_scheduled = False
        self.disk_check_at = float("inf")   # commit.written at which to measure the disk again
        self.protocols: set = set()
        self.dirty: dict = {}
        self.flush_scheduled = False
        self.read_view = memoryview(bytearray(READ_MAX))   # every connection reads into it
        self._all_closed = None

    # -- start-up -----------------------------------------------------------------------------
    async def bind(self) -> None:
        """Bind the configured ports without accepting yet (clients are refused until
        ``serve``), so a busy port fails before a long recovery. TLS files are checked first."""
        self.loop = asyncio.get_running_loop()
        config = self.config
        listen, tls = config.listeners.amqp, config.listeners.amqps
        context = tls_context(tls) if tls is not None else None
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
        except BaseException:
            await self.close_listeners()
            raise

    def runs_here(self) -> bool:
        """Is the caller running on this server's event loop?"""
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def clock(self) -> LoopClock:
        return LoopClock(self.loop)

    def attach(self, broker, store) -> None:
        """The broker the connections talk to, and the store whose commits run here (None:
        memory only)."""
        self.broker, self.store = broker, store
        if store is not None:
            self.commit = store.commit
            self.commit.on_dirty = self.schedule_commit
            self.schedule_commit()        # what start-up wrote (imported definitions)
        self.monitor = resources.ResourceMonitor(self.config.resources,
                                                 store.data_dir if store else None)

    async def serve(self) -> None:
        """Accept clients."""
        config = self.config
        for name, listener in (("amqp", self.listener), ("amqps", self.tls_listener)):
            if listener is not None:
                try:
                    await listener.start_serving()
                except OSError as exc:     # another process bound the port meanwhile
                    raise listen_error(name, getattr(config.listeners, name), exc) from None
        if self.listener is not None:
            log.info("amqpd listening on amqp://%s:%d", config.listeners.amqp.host, self.port)
        if self.tls_listener is not None:
            log.info("amqpd listening on amqps://%s:%d", config.listeners.amqps.host,
                     self.tls_port)
        if config.resources.check_interval:
            log.info("resource limits: %s", self.monitor.describe())
            self._check_resources()

    async def _bind(self, name: str, listener, factory, **kwargs):
        try:
            return await self.loop.create_server(
                factory, listener.host, listener.port, reuse_address=True, backlog=1024,
                start_serving=False, **kwargs)
        except OSError as exc:
            raise listen_error(name, listener, exc) from None

    async def close_listeners(self) -> None:
        for listener in (self.listener, self.tls_listener):
            if listener is not None:
                listener.close()
                await listener.wait_closed()

    # -- resource alarms ----------------------------------------------------------------------
    def _check_resources(self) -> None:
        self.set_alarms(self.monitor.check())
        if self.broker is not None:
            self.broker.page_transient = self.monitor.paging
        self._arm_disk_check()
        self.check_timer = self.loop.call_later(self.config.resources.check_interval,
                                                self._check_resources)

    def _arm_disk_check(self) -> None:
        """Measure again as soon as the store has written what the disk had left above its
        limit, rather than at the next timer tick: a fast publisher cannot fill the disk
        between two ticks."""
        headroom = self.monitor.disk_headroom()
        if headroom is None or self.commit is None:
            self.disk_check_at = float("inf")
        else:
            self.disk_check_at = self.commit.written + headroom

    def set_alarms(self, alarms: set) -> None:
        """Raise or clear resource alarms (amqp/flow.py decides who is blocked)."""
        released = self.alarms.set(alarms)
        for conn in released:
            conn.io.set_blocked(False)
        if released:
            self.flush()

    # -- output -------------------------------------------------------------------------------
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
            self.loop.call_soon(self.run_commit)

    async def durable(self, timeout: float) -> None:
        """Return once what the broker journaled so far is on disk (at once without a store):
        the management API answers a durable change only then. OSError when the sync failed,
        TimeoutError after ``timeout`` seconds."""
        commit = self.commit
        if commit is None or commit.journal_gen <= commit.synced_gen:
            return
        future = self.loop.create_future()
        commit.wait(_DurableWaiter(commit, commit.journal_gen, future))
        self.schedule_commit()
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"not on disk after {timeout:g} s") from None

    def run_commit(self) -> None:
        """Once per loop turn: the commit path writes what was appended; the fsync it asks
        for runs on the worker thread (inline for fsync: always)."""
        self.commit_scheduled = False
        commit = self.commit
        if not commit.write_pending():
            return
        if commit.written >= self.disk_check_at:
            self.set_alarms(self.monitor.check())
            self._arm_disk_check()
        if commit.inline:
            commit.run_inline()
        else:
            self._start_sync()

    def _start_sync(self) -> None:
        """Hand fsync jobs to the threads while the commit path has some and fewer than
        SYNCS_IN_FLIGHT run."""
        commit = self.commit
        while self.syncing < SYNCS_IN_FLIGHT and commit.behind and not self.syncs_stopped:
            job = commit.begin_sync()
            if job is None:
                return
            if self.fsync_jobs is None:
                self._start_fsync_threads()
            self.syncing += 1
            self.fsync_jobs.put(job)

    def _sync_done(self, job, exc) -> None:
        if self.syncs_stopped:            # Store.close syncs what is left
            return
        self.syncing -= 1
        if exc is not None and not isinstance(exc, OSError):
            log.error("fsync worker failed", exc_info=exc)
            exc = OSError(str(exc))
        self.commit.finish(job, exc)
        self._start_sync()

    def _start_fsync_threads(self) -> None:
        self.fsync_jobs = queue.SimpleQueue()
        for i in range(SYNCS_IN_FLIGHT):
            t = threading.Thread(target=self._fsync_thread, name=f"amqpd-fsync-{i}", daemon=True)
            t.start()
            self.fsync_threads.append(t)

    def _fsync_thread(self) -> None:
        """Runs jobs until it gets None. A plain thread and queue rather than an executor:
        fewer locks and futures between the loop and the disk on every group commit."""
        jobs, sync, loop = self.fsync_jobs, self.commit.sync, self.loop
        while True:
            job = jobs.get()
            if job is None:
                return
            try:
                sync(job)
                exc = None
            except BaseException as e:        # reported on the loop (an OSError nacks)
                exc = e
            try:
                loop.call_soon_threadsafe(self._sync_done, job, exc)
            except RuntimeError:              # the loop is closed: Store.close syncs
                return

    def _stop_fsync_threads(self) -> None:
        """Let the running jobs end, then the threads (their reports are ignored)."""
        self.syncs_stopped = True
        if self.fsync_jobs is None:
            return
        for _ in self.fsync_threads:
            self.fsync_jobs.put(None)
        for t in self.fsync_threads:
            t.join()
        self.fsync_threads = []
        self.fsync_jobs = None

    # -- shutdown -----------------------------------------------------------------------------
    def closed_event(self) -> None:
        if self._all_closed is not None and not self.protocols:
            self._all_closed.set()

    async def stop(self, reason: str = "shutdown") -> None:
        """Stop accepting, close every client with 320 CONNECTION_FORCED, wait briefly."""
        for listener in (self.listener, self.tls_listener):
            if listener is not None:
                listener.close()
        if self.check_timer is not None:
            self.check_timer.cancel()
        for p in list(self.protocols):       # read the close-ok of blocked publishers too
            p.unpause()
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
                await asyncio.wait_for(self._all_closed.wait(),
                                       self.config.limits.close_timeout)
            except asyncio.TimeoutError:
                pass
        for p in list(self.protocols):
            p.abort()
        for listener in (self.listener, self.tls_listener):
            if listener is not None:
                await listener.wait_closed()
        if self.broker is not None:
            self.broker.finish_background()     # a purge in progress is written out in full
        self._stop_fsync_threads()


class _DurableWaiter:
    """Told by the commit path (store/commit.py) when a sync completed or failed."""

    def __init__(self, commit, gen: int, future):
        self.commit, self.gen, self.future = commit, gen, future

    def flush_confirms(self) -> None:
        if self.future.done():
            return
        if self.gen <= self.commit.synced_gen:
            self.future.set_result(None)
        else:
            self.commit.wait(self)

    def nack_generations(self, lo: int, hi: int) -> None:
        if lo < self.gen <= hi and not self.future.done():
            self.future.set_exception(OSError("a definition change was not made durable"))
