"""The broker: vhosts, users, the set of queues waiting to dispatch, and (optionally) the store
that makes durable definitions and persistent messages survive a restart."""
import heapq
import itertools
import logging
from collections import deque

from ..access.control import VHostRecord
from ..store.definitions import decode_args
from ..wire.properties import EXPIRES, FLAGS_HIGH
from .clock import ManualClock
from .message import Entry, from_route
from . import queue_policy
from .stats import BrokerCounts, BrokerStats
from .vhost import VHost

log = logging.getLogger("amqpd.broker")


class Broker:
    stats = property(BrokerStats)    # node-wide statistics and churn (broker/stats.py)

    """``store`` keeps durable state (None: memory only), ``access`` is the access control
    connections consult, ``clock`` the one clock of the domain (broker/clock.py; a
    ManualClock that stands still when none is given: unit tests, offline tools)."""

    def __init__(self, config, store=None, access=None, clock=None):
        self.config = config
        self.store = store
        self.commit = store.commit if store is not None else None   # when writes are durable
        self.access = access
        self.scheduler = clock = clock if clock is not None else ManualClock()
        self.clock = clock.time         # deadlines (TTL, expiry, delays)
        self.wallclock = clock.wall     # only for what outlives the process (TTL on disk)
        self.timers: list = []         # heap of (deadline, n, callback)
        self._timer_seq = itertools.count()
        self._armed = None             # (deadline, handle) of the scheduler callback
        self.vhosts: dict[str, VHost] = {name: VHost(self, name) for name in config.vhosts}
        self.connections: set = set()   # open connections (statistics add up their channels)
        self.counters = BrokerCounts()
        self._pending: dict = {}     # queues with messages and maybe-ready consumers (ordered set)
        self.tasks: deque = deque()   # long jobs run a slice per turn (background())
        self.policies = queue_policy.Policies(self)   # set/delete/list (per vhost inside)
        # transient messages beyond a queue's window go to its scratch log (true) or stay in
        # RAM (false); the edge clears it while memory use is below the paging threshold
        # (resources.memory_high_watermark_paging_ratio), so without an edge it holds
        self.page_transient = True
        # what a declared or recovered queue is made as: ``Queue``, or in a cluster what
        # the node's placement says (a queue led elsewhere, a replicated one)
        from .queue import Queue
        self.queue_factory = Queue

    def schedule(self, queue) -> None:
        """Dispatch is deferred to the end of the current batch of frames, so a read holding
        many publishes or acks dispatches once."""
        self._pending[queue] = None

    def run_dispatch(self) -> None:
        while self._pending:
            queues = list(self._pending)
            self._pending.clear()
            for q in queues:
                if not q.deleted:
                    q.dispatch()

    # -- vhosts at run time --------------------------------------------------------------------
    def add_vhost(self, name: str) -> VHost:
        """A vhost from now on (``rabbitmqctl add_vhost``): its standard exchanges exist at
        once; users still need a grant to open it. Adding one that exists changes nothing. Not
        stored: after a restart it exists again only if the configuration or definitions
        list it."""
        vhost = self.vhosts.get(name)
        if vhost is None:
            vhost = self.vhosts[name] = VHost(self, name)
        if self.access is not None and name not in self.access.vhosts:
            self.access.add_vhost(VHostRecord(name))
        return vhost

    def delete_vhost(self, name: str) -> bool:
        """Delete a vhost and everything in it, as RabbitMQ does: its connections are closed
        (320 CONNECTION_FORCED), its queues (their logs in the store too) and exchanges go,
        and its grants with it. Returns False when there was no such vhost."""
        vhost = self.vhosts.pop(name, None)      # from here on, connection.open is refused
        if vhost is None:
            return False
        if self.access is not None:
            # RabbitMQ 3.10.8 sends "is deleted" or, when its vhost supervisor stops first,
            # "is down": the two race there; this is the one that says why
            for conn in self.access.delete_vhost(name):
                conn.close(320, f"CONNECTION_FORCED - vhost '{name}' is deleted")
        queue_policy.clear(vhost)
        for q in list(vhost.queues.values()) + list(vhost.reply_queues.values()):
            vhost.delete_queue(q)
        for ex in list(vhost.exchanges.values()):
            if ex.name and not ex.name.startswith("amq."):    # the standard ones: no journal
                vhost.delete_exchange(ex.name, if_unused=False)
        return True

    # -- long work in slices ------------------------------------------------------------------
    def background(self, task) -> None:
        """Run a long job (purging or freeing a big queue) without stalling other clients:
        ``task`` is a generator that does one bounded slice of work per ``next()``; one slice
        runs per event-loop turn, jobs taking turns."""
        self.tasks.append(task)
        if len(self.tasks) == 1:
            self.call_at(self.clock(), self._run_background)

    def _run_background(self) -> None:
        task = self.tasks.popleft()
        try:
            next(task)
        except StopIteration:
            pass
        else:
            self.tasks.append(task)
        if self.tasks:
            self.call_at(self.clock(), self._run_background)

    def finish_background(self) -> None:
        """Run every pending job to the end (shutdown, unit tests)."""
        while self.tasks:
            for _ in self.tasks.popleft():
                pass

    # -- timers -------------------------------------------------------------------------------
    def call_at(self, deadline: float, callback) -> None:
        """Run callback once the clock reaches deadline (TTL, queue expiry, delayed messages).
        One scheduler callback is armed, for the earliest deadline."""
        heapq.heappush(self.timers, (deadline, next(self._timer_seq), callback))
        if self._armed is None or deadline < self._armed[0]:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        if self._armed is not None:
            self._armed[1].cancel()
        self._armed = (deadline, self.scheduler.call_at(deadline, self.run_timers))

    def run_timers(self) -> None:
        """Run every callback whose deadline has come. One that fails is logged and the others
        still run, and the next deadline is armed whatever happened."""
        self._armed = None
        now = self.clock()
        timers = self.timers
        try:
            while timers and timers[0][0] <= now:
                callback = heapq.heappop(timers)[2]
                try:
                    callback()
                except Exception:      # a bug of ours must not stop TTLs and delays
                    log.exception("timer callback %r failed", callback)
            try:
                self.run_dispatch()
            except Exception:
                log.exception("dispatch after timers failed")
        finally:
            if timers:
                self._arm(timers[0][0])

    # -- recovery -----------------------------------------------------------------------------
    def recover(self) -> None:
        """Rebuild durable definitions and queue contents from the store, in original order."""
        if self.store is None:
            return
        started = self.clock()
        entries = self.store.journal.load()
        kept = []
        for d in entries:
            vhost = self.vhosts.get(d["vhost"])
            if vhost is None:
                log.warning("definition in unknown vhost %r kept on disk but not loaded: %s",
                            d["vhost"], d.get("name") or d.get("dest"))
                kept.append(d)
                continue
            if self._restore_definition(vhost, d):
                kept.append(d)
        self.store.journal.rewrite(kept)
        self.store.remove_orphans(
            [(d["vhost"], d["name"]) for d in kept if d["op"] == "queue"]
            + [(d["vhost"], "\0delayed:" + d["name"]) for d in kept if d["op"] == "exchange"])
        messages = queues = 0
        for vhost in self.vhosts.values():
            for ex in vhost.exchanges.values():
                if getattr(ex, "log", None) is not None:
                    messages += ex.recover(*ex.log.recover())
            for q in vhost.queues.values():
                if q.log is None:
                    continue
                queues += 1
                if q.pager is not None:
                    # positions only (x-max-length-bytes: and the bodies' sizes, from the
                    # segment summaries); the window is read in when first needed
                    limited = q.opts.max_bytes is not None
                    runs, expiries, top = q.log.recover_positions(
                        sizes=limited, prios=bool(q.opts.max_priority))
                    messages += q.recover_paged(runs, expiries, self.clock(), self.wallclock())
                    if limited:
                        q.ready_bytes = q.log.recovered_bytes
                    q.next_seq = max(q.next_seq, top)
                    q.counts.not_published = q.next_seq   # recovered: not published now
                    continue
                live, top = q.log.recover()
                routes: dict = {}
                ready = q.ready
                now, wall = self.clock(), self.wallclock()
                for seq, route, header, body, delivered, segment, expiry in live:
                    entry = Entry(seq, from_route(route, header, body, routes), delivered,
                                  segment)
                    if q.tracks_entries or header[FLAGS_HIGH] & EXPIRES:
                        # priority, limits, and the TTL deadline it had before the restart
                        deadline = None if expiry is None else now + (expiry / 1000.0 - wall)
                        q._prepare(entry, deadline)
                    ready.append(entry)
                q.next_seq = max(q.next_seq, top)
                q.counts.not_published = q.next_seq       # recovered messages were not published now
                messages += len(live)
        log.info("recovered %d durable queue(s) with %d message(s) in %.2f s", queues, messages,
                 self.clock() - started)

    def _restore_definition(self, vhost: VHost, d: dict) -> bool:
        from .exchange_types import TYPES
        from .queue import Queue
        op = d["op"]
        if op == "exchange":
            cls = TYPES.get(d["type"])
            if cls is None:
                log.warning("exchange %r of unknown type %r not loaded", d["name"], d["type"])
                return True
            ex = cls(vhost, d["name"], True, d["auto_delete"], d["internal"],
                     decode_args(d["args"]))
            vhost.exchanges[d["name"]] = ex
            queue_policy.refresh_exchange(ex)
            if cls.delays_messages:
                vhost.attach_log(ex)
        elif op == "queue":
            q = self.queue_factory(vhost, d["name"], True, None, d["auto_delete"],
                                   decode_args(d["args"]))
            vhost.queues[d["name"]] = q
            queue_policy.refresh_queue(q)
            vhost.attach_log(q)
        elif op == "bind":
            source = vhost.exchanges.get(d["source"])
            dest = (vhost.exchanges if d["dest_kind"] == "exchange" else vhost.queues).get(d["dest"])
            if source is None or dest is None:
                return False
            source.add_binding(dest, d["key"], decode_args(d["args"]))
        elif op == "policy":      # journaled before queues and exchanges (store/definitions.py)
            queue_policy.restore(vhost, d)
        return True
