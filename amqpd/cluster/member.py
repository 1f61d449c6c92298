"""Membership: this node's place in the cluster, kept in etcd under ``/amqpd/<cluster>/``.

    members/<node>   durable: every node that ever joined (RabbitMQ's "disk nodes"); it
                     stays when the node stops, so a stopped node is listed as not running
    nodes/<node>     bound to the node's one lease: its record (state, pid, addresses,
                     listeners, version); etcd deletes it when the lease expires, so a node
                     that dies (kill -9, a hang, a lost network) is gone within lease_ttl

The lease is refreshed every lease_ttl/3. Each node keeps its view of the others from one
watch on the cluster's prefix, so reading the view (``/api/nodes``) asks etcd nothing.

A node name is claimed with a create-if-absent transaction: a second process started with
the same name waits for the first one's lease to end, and gives up (start fails) if it does
not within lease_ttl + 1 s. The exception is the same node restarted after a crash: the
record names this host and this data directory, whose lock we now hold, so the process that
wrote it is gone and its lease is revoked at once.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time

from ..edge.listeners import StartError
from ..version import __version__
from .etcd import Etcd, EtcdError, EtcdUnavailable
from .tasks import cancel_all

log = logging.getLogger("amqpd.cluster")

STARTING, RUNNING, STOPPING = "starting", "running", "stopping"


def encode(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


class Member:
    """One node's membership: ``join`` (claim the name, start the lease and the watch),
    ``set_state``, ``leave``; ``nodes()`` is the cluster as this node sees it."""

    def __init__(self, config, data_dir: str | None = None):
        self.config = config                  # config.Cluster
        self.name = config.node
        self.prefix = f"/amqpd/{config.name}/"
        self.data_dir = os.path.abspath(data_dir) if data_dir is not None else None
        self.etcd: Etcd | None = None
        self.lease = 0
        self.record: dict = {}
        self.members: dict[str, dict] = {}    # name -> durable record (joined_at)
        self.alive: dict[str, dict] = {}      # name -> lease-bound record
        self.revision = 0                     # the etcd revision the view is at
        self.changed = asyncio.Event()        # set (and replaced) on every view change
        self._tasks: list[asyncio.Task] = []
        self._etcd_down = False
        # other records under the prefix the watch brings: kind -> an object with
        # ``apply(rest, value, mod revision)`` and ``reload([(rest, value, mod revision)])``
        # (placement.py's queue placements)
        self.followers: dict = {}
        # the lease is certainly valid until this time.monotonic() (the last refresh sent
        # plus its TTL): a queue leader confirms nothing after it; ``on_lease_lost``
        # callbacks run when the lease is found expired (replication.py steps down)
        self.lease_deadline = 0.0
        self.on_lease_lost: list = []

    @staticmethod
    def etcd_b64(value) -> str:
        from .etcd import b64
        return b64(value)

    def lease_ok(self) -> bool:
        return time.monotonic() < self.lease_deadline

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}/{name}"

    # -- joining and leaving ------------------------------------------------------------------
    async def join(self, record: dict) -> None:
        """Claim this node's name with a fresh lease and start keeping it; raise StartError
        when etcd cannot be reached or another live node has the name."""
        self.etcd = Etcd(self.config.etcd)
        self.record = dict(record, name=self.name, state=STARTING, host=socket.gethostname(),
                           pid=os.getpid(), data_dir=self.data_dir, version=__version__,
                           started_at=int(time.time() * 1000))
        try:
            sent = time.monotonic()
            self.lease, granted = await self.etcd.grant(self.config.lease_ttl)
            self.lease_deadline = sent + granted
            await self._claim()
            await self.etcd.put_if_absent(self.key("members", self.name),
                                          encode({"name": self.name,
                                                  "joined_at": self.record["started_at"]}))
            await self._load()
        except EtcdUnavailable as exc:
            await self._close_etcd()
            raise StartError(f"cluster.etcd: no etcd endpoint answered ({exc})") from None
        except EtcdError as exc:
            await self._close_etcd()
            raise StartError(f"cluster.etcd: etcd refused the node's registration: "
                             f"{exc}") from None
        except BaseException:
            await self._close_etcd()
            raise
        self._tasks = [asyncio.ensure_future(self._keep_lease()),
                       asyncio.ensure_future(self._watch())]
        log.info("cluster %s: node %s joined (lease %x, ttl %d s); %d of %d node(s) running",
                 self.config.name, self.name, self.lease, granted,
                 sum(1 for n in self.nodes() if n[1]), len(self.members))

    async def _claim(self) -> None:
        key = self.key("nodes", self.name)
        deadline = time.monotonic() + self.config.lease_ttl + 1
        while True:
            ok, held = await self.etcd.put_if_absent(key, encode(self.record), self.lease)
            if ok:
                return
            other = held.json() if held is not None else {}
            if self._is_our_past_self(other):
                log.info("cluster: node %s's previous process (pid %s) is gone: its lease "
                         "is ended", self.name, other.get("pid"))
                await self.etcd.revoke(held.lease)
                continue
            if time.monotonic() >= deadline:
                raise StartError(
                    f"cluster.node: a node named {self.name!r} is already running in cluster "
                    f"{self.config.name!r} (pid {other.get('pid')} on host "
                    f"{other.get('host')}); each node needs a name of its own")
            await self._wait_deleted(key, held.mod_revision, deadline)

    def _is_our_past_self(self, other: dict) -> bool:
        """The record was written by a process on this host with our data directory: we hold
        that directory's lock, so that process has exited."""
        return (self.data_dir is not None and other.get("data_dir") == self.data_dir
                and other.get("host") == socket.gethostname() and other.get("pid") != os.getpid())

    async def _wait_deleted(self, key: str, revision: int, deadline: float) -> None:
        async def deleted():
            async for _rev, events in self.etcd.watch(key, revision + 1):
                if any(ev.deleted and ev.kv.key == key for ev in events):
                    return
        try:
            await asyncio.wait_for(deleted(), max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            pass

    async def set_state(self, state: str, **fields) -> None:
        """Publish this node's state (and any changed fields) in its record."""
        self.record.update(fields, state=state)
        await self.etcd.put(self.key("nodes", self.name), encode(self.record), self.lease)

    async def leave(self) -> None:
        """Tell the others at once: state ``stopping``, then the lease ended (its record goes
        with it). Without etcd the record goes when the lease runs out."""
        await cancel_all(self._tasks, what="membership tasks")
        self._tasks = []
        if self.etcd is None:
            return
        try:
            await self.set_state(STOPPING)
            await self.etcd.revoke(self.lease)
        except (EtcdError, EtcdUnavailable) as exc:
            log.warning("cluster: could not end this node's lease (%s); the others see it "
                        "stopped within lease_ttl", exc)
        await self._close_etcd()

    async def _close_etcd(self) -> None:
        if self.etcd is not None:
            etcd, self.etcd = self.etcd, None
            await etcd.close()

    # -- keeping the lease --------------------------------------------------------------------
    async def _keep_lease(self) -> None:
        interval = self.config.lease_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                sent = time.monotonic()
                ttl = await self.etcd.keepalive(self.lease, timeout=interval)
                if ttl > 0:
                    self.lease_deadline = sent + ttl
                if ttl <= 0:
                    self.lease_deadline = 0.0
                    for fn in list(self.on_lease_lost):
                        try:
                            fn()
                        except Exception:
                            log.exception("lease-lost callback failed")
                    await self._rejoin()
                elif self._etcd_down:
                    self._etcd_down = False
                    log.warning("cluster: etcd answers again; lease kept")
            except (EtcdError, EtcdUnavailable) as exc:
                if not self._etcd_down:
                    self._etcd_down = True
                    log.warning("cluster: cannot refresh this node's lease (%s); the others "
                                "will see it as not running after lease_ttl", exc)

    async def _rejoin(self) -> None:
        """The lease ran out (etcd unreachable or this process paused for longer than the
        TTL): the others already see this node as gone. Take a new lease and register
        again."""
        log.warning("cluster: this node's lease expired (etcd unreachable or the process "
                    "paused for over %d s); registering again", self.config.lease_ttl)
        self._etcd_down = False
        sent = time.monotonic()
        self.lease, ttl = await self.etcd.grant(self.config.lease_ttl)
        self.lease_deadline = sent + ttl
        ok, _held = await self.etcd.put_if_absent(self.key("nodes", self.name),
                                                  encode(self.record), self.lease)
        if not ok:
            log.error("cluster: another process took node name %s meanwhile; this node is no "
                      "longer listed", self.name)

    async def end_lease_of(self, name: str, record: dict) -> bool:
        """Another node's process is known to be gone (its node-to-node port refuses
        connections, links.py): revoke the lease of the record that process wrote, if the
        record is still that one (same host and pid: a node restarted meanwhile has a new
        record and keeps it). Whether a lease was ended."""
        try:
            kvs, _rev = await self.etcd.get(self.key("nodes", name))
            if not kvs:
                return False
            current = kvs[0].json() or {}
            if (current.get("pid"), current.get("host")) != (record.get("pid"),
                                                              record.get("host")) \
                    or not kvs[0].lease:
                return False
            await self.etcd.revoke(kvs[0].lease)
        except (EtcdError, EtcdUnavailable):
            return False
        log.warning("cluster: node %s (pid %s) refuses connections on its node-to-node port: "
                    "its process is gone, its lease is ended now", name, record.get("pid"))
        return True

    async def forget(self, name: str) -> str:
        """Remove a node that is not running from the cluster's members (its data stays on
        its machine): "forgotten", "running" (refused) or "unknown"."""
        if name not in self.members:
            return "unknown"
        if not await self.etcd.delete_unless(self.key("members", name),
                                             self.key("nodes", name)):
            return "running"
        self.members.pop(name, None)
        self._changed()
        return "forgotten"

    # -- the view -----------------------------------------------------------------------------
    async def _load(self) -> None:
        kvs, self.revision = await self.etcd.get(self.prefix, prefix=True)
        self.members.clear()
        self.alive.clear()
        followed: dict = {kind: [] for kind in self.followers}
        for kv in kvs:
            kind, _, rest = kv.key[len(self.prefix):].partition("/")
            if kind in followed:
                followed[kind].append((rest, kv.json(), kv.mod_revision))
            else:
                self._apply(kv.key, kv.json())
        for kind, items in followed.items():
            self.followers[kind].reload(items)
        self._changed()

    def _apply(self, key: str, value, revision: int = 0) -> None:
        kind, _, name = key[len(self.prefix):].partition("/")
        follower = self.followers.get(kind)
        if follower is not None:
            follower.apply(name, value, revision)
            return
        table = {"members": self.members, "nodes": self.alive}.get(kind)
        if table is None or not name or "/" in name:
            return
        if value is None:
            table.pop(name, None)
        else:
            table[name] = value

    def _changed(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def _watch(self) -> None:
        """Follow every change under the prefix; when the stream is cut, read the prefix
        again and watch on from there."""
        while True:
            try:
                async for revision, events in self.etcd.watch(self.prefix, self.revision + 1):
                    for ev in events:
                        self._apply(ev.kv.key, None if ev.deleted else ev.kv.json(),
                                    ev.kv.mod_revision)
                    self.revision = revision
                    self._changed()
            except (EtcdError, EtcdUnavailable):
                pass
            await asyncio.sleep(0.5)         # etcd unreachable or restarting: try again soon
            try:
                await self._load()
            except (EtcdError, EtcdUnavailable):
                pass

    def nodes(self) -> list[tuple[str, bool, dict]]:
        """Every node of the cluster by name: (name, running, record or {})."""
        names = sorted(set(self.members) | set(self.alive))
        out = []
        for name in names:
            record = self.alive.get(name)
            running = record is not None and record.get("state") == RUNNING
            out.append((name, running, record or {}))
        return out
