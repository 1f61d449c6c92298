"""Queue placement: which node leads each shared queue, which nodes hold its replicas, and
which of them are in sync. One etcd key per queue:

    /amqpd/<cluster>/placement/<vhost>/<queue>   (names percent-encoded)
    {"type": "classic" | "quorum", "epoch": 1, "leader": "node1",
     "members": ["node1", "node2", "node3"], "isr": ["node1", "node2", "node3"],
     "learners": []}     (members added at run time, not yet caught up: no vote; optional)

A classic durable queue has one member, its leader: the node it was declared on (RabbitMQ's
client-local). A quorum queue has up to ``x-quorum-initial-group-size`` members. The record
is created once (create-if-absent: the first declare wins) and every later change, a new
leader or a smaller or larger in-sync set, is a compare-and-swap on the key's revision
(``swap``), so two nodes can never both believe they changed it; a leadership change also
raises ``epoch``, which fences the deposed leader (its replication frames carry the old one).

Every node follows the records through the membership watch (member.py hands each one to
``apply``), so reading a placement (``get``) asks etcd nothing. Listeners registered with
``listen`` hear every change: ``fn(vhost, name, old record or None, new record or None)``.
"""
from __future__ import annotations

import asyncio
import logging
import urllib.parse

from .member import encode

log = logging.getLogger("amqpd.cluster")

KIND = "placement"


def q(name) -> str:
    return urllib.parse.quote(str(name), safe="")


def record(kind: str, leader: str, members: list, epoch: int = 1, isr=None) -> dict:
    return {"type": kind, "epoch": epoch, "leader": leader, "members": list(members),
            "isr": list(members if isr is None else isr)}


class Placements:
    def __init__(self, member):
        self.member = member
        self.records: dict[tuple, dict] = {}      # (vhost, queue) -> record
        self.revisions: dict[tuple, int] = {}     # (vhost, queue) -> the key's mod revision
        self.listeners: list = []
        self._changed = None                      # an asyncio.Event while someone waits

    def key(self, vhost: str, name: str) -> str:
        return f"{self.member.prefix}{KIND}/{q(vhost)}/{q(name)}"

    def get(self, vhost: str, name: str) -> dict | None:
        return self.records.get((vhost, name))

    def leader(self, vhost: str, name: str) -> str | None:
        rec = self.records.get((vhost, name))
        return rec.get("leader") if rec else None

    def listen(self, fn) -> None:
        self.listeners.append(fn)

    # -- following etcd ----------------------------------------------------------------------
    def apply(self, rest: str, value, revision: int) -> None:
        """A placement key changed (``rest``: what follows ``placement/``); value None is a
        delete."""
        vhost, _, name = rest.partition("/")
        if not name or "/" in name:
            return
        where = (urllib.parse.unquote(vhost), urllib.parse.unquote(name))
        old = self.records.get(where)
        if value is None:
            self.records.pop(where, None)
            self.revisions.pop(where, None)
        else:
            if not isinstance(value, dict):
                return
            self.records[where] = value
            self.revisions[where] = revision
        if old != value:
            if self._changed is not None:
                self._changed.set()
                self._changed = None
            for fn in list(self.listeners):
                try:
                    fn(where[0], where[1], old, value)
                except Exception:           # one listener's bug must not stop the view
                    log.exception("placement listener failed on %s/%s", *where)

    def reload(self, items: list) -> None:
        """The view read again from scratch (start, or the watch was cut): every record
        that changed, appeared or went is told to the listeners as if watched."""
        seen = set()
        for rest, value, revision in items:
            vhost, _, name = rest.partition("/")
            seen.add((urllib.parse.unquote(vhost), urllib.parse.unquote(name)))
            self.apply(rest, value, revision)
        for where in [w for w in self.records if w not in seen]:
            self.apply(f"{q(where[0])}/{q(where[1])}", None, 0)

    # -- changing it -------------------------------------------------------------------------
    async def claim(self, vhost: str, name: str, rec: dict) -> tuple[bool, dict]:
        """Create the record unless one exists: (True, rec) or (False, the one that won)."""
        created, existing = await self.member.etcd.put_if_absent(self.key(vhost, name),
                                                                  encode(rec))
        if created:
            return True, rec
        return False, existing.json() if existing is not None else rec

    async def swap(self, vhost: str, name: str, expect_revision: int, rec: dict) -> int:
        """Replace the record only if its key is still at ``expect_revision`` (one etcd
        transaction): the revision written (true), or 0 when the key had changed. The
        watch brings the new record to every node."""
        key = self.key(vhost, name)
        b64 = self.member.etcd_b64
        answer = await self.member.etcd.call("/v3/kv/txn", {
            "compare": [{"key": b64(key), "target": "MOD", "mod_revision": str(expect_revision)}],
            "success": [{"request_put": {"key": b64(key), "value": b64(encode(rec))}}]})
        if not answer.get("succeeded"):
            return 0
        return int((answer.get("header") or {}).get("revision") or expect_revision + 1)

    async def changed(self, timeout: float) -> None:
        """Until any record changes (at most ``timeout`` seconds)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def update(self, vhost: str, name: str, change, attempts: int = 20) -> dict | None:
        """Apply ``change(record) -> new record or None (nothing to do)`` by compare-and-swap,
        again on the newer record whenever another change won the race (an in-sync set
        changed meanwhile). The record written, or None when ``change`` found nothing to
        do. ``change`` may raise to refuse; a record that is gone raises LookupError."""
        for _ in range(attempts):
            rec = self.records.get((vhost, name))
            revision = self.revisions.get((vhost, name))
            if rec is None or revision is None:
                raise LookupError(name)
            new = change(dict(rec))
            if new is None:
                return None
            if await self.swap(vhost, name, revision, new):
                return new
            if self.revisions.get((vhost, name)) == revision:
                await self.changed(1.0)       # the watch brings the record that won
        raise TimeoutError(f"queue {name!r}: its placement kept changing")

    async def remove(self, vhost: str, name: str) -> None:
        await self.member.etcd.delete(self.key(vhost, name))


