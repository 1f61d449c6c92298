"""A crash-consistency harness: what would a power cut at any moment have left on disk, and does
amqpd recover every message it confirmed from that?

``kill -9`` keeps the kernel's page cache, so it cannot show a missing fsync. Instead:

1. A real broker (BrokerThread, real sockets) runs a workload from a real client (aio-pika with
   publisher confirms) while its store does every file operation through a ``RecordingIO``
   (the store's I/O seam, amqpd/store/fileio.py): creates, appends, truncates, renames,
   unlinks, mkdirs and fsyncs of files and directories are performed *and* appended to one
   event list. The client appends its own events to the same list (publish sent, confirm
   received, ack sent, ...), so the list orders what the disk saw against what the client
   was told.
2. A ``Model`` replays a prefix of that list (a cut point) as inodes and directory entries,
   and ``materialize`` writes the data directory a power cut there may leave: each file holds
   what was fsynced plus an arbitrary prefix of the later writes (possibly torn mid-record,
   sometimes followed by zeros: the size reached the disk, the data did not); each directory
   holds the names that were fsynced plus an arbitrary prefix of the later creates, renames
   and removals (a journaling file system commits them in order). A file's fsync does not
   make its name durable; a directory's fsync does, and a new directory needs its parent's.
   Durability of an fsync is counted from the moment it *started* (writes made while it ran
   may or may not be covered) and takes effect when it returns.
3. A fresh real broker recovers each image; a real client (pika) reads every queue, and
   ``check`` compares with what the client had been told before the cut.

What must hold (``storage.fsync`` always and batch): every message confirmed before the cut
and not acked is there, in publish order (requeued ones at their place), once; no message
that was never published; an ack, or a delivery, sent before a publish that was confirmed
before the cut is on disk too (acks are not waited for, but a later confirm covers them); a
deleted queue's messages never come back, in it or in a queue declared again under its name.
In every mode: recovery never fails, nothing is invented, duplicated or reordered. Losses
under ``never`` are counted, not failed.
"""
import asyncio
import itertools
import os
import random
import shutil
import tempfile
import time

import aio_pika
import pika
from pamqp import commands as C

from amqpd.store.fileio import FileIO
from amqpd.store.store import Store

from .brokerthread import BrokerThread

QUEUES = {"pl.q1": {}, "pl.q2": {"x-message-ttl": 3_600_000}, "pl.ttl": {"x-message-ttl": 20}}
CHURN = "pl.churn"
SEGMENT_SIZE = 4096


# -- recording --------------------------------------------------------------------------------
class RecordingIO(FileIO):
    """Performs every operation and appends it to ``events``. A descriptor is recorded after
    the OS handed it out and before it is given back, so a number reused by another thread
    (the fsync worker closes duplicates) is never confused."""

    def __init__(self, events: list):
        self.events = events
        self._tokens = itertools.count()

    def open(self, path, flags, mode=0o777):
        fd = os.open(path, flags, mode)
        self.events.append(("open", os.path.abspath(path), flags, fd))
        return fd

    def write(self, fd, data):
        n = os.write(fd, data)
        self.events.append(("write", fd, bytes(data[:n])))
        return n

    def fsync(self, fd):
        token = next(self._tokens)
        self.events.append(("fsync<", fd, token))
        os.fsync(fd)
        self.events.append(("fsync>", fd, token))

    def close(self, fd):
        self.events.append(("close", fd))
        os.close(fd)

    def dup(self, fd):
        new = os.dup(fd)
        self.events.append(("dup", fd, new))
        return new

    def ftruncate(self, fd, size):
        os.ftruncate(fd, size)
        self.events.append(("trunc", fd, size))

    def mkdir(self, path, mode=0o777):
        os.mkdir(path, mode)
        self.events.append(("mkdir", os.path.abspath(path)))

    def unlink(self, path):
        os.unlink(path)
        self.events.append(("unlink", os.path.abspath(path)))

    def rmdir(self, path):
        os.rmdir(path)
        self.events.append(("rmdir", os.path.abspath(path)))

    def replace(self, src, dst):
        os.replace(src, dst)
        self.events.append(("replace", os.path.abspath(src), os.path.abspath(dst)))


