"""Crash recovery: amqpd is SIGKILLed again and again on one data dir while clients work.

One data directory for the whole test. Each cycle starts the real CLI on it (on one fixed port,
chosen once below the ephemeral range so no client's outgoing port can take it while the broker
is down), lets producers and consumers (each its own OS process, interop/crash_worker.py) work
for a random 0.3-2.5 s, then SIGKILLs the broker. The workers notice the dead connection and
reconnect to the restarted broker by themselves. After the last cycle the broker is started one
final time, the workers are stopped and the queue is drained with a fresh connection.

Producers publish persistent messages (delivery_mode=2) with publisher confirms to a durable
exchange bound to a durable queue; an id counts as confirmed only once its basic.ack arrived.
The verdict, from the flushed per-process logs:

* zero lost: every confirmed id was received at least once (in some cycle, or in the drain);
* every start recovered the store (the "recovered N durable queue(s) with M message(s)" line),
  and M is at least the number of ids confirmed before the kill whose ack had not even been
  sent yet;
* duplicates (ids received more than once: their ack died with the broker) are counted, with
  how many came back with redelivered=true, but are not a failure.

AMQPD_CRASH_CYCLES (default 10) sets the number of kills, AMQPD_CRASH_SEED replays a run,
AMQPD_CRASH_DEADLINE (default 20 + 4 s per cycle) bounds the whole test: no cycle starts late,
the drain stops at it, and 10 s past it a watchdog SIGKILLs everything so nothing can hang.
"""
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

import pika

from .crash_worker import EXCHANGE, QUEUE, ROUTING_KEY, body_for
from .process import ROOT, AmqpdProcess

WORKER = os.path.join(ROOT, "interop", "crash_worker.py")
PRODUCERS = 3
CONSUMERS = 2
PREFETCH = 20
RATE = float(os.environ.get("AMQPD_CRASH_RATE", "150"))     # messages/s per producer
CONSUMER_RATE = 0.45 * RATE      # per consumer: together slower than the producers, a backlog
RECOVERED = re.compile(r"recovered (\d+) durable queue\(s\) with (\d+) message\(s\) in "
                       r"([\d.]+) s")


@dataclass
class Worker:
    name: str
    kind: str
    log: str
    err: str
    proc: subprocess.Popen
    rc: int | None = None


@dataclass
class Cycle:
    n: int
    started: float                     # monotonic, just before the CLI was spawned
    listening: float = 0.0
    queues: int | None = None          # from the "recovered ..." line
    recovered: int | None = None
    recover_secs: float | None = None
    delay: float | None = None
    kill_at: float | None = None       # just before SIGKILL
    dead_at: float | None = None       # after the process was reaped
    log_path: str = ""


def free_port_below_ephemeral(rng: random.Random) -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = rng.randrange(max(1025, low - 12000), low)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port below the ephemeral range")


def write_url(path: str, port: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"amqp://guest:guest@127.0.0.1:{port}/%2F\n")
    os.replace(tmp, path)


def spawn(tmp_path, name: str, kind: str, urlfile: str, *args: str) -> Worker:
    log = str(tmp_path / f"{name}.log")
    err = str(tmp_path / f"{name}.err")
    with open(err, "w") as ef:
        proc = subprocess.Popen([sys.executable, WORKER, kind, urlfile, log, *args], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=ef)
    return Worker(name, kind, log, err, proc)


def read_log(path: str) -> list[tuple[float, str, list[str]]]:
    """Complete lines only."""
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


