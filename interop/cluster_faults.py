"""The clients, the placement monitor and the verdict of the cluster fault test
(interop/test_cluster_faults.py, issue 15's "Done when").

* ``Producer`` threads publish persistent messages with confirms (pika, one publish at a time)
  and republish, with the same id, whatever was nacked, returned or left unconfirmed when the
  connection dropped: at-least-once. ``Consumer`` threads consume with manual acks and
  re-subscribe after a ``basic.cancel``; both reconnect through another node when their
  connection drops (``Nodes`` says which nodes may be tried now).
* ``Ledger`` records every publish attempt, confirm and delivery with its time.
* ``PlacementMonitor`` follows the queue's placement record in etcd (leader, epoch, in-sync
  set) with a timeline, so the fault driver knows the current leader, when a new one was
  elected and when the in-sync set is whole again.
* ``check`` is the verdict (no broker needed: tests/.. call it on made-up ledgers):
  every confirmed id consumed at least once, nothing delivered that was never published (or
  with a body that is not its own), duplicates counted and split into republished ones and
  redelivered ones; a repeat of an id published once must carry ``redelivered=true``.
* ``failover_times``: per fault, from the fault to the first confirm or delivery observed
  after the new leader's record was seen (so a confirm the old leader sent while stopping
  gracefully does not count).
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import pika
import pika.exceptions as pe

QUEUE = "cluster-faults"
PREFETCH = 20


def body_for(mid: str) -> bytes:
    """A message's body: its id and a digest of it (a mixed-up or corrupted body shows)."""
    return mid.encode() + b":" + hashlib.sha1(mid.encode()).hexdigest().encode()


