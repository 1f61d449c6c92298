"""A member catching up a large backlog of a quorum queue, with real processes (etcd, three
amqpd nodes) and pika: the leader copies what the member lacks in bounded memory (its RSS
grows by far less than the backlog) while a client on the leader keeps getting confirms, and
the caught-up member, made leader, serves every message.

``PYTHONPATH=$PWD python -m pytest -q -s -p no:cacheprovider tests/cluster/test_catch_up.py``
prints the figures (leader RSS growth, catch-up time, the longest wait for a confirm);
``CATCH_UP_MIB=400`` measures a larger backlog."""
import hashlib
import os
import signal
import threading
import time

import pika

from .harness import wait_until
from .test_replication import channel, declare, placement, publish

BODY = 512 * 1024            # bytes per backlog message
COUNT = 2 * int(os.environ.get("CATCH_UP_MIB", "80"))     # 80 MiB of backlog (by default)
BACKLOG = BODY * COUNT


def rss(pid: int) -> int:
    """The process's resident set in bytes (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Sampler(threading.Thread):
    """The highest RSS of a process, read every 10 ms until ``stop``."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss(pid)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            try:
                self.peak = max(self.peak, rss(self.pid))
            except (OSError, AssertionError):
                return

    def stop(self) -> int:
        self.done.set()
        self.join(5)
        return self.peak


class LivePublisher(threading.Thread):
    """Publishes small persistent messages with confirms on its own connection until
    ``stop``; remembers when each confirm came and what was confirmed."""

    def __init__(self, node, queue: str):
        super().__init__(daemon=True)
        self.node, self.queue = node, queue
        self.confirmed: list = []          # (time, body)
        self.error = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            conn, ch = channel(self.node)
            i = 0
            while not self.done.is_set():
                body = b"live %d" % i
                publish(ch, self.queue, [body])
                self.confirmed.append((time.monotonic(), body))
                i += 1
            conn.close()
        except Exception as exc:            # noqa: BLE001 (reported to the test)
            self.error = exc

    def stop(self) -> None:
        self.done.set()
        self.join(15)

    def longest_wait(self, start: float, end: float) -> float:
        """The longest time without a confirm between ``start`` and ``end``."""
        times = [start] + [t for t, _b in self.confirmed if start <= t <= end] + [end]
        return max(b - a for a, b in zip(times, times[1:]))


def isr(cluster, queue: str) -> list:
    rec = placement(cluster, queue)
    return sorted(rec["isr"]) if rec else []


