"""Measurements for the message-lifecycle features (no pass/fail: figures to read).

    python3 bench/lifecycle.py [--pending 1000000] [--probes 1000]

Starts amqpd from this checkout (python -m amqpd) on a free port with a temporary data dir and
prints:
  1. per-message TTL: how late a 100 ms message expires when it sits behind a long-lived one
  2. delayed exchange: lateness (p50/p99) of probe messages with 100,000 messages pending
  3. delayed exchange: publish rate and broker RSS with --pending messages pending
  4. consistent-hash exchange: spread of 100,000 routing keys over 4 queues
"""
import argparse
import os
import statistics
import struct
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pika  # noqa: E402
from pamqp import body as pbody, commands as C, frame, header  # noqa: E402

from interop.process import AmqpdProcess  # noqa: E402
from tests.rawclient import RawClient  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def publish_bulk(port: int, exchange: str, routing_key: str, n: int, props, size: int = 16):
    """n publishes with confirms, pipelined; returns the rate (confirmed msg/s)."""
    rc = RawClient(port, timeout=300)
    rc.handshake()
    rc.open_channel(1)
    rc.call(1, C.Confirm.Select(), C.Confirm.SelectOk)
    one = (frame.marshal(C.Basic.Publish(exchange=exchange, routing_key=routing_key), 1)
           + frame.marshal(header.ContentHeader(0, size, props), 1)
           + frame.marshal(pbody.ContentBody(b"x" * size), 1))
    acked = [0]

    def reader():
        while acked[0] < n:
            _, f = rc.recv(300)
            if isinstance(f, (C.Basic.Ack, C.Basic.Nack)):
                acked[0] = f.delivery_tag

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    start, sent = time.monotonic(), 0
    while sent < n:
        k = min(2000, n - sent)
        rc.send(one * k)
        sent += k
        while sent - acked[0] > 50000:
            time.sleep(0.002)
    t.join(300)
    rate = n / (time.monotonic() - start)
    rc.close()
    return rate


def ttl_behind_long_lived(url: str, rounds: int = 40):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare("ttl-dlx", "fanout")
    ch.queue_declare("ttl-dead")
    ch.queue_bind("ttl-dead", "ttl-dlx")
    ch.queue_declare("ttl-work", arguments={"x-dead-letter-exchange": "ttl-dlx"})
    ch.basic_publish("", "ttl-work", b"long", pika.BasicProperties(expiration="3600000"))
    late = []
    for _ in range(rounds):
        sent = time.monotonic()
        ch.basic_publish("", "ttl-work", b"short", pika.BasicProperties(expiration="100"))
        while True:
            m = ch.basic_get("ttl-dead", auto_ack=True)
            if m[0] is not None:
                late.append((time.monotonic() - sent) * 1000 - 100)
                break
            conn.sleep(0.001)
    left = ch.queue_declare("ttl-work", passive=True).method.message_count
    conn.close()
    return late, left


def delayed_lateness(url: str, port: int, pending: int, probes: int):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare("dly", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    ch.queue_declare("dly-probe")
    ch.queue_bind("dly-probe", "dly", "probe")
    far = C.Basic.Properties(headers={"x-delay": 3_600_000})
    publish_bulk(port, "dly", "parked", pending, far)
    late = []
    done = threading.Event()

    def on_message(c, method, props, body):
        sent, delay = struct.unpack(">dI", body)
        late.append((time.time() - sent) * 1000 - delay)
        if len(late) >= probes:
            done.set()
            c.stop_consuming()

    pub = pika.BlockingConnection(pika.URLParameters(url)).channel()
    for i in range(probes):
        delay = 50 + (i * 37) % 450
        pub.basic_publish("dly", "probe", struct.pack(">dI", time.time(), delay),
                          pika.BasicProperties(headers={"x-delay": delay}))
    ch.basic_consume("dly-probe", on_message, auto_ack=True)
    ch.start_consuming()
    pub.connection.close()
    conn.close()
    return late


def delayed_million(url: str, port: int, pid: int, n: int):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare("dly-m", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    ch.queue_declare("rtt")
    before = rss_mb(pid)

    def rtt_ms(k=200):
        t = time.monotonic()
        for _ in range(k):
            ch.basic_publish("", "rtt", b"x")
            while ch.basic_get("rtt", auto_ack=True)[0] is None:
                pass
        return (time.monotonic() - t) * 1000 / k

    rtt_before = rtt_ms()
    rate = publish_bulk(port, "dly-m", "k", n, C.Basic.Properties(headers={"x-delay": 3_600_000}))
    after = rss_mb(pid)
    rtt_after = rtt_ms()
    conn.close()
    return rate, before, after, rtt_before, rtt_after


def consistent_hash_spread(url: str, port: int, keys: int = 100_000):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare("chx", "x-consistent-hash")
    for i in range(4):
        ch.queue_declare(f"chq{i}")
        ch.queue_bind(f"chq{i}", "chx", "1")
    rc = RawClient(port, timeout=120)
    rc.handshake()
    rc.open_channel(1)
    props = C.Basic.Properties()
    chunk = []
    for k in range(keys):
        chunk.append(frame.marshal(C.Basic.Publish(exchange="chx", routing_key=f"key-{k}"), 1)
                     + frame.marshal(header.ContentHeader(0, 0, props), 1))
        if len(chunk) == 5000:
            rc.send(b"".join(chunk))
            chunk = []
    rc.send(b"".join(chunk))
    rc.call(1, C.Basic.Qos(), C.Basic.QosOk)        # everything before it has been routed
    rc.close()
    counts = [ch.queue_declare(f"chq{i}", passive=True).method.message_count for i in range(4)]
    conn.close()
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pending", type=int, default=1_000_000)
    ap.add_argument("--probes", type=int, default=1000)
    args = ap.parse_args()
    print(f"# command: python3 bench/lifecycle.py --pending {args.pending} --probes {args.probes}")
    print(f"# date: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}  cpus: {os.cpu_count()}  load: "
          f"{open('/proc/loadavg').read().split()[0]}")
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    print(f"# amqpd revision: {rev}")

    p = AmqpdProcess().start()
    try:
        late, left = ttl_behind_long_lived(p.url)
        print(f"1. TTL 100 ms behind a 1 h message: expired {statistics.median(late):.1f} ms late "
              f"(p50), {pct(late, 99):.1f} ms (max of {len(late)}); long-lived still queued: {left}")
        late = delayed_lateness(p.url, p.port, 100_000, args.probes)
        print(f"2. delayed exchange, 100,000 pending: {len(late)} probes (x-delay 50-500 ms) "
              f"late by p50 {pct(late, 50):.1f} ms, p99 {pct(late, 99):.1f} ms, "
              f"max {max(late):.1f} ms")
        rate, before, after, rtt0, rtt1 = delayed_million(p.url, p.port, p.proc.pid, args.pending)
        print(f"3. delayed exchange, {args.pending:,} more pending: published at {rate:,.0f} "
              f"msg/s with confirms; broker RSS {before:.0f} MB -> {after:.0f} MB "
              f"({(after - before) * 1024 * 1024 / args.pending:.0f} B per pending message); "
              f"unrelated publish+get round trip {rtt0:.2f} ms before, {rtt1:.2f} ms after")
        counts = consistent_hash_spread(p.url, p.port)
        total = sum(counts)
        shares = ", ".join(f"{c / total * 100:.1f}%" for c in counts)
        print(f"4. consistent hash, 100,000 keys over 4 equal-weight queues: {counts} ({shares})")
    finally:
        p.stop()
        p.cleanup()


if __name__ == "__main__":
    main()