# -- the ledger -------------------------------------------------------------------------------
class Ledger:
    """What the clients did, with monotonic times; every method is thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.attempts: Counter = Counter()           # id -> publishes tried
        self.confirmed: dict[str, float] = {}        # id -> first confirm
        self.deliveries: list[tuple] = []            # (t, id, redelivered, body ok, client, node)
        self.event_times: list[float] = []           # confirms and deliveries, in time order
        self.counters: Counter = Counter()           # nacked, returned, drops, cancels, ...
        self.connections: Counter = Counter()        # (client, node) -> connections opened

    def attempt(self, mid: str) -> None:
        with self.lock:
            self.attempts[mid] += 1

    def confirm(self, mid: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.confirmed.setdefault(mid, now)
            self.event_times.append(now)

    def deliver(self, mid, redelivered: bool, body: bytes, client: str, node: str) -> None:
        now = time.monotonic()
        ok = mid is not None and body == body_for(mid)
        with self.lock:
            self.deliveries.append((now, mid, bool(redelivered), ok, client, node))
            self.event_times.append(now)

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counters[what] += n

    def connected(self, client: str, node: str) -> None:
        with self.lock:
            self.connections[(client, node)] += 1

    def delivered_ids(self) -> set:
        with self.lock:
            return {d[1] for d in self.deliveries}

    def confirmed_ids(self) -> set:
        with self.lock:
            return set(self.confirmed)

    def snapshot(self):
        """(attempts, confirmed ids, deliveries as (id, redelivered, body ok)) for ``check``."""
        with self.lock:
            return (dict(self.attempts), set(self.confirmed),
                    [(d[1], d[2], d[3]) for d in self.deliveries])


# -- the verdict ------------------------------------------------------------------------------
@dataclass
class Verdict:
    published: int = 0              # distinct ids tried
    attempts: int = 0               # publishes tried (republishes included)
    confirmed: int = 0
    delivered: int = 0              # distinct ids consumed
    deliveries: int = 0
    lost: list = field(default_factory=list)            # confirmed, never consumed
    unknown: list = field(default_factory=list)         # consumed, never published
    corrupt: list = field(default_factory=list)         # a body that is not its id's
    duplicates: int = 0             # ids consumed more than once
    repeat_deliveries: int = 0      # deliveries beyond each id's first
    repeats_redelivered: int = 0    # ... that carried redelivered=true
    repeats_republished: int = 0    # ... of ids the producers published more than once
    unflagged: list = field(default_factory=list)       # repeats of ids published once, without
                                                        # redelivered=true

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unknown or self.corrupt or self.unflagged)

    def summary(self) -> str:
        d = asdict(self)
        for key in ("lost", "unknown", "corrupt", "unflagged"):
            d[key] = len(d[key])
        return " ".join(f"{k}={v}" for k, v in d.items())

    def problems(self) -> str:
        out = []
        if self.lost:
            out.append(f"{len(self.lost)} confirmed message(s) never consumed: {self.lost[:10]}")
        if self.unknown:
            out.append(f"{len(self.unknown)} consumed id(s) never published: {self.unknown[:10]}")
        if self.corrupt:
            out.append(f"{len(self.corrupt)} body(ies) not their id's: {self.corrupt[:10]}")
        if self.unflagged:
            out.append(f"{len(self.unflagged)} repeat delivery(ies) of id(s) published once "
                       f"without redelivered=true: {self.unflagged[:10]}")
        return "; ".join(out)


def check(attempts: dict, confirmed: set, deliveries: list) -> Verdict:
    """attempts: {id: publishes tried}; confirmed: ids confirmed at least once; deliveries:
    [(id, redelivered, body ok)] in the order they were received."""
    v = Verdict(published=len(attempts), attempts=sum(attempts.values()),
                confirmed=len(confirmed), deliveries=len(deliveries))
    seen: Counter = Counter()
    for mid, redelivered, body_ok in deliveries:
        if mid is None or mid not in attempts:
            if mid not in v.unknown:
                v.unknown.append(mid)
            continue
        if not body_ok:
            v.corrupt.append(mid)
        seen[mid] += 1
        if seen[mid] > 1:
            v.repeat_deliveries += 1
            if redelivered:
                v.repeats_redelivered += 1
            if attempts[mid] > 1:
                v.repeats_republished += 1
            elif not redelivered:
                v.unflagged.append(mid)
    v.delivered = len(seen)
    v.duplicates = sum(1 for n in seen.values() if n > 1)
    v.lost = sorted(m for m in confirmed if m not in seen)
    return v


def percentile(values, p: float):
    """The p-th percentile (nearest rank) of the values, None for none."""
    values = sorted(x for x in values if x is not None)
    if not values:
        return None
    k = max(0, min(len(values) - 1, math.ceil(p / 100 * len(values)) - 1))
    return values[k]


def failover_times(faults: list, event_times: list) -> list:
    """faults: [(fault at, new leader seen at or None)]; event_times: confirm and delivery
    times. Per fault, seconds from the fault to the first event at or after the new leader
    was seen (None when there was no new leader, or nothing happened before the next fault)."""
    times = sorted(event_times)
    out = []
    for i, (at, seen) in enumerate(faults):
        nxt = faults[i + 1][0] if i + 1 < len(faults) else float("inf")
        if seen is None:
            out.append(None)
            continue
        first = next((t for t in times if t >= seen), None)
        out.append(None if first is None or first >= nxt else first - at)
    return out


# -- which nodes a client may try ---------------------------------------------------------------
class Nodes:
    """The cluster's nodes as clients see them: a node the fault driver took down (killed,
    paused, stopping) is not tried until it is back; a restarted node has new ports."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.lock = threading.Lock()
        self.down: set = set()

    def mark(self, name: str, up: bool) -> None:
        with self.lock:
            (self.down.discard if up else self.down.add)(name)

    def candidates(self, start: int) -> list:
        """(name, port) of the nodes to try, in turn from ``start``."""
        with self.lock:
            nodes = list(self.cluster.nodes)
            order = nodes[start % len(nodes):] + nodes[:start % len(nodes)]
            return [(n.name, n.port) for n in order
                    if n.name not in self.down and n.running() and n.port]


CONNECTION_ERRORS = (pe.AMQPError, OSError)


class Client(threading.Thread):
    """A pika client thread with a home node (an index into the cluster's nodes): it connects
    there first, and through the next nodes in turn when that fails; after a dropped
    connection it tries the next node first. ``go_home()`` asks it to move back to its home
    node at its next safe point (between publishes; a consumer cancels first), so the fault
    driver can spread the clients over the nodes again after healing."""

    def __init__(self, name: str, nodes: Nodes, ledger: Ledger, home: int, stop):
        super().__init__(name=name, daemon=True)
        self.nodes, self.ledger, self.home, self.stopping = nodes, ledger, home, stop
        self.index = home
        self.node = None
        self.error = None
        self.going_home = threading.Event()

    @property
    def home_node(self) -> str:
        nodes = self.nodes.cluster.nodes
        return nodes[self.home % len(nodes)].name

    def at_home(self) -> bool:
        return self.node == self.home_node and not self.going_home.is_set()

    def go_home(self) -> None:
        if self.node != self.home_node:
            self.going_home.set()

    def leaving(self) -> bool:
        """Whether work() should return now: stopping, or moving home."""
        if self.going_home.is_set():
            self.going_home.clear()
            if self.node != self.home_node:
                self.index = self.home
                self.ledger.count("moved home")
                return True
        return self.stopping.is_set()

    def connect(self):
        while not self.stopping.is_set():
            for name, port in self.nodes.candidates(self.index):
                params = pika.ConnectionParameters(
                    "127.0.0.1", port, credentials=pika.PlainCredentials("guest", "guest"),
                    heartbeat=2, socket_timeout=2, stack_timeout=4, connection_attempts=1,
                    blocked_connection_timeout=10,
                    client_properties={"connection_name": self.name})
                try:
                    conn = pika.BlockingConnection(params)
                except CONNECTION_ERRORS:
                    self.ledger.count("connect_failures")
                    continue
                self.node = name
                self.index = next(i for i, n in enumerate(self.nodes.cluster.nodes)
                                  if n.name == name)
                self.ledger.connected(self.name, name)
                return conn
            self.stopping.wait(0.1)         # no node reachable now: try again shortly
        return None

    def run(self):
        try:
            while not self.stopping.is_set():
                conn = self.connect()
                if conn is None:
                    return
                try:
                    self.work(conn)
                except CONNECTION_ERRORS as exc:
                    # the reason, shortened (a channel closed by the broker says why)
                    self.ledger.count(f"drop {type(exc).__name__} {str(exc)[:60]}".strip())
                    self.index += 1         # the next connection goes through another node
                    self.stopping.wait(0.05)    # not a storm of connections meanwhile
                finally:
                    self.node = None
                    try:
                        if conn.is_open:
                            conn.close()
                    except CONNECTION_ERRORS:
                        pass
        except BaseException as exc:        # a bug in the client: the test reports it
            self.error = exc
            raise

    def work(self, conn):
        raise NotImplementedError