def test_a_member_catches_up_a_large_backlog_in_bounded_memory(make_cluster):
    cluster = make_cluster(3)
    node1, node2, node3 = cluster.nodes
    conn, ch = declare(node1, "backlog")
    wait_until(lambda: isr(cluster, "backlog") == ["node1", "node2", "node3"], 10,
               "three members in sync")
    assert placement(cluster, "backlog")["leader"] == "node1"
    # node3 is away while the backlog is published: it lacks all of it
    node3.kill()
    wait_until(lambda: isr(cluster, "backlog") == ["node1", "node2"], 10,
               "node3 out of the in-sync set")
    digests = []
    for i in range(COUNT):
        body = b"%08d" % i + os.urandom(BODY - 8)
        digests.append(hashlib.sha1(body).hexdigest())
        publish(ch, "backlog", [body])
    conn.close()

    # node3 comes back and catches up; the leader's memory and its clients are watched
    base = rss(node1.pid)
    sampler = Sampler(node1.pid)
    sampler.start()
    live = LivePublisher(node1, "backlog")
    live.start()
    wait_until(lambda: live.confirmed or live.error, 10, "the live publisher's first confirm")
    started = time.monotonic()
    node3.start()
    running = time.monotonic()
    wait_until(lambda: "node3" in isr(cluster, "backlog"), 40, "node3 back in the in-sync set",
               interval=0.02)
    caught_up = time.monotonic()
    # the live publisher still gets confirms with all three in sync
    count = len(live.confirmed)
    wait_until(lambda: len(live.confirmed) > count + 5 or live.error, 10,
               "confirms after node3 caught up")
    peak = sampler.stop()
    live.stop()
    assert live.error is None, live.error
    growth = peak - base
    during = [b for t, b in live.confirmed if started <= t <= caught_up]
    wait = live.longest_wait(started, caught_up)
    print(f"\ncatch-up of {BACKLOG / 2**20:.0f} MiB: leader RSS {base / 2**20:.0f} MiB -> "
          f"peak {peak / 2**20:.0f} MiB (+{growth / 2**20:.1f} MiB); node3 restarted -> in "
          f"sync {caught_up - started:.2f} s (its start-up {running - started:.2f} s); "
          f"{len(during)} confirms meanwhile, longest wait {wait * 1000:.0f} ms")
    assert growth < BACKLOG / 2, f"the leader's RSS grew by {growth / 2**20:.1f} MiB"
    copied = node1.wait_for_line(r"member node3 caught up: ([\d.]+) MiB copied in ([\d.]+) s, "
                                 r"([\d.]+) MiB in the final step", 5)
    print(copied.group(0))
    assert float(copied.group(1)) >= BACKLOG / 2**20, "the backlog was not copied in the bulk"
    assert during, "no confirm while node3 caught up"

    # node3's copy is the queue: with node2 stopped, node1 hands over to node3 (the only
    # other member in sync), which serves every message
    assert node2.stop() == 0
    wait_until(lambda: isr(cluster, "backlog") == ["node1", "node3"], 10,
               "node2 out of the in-sync set")
    assert node1.stop() == 0
    wait_until(lambda: (placement(cluster, "backlog") or {}).get("leader") == "node3", 15,
               "node3 leading")
    consumer = pika.BlockingConnection(pika.URLParameters(node3.url))
    cch = consumer.channel()
    cch.basic_qos(prefetch_count=16)
    got = []
    for method, _props, body in cch.consume("backlog", inactivity_timeout=3):
        if method is None:
            break
        got.append(hashlib.sha1(body).hexdigest() if len(body) == BODY else body)
        cch.basic_ack(method.delivery_tag)
    consumer.close()
    assert got[:COUNT] == digests, "the backlog differs on the caught-up member"
    live_bodies = [b for _t, b in live.confirmed]
    missing = set(live_bodies) - set(got[COUNT:])
    assert not missing, f"{len(missing)} confirmed message(s) lost, e.g. {sorted(missing)[:3]}"


def test_a_member_that_stops_reading_is_dropped_not_buffered(make_cluster):
    """A member that stops reading its link (SIGSTOP) while publishes go on: the leader
    drops that link once 64 MiB wait unsent (replication.STREAM_LIMIT) instead of holding
    everything for it, says so once, and the member catches up from the files when it
    runs again."""
    cluster = make_cluster(3)
    node1, node3 = cluster["node1"], cluster["node3"]
    conn, ch = declare(node1, "slow")
    wait_until(lambda: isr(cluster, "slow") == ["node1", "node2", "node3"], 10,
               "three members in sync")
    base = rss(node1.pid)
    sampler = Sampler(node1.pid)
    sampler.start()
    node3.signal(signal.SIGSTOP)
    try:
        body = os.urandom(BODY)
        sent = 0
        # (the first confirm waits until node3 leaves the in-sync set: it acknowledges
        # nothing while stopped)
        while not any("member node3 is too slow" in line for line in node1.lines):
            if sent > 3 * BACKLOG:
                peak = sampler.stop()
                raise AssertionError(f"node3's link was never dropped: {sent / 2**20:.0f} MiB "
                                     f"published, leader RSS +{(peak - base) / 2**20:.0f} MiB")
            publish(ch, "slow", [body])
            sent += BODY
        peak = sampler.stop()
        # the link was dropped with at most STREAM_LIMIT (and what the sockets hold) unsent
        print(f"\nstalled member: {sent / 2**20:.0f} MiB published until its link was "
              f"dropped; leader RSS +{(peak - base) / 2**20:.1f} MiB")
        assert peak - base < 64 * 2**20 + BACKLOG / 2
        assert "node3" not in isr(cluster, "slow")
        publish(ch, "slow", [body] * 20)               # more, while node3 is stopped
    finally:
        node3.signal(signal.SIGCONT)
    wait_until(lambda: "node3" in isr(cluster, "slow"), 30, "node3 back in the in-sync set")
    assert sum("member node3 is too slow" in line for line in node1.lines) >= 1
    warnings = [line for line in node1.lines if "too slow" in line and " WARNING " in line]
    assert len(warnings) == 1, warnings
    conn.close()
