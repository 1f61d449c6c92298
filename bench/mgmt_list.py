"""GET /api/queues with many queues: amqpd against the RabbitMQ running here (no pass/fail:
figures to read; docs/management.md has the last ones).

    python3 bench/mgmt_list.py [--queues 10000] [--rounds 5] [--rabbitmq http://127.0.0.1:15672]
                               [--rabbitmq-amqp 5672] [--skip-rabbitmq]

Starts amqpd from this checkout (python -m amqpd --port 0 --http-port 0, a temporary data
dir), declares N non-durable queues in each broker with pika (in RabbitMQ in a scratch vhost,
deleted afterwards), waits until each API lists them all, then times GET /api/queues (the
whole body read) ``--rounds`` times alternating between the brokers, and prints the median
and min/max per broker. Issue 13's target for amqpd: under 200 ms for 10,000 queues."""
import argparse
import base64
import os
import re
import statistics
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pika  # noqa: E402

from interop.process import AmqpdProcess  # noqa: E402

SCRATCH = "amqpd-bench-mgmt"


def request(base, method, path, auth=b"guest:guest", timeout=600):
    req = urllib.request.Request(base + path, method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(auth).decode())
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def declare(amqp_url: str, n: int) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    for i in range(n):
        ch.queue_declare(f"bench-{i:05d}")
    conn.close()


def time_listing(base: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    status, body = request(base, "GET", "/api/queues")
    elapsed = time.perf_counter() - t0
    assert status == 200
    return elapsed, len(body)


def wait_listed(base: str, path: str, n: int, timeout: float = 120) -> None:
    """RabbitMQ's statistics database catches up with new queues in the background."""
    deadline = time.monotonic() + timeout
    while True:
        _status, body = request(base, "GET", path + "?columns=name")
        if body.count(b'"name"') >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base}{path}: fewer than {n} queues listed after {timeout} s")
        time.sleep(1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queues", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rabbitmq", default="http://127.0.0.1:15672")
    p.add_argument("--rabbitmq-amqp", type=int, default=5672)
    p.add_argument("--skip-rabbitmq", action="store_true")
    args = p.parse_args(argv)

    amqpd = AmqpdProcess("--log-level", "info").start()
    brokers = {}
    try:
        deadline = time.monotonic() + 30
        http = None
        while http is None and time.monotonic() < deadline:
            for line in list(amqpd.log):
                m = re.search(r"management API and web UI on http://[^:]+:(\d+)", line)
                if m:
                    http = f"http://127.0.0.1:{m.group(1)}"
            time.sleep(0.1)
        if http is None:
            raise RuntimeError("amqpd did not log its HTTP address:\n" + "\n".join(amqpd.log))
        t0 = time.perf_counter()
        declare(amqpd.url, args.queues)
        print(f"amqpd: {args.queues} queues declared in {time.perf_counter() - t0:.1f} s")
        wait_listed(http, "/api/queues/%2F", args.queues)
        brokers["amqpd"] = http
        if not args.skip_rabbitmq:
            base = args.rabbitmq.rstrip("/")
            request(base, "PUT", f"/api/vhosts/{SCRATCH}")
            t0 = time.perf_counter()
            declare(f"amqp://guest:guest@127.0.0.1:{args.rabbitmq_amqp}/{SCRATCH}", args.queues)
            print(f"RabbitMQ: {args.queues} queues declared in {time.perf_counter() - t0:.1f} s")
            wait_listed(base, f"/api/queues/{SCRATCH}", args.queues)
            brokers["RabbitMQ 3.10.8"] = base
        times = {name: [] for name in brokers}
        sizes = {}
        for _ in range(args.rounds):
            for name, base in brokers.items():        # alternating: the same noise for both
                elapsed, size = time_listing(base)
                times[name].append(elapsed)
                sizes[name] = size
        print(f"\nGET /api/queues with {args.queues} queues, {args.rounds} rounds "
              f"(median, min-max):")
        for name, values in times.items():
            print(f"  {name:16s} {statistics.median(values) * 1000:8.0f} ms   "
                  f"({min(values) * 1000:.0f}-{max(values) * 1000:.0f} ms, "
                  f"{sizes[name] / 1e6:.1f} MB)")
    finally:
        amqpd.stop()
        amqpd.cleanup()
        if not args.skip_rabbitmq:
            try:
                request(args.rabbitmq.rstrip("/"), "DELETE", f"/api/vhosts/{SCRATCH}")
            except Exception as exc:        # report, do not hide the figures
                print(f"could not delete RabbitMQ's scratch vhost {SCRATCH}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