class Producer(Client):
    """Publishes ids ``<name>-<n>`` one at a time with confirms; a nacked, returned or
    interrupted publish is tried again with the same id (on the next connection)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.n = 0
        self.pending = None

    def work(self, conn):
        ch = conn.channel()
        ch.confirm_delivery()
        while not self.leaving():
            if self.pending is None:
                self.n += 1
                self.pending = f"{self.name}-{self.n}"
            mid = self.pending
            self.ledger.attempt(mid)
            try:
                ch.basic_publish("", QUEUE, body_for(mid),
                                 pika.BasicProperties(delivery_mode=2, message_id=mid),
                                 mandatory=True)
            except pe.NackError:
                self.ledger.count("nacked")
                self.stopping.wait(0.02)    # a leader went away: the next one is being chosen
                continue
            except pe.UnroutableError:
                self.ledger.count("returned")
                self.stopping.wait(0.05)
                continue
            self.ledger.confirm(mid)
            self.pending = None


class Consumer(Client):
    """Consumes with manual acks (prefetch PREFETCH); subscribes again after a basic.cancel."""

    def work(self, conn):
        ch = conn.channel()
        ch.basic_qos(prefetch_count=PREFETCH)
        leave = False
        while not leave:
            for method, props, body in ch.consume(QUEUE, inactivity_timeout=0.2):
                if self.leaving():
                    leave = True
                    break
                if method is None:
                    continue
                self.ledger.deliver(props.message_id, method.redelivered, body, self.name,
                                    self.node)
                ch.basic_ack(method.delivery_tag)
            else:                           # the generator ended: cancelled by the broker
                self.ledger.count("cancels")
                self.stopping.wait(0.05)
        try:
            ch.cancel()
        except CONNECTION_ERRORS:
            pass


# -- the queue's placement, followed from etcd --------------------------------------------------
class PlacementMonitor(threading.Thread):
    """Polls the queue's placement record in etcd (every ``interval`` s) and keeps a timeline
    of its changes: [(seen at, record or None)]."""

    def __init__(self, etcd, key: str, interval: float = 0.025):
        super().__init__(name="placement-monitor", daemon=True)
        self.etcd, self.key, self.interval = etcd, key, interval
        self.cond = threading.Condition()
        self.record = None
        self.timeline: list = []
        self.stopping = threading.Event()
        self.errors = 0

    def read(self):
        k = base64.b64encode(self.key.encode()).decode()
        answer = self.etcd.call("/v3/kv/range", {"key": k})
        kvs = answer.get("kvs") or ()
        return json.loads(base64.b64decode(kvs[0]["value"])) if kvs else None

    def run(self):
        while not self.stopping.is_set():
            try:
                rec = self.read()
            except (OSError, ValueError):
                self.errors += 1
            else:
                with self.cond:
                    if rec != self.record:
                        self.record = rec
                        self.timeline.append((time.monotonic(), rec))
                        self.cond.notify_all()
            self.stopping.wait(self.interval)

    def wait_for(self, pred, timeout: float, what: str):
        """(seen at, record) of the first record (since now) that satisfies pred."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self.record is not None and pred(self.record):
                    return self.timeline[-1][0], self.record
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what} "
                                         f"(placement now {self.record})")
                self.cond.wait(min(left, 0.2))
