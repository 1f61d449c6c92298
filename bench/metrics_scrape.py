"""Scrape time of the Prometheus endpoint with many queues: amqpd vs RabbitMQ, same run.

    python3 bench/metrics_scrape.py                 # 10,000 queues, 10 scrapes of each path
    python3 bench/metrics_scrape.py --queues 2000 --scrapes 5 --no-rabbitmq

amqpd is started from this checkout (``python -m amqpd``, memory only, free ports). On
RabbitMQ (AMQP 127.0.0.1:5672, management 15672 guest/guest, Prometheus 15692) the queues are
declared in a scratch vhost that is deleted at the end. Both get the same non-durable,
empty queues, declared over AMQP with pika, plus ``--messages`` messages spread over them. Each
path (``/metrics``, ``/metrics/per-object``) is fetched ``--scrapes`` times per broker,
alternating A/B, after one warm-up fetch; the output has the command line, the median and the
extremes, and the response sizes.
"""
import argparse
import base64
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pika

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VHOST = "metrics-scrape-bench"


def fetch(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=300) as r:
        body = r.read()
    return time.perf_counter() - start, len(body)


def api(method: str, path: str, body=None) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:15672/api{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    req.add_header("Content-Type", "application/json")
    try:
        urllib.request.urlopen(req, timeout=120).read()
    except urllib.error.HTTPError as exc:
        if not (method == "DELETE" and exc.code == 404):
            raise


def declare(url: str, queues: int, messages: int) -> float:
    start = time.perf_counter()
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    for i in range(queues):
        ch.queue_declare(f"scrape-q-{i:05d}")
    for i in range(messages):
        ch.basic_publish("", f"scrape-q-{i % queues:05d}", b"m")
    ch.queue_declare(f"scrape-q-{0:05d}", passive=True)     # the publishes are in
    conn.close()
    return time.perf_counter() - start


class Amqpd:
    def __init__(self):
        self.data_dir = tempfile.mkdtemp(prefix="amqpd-scrape-")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "amqpd", "--port", "0", "--http-port", "0",
             "--prometheus-port", "0",
             "--data-dir", self.data_dir, "--log-level", "info"],
            cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONPATH": ROOT})
        self.port = self.metrics = None
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                m = re.search(r"listening on amqp://[\d.]+:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                m = re.search(r"Prometheus metrics on (http://\S+)", line)
                if m:
                    self.metrics = m.group(1)
                if self.port and self.metrics:
                    ready.set()
        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30):
            self.stop()
            raise SystemExit("amqpd did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queues", type=int, default=10000)
    p.add_argument("--messages", type=int, default=10000)
    p.add_argument("--scrapes", type=int, default=10)
    p.add_argument("--no-rabbitmq", action="store_true")
    args = p.parse_args()
    print("# " + " ".join([os.path.basename(sys.executable), *sys.argv]))
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.2f}, Python {platform.python_version()}")
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip()
    print(f"# amqpd revision {rev}; {args.queues} queues, {args.messages} messages")

    brokers = {}
    amqpd = Amqpd()
    try:
        took = declare(f"amqp://guest:guest@127.0.0.1:{amqpd.port}/%2F", args.queues,
                       args.messages)
        print(f"amqpd: declared in {took:.1f} s")
        brokers["amqpd"] = amqpd.metrics.rsplit("/metrics", 1)[0]
        if not args.no_rabbitmq:
            api("DELETE", f"/vhosts/{VHOST}")
            api("PUT", f"/vhosts/{VHOST}")
            api("PUT", f"/permissions/{VHOST}/guest",
                {"configure": ".*", "write": ".*", "read": ".*"})
            took = declare(f"amqp://guest:guest@127.0.0.1:5672/{VHOST}", args.queues,
                           args.messages)
            print(f"RabbitMQ: declared in {took:.1f} s")
            brokers["RabbitMQ 3.10.8"] = "http://127.0.0.1:15692"
        results = {(b, path): [] for b in brokers for path in ("/metrics", "/metrics/per-object")}
        sizes = {}
        for path in ("/metrics", "/metrics/per-object"):
            for name, base in brokers.items():
                fetch(base + path)                      # warm-up
            for _ in range(args.scrapes):
                for name, base in brokers.items():      # A B A B ...
                    t, size = fetch(base + path)
                    results[(name, path)].append(t)
                    sizes[(name, path)] = size
        print()
        print(f"{'broker':18} {'path':22} {'median ms':>10} {'min':>8} {'max':>8} {'bytes':>10}")
        for (name, path), times in results.items():
            ms = [t * 1000 for t in times]
            print(f"{name:18} {path:22} {statistics.median(ms):10.1f} {min(ms):8.1f} "
                  f"{max(ms):8.1f} {sizes[(name, path)]:10d}")
    finally:
        amqpd.stop()
        if not args.no_rabbitmq:
            api("DELETE", f"/vhosts/{VHOST}")


if __name__ == "__main__":
    main()
