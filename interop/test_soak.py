"""Soak: producers with publisher confirms, consumers SIGKILLed at random and replaced.

Every client is its own OS process (interop/soak_worker.py) logging each event, flushed line by
line, so the logs survive SIGKILL. Afterwards the logs must show at-least-once delivery with no
delivery after a settled ack, redelivered=true on every redelivery, and an empty queue.

AMQPD_SOAK_SECONDS (default 30, clamped to 5..50) sizes the run; AMQPD_SOAK_SEED replays one.
"""
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import pika

from .process import ROOT

WORKER = os.path.join(ROOT, "interop", "soak_worker.py")
PRODUCERS = 3
CONSUMERS = 4
PREFETCH = 10
RATE = float(os.environ.get("AMQPD_SOAK_RATE", "120"))   # messages/s per producer


@dataclass
class Worker:
    name: str
    log: str
    proc: subprocess.Popen
    started_at: float
    killed_at: float | None = None
    clean: bool = False                # stopped by SIGTERM and logged "exit clean"
    rc: int | None = None


def spawn(tmp_path, name: str, *args: str) -> Worker:
    log = str(tmp_path / f"{name}.log")
    err = open(tmp_path / f"{name}.err", "w")
    proc = subprocess.Popen([sys.executable, WORKER, args[0], *args[1:3], log, *args[3:]],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    err.close()
    return Worker(name, log, proc, time.monotonic())


def read_log(path: str) -> list[tuple[float, str, list[str]]]:
    """Complete lines only: a worker killed mid-write leaves at most a torn last line."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    out = []
    for line in text.split("\n")[:-1]:
        parts = line.split()
        if len(parts) >= 2:
            out.append((float(parts[0]), parts[1], parts[2:]))
    return out


@dataclass
class Analysis:
    published: set = field(default_factory=set)
    confirmed: set = field(default_factory=set)
    nacked: set = field(default_factory=set)
    deliveries: dict = field(default_factory=lambda: defaultdict(list))   # id -> [(t, w, redeliv)]
    acked_any: set = field(default_factory=set)       # an "acked" line anywhere
    acked_strict: list = field(default_factory=list)  # (id, t, worker) proven flushed
    acking_killed: set = field(default_factory=set)   # "acking" in a killed consumer: ambiguous
    outstanding_live: int = 0                         # recv without acked, in live consumers
    bad: list = field(default_factory=list)
    lines: int = 0

    @property
    def n_deliveries(self) -> int:
        return sum(len(v) for v in self.deliveries.values())

    @property
    def n_redelivered_flag(self) -> int:
        return sum(r for v in self.deliveries.values() for _t, _w, r in v)


def analyse(producers: list[Worker], consumers: list[Worker]) -> Analysis:
    a = Analysis()
    for p in producers:
        for t, ev, f in read_log(p.log):
            a.lines += 1
            if ev == "pub":
                a.published.add(f[0])
            elif ev == "confirmed":
                a.confirmed.add(f[0])
            elif ev == "nacked":
                a.nacked.add(f[0])
    for c in consumers:
        lines = read_log(c.log)
        a.lines += len(lines)
        held = set()
        for i, (t, ev, f) in enumerate(lines):
            if ev == "recv":
                a.deliveries[f[0]].append((t, c, int(f[1])))
                held.add(f[0])
            elif ev == "bad":
                a.bad.append((c.name, f))
            elif ev == "acking" and c.killed_at is not None:
                a.acking_killed.add(f[0])
            elif ev == "acked":
                a.acked_any.add(f[0])
                held.discard(f[0])
                # Strict: the process lived on after the ack (a later line) or exited cleanly.
                if i < len(lines) - 1 or c.clean:
                    a.acked_strict.append((f[0], t, c, i))
        if c.killed_at is None:
            a.outstanding_live += len(held)
    for v in a.deliveries.values():
        v.sort(key=lambda d: d[0])
    return a


def test_soak_random_consumer_kills(amqpd_process, tmp_path):
    budget = min(max(float(os.environ.get("AMQPD_SOAK_SECONDS", "30")), 5.0), 50.0)
    seed = int(os.environ.get("AMQPD_SOAK_SEED", random.randrange(1 << 32)))
    print(f"\nsoak: seed={seed} (replay with AMQPD_SOAK_SEED={seed}) budget={budget}s "
          f"logs={tmp_path}")
    rng = random.Random(seed)
    window = 0.75 * budget                # producers publish over this many seconds
    per_producer = max(50, int(RATE * window))
    n_kills = max(6, int(window / 1.5))
    test_start = time.monotonic()

    broker = amqpd_process()
    queue = f"soak-{seed}"
    admin = pika.BlockingConnection(pika.URLParameters(broker.url))
    admin_ch = admin.channel()
    admin_ch.queue_declare(queue, durable=False, auto_delete=False)

    producers: list[Worker] = []
    consumers: list[Worker] = []
    serial = iter(range(1_000_000))

    def new_consumer() -> Worker:
        n = next(serial)
        c = spawn(tmp_path, f"consumer-{n}", "consume", broker.url, queue,
                  "--prefetch", str(PREFETCH), "--seed", str(rng.randrange(1 << 32)))
        consumers.append(c)
        return c

    kills = []
    try:
        for _ in range(CONSUMERS):
            new_consumer()
        for i in range(PRODUCERS):
            producers.append(spawn(tmp_path, f"producer-{i}", "produce", broker.url, queue,
                                   "--producer", str(i), "--count", str(per_producer),
                                   "--seconds", str(window)))
        t0 = time.monotonic()

        # -- the killer: SIGKILL a random live consumer at random moments, replace it ----------
        for at in sorted(rng.uniform(0.05 * window, 0.95 * window) for _ in range(n_kills)):
            delay = t0 + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            assert broker.proc.poll() is None, "amqpd died:\n" + "\n".join(broker.log[-30:])
            live = [c for c in consumers if c.proc.poll() is None]
            victim = rng.choice(live)
            victim.killed_at = time.monotonic()
            victim.proc.send_signal(signal.SIGKILL)
            victim.rc = victim.proc.wait(5)
            producing = sum(p.proc.poll() is None for p in producers)
            kills.append((round(victim.killed_at - t0, 2), victim.name, producing))
            new_consumer()
        print(f"soak: kills (t, consumer, producers running) = {kills}")

        for p in producers:
            p.rc = p.proc.wait(window + 30)
        produced_at = time.monotonic()

        # -- drain: until every confirmed id is settled and nothing is held or ready -----------
        drain_deadline = test_start + min(budget + 5, 52)
        stable_since = None
        last_lines = -1
        while True:
            a = analyse(producers, consumers)
            unsettled = a.confirmed - a.acked_any - a.acking_killed
            ready = admin_ch.queue_declare(queue, passive=True).method.message_count
            quiet = not unsettled and a.outstanding_live == 0 and ready == 0
            if quiet and a.lines == last_lines:
                if stable_since is None:
                    stable_since = time.monotonic()
                elif time.monotonic() - stable_since >= 1.0:
                    break
            else:
                stable_since = None
            last_lines = a.lines
            if time.monotonic() > drain_deadline:
                break
            for c in consumers:
                if c.killed_at is None and c.proc.poll() is not None:
                    raise AssertionError(f"{c.name} exited by itself rc={c.proc.returncode}: "
                                         + open(c.log[:-4] + ".err").read()[-2000:])
            admin.sleep(0.1)
        drained_in = time.monotonic() - produced_at

        # -- stop the survivors cleanly ----------------------------------------------------------
        for c in consumers:
            if c.killed_at is None:
                c.proc.send_signal(signal.SIGTERM)
        for c in consumers:
            if c.killed_at is None:
                c.rc = c.proc.wait(10)
                c.clean = c.rc == 0 and any(ev == "exit" for _t, ev, _f in read_log(c.log))
        final = admin_ch.queue_declare(queue, passive=True).method
        admin.close()
    finally:
        for w in producers + consumers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(5)

    # -- verdict ---------------------------------------------------------------------------------
    a = analyse(producers, consumers)
    received = set(a.deliveries)
    never_received = sorted(a.confirmed - received)
    unknown = sorted(received - a.published)

    acked_then_redelivered = []        # (2)
    for mid, t_ack, c, _i in a.acked_strict:
        for t, w, r in a.deliveries[mid]:
            if t > t_ack:
                acked_then_redelivered.append((mid, f"acked by {c.name} at {t_ack:.6f}",
                                               f"delivered to {w.name} at {t:.6f} redelivered={r}"))
    missing_flag = []                  # (3) a repeat delivery without redelivered=true
    repeat_while_alive = []            # a repeat delivery while the previous holder still lived
    repeats = 0
    for mid, ds in a.deliveries.items():
        for (tp, wp, _rp), (t, w, r) in zip(ds, ds[1:]):
            repeats += 1
            if not r:
                missing_flag.append((mid, wp.name, w.name, round(t - tp, 4)))
            if wp.killed_at is None or wp.killed_at > t:
                repeat_while_alive.append((mid, wp.name, w.name, round(t, 6)))
    not_clean = [(c.name, c.rc) for c in consumers if c.killed_at is None and not c.clean]

    stats = dict(seed=seed, published=len(a.published), confirmed=len(a.confirmed),
                 nacked=len(a.nacked), deliveries=a.n_deliveries,
                 redeliveries=repeats, redelivered_flag=a.n_redelivered_flag,
                 acked_strict=len(a.acked_strict), kills=len(kills),
                 consumers_started=len(consumers), drained_in=round(drained_in, 2),
                 final_message_count=final.message_count,
                 final_consumer_count=final.consumer_count,
                 wall=round(time.monotonic() - test_start, 1))
    first_kill = min((c.killed_at for c in consumers if c.killed_at is not None), default=None)
    flag_without_cause = [(mid, ds[0][1].name, round(ds[0][0], 6)) for mid, ds in
                          a.deliveries.items()
                          if ds[0][2] and (first_kill is None or ds[0][0] < first_kill)]
    summary = " ".join(f"{k}={v}" for k, v in stats.items())
    print("soak:", summary)

    assert all(p.rc == 0 for p in producers), f"{summary}; producer rcs {[p.rc for p in producers]}"
    assert len(kills) >= 5 and all(k[2] for k in kills[:5]), f"{summary}; kills {kills}"
    assert a.confirmed and len(a.confirmed) == len(a.published), summary
    assert not a.bad, f"{summary}; bad bodies {a.bad[:10]}"
    assert not unknown, f"{summary}; ids never published {unknown[:10]}"
    assert not not_clean, f"{summary}; consumers that did not stop cleanly {not_clean}"
    # (1) at least once
    assert not never_received, (f"{summary}; {len(never_received)} confirmed never delivered: "
                                f"{never_received[:20]}")
    # (2) a settled ack is final
    assert not acked_then_redelivered, (f"{summary}; {len(acked_then_redelivered)} delivered "
                                        f"after a settled ack: {acked_then_redelivered[:10]}")
    # (3) every redelivery says so (and redelivered=true is never set out of nowhere)
    assert not missing_flag, (f"{summary}; {len(missing_flag)} repeat deliveries with "
                              f"redelivered=false (id, previous, now, gap s): {missing_flag[:10]}")
    assert not flag_without_cause, (f"{summary}; redelivered=true before any consumer died: "
                                    f"{flag_without_cause[:10]}")
    # a message is only handed on once its previous holder's connection is gone
    assert not repeat_while_alive, (f"{summary}; {len(repeat_while_alive)} delivered again "
                                    f"while the previous holder was alive: "
                                    f"{repeat_while_alive[:10]}")
    # (4) nothing left behind
    assert final.message_count == 0, summary
    unsettled = sorted(a.confirmed - a.acked_any - a.acking_killed)
    assert not unsettled, f"{summary}; {len(unsettled)} confirmed never acked: {unsettled[:20]}"
