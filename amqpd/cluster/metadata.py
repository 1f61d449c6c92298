"""Cluster metadata: vhosts, users, permissions, policies, exchanges, bindings and durable
queue definitions, shared by every node through etcd under ``/amqpd/<cluster>/meta/``.

One key per object, its value the object as RabbitMQ's definitions format writes it:

    meta/vhosts/<vhost>                 meta/policies/<vhost>/<name>
    meta/users/<user>                   meta/operator_policies/<vhost>/<name>
    meta/permissions/<vhost>/<user>     meta/exchanges/<vhost>/<name>
    meta/queues/<vhost>/<name>          meta/bindings/<vhost>/<sha1 of the binding>

(names percent-encoded, so a "/" in a name stays one path segment).

Sync is a three-way merge of what this node has (``local``: its definitions export), what
etcd has (``remote``: kept current by a watch) and what both last agreed on (``agreed``):
a key that changed only here is written to etcd, one that changed only in etcd is applied
here through the same domain calls a definitions import makes (admin.import_definitions,
definitions.apply_topology; deletes through admin and the vhost API), and when both changed,
etcd wins. ``agreed`` is kept in the data directory (``cluster-metadata.json``), so a node
that restarts tells what changed in the cluster while it was down (applied here) from what
changed in its own files (written to etcd) and catches up before it lets clients in.

Local changes are found by comparing exports, twice a second and at once after a watch
event: the broker has no change notification yet (see docs/clustering.md).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import urllib.parse

from .. import definitions, errors
from ..admin import AdminError
from .tasks import cancel_all
from .etcd import EtcdError, EtcdUnavailable

log = logging.getLogger("amqpd.cluster")

# the order puts are applied in (deletes in the reverse one): a vhost before what is in it,
# exchanges and queues before their bindings
KINDS = ("vhosts", "users", "permissions", "policies", "operator_policies", "exchanges",
         "queues", "bindings")
INTERVAL = 0.5
STOP_TIMEOUT = 3.0        # seconds a stopping node waits for its metadata sync to end
STATE_FILE = "cluster-metadata.json"


def q(name) -> str:
    return urllib.parse.quote(str(name), safe="")


def canonical(value) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def object_key(kind: str, value: dict) -> str:
    """The key (below meta/) an object of a kind is stored under."""
    if kind in ("vhosts", "users"):
        return f"{kind}/{q(value['name'])}"
    if kind == "permissions":
        return f"{kind}/{q(value['vhost'])}/{q(value['user'])}"
    if kind == "bindings":
        digest = hashlib.sha1(canonical(value).encode()).hexdigest()
        return f"{kind}/{q(value['vhost'])}/{digest}"
    return f"{kind}/{q(value['vhost'])}/{q(value['name'])}"


def snapshot(access, broker) -> dict[str, str]:
    """This node's metadata as {key: canonical JSON}. Exclusive and transient queues stay
    local (they live and die with their node), and so do bindings to them."""
    doc = definitions.export(access, broker)
    durable = {(x["vhost"], x["name"]) for x in doc["queues"] if x["durable"]}
    objects = {
        "vhosts": doc["vhosts"], "users": doc["users"], "permissions": doc["permissions"],
        "policies": doc["policies"],
        "operator_policies": [p for p in doc["parameters"]
                              if p.get("component") == definitions.OPERATOR_POLICY],
        "exchanges": doc["exchanges"],
        "queues": [x for x in doc["queues"] if x["durable"]],
        "bindings": [b for b in doc["bindings"] if b["destination_type"] == "exchange"
                     or (b["vhost"], b["destination"]) in durable],
    }
    return {object_key(kind, value): canonical(value)
            for kind, values in objects.items() for value in values}


def fingerprint(access, broker) -> tuple:
    """Changes when this node's metadata may have changed, at a cost in the number of
    vhosts, users, grants, exchanges and policies, not of queues or bindings (a full export
    of 10,000 queues takes about a second here). Queues are covered by the broker's
    created/deleted counters, durable changes by the journal's generation, replaced objects
    by their identities (every change makes a new record object)."""
    counters = broker.counters
    commit = getattr(broker, "commit", None)
    parts = [counters.queues_created, counters.queues_deleted,
             commit.journal_gen if commit is not None else 0,
             tuple(map(id, access.users.values())), tuple(map(id, access.grants.values())),
             tuple(map(id, access.vhosts.values()))]
    for name, vhost in broker.vhosts.items():
        exchanges = vhost.exchanges.values()
        parts += [name, tuple(map(id, exchanges)), sum(len(ex.bindings) for ex in exchanges),
                  tuple(map(id, vhost.policies.table(False).values())),
                  tuple(map(id, vhost.policies.table(True).values()))]
    return tuple(parts)


def _rank(key: str, deleted: bool) -> int:
    """Puts in KINDS order, deletes after them in the reverse one."""
    rank = KINDS.index(key.partition("/")[0]) if key.partition("/")[0] in KINDS else 0
    return len(KINDS) * 2 - rank if deleted else rank


class Unapplicable(Exception):
    """A change from the cluster that this node refuses (the text says why)."""


class MetadataSync:
    def __init__(self, etcd_of, prefix: str, admin, after_change, data_dir: str | None,
                 forwarding=None):
        self._etcd_of = etcd_of               # () -> the member's current Etcd client
        # forward.py: told while the cluster's changes are applied (a queue from the
        # cluster is not claimed here), and waited for before queues are written to etcd
        # (their placement is there first)
        self.forwarding = forwarding
        self.prefix = prefix + "meta/"
        self.admin = admin
        self.broker, self.access = admin.broker, admin.access
        self.after_change = after_change      # deliveries and frames a change made due
        self.path = os.path.join(data_dir, STATE_FILE) if data_dir is not None else None
        self.remote: dict[str, str] = {}
        self.remote_rev: dict[str, int] = {}  # key -> the mod revision ``remote`` holds
        self.agreed: dict[str, str] = self._read_agreed()
        self._agreed_changed = False          # since it was last handed to _save_agreed
        self._pending = None                  # (file text, journal generation it waits for)
        self.refused: dict[str, str] = {}     # key -> remote value this node cannot apply
        self._warned: dict[str, str] = {}     # (until something changes here)
        self.revision = 0
        self.synced = asyncio.Event()         # set after each completed round (tests, start)
        self._local: dict | None = None       # the last export, valid while the
        self._fingerprint = None              # fingerprint has not changed
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False

    @property
    def etcd(self):
        return self._etcd_of()

    def wake(self) -> None:
        """A round now rather than at the next interval (a declare waits for it)."""
        self._wake.set()

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Read the cluster's metadata and merge it with this node's before clients come
        in; then keep both in step."""
        await self._load()
        await self.sync()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            # Python 3.11's wait_for can swallow a cancel that arrives as the wake event is
            # set: the rounds also end on the flag, and stopping never waits unbounded
            self._stopping = True
            self._wake.set()
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT)
            if not done:
                log.warning("cluster: the metadata sync did not stop within %s s", STOP_TIMEOUT)
            elif not task.cancelled() and task.exception() is not None:
                log.warning("cluster: the metadata sync ended with %r", task.exception())
        self._save_agreed()                   # if the journal is on disk by now

    async def _load(self) -> None:
        kvs, self.revision = await self.etcd.get(self.prefix, prefix=True)
        self.remote = {kv.key[len(self.prefix):]: kv.value.decode() for kv in kvs}
        self.remote_rev = {kv.key[len(self.prefix):]: kv.mod_revision for kv in kvs}

    async def _run(self) -> None:
        watcher = asyncio.ensure_future(self._watch())
        try:
            await self._rounds()
        finally:
            await cancel_all([watcher], what="metadata watch")

    async def _rounds(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), INTERVAL)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self.sync()
            except (EtcdError, EtcdUnavailable) as exc:
                log.warning("cluster: metadata not synced (%s); retrying", exc)
            except Exception:            # a bug must not stop the sync for good
                log.exception("cluster: metadata sync failed; retrying")

    async def _watch(self) -> None:
        while True:
            try:
                async for revision, events in self.etcd.watch(self.prefix, self.revision + 1):
                    for ev in events:
                        self._remote_event(ev)
                    self.revision = revision
                    self._wake.set()
            except EtcdError as exc:
                if exc.code == 11:            # compacted: read everything again
                    await self._reload()
            except EtcdUnavailable:
                pass
            await asyncio.sleep(0.5)

    async def _reload(self) -> None:
        try:
            await self._load()
        except (EtcdError, EtcdUnavailable):
            pass

    def _remote_event(self, ev) -> None:
        key = ev.kv.key[len(self.prefix):]
        if ev.kv.mod_revision < self.remote_rev.get(key, 0):
            return                            # older than what we wrote ourselves
        self.remote_rev[key] = ev.kv.mod_revision
        if ev.deleted:
            self.remote.pop(key, None)
        else:
            self.remote[key] = ev.kv.value.decode()

    # -- the merge ----------------------------------------------------------------------------
    async def sync(self) -> None:
        """One round of the three-way merge."""
        mark = fingerprint(self.access, self.broker)
        if self._local is None or mark != self._fingerprint:
            self._local, self._fingerprint = snapshot(self.access, self.broker), mark
            self.refused.clear()              # what this node refused may fit now
        local = self._local
        apply_puts, apply_deletes, push = [], [], []
        for key in set(local) | set(self.remote) | set(self.agreed):
            mine, theirs, base = local.get(key), self.remote.get(key), self.agreed.get(key)
            if mine == theirs:
                self._agree(key, mine)
            elif mine == base or (theirs != base):
                # changed in the cluster only, or on both sides (the cluster wins)
                if key in self.refused and self.refused[key] == theirs:
                    continue                  # refused here already: not again each round
                (apply_deletes if theirs is None else apply_puts).append(key)
            else:
                push.append(key)              # changed here only
        if apply_puts or apply_deletes:
            if self.forwarding is not None:
                self.forwarding.applying = True
            try:
                self._apply(apply_puts, apply_deletes, local)
            finally:
                if self.forwarding is not None:
                    self.forwarding.applying = False
            self._local = None                # changed here (with whatever cascaded)
        if push and self.forwarding is not None and self.forwarding.claiming:
            await self.forwarding.claims_done()
        # in dependency order, so the others can apply them as they come
        for key in sorted(push, key=lambda k: _rank(k, local.get(k) is None)):
            await self._push(key, local.get(key))
        self._save_agreed()
        self.synced.set()
        self.synced = asyncio.Event()

    def _agree(self, key: str, value) -> None:
        self.refused.pop(key, None)
        self._warned.pop(key, None)
        if self.agreed.get(key) == value:
            return
        self._agreed_changed = True
        if value is None:
            self.agreed.pop(key, None)
        else:
            self.agreed[key] = value

    async def _push(self, key: str, value) -> None:
        if value is None:
            revision = await self.etcd.delete(self.prefix + key)
            self.remote.pop(key, None)
        else:
            revision = await self.etcd.put(self.prefix + key, value.encode())
            self.remote[key] = value
        self.remote_rev[key] = max(revision, self.remote_rev.get(key, 0))
        self._agree(key, value)

    def _apply(self, puts: list, deletes: list, local: dict) -> None:
        for key in sorted(deletes, key=lambda k: _rank(k, True)):
            self._apply_one(key, None, local[key])
        for key in sorted(puts, key=lambda k: _rank(k, False)):
            self._apply_one(key, self.remote[key], local.get(key))
        self.after_change()

    def _apply_one(self, key: str, text, mine) -> None:
        """Make this node's object at ``key`` (``mine``, JSON or None) the cluster's
        (``text``; None: deleted)."""
        kind = key.partition("/")[0]
        try:
            if text is None:
                self._delete(kind, json.loads(mine))
            else:
                self._put(kind, json.loads(text))
        except (Unapplicable, AdminError, errors.AMQPError, KeyError, ValueError,
                OSError) as exc:
            reason = getattr(exc, "reply_text", None) or str(exc)
            if self._warned.get(key) != text:
                self._warned[key] = text
                log.warning("cluster: cannot apply %s %s from the cluster here (yet): %s",
                            kind, urllib.parse.unquote(key.partition("/")[2]), reason)
            self.refused[key] = text
            return
        self._agree(key, text)

    def _put(self, kind: str, value: dict) -> None:
        if kind in ("vhosts", "users", "permissions"):
            self.admin.import_definitions({kind: [value]})
            return
        doc = {"parameters" if kind == "operator_policies" else kind: [value]}
        counts = definitions.apply_topology(self.broker, doc)
        if counts["skipped"]:
            raise Unapplicable("refused (see the definitions warning above)")

    def _delete(self, kind: str, value: dict) -> None:
        if kind == "vhosts":
            self.admin.delete_vhost(value["name"])
        elif kind == "users":
            self.admin.delete_user(value["name"])
        elif kind == "permissions":
            self.admin.clear_permissions(value["user"], value["vhost"])
        elif kind in ("policies", "operator_policies"):
            self.broker.policies.delete(value["vhost"], value["name"],
                                        operator=kind == "operator_policies")
        else:
            vhost = self.broker.vhosts.get(value["vhost"])
            if vhost is None:
                return
            if kind == "exchanges":
                vhost.delete_exchange(value["name"], False)
            elif kind == "queues":
                queue = vhost.queues.get(value["name"])
                if queue is not None:
                    vhost.delete_queue(queue)
            elif kind == "bindings":
                self._unbind(vhost, value)

    @staticmethod
    def _unbind(vhost, b: dict) -> None:
        table = vhost.exchanges if b["destination_type"] == "exchange" else vhost.queues
        source, dest = vhost.exchanges.get(b["source"]), table.get(b["destination"])
        if source is not None and dest is not None:
            vhost.unbind(source, dest, b["routing_key"], definitions._args_in(b["arguments"]))

    # -- what was agreed, kept across restarts ------------------------------------------------
    def _read_agreed(self) -> dict:
        if self.path is None:
            return {}
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return {}
        agreed = doc.get("agreed") if isinstance(doc, dict) else None
        return dict(agreed) if isinstance(agreed, dict) else {}

    def _save_agreed(self) -> None:
        """Write what was agreed, but never ahead of the broker's journal: the file is
        written once the definitions journaled when it was taken are on disk. A file that
        lags is harmless (a change is applied or agreed once more after a restart); one
        ahead of a journal that a power cut lost would read as "deleted here" and delete
        that object in the whole cluster."""
        if self.path is None:
            return
        commit = getattr(self.broker, "commit", None)
        if self._agreed_changed:
            self._agreed_changed = False
            self._pending = (canonical({"agreed": self.agreed}),
                             commit.journal_gen if commit is not None else 0)
        if self._pending is None:
            return
        text, generation = self._pending
        if commit is not None and commit.synced_gen < generation:
            return                            # next round
        self._pending = None
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cluster: cannot write %s: %s", self.path, exc)
