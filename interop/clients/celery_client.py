"""Celery scenarios: real worker processes (``python -m celery -A interop.celery_app worker``) on
the broker under test, driven and observed from here. Same JSON protocol as the client drivers.

Every worker runs the threads pool (one OS process, so SIGKILL takes all of it) with acks_late
and prefetch multiplier 4, on queues named after the run's prefix.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from . import base

ROOT = base.ROOT
STATE: dict = {}


def setup(url: str, prefix: str) -> None:
    out = tempfile.mkdtemp(prefix="amqpd-celery-")
    os.environ.update(AMQPD_CELERY_BROKER=url, AMQPD_CELERY_QUEUE=f"{prefix}.tasks",
                      AMQPD_CELERY_OUT=out)
    STATE.update(url=url, prefix=prefix, out=out, workers=[])


def app():
    from interop import celery_app
    return celery_app


def node(name: str) -> str:
    return f"{name}-{STATE['prefix']}@{socket.gethostname()}"


def start_worker(name: str, queue: str | None = None, out: str | None = None,
                 concurrency: int = 4) -> subprocess.Popen:
    env = dict(os.environ)
    if queue:
        env["AMQPD_CELERY_QUEUE"] = queue
    if out:
        env["AMQPD_CELERY_OUT"] = out
    log = os.path.join(STATE["out"], f"worker-{name}.log")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "interop.celery_app", "worker", "-P", "threads",
         "-c", str(concurrency), "-n", node(name), "--without-mingle", "--without-gossip", "-E",
         "--loglevel=INFO", f"--logfile={log}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log + ".err", "w"))
    STATE["workers"].append(proc)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        try:
            with open(log) as f:
                if " ready." in f.read():
                    return proc
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"celery worker {name} not ready: " + tail(log) + tail(log + ".err"))


def tail(path: str, n: int = 3000) -> str:
    try:
        with open(path) as f:
            return f.read()[-n:]
    except FileNotFoundError:
        return ""


def worker_a() -> subprocess.Popen:
    if "a" not in STATE:
        STATE["a"] = start_worker("a")
    return STATE["a"]


def records(path: str) -> list[tuple[int, bool, int, float]]:
    try:
        with open(path) as f:
            lines = f.read().split("\n")[:-1]
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        p = line.split()
        if len(p) == 4:
            out.append((int(p[0]), p[1] == "1", int(p[2]), float(p[3])))
    return out


def wait_records(path: str, want: set, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while True:
        recs = records(path)
        if want <= {r[0] for r in recs} or time.monotonic() > deadline:
            return recs
        time.sleep(0.1)


def publish_records(numbers, sleep: float = 0.0, queue: str | None = None) -> None:
    ca = app()
    with ca.app.producer_or_acquire() as producer:
        for n in numbers:
            ca.record.apply_async((n, sleep), producer=producer, queue=queue)


def s_celery_acks_late_1000(ctx):
    worker_a()
    path = os.path.join(STATE["out"], "record.log")
    t0 = time.monotonic()
    publish_records(range(1000))
    recs = wait_records(path, set(range(1000)), 90)
    done = {r[0] for r in recs}
    return {"completed": len(done & set(range(1000))), "missing": 1000 - len(done),
            "duplicates": len(recs) - len(done), "redelivered": sum(r[1] for r in recs),
            "seconds_under_60": time.monotonic() - t0 < 60}


def s_celery_sigkill_redelivery(ctx):
    queue = f"{STATE['prefix']}.kill"
    out = os.path.join(STATE["out"], "kill")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "record.log")
    publish_records(range(100), sleep=0.05, queue=queue)
    b = start_worker("b", queue=queue, out=out, concurrency=2)
    wait_records(path, set(range(10)), 30)
    b.send_signal(signal.SIGKILL)          # threads pool: the whole worker is this process
    b.wait(10)
    by_b = {r[0] for r in records(path)}
    start_worker("c", queue=queue, out=out, concurrency=4)
    recs = wait_records(path, set(range(100)), 60)
    done = {r[0] for r in recs}
    after = [r for r in recs if r[2] != b.pid]
    return {"completed": len(done), "missing": 100 - len(done),
            "killed_worker_ran_some": bool(by_b) and len(by_b) < 100,
            "redelivered_after_kill": any(r[1] for r in after),
            "redelivered_ones_completed": all(r[0] in done for r in after if r[1])}


def s_celery_eta_countdown(ctx):
    worker_a()
    ca = app()
    path = os.path.join(STATE["out"], "eta.log")
    now = time.time()
    targets = {"now": now, "countdown": now + 2, "eta": now + 3}
    ca.at_time.apply_async(("now",))
    ca.at_time.apply_async(("countdown",), countdown=2)
    from datetime import datetime, timezone
    ca.at_time.apply_async(("eta",), eta=datetime.fromtimestamp(now + 3, tz=timezone.utc))
    deadline = time.monotonic() + 15
    ran = {}
    while time.monotonic() < deadline and len(ran) < 3:
        try:
            with open(path) as f:
                for line in f.read().split("\n")[:-1]:
                    tag, at = line.split()
                    ran[tag] = float(at)
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    obs = {}
    for tag, target in targets.items():
        if tag not in ran:
            obs[tag] = "never ran"
        elif ran[tag] < target - 0.1:
            obs[tag] = f"early by {target - ran[tag]:.1f} s"
        elif ran[tag] > target + 1.5:
            obs[tag] = f"late by {ran[tag] - target:.1f} s"
        else:
            obs[tag] = "on time"
    return obs


def s_celery_retry_backoff(ctx):
    worker_a()
    ca = app()
    path = os.path.join(STATE["out"], "flaky.log")
    key = STATE["prefix"]
    ca.flaky.apply_async((key, 2))
    deadline = time.monotonic() + 20
    attempts = []
    while time.monotonic() < deadline and len(attempts) < 3:
        try:
            with open(path) as f:
                attempts = [line.split() for line in f.read().split("\n")[:-1]
                            if line.split()[0] == key]
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    times = [float(a[2]) for a in attempts]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # backoff 1 s then 2 s (retry_backoff=1, no jitter): a retry must not run early, and may
    # run up to 1.5 s late (the worker's timer, a loaded 2-core CI machine)
    shown = []
    for want, g in zip((1, 2, 4), gaps):
        if g < want - 0.1:
            shown.append(f"early: {g:.2f} s")
        elif g > want + 1.5:
            shown.append(f"late: {g:.2f} s")
        else:
            shown.append(f"{want} s")
    return {"attempts": len(attempts), "retries": [int(a[1]) for a in attempts], "gaps": shown}


def s_celery_inspect_ping(ctx):
    worker_a()
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "interop.celery_app", "inspect", "ping",
         "-d", node("a"), "-t", "10", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=40)
    try:
        replies = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        replies = {}
    pong = replies.get(node("a"), {}).get("ok") if isinstance(replies, dict) else None
    return {"rc": proc.returncode, "reply": pong,
            **({"stderr": proc.stderr[-500:]} if proc.returncode else {})}


def s_celery_events(ctx):
    worker_a()
    ca = app()
    seen: dict[str, set] = {}
    heartbeat = threading.Event()
    ready = threading.Event()

    def on_event(event):
        t = event.get("type", "")
        if t == "worker-heartbeat" and event.get("hostname") == node("a"):
            heartbeat.set()
        if "uuid" in event:
            seen.setdefault(t, set()).add(event["uuid"])

    conn = ca.app.connection_for_read()
    recv = ca.app.events.Receiver(conn, handlers={"*": on_event})

    def capture():
        try:
            it = recv.itercapture(limit=None, timeout=None, wakeup=False)
            next(it)           # consumer declared and consuming
            ready.set()
            for _ in it:
                pass
        except Exception:
            ready.set()

    t = threading.Thread(target=capture, daemon=True)
    t.start()
    ready.wait(10)
    ids = [ca.record.apply_async((100000 + i,)).id for i in range(3)]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if set(ids) <= seen.get("task-succeeded", set()) and heartbeat.is_set():
            break
        time.sleep(0.1)
    recv.should_stop = True
    t.join(5)
    conn.release()
    return {kind: len(set(ids) & seen.get(kind, set()))
            for kind in ("task-sent", "task-received", "task-started", "task-succeeded")} | {
        "worker-heartbeat": heartbeat.is_set()}


def teardown() -> None:
    for p in STATE.get("workers", []):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in STATE.get("workers", []):
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    if STATE.get("out") and not os.environ.get("AMQPD_CELERY_KEEP"):
        shutil.rmtree(STATE["out"], ignore_errors=True)


SCENARIOS = {name[2:]: fn for name, fn in globals().items() if name.startswith("s_")}


def main():
    argv = sys.argv[1:]
    if not argv or argv[0] != "run":
        sys.exit("usage: run URL PREFIX SCENARIO...")
    setup(argv[1], argv[2])
    try:
        for name in argv[3:]:
            base.emit({"start": name})
            fn = SCENARIOS.get(name)
            if fn is None:
                base.emit({"scenario": name, "error": "not implemented by this driver"})
                continue
            try:
                base.emit({"scenario": name, "obs": fn(None)})
            except Exception as e:
                import traceback
                base.emit({"scenario": name, "error": f"{type(e).__name__}: {e}",
                           "trace": traceback.format_exc()[-3000:]
                           + "\n--- worker log ---\n" + tail(os.path.join(
                               STATE["out"], "worker-a.log"), 1500)})
    finally:
        teardown()
    os._exit(0)


if __name__ == "__main__":
    main()