# -- the model of the disk --------------------------------------------------------------------
class Inode:
    __slots__ = ("kind", "ops", "durable", "entries")

    def __init__(self, kind: str):
        self.kind = kind           # "f" or "d"
        self.ops: list = []        # file: ("a", bytes) | ("t", size); dir: link/unlink/rename
        self.durable = 0           # how many of ops an fsync has made durable
        self.entries: dict = {}    # dir: the names as the running system sees them


class Model:
    """Replays recorded events (in order, incrementally) into inodes."""

    def __init__(self, root: str):
        self.root_path = os.path.abspath(root)
        self.root = Inode("d")
        self.fds: dict = {}
        self.syncing: dict = {}
        self.pos = 0

    def advance(self, events: list, upto: int) -> None:
        assert upto >= self.pos
        for ev in events[self.pos:upto]:
            handler = getattr(self, "_" + _NAMES.get(ev[0], "ledger"))
            handler(*ev[1:])
        self.pos = upto

    def _lookup(self, path: str):
        rel = os.path.relpath(path, self.root_path)
        if rel.startswith(".."):
            return None
        ino = self.root
        if rel == ".":
            return ino
        for part in rel.split(os.sep):
            if ino is None or ino.kind != "d":
                return None
            ino = ino.entries.get(part)
        return ino

    def _parent(self, path: str):
        return self._lookup(os.path.dirname(path)), os.path.basename(path)

    def _open(self, path, flags, fd):
        ino = self._lookup(path)
        if ino is None:
            parent, name = self._parent(path)
            if parent is None:
                self.fds[fd] = None                 # outside the data directory
                return
            ino = Inode("f")
            parent.ops.append(("link", name, ino))
            parent.entries[name] = ino
        elif flags & os.O_TRUNC:
            ino.ops.append(("t", 0))
        self.fds[fd] = ino

    def _write(self, fd, data):
        ino = self.fds.get(fd)
        if ino is not None:
            ino.ops.append(("a", data))

    def _trunc(self, fd, size):
        ino = self.fds.get(fd)
        if ino is not None:
            ino.ops.append(("t", size))

    def _fsync_begin(self, fd, token):
        ino = self.fds.get(fd)
        if ino is not None:
            self.syncing[token] = (ino, len(ino.ops))

    def _fsync_end(self, fd, token):
        got = self.syncing.pop(token, None)
        if got is not None:
            ino, n = got
            ino.durable = max(ino.durable, n)

    def _close(self, fd):
        self.fds.pop(fd, None)

    def _dup(self, fd, new):
        self.fds[new] = self.fds.get(fd)

    def _mkdir(self, path):
        parent, name = self._parent(path)
        if parent is not None:
            ino = Inode("d")
            parent.ops.append(("link", name, ino))
            parent.entries[name] = ino

    def _unlink(self, path):
        parent, name = self._parent(path)
        if parent is not None and name in parent.entries:
            parent.ops.append(("unlink", name))
            del parent.entries[name]

    def _replace(self, src, dst):
        parent, sname = self._parent(src)
        dparent, dname = self._parent(dst)
        if parent is None:
            return
        assert parent is dparent, "renames across directories are not modelled"
        parent.entries[dname] = parent.entries.pop(sname)
        parent.ops.append(("rename", sname, dname))

    def _ledger(self, *args):
        pass

    # -- what a power cut leaves ----------------------------------------------------------------
    def materialize(self, dest: str, rng: random.Random, style: str = "random") -> None:
        """Write the data directory a power cut now may leave. ``style``: "min" keeps only
        what was fsynced, "max" everything written, "random" a random prefix per file and
        per directory, torn writes included."""
        os.makedirs(dest)
        self._build(self.root, dest, rng, style)

    @staticmethod
    def _pick(n: int, rng, style) -> int:
        if style == "min" or n == 0:
            return 0
        if style == "max":
            return n
        r = rng.random()
        return 0 if r < 0.25 else n if r < 0.5 else rng.randint(0, n)

    def _build(self, ino: Inode, path: str, rng, style) -> None:
        entries: dict = {}
        n = ino.durable + self._pick(len(ino.ops) - ino.durable, rng, style)
        for op in ino.ops[:n]:
            if op[0] == "link":
                entries[op[1]] = op[2]
            elif op[0] == "unlink":
                entries.pop(op[1], None)
            else:
                if op[1] in entries:
                    entries[op[2]] = entries.pop(op[1])
        for name, child in entries.items():
            full = os.path.join(path, name)
            if child.kind == "d":
                os.mkdir(full)
                self._build(child, full, rng, style)
            else:
                with open(full, "wb") as f:
                    f.write(self._content(child, rng, style))

    def _content(self, ino: Inode, rng, style) -> bytes:
        data = bytearray()

        def apply(op):
            if op[0] == "a":
                data.extend(op[1])
            else:
                del data[op[1]:]

        for op in ino.ops[:ino.durable]:
            apply(op)
        extra = ino.ops[ino.durable:]
        m = self._pick(len(extra), rng, style)
        for op in extra[:m]:
            apply(op)
        if style == "random" and m < len(extra) and extra[m][0] == "a" and rng.random() < 0.6:
            chunk = extra[m][1]
            cut = rng.randint(0, len(chunk))
            data.extend(chunk[:cut])                       # a torn write
            if rng.random() < 0.3:                         # the size made it, the data did not
                data.extend(bytes(rng.randint(1, len(chunk) - cut + 1)))
        return bytes(data)