def tail(path: str, n: int = 2000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except FileNotFoundError:
        return ""


def test_crash_recovery_zero_loss(tmp_path):
    run_crash_test(tmp_path, ())


def test_crash_recovery_zero_loss_with_a_backlog_far_beyond_the_ram_window(tmp_path):
    """The same with storage.queue_window at 8 messages / 4 KiB: nearly all of the backlog is
    paged (on disk only) when the broker is killed, and read back from positions after it."""
    config = tmp_path / "window.yaml"
    config.write_text("storage:\n  queue_window:\n    messages: 8\n    bytes: 4096\n")
    run_crash_test(tmp_path, ("--config", str(config)))


def run_crash_test(tmp_path, extra_args: tuple):
    cycles_wanted = max(1, int(os.environ.get("AMQPD_CRASH_CYCLES", "10")))
    deadline_s = float(os.environ.get("AMQPD_CRASH_DEADLINE", 20 + 4 * cycles_wanted))
    seed = int(os.environ.get("AMQPD_CRASH_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    t0 = time.monotonic()
    deadline = t0 + deadline_s
    data_dir = str(tmp_path / "data")
    urlfile = str(tmp_path / "url")
    port = free_port_below_ephemeral(rng)
    print(f"\ncrash: seed={seed} (replay with AMQPD_CRASH_SEED={seed}) cycles={cycles_wanted} "
          f"port={port} logs={tmp_path}")

    cycles: list[Cycle] = []
    workers: list[Worker] = []
    broker: AmqpdProcess | None = None
    drained: list[tuple[float, str, int, bytes]] = []     # (t, id, redelivered, body)

    def save_log(c: Cycle, b: AmqpdProcess) -> None:
        if b._reader:
            b._reader.join(2)
        c.log_path = str(tmp_path / f"amqpd-{c.n:02d}.log")
        with open(c.log_path, "w") as f:
            f.write("\n".join(b.log) + "\n")

    def start_broker(n: int) -> AmqpdProcess:
        nonlocal port
        assert time.monotonic() < deadline - 15, (f"cycle {n} would leave under 15 s of the "
                                                  f"{deadline_s} s deadline for the drain")
        c = Cycle(n, time.monotonic())
        b = AmqpdProcess(*extra_args, data_dir=data_dir, port=port)
        try:
            b.start(timeout=15)
        except RuntimeError:
            if not any("in use" in line or "Address" in line for line in b.log):
                raise
            # The fixed port was taken meanwhile: move (the workers follow the URL file).
            b = AmqpdProcess(*extra_args, data_dir=data_dir, port=0).start(timeout=15)
            port = b.port
        write_url(urlfile, b.port)
        c.listening = c.started + b.listening_after
        for line in b.log:
            m = RECOVERED.search(line)
            if m:
                c.queues, c.recovered, c.recover_secs = (int(m.group(1)), int(m.group(2)),
                                                         float(m.group(3)))
        cycles.append(c)
        return b

    def check_workers() -> None:
        for w in workers:
            if w.proc.poll() is not None:
                raise AssertionError(f"{w.name} exited by itself rc={w.proc.returncode}: "
                                     + tail(w.err))

    expired = threading.Event()

    def watchdog() -> None:
        expired.set()
        for p in [w.proc for w in workers] + [broker.proc if broker else None]:
            if p is not None and p.poll() is None:
                p.kill()

    timer = threading.Timer(deadline_s + 10, watchdog)
    timer.daemon = True
    timer.start()
    try:
        # -- cycles: start, let the clients work, SIGKILL ------------------------------------------
        for n in range(1, cycles_wanted + 1):
            broker = start_broker(n)
            c = cycles[-1]
            if n == 1:
                admin = pika.BlockingConnection(pika.URLParameters(broker.url))
                ch = admin.channel()
                ch.exchange_declare(EXCHANGE, "direct", durable=True)
                ch.queue_declare(QUEUE, durable=True)
                ch.queue_bind(QUEUE, EXCHANGE, ROUTING_KEY)
                admin.close()
                for i in range(CONSUMERS):
                    workers.append(spawn(tmp_path, f"consumer-{i}", "consume", urlfile,
                                         "--prefetch", str(PREFETCH),
                                         "--rate", str(CONSUMER_RATE),
                                         "--seed", str(rng.randrange(1 << 32))))
                for i in range(PRODUCERS):
                    workers.append(spawn(tmp_path, f"producer-{i}", "produce", urlfile,
                                         "--producer", str(i), "--rate", str(RATE),
                                         "--seed", str(rng.randrange(1 << 32))))
            c.delay = rng.uniform(0.3, 2.5)
            while time.monotonic() < c.listening + c.delay:
                check_workers()
                assert broker.proc.poll() is None, ("amqpd died by itself:\n"
                                                    + "\n".join(broker.log[-30:]))
                time.sleep(min(0.05, max(0.0, c.listening + c.delay - time.monotonic())))
            c.kill_at = time.monotonic()
            broker.proc.send_signal(signal.SIGKILL)
            broker.proc.wait(5)
            c.dead_at = time.monotonic()
            save_log(c, broker)

        # -- final start: let everyone reconnect, stop the clients, drain ------------------------
        broker = start_broker(cycles_wanted + 1)
        final = cycles[-1]
        settle_until = time.monotonic() + 1.0
        while time.monotonic() < settle_until:
            check_workers()
            time.sleep(0.05)
        check_workers()
        for kind in ("produce", "consume"):
            group = [w for w in workers if w.kind == kind]
            for w in group:
                w.proc.send_signal(signal.SIGTERM)
            for w in group:
                w.rc = w.proc.wait(10)

        conn = pika.BlockingConnection(pika.URLParameters(broker.url))
        ch = conn.channel()
        ch.basic_qos(prefetch_count=200)

        def on_drain(ch, method, props, body):
            drained.append((time.monotonic(), props.message_id, int(method.redelivered), body))
            ch.basic_ack(method.delivery_tag)

        ch.basic_consume(QUEUE, on_drain, auto_ack=False)
        drain_deadline = min(time.monotonic() + 20, deadline)
        last_seen, quiet_since = -1, None
        while time.monotonic() < drain_deadline:
            conn.process_data_events(time_limit=0.05)
            q = ch.queue_declare(QUEUE, passive=True).method
            if q.message_count == 0 and len(drained) == last_seen:
                if quiet_since is None:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= 0.5:
                    break
            else:
                quiet_since = None
            last_seen = len(drained)
        final_q = ch.queue_declare(QUEUE, passive=True).method
        conn.close()
        final_rc = broker.stop(10)
        save_log(final, broker)
    except Exception as exc:
        if expired.is_set():
            raise AssertionError(f"hard deadline of {deadline_s} + 10 s passed: everything was "
                                 f"killed (logs in {tmp_path})") from exc
        raise
    finally:
        timer.cancel()
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(5)
        if broker is not None:
            broker.kill()

    # -- analysis ---------------------------------------------------------------------------------
    published, confirmed, lost_in_flight, nacked, unroutable = {}, {}, set(), set(), set()
    receipts = defaultdict(list)            # id -> [(t, who, redelivered)]
    acking = defaultdict(list)              # id -> [t] (ack about to be sent)
    bad = []
    connects = defaultdict(list)            # worker -> [t]
    for w in workers:
        for t, ev, f in read_log(w.log):
            if ev == "connected":
                connects[w.name].append(t)
            elif ev == "pub":
                published[f[0]] = t
            elif ev == "confirmed":
                confirmed[f[0]] = t
            elif ev == "lost":
                lost_in_flight.add(f[0])
            elif ev == "nacked":
                nacked.add(f[0])
            elif ev == "unroutable":
                unroutable.add(f[0])
            elif ev == "recv":
                receipts[f[0]].append((t, w.name, int(f[1])))
            elif ev == "acking":
                acking[f[0]].append(t)
            elif ev == "bad":
                bad.append((w.name, f))
    for t, mid, redelivered, body in drained:
        receipts[mid].append((t, "drain", redelivered))
        if body != body_for(str(mid)):
            bad.append(("drain", [mid, body[:40].hex()]))

    def incarnation(t: float) -> int:
        n = 0
        for c in cycles:
            if c.started <= t:
                n = c.n
        return n

    for v in receipts.values():
        v.sort()
    received = set(receipts)
    lost = sorted(set(confirmed) - received, key=lambda m: confirmed[m])
    unknown = sorted(received - set(published))
    duplicates = {m: v for m, v in receipts.items() if len(v) > 1}
    repeats = [(m, prev, cur) for m, v in duplicates.items() for prev, cur in zip(v, v[1:])]
    repeats_flagged = sum(cur[2] for _m, _p, cur in repeats)
    dups_all_flagged = sum(all(d[2] for d in v[1:]) for v in duplicates.values())
    repeats_same_incarnation = [(m, prev, cur) for m, prev, cur in repeats
                                if incarnation(prev[0]) == incarnation(cur[0])]
    flagged_first = sum(v[0][2] for v in receipts.values())

    # Per cycle: work done, and what must survive the kill: ids confirmed before it whose ack had
    # not even been handed to the socket by the time the broker was dead. The next start must
    # recover at least that many messages, and each of them must be delivered again (or for the
    # first time) by a later incarnation: at-least-once across the crash, not just over the run.
    per_cycle = []
    short_recoveries = []
    not_back = []                           # (id, cycle killed in, confirmed at, receipts)
    for i, c in enumerate(cycles):
        end = c.kill_at if c.kill_at is not None else float("inf")
        conf = sum(c.listening <= t < end for t in confirmed.values())
        recv = sum(c.listening <= d[0] < end for v in receipts.values() for d in v)
        must = set()
        if c.kill_at is not None and i + 1 < len(cycles):
            must = {m for m, t in confirmed.items() if t < c.kill_at
                    and not any(ta < c.dead_at for ta in acking.get(m, ()))}
            nxt = cycles[i + 1]
            if nxt.recovered is not None and nxt.recovered < len(must):
                short_recoveries.append((nxt.n, nxt.recovered, len(must), sorted(must)[:10]))
            for m in sorted(must):
                if not any(d[0] >= nxt.started for d in receipts.get(m, ())):
                    not_back.append((m, c.n, round(confirmed[m], 6), receipts.get(m, [])))
        per_cycle.append((c.n, round(c.delay or 0, 2), conf, recv, len(must)))

    stats = dict(seed=seed, cycles=len([c for c in cycles if c.kill_at is not None]),
                 confirmed=len(confirmed), published=len(published), received=len(received),
                 deliveries=sum(len(v) for v in receipts.values()), drained=len(drained),
                 duplicates=len(duplicates), duplicates_all_redelivered=dups_all_flagged,
                 repeat_deliveries=len(repeats), repeats_redelivered=repeats_flagged,
                 repeats_same_incarnation=len(repeats_same_incarnation),
                 redelivered_on_first_receipt=flagged_first,
                 unconfirmed_in_flight=len(lost_in_flight),
                 unconfirmed_received=len(received & lost_in_flight),
                 lost=len(lost), unacked_not_redelivered=len(not_back),
                 final_ready=final_q.message_count,
                 wall=round(time.monotonic() - t0, 1))
    summary = " ".join(f"{k}={v}" for k, v in stats.items())
    recovered_m = [c.recovered for c in cycles]
    print(f"crash: {summary}")
    print(f"crash: recovered M per start = {recovered_m}")
    print(f"crash: recovery seconds per start = {[c.recover_secs for c in cycles]}")
    print("crash: per cycle (n, kill delay s, confirmed, received, confirmed+unacked at kill) = "
          f"{per_cycle}")
    print("crash: connections per worker = "
          f"{ {k: len(v) for k, v in sorted(connects.items())} }")

    detail = ""
    if lost:
        rows = []
        for m in lost[:20]:
            t = confirmed[m]
            rows.append(f"{m} confirmed at {t:.6f} in cycle {incarnation(t)}")
        detail = "; ".join(rows)

    # -- verdict ----------------------------------------------------------------------------------
    assert len([c for c in cycles if c.kill_at is not None]) == cycles_wanted, summary
    missing = [c.n for c in cycles if c.recovered is None]
    assert not missing, f"{summary}; no 'recovered ...' line at start(s) {missing}"
    no_queue = [c.n for c in cycles[1:] if not c.queues]
    assert not no_queue, f"{summary}; the durable queue was not recovered at start(s) {no_queue}"
    assert final_rc == 0, f"{summary}; final amqpd exit code {final_rc}"
    assert all(w.rc == 0 for w in workers), \
        f"{summary}; worker exit codes {[(w.name, w.rc) for w in workers]}"
    idle = [n for n, _d, conf, _r, _u in per_cycle[:-1] if conf == 0]
    assert len(idle) <= cycles_wanted // 4, (f"{summary}; no confirm at all in cycles {idle}: "
                                             "the clients did not reconnect")
    assert confirmed, summary
    assert not bad, f"{summary}; corrupted bodies {bad[:10]}"
    assert not unknown, f"{summary}; ids never published {unknown[:10]}"
    assert not nacked and not unroutable, \
        f"{summary}; nacked {sorted(nacked)[:10]} unroutable {sorted(unroutable)[:10]}"
    # Zero lost: every confirmed id was received at least once over the whole run.
    assert not lost, (f"{summary}; recovered M={recovered_m}; {len(lost)} confirmed ids never "
                      f"received: {detail}")
    assert not short_recoveries, (f"{summary}; recovered fewer messages than were confirmed "
                                  f"and never acked (start, M, needed, ids): {short_recoveries}")
    assert not not_back, (f"{summary}; {len(not_back)} confirmed and unacked at a kill but never "
                          f"delivered after the restart (id, killed in cycle, confirmed at, "
                          f"receipts): {not_back[:10]}")
    assert final_q.message_count == 0, f"{summary}; queue not empty after the drain"
