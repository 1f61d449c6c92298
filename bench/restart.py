"""Restart time and memory with a large persistent backlog (no pass/fail: figures to read).

    python3 bench/restart.py [--messages 1000000] [--size 16] [--data-dir DIR]

Starts amqpd from this checkout on a fresh data dir, publishes --messages persistent messages to
a durable queue with confirms (pipelined raw frames), sampling amqpd's RSS during the fill; kills
amqpd with SIGKILL, restarts it and prints how long until it listened again and until a client
got the first message (basic.get, from exec), the recovery time it logged, and its RSS.
"""
import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pika  # noqa: E402
from pamqp import body as pbody, commands as C, frame, header  # noqa: E402

from interop.process import AmqpdProcess  # noqa: E402
from tests.rawclient import RawClient  # noqa: E402


def fill(port: int, n: int, size: int) -> float:
    rc = RawClient(port, timeout=300)
    rc.handshake()
    rc.open_channel(1)
    rc.call(1, C.Queue.Declare(queue="backlog", durable=True), C.Queue.DeclareOk)
    rc.call(1, C.Confirm.Select(), C.Confirm.SelectOk)
    props = C.Basic.Properties(delivery_mode=2, content_type="text/plain")
    one = (frame.marshal(C.Basic.Publish(exchange="", routing_key="backlog"), 1)
           + frame.marshal(header.ContentHeader(0, size, props), 1)
           + frame.marshal(pbody.ContentBody(b"x" * size), 1))
    acked = [0]

    def reader():
        while acked[0] < n:
            _, f = rc.recv(300)
            if isinstance(f, C.Basic.Ack):
                acked[0] = f.delivery_tag

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    start, sent = time.monotonic(), 0
    while sent < n:
        k = min(5000, n - sent)
        rc.send(one * k)
        sent += k
        while sent - acked[0] > 200_000:
            time.sleep(0.005)
    t.join(300)
    rc.close()
    return time.monotonic() - start


def fill_offline(data: str, n: int, size: int) -> float:
    """The same backlog written by the store's own code in this process (no network, no
    fsync): for backlogs whose fill over AMQP would take too long here. The queue is declared
    by a real amqpd first, so the definitions are the broker's own."""
    from amqpd.store.store import Store
    p = AmqpdProcess(data_dir=data).start()
    rc = RawClient(p.port, timeout=30)
    rc.handshake()
    rc.open_channel(1)
    rc.call(1, C.Queue.Declare(queue="backlog", durable=True), C.Queue.DeclareOk)
    rc.close()
    p.stop()
    start = time.monotonic()
    store = Store(data, "never")
    qlog = store.queue_log("/", "backlog")
    route = b"\x00\x07backlog"
    props = C.Basic.Properties(delivery_mode=2, content_type="text/plain")
    head = header.ContentHeader(0, size, props).marshal()
    body = b"x" * size
    for seq in range(1, n + 1):
        qlog.append_message(seq, route, head, body)
        if seq % 4096 == 0:
            store.commit.mark_dirty(qlog)
            store.commit.write_pending()
    store.commit.mark_dirty(qlog)
    store.close()
    return time.monotonic() - start


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    """Peak RSS of a process, sampled every 0.2 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0.0, True

    def run(self):
        while self.running:
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return
            time.sleep(0.2)


def first_delivery(port: int) -> tuple[bytes, bool]:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    ch = conn.channel()
    method, _props, body = ch.basic_get("backlog")
    ch.basic_reject(method.delivery_tag, requeue=True)
    conn.close()
    return body, method.redelivered


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--data-dir", default=None, help="parent of the temporary data dir")
    ap.add_argument("--keep", action="store_true", help="do not delete the data dir")
    ap.add_argument("--offline-fill", action="store_true",
                    help="write the backlog with the store's code in-process (no AMQP)")
    args = ap.parse_args()
    print(f"# command: python3 bench/restart.py --messages {args.messages} --size {args.size}")
    data = tempfile.mkdtemp(prefix="amqpd-restart-", dir=args.data_dir)
    try:
        run(args, data)
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)


def run(args, data):
    if args.offline_fill:
        took = fill_offline(data, args.messages, args.size)
        print(f"wrote {args.messages:,} persistent {args.size}-byte messages offline (the "
              f"store's own code, no AMQP) in {took:.1f} s")
    else:
        p = AmqpdProcess(data_dir=data).start()
        base = rss_mb(p.proc.pid)
        sampler = RssSampler(p.proc.pid)
        sampler.start()
        took = fill(p.port, args.messages, args.size)
        sampler.running = False
        print(f"published {args.messages:,} persistent {args.size}-byte messages with confirms "
              f"in {took:.1f} s ({args.messages / took:,.0f} msg/s)")
        print(f"RSS: {base:.0f} MB before, peak {sampler.peak:.0f} MB during the fill, "
              f"{rss_mb(p.proc.pid):.0f} MB after it")
        p.kill()
    if args.keep:
        print(f"data dir kept: {data}")
    if True:
        q = AmqpdProcess(data_dir=data).start(timeout=600)
        try:
            body, redelivered = first_delivery(q.port)
        except Exception:
            print("\n".join(q.log[-30:]))
            raise
        first = time.monotonic() - q.started_at
        assert len(body) == args.size and not redelivered
        recovered = [line for line in q.log if "recovered" in line]
        print(f"after {'a clean stop' if args.offline_fill else 'SIGKILL'}: listening again {q.listening_after:.2f} s after exec, first "
              f"message delivered {first:.2f} s after exec; RSS {rss_mb(q.proc.pid):.0f} MB")
        print(recovered[-1].split(": ", 1)[-1] if recovered else "no recovery line logged")
        q.stop()


if __name__ == "__main__":
    main()