_NAMES = {"open": "open", "write": "write", "trunc": "trunc", "fsync<": "fsync_begin",
          "fsync>": "fsync_end", "close": "close", "dup": "dup", "mkdir": "mkdir",
          "unlink": "unlink", "rmdir": "unlink", "replace": "replace"}
STORE_EVENTS = frozenset(_NAMES)


# -- the workload -----------------------------------------------------------------------------
def key_of(body: bytes) -> int:
    return int(body.split(b":", 2)[1])


class Workload:
    """Confirmed persistent publishes (pipelined), gets with acks, rejects and requeues
    (nack and channel close), TTL expiries, a queue declared and deleted again and again
    under one name, segment rolls (small segments) and clean restarts — all recorded."""

    def __init__(self, events: list, rng: random.Random, restart, url: str):
        self.events = events
        self.rng = rng
        self.restart = restart         # () -> new broker URL (a clean stop and start)
        self.url = url
        self.counter = 0
        self.churn = 0                 # incarnation of pl.churn
        self.churn_live = False
        self.weights = [10, 7, 2, 2, 1]  # publish, consume, churn, ttl, close

    def note(self, *event) -> None:
        self.events.append(event)

    async def run(self, rounds: int, restarts: int) -> None:
        rng = self.rng
        restart_at = set(rng.sample(range(rounds // 4, rounds), restarts)) if restarts else set()
        await self._connect()
        for name, args in QUEUES.items():
            await self.ch.declare_queue(name, durable=True, arguments=args)
            self.note("declared", name)
        for r in range(rounds):
            if r in restart_at:
                await self._restart()
                continue
            action = rng.choices(["publish", "consume", "churn", "ttl", "close"],
                                 self.weights)[0]
            await getattr(self, "_" + action)()
        await self.ch.declare_queue("pl.q1", durable=True, passive=True)
        await self.conn.close()

    async def _connect(self) -> None:
        self.conn = await aio_pika.connect(self.url)
        self.ch = await self.conn.channel(publisher_confirms=True)

    async def _restart(self) -> None:
        await self.ch.declare_queue("pl.q1", durable=True, passive=True)   # acks processed
        await self.conn.close()
        self.url = self.restart()
        await self._connect()

    def _body(self, queue: str, key: int) -> bytes:
        head = b"%s:%d:" % (queue.encode(), key)
        return head + bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(10, 600)))

    async def _publish_one(self, queue: str, key: int, expiration=None) -> None:
        msg = aio_pika.Message(self._body(queue, key), delivery_mode=2, message_id=str(key),
                               expiration=expiration)
        self.note("sent", key, queue)
        try:
            result = await self.ch.default_exchange.publish(msg, routing_key=queue)
        except aio_pika.exceptions.DeliveryError:
            self.note("nacked", key)
            return
        if isinstance(result, C.Basic.Ack):
            self.note("confirmed", key)
        else:
            self.note("nacked", key)

    async def _publish(self, queue: str | None = None, n: int | None = None) -> None:
        rng = self.rng
        n = n or rng.randint(1, 25)
        tasks = []
        for _ in range(n):
            q = queue or rng.choice(["pl.q1", "pl.q1", "pl.q2"])
            self.counter += 1
            expiration = 3_600_000 if q == "pl.q1" and rng.random() < 0.2 else None
            tasks.append(self._publish_one(q, self.counter, expiration))
        await asyncio.gather(*tasks)

    async def _consume(self) -> None:
        rng = self.rng
        queue = await self.ch.get_queue(rng.choice(["pl.q1", "pl.q2"]), ensure=False)
        for _ in range(rng.randint(1, 12)):
            m = await queue.get(no_ack=False, fail=False)
            if m is None:
                return
            key = key_of(m.body)
            self.note("got", key, m.redelivered)
            r = rng.random()
            if r < 0.7:
                self.note("ack", key)
                await m.ack()
            elif r < 0.85:
                self.note("requeue", key)
                await m.nack(requeue=True)
            else:
                self.note("ack", key)                 # rejected without requeue: settled
                await m.reject(requeue=False)

    async def _close(self) -> None:
        """Unacked deliveries go back when their channel closes."""
        ch2 = await self.conn.channel()
        queue = await ch2.get_queue("pl.q1", ensure=False)
        for _ in range(self.rng.randint(1, 4)):
            m = await queue.get(no_ack=False, fail=False)
            if m is None:
                break
            self.note("got", key_of(m.body), m.redelivered)
        await ch2.close()

    async def _ttl(self) -> None:
        await self._publish("pl.ttl", self.rng.randint(1, 5))
        await asyncio.sleep(0.03)                      # expired and settled by the broker

    async def _churn(self) -> None:
        if self.churn_live:
            self.note("churn_delete_sent", self.churn)
            await self.ch.queue_delete(CHURN)
            self.note("churn_delete_ok", self.churn)
            self.churn_live = False
            return
        self.churn += 1
        self.note("churn_declare_sent", self.churn)
        await self.ch.declare_queue(CHURN, durable=True)
        self.note("churn_declare_ok", self.churn)
        self.churn_live = True
        await self._publish(CHURN, self.rng.randint(1, 8))


def record(mode: str, rounds: int, restarts: int, seed: int, workdir: str,
           io_class=RecordingIO) -> tuple:
    """Run the workload against a recording broker; returns (events, data dir)."""
    events: list = []
    data_dir = os.path.join(workdir, "data")
    os.makedirs(data_dir)
    rng = random.Random(seed)
    overrides = {"storage": {"fsync": mode}, "resources": {"check_interval": 0}}
    holder = {}

    def start():
        holder["b"] = BrokerThread(data_dir=data_dir, **overrides).start()
        return holder["b"].url

    def restart():
        holder["b"].stop()
        return start()

    with Store.overridden(io=io_class(events), segment_size=SEGMENT_SIZE):
        url = start()
        try:
            asyncio.run(Workload(events, rng, restart, url).run(rounds, restarts))
        finally:
            holder["b"].stop()
    return events, data_dir


# -- recovery and checking --------------------------------------------------------------------
def read_back(data_dir: str) -> dict:
    """Start a real broker on the image and read every queue with pika: name -> list of
    (key, redelivered), or None if the queue does not exist."""
    b = BrokerThread(data_dir=data_dir, storage={"fsync": "never"},
                     resources={"check_interval": 0}).start()
    try:
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        try:
            out = {}
            for name in [*QUEUES, CHURN]:
                ch = conn.channel()
                try:
                    ch.queue_declare(name, durable=True, passive=True)
                except pika.exceptions.ChannelClosedByBroker:
                    out[name] = None
                    continue
                got = []
                while True:
                    method, _props, body = ch.basic_get(name, auto_ack=True)
                    if method is None:
                        break
                    got.append((key_of(body), method.redelivered, body.split(b":", 1)[0]))
                out[name] = got
                ch.close()
            return out
        finally:
            conn.close()
    finally:
        b.stop()


class Told:
    """What the client knew at a cut point (from the ledger events before it)."""

    def __init__(self, events: list, upto: int):
        self.sent: dict = {}            # key -> (index, queue)
        self.confirmed: set = set()
        self.acked: dict = {}           # key -> index of the (last) ack sent
        self.got: dict = {}             # key -> index of the first delivery seen
        self.declared: set = set()
        self.covered = -1               # acks/deliveries before this index are on disk
        self.churn: list = []           # churn events in order
        self.incarnation: dict = {}     # key -> churn incarnation
        inc = 0
        for i in range(upto):
            ev = events[i]
            kind = ev[0]
            if kind in STORE_EVENTS:
                continue
            if kind == "sent":
                self.sent[ev[1]] = (i, ev[2])
                if ev[2] == CHURN:
                    self.incarnation[ev[1]] = inc
            elif kind == "confirmed":
                self.confirmed.add(ev[1])
                self.covered = max(self.covered, self.sent[ev[1]][0])
            elif kind == "ack":
                self.acked[ev[1]] = i
            elif kind == "got":
                self.got.setdefault(ev[1], i)
            elif kind == "declared":
                self.declared.add(ev[1])
            elif kind.startswith("churn_"):
                self.churn.append((kind, ev[1]))
                if kind == "churn_declare_sent":
                    inc = ev[1]


def check(told: Told, found: dict, strict: bool) -> tuple[list, int]:
    """(problems, confirmed messages lost). ``strict``: the guarantees of always/batch."""
    problems: list = []
    lost = 0
    for name in QUEUES:
        got = found[name]
        if got is None:
            if name in told.declared and strict:
                problems.append(f"{name}: declared before the cut, missing after")
            got = []
        keys = [k for k, _, _ in got]
        problems += _basic(name, got, told)
        if name == "pl.ttl":
            continue                                   # anything may have expired
        present = set(keys)
        required = {k for k in told.confirmed if told.sent[k][1] == name and k not in told.acked}
        missing = sorted(required - present)
        lost += len(missing)
        if missing and strict:
            problems.append(f"{name}: {len(missing)} confirmed message(s) lost: {missing[:10]}")
        if strict:
            back = [k for k in keys if told.acked.get(k, told.covered) < told.covered]
            if back:
                problems.append(f"{name}: acked before a later confirm, yet back: {back[:10]}")
            flags = [k for k, redelivered, _ in got
                     if not redelivered and told.got.get(k, told.covered) < told.covered]
            if flags:
                problems.append(f"{name}: delivered before a later confirm, yet not marked "
                                f"redelivered: {flags[:10]}")
    churn_problems, churn_lost = _check_churn(told, found[CHURN], strict)
    return problems + churn_problems, lost + churn_lost


def _basic(name: str, got: list, told: Told) -> list:
    problems = []
    keys = [k for k, _, _ in got]
    invented = [k for k, _, q in got if k not in told.sent or told.sent[k][1] != name
                or q.decode() != name]
    if invented:
        problems.append(f"{name}: messages never published to it: {invented[:10]}")
    if len(set(keys)) != len(keys):
        problems.append(f"{name}: duplicates: {sorted(k for k in set(keys) if keys.count(k) > 1)}")
    if keys != sorted(keys):
        problems.append(f"{name}: out of publish order: {keys[:30]}")
    return problems


def _check_churn(told: Told, got, strict: bool) -> tuple[list, int]:
    """pl.churn is declared, filled, deleted, declared again ...: after the cut it may be one
    incarnation that was live (or being declared/deleted) then, holding only its own messages,
    every confirmed one of them."""
    state, inflight, inc = "absent", None, 0
    for kind, n in told.churn:
        if kind == "churn_declare_sent":
            inflight, inc = "declare", n
        elif kind == "churn_declare_ok":
            state, inflight = "live", None
        elif kind == "churn_delete_sent":
            inflight = "delete"
        else:
            state, inflight = "absent", None
    may_be_absent = state == "absent" or inflight is not None or not strict
    may_be_live = state == "live" or inflight == "declare" or not strict
    problems, lost = [], 0
    required = {k for k in told.confirmed if told.incarnation.get(k) == inc} \
        if state == "live" else set()
    if got is None:
        if not may_be_absent:
            problems.append(f"{CHURN}: incarnation {inc} declared before the cut, missing after")
        if state == "live" and inflight is None:
            lost = len(required)
        return problems, lost
    if not may_be_live:
        problems.append(f"{CHURN}: deleted before the cut, back after")
    problems += _basic(CHURN, got, told)
    incs = {told.incarnation.get(k) for k, _, _ in got}
    if len(incs) > 1:
        problems.append(f"{CHURN}: holds messages of several incarnations {sorted(incs)}")
    elif incs - {inc} and strict:                 # (never: the delete may not be on disk)
        problems.append(f"{CHURN}: holds messages of deleted incarnations {sorted(incs - {inc})}"
                        f" (current {inc})")
    missing = required - {k for k, _, _ in got}
    lost = len(missing)
    if missing and strict:
        problems.append(f"{CHURN}: {len(missing)} confirmed message(s) lost: {sorted(missing)[:10]}")
    return problems, lost


def cut_points(events: list, n: int, rng: random.Random) -> list:
    """Half at random, half right after the events where the answer changes (a confirm
    received, an fsync returned, a name created or removed)."""
    interesting = [i + 1 for i, ev in enumerate(events)
                   if ev[0] in ("confirmed", "fsync>", "mkdir", "unlink", "rmdir", "replace",
                                "churn_delete_ok", "churn_declare_ok", "ack")]
    picks = set(rng.sample(interesting, min(len(interesting), n // 2)))
    while len(picks) < min(n, len(events) + 1):
        picks.add(rng.randint(0, len(events)))
    return sorted(picks)


class Result:
    def __init__(self, mode: str):
        self.mode = mode
        self.cuts = 0
        self.lost = 0                   # confirmed messages missing, summed over cuts
        self.cuts_with_loss = 0
        self.confirmed = 0              # confirmed messages required, summed over cuts
        self.failures: list = []        # (cut, style, problems)
        self.problems = 0               # violations, summed over cuts
        self.recovery_errors: list = []
        self.events = 0
        self.publishes = 0
        self.seconds = 0.0

    def summary(self) -> str:
        return (f"fsync={self.mode}: {self.cuts} cut points over {self.events} events "
                f"({self.publishes} publishes), confirmed messages lost: {self.lost} "
                f"(in {self.cuts_with_loss} cuts), recovery failures: "
                f"{len(self.recovery_errors)}, cuts with other violations: {len(self.failures)}, "
                f"{self.seconds:.0f} s")


def run(mode: str, cuts: int = 30, rounds: int = 60, restarts: int = 1, seed: int = 1,
        progress=None, io_class=RecordingIO) -> Result:
    """Record one workload in ``mode`` and try ``cuts`` power cuts on it. ``io_class`` lets a
    test plant a bug in the store's I/O to show that the harness catches it."""
    started = time.monotonic()
    result = Result(mode)
    strict = mode != "never"
    workdir = tempfile.mkdtemp(prefix=f"amqpd-powerloss-{mode}-")
    try:
        events, data_dir = record(mode, rounds, restarts, seed, workdir, io_class)
        result.events = len(events)
        result.publishes = sum(1 for e in events if e[0] == "sent")
        rng = random.Random(seed * 7919 + 1)
        model = Model(data_dir)
        styles = ["min", "max", "random", "random"]
        for n, cut in enumerate(cut_points(events, cuts, rng)):
            model.advance(events, cut)
            style = styles[n % len(styles)]
            image = os.path.join(workdir, f"cut-{cut}")
            model.materialize(image, rng, style)
            told = Told(events, cut)
            result.cuts += 1
            try:
                found = read_back(image)
            except Exception as exc:             # recovery must never fail
                result.recovery_errors.append((cut, style, repr(exc)))
                shutil.rmtree(image, ignore_errors=True)
                continue
            problems, lost = check(told, found, strict)
            result.confirmed += sum(1 for k in told.confirmed if k not in told.acked)
            result.lost += lost
            result.cuts_with_loss += bool(lost)
            if problems:
                result.problems += len(problems)
                result.failures.append((cut, style, problems))
                keep = os.environ.get("AMQPD_POWERLOSS_KEEP")
                if keep:
                    shutil.copytree(image, os.path.join(keep, f"{mode}-cut-{cut}-{style}"))
            shutil.rmtree(image, ignore_errors=True)
            if progress is not None:
                progress(result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result
