"""A soak-test client run as its own OS process (see interop/test_soak.py).

    python interop/soak_worker.py produce URL QUEUE LOG --producer P --count N --seconds S
    python interop/soak_worker.py consume URL QUEUE LOG --prefetch 10 --seed SEED

Every event is one line ``<time.monotonic()> <event> [fields...]`` appended to LOG and flushed
before anything else happens, so a SIGKILL at any moment leaves at most one torn last line
(CLOCK_MONOTONIC is system-wide, so times compare across processes).

Producer lines: ``pub ID``, ``confirmed ID``, ``nacked ID REASON``, ``done``.
Consumer lines: ``start PID``, ``consuming``, ``recv ID REDELIVERED TAG``, ``bad ID BODY``,
``acking ID TAG`` (just before basic.ack is sent), ``acked ID TAG`` (basic_ack returned: the frame
was written to the socket), ``exit clean`` (SIGTERM: cancelled, connection closed).
"""
import argparse
import os
import random
import signal
import sys
import time

import pika
from pika.exceptions import NackError, UnroutableError


class Log:
    def __init__(self, path: str):
        self.f = open(path, "a", buffering=1, encoding="ascii")

    def __call__(self, *fields) -> None:
        # One write() per line, flushed at once (line buffering + explicit flush).
        self.f.write(" ".join([f"{time.monotonic():.6f}", *map(str, fields)]) + "\n")
        self.f.flush()


def body_for(mid: str) -> bytes:
    return f"soak {mid} ".encode() + b"x" * 64


def produce(a) -> int:
    log = Log(a.log)
    conn = pika.BlockingConnection(pika.URLParameters(a.url))
    ch = conn.channel()
    ch.confirm_delivery()
    start = time.monotonic()
    interval = a.seconds / a.count if a.count else 0
    for seq in range(a.count):
        # Paced so the publishing spans the whole window the consumers are being killed in.
        delay = start + seq * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        mid = f"p{a.producer}-{seq:06d}"
        log("pub", mid)
        try:
            ch.basic_publish("", a.queue, body_for(mid), mandatory=True,
                             properties=pika.BasicProperties(message_id=mid, delivery_mode=1))
        except (NackError, UnroutableError) as e:
            log("nacked", mid, type(e).__name__)
            continue
        log("confirmed", mid)
    conn.close()
    log("done")
    return 0


def consume(a) -> int:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    log = Log(a.log)
    log("start", os.getpid())
    rng = random.Random(a.seed)
    conn = pika.BlockingConnection(pika.URLParameters(a.url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=a.prefetch)

    def on_message(ch, method, props, body):
        mid = props.message_id
        log("recv", mid, int(method.redelivered), method.delivery_tag)
        if body != body_for(str(mid)):
            log("bad", mid, body[:40].hex())
        # Hold the message a little (now and then much longer) so kills find unacked ones.
        time.sleep(rng.uniform(0.05, 0.25) if rng.random() < 0.01 else rng.uniform(0.001, 0.011))
        log("acking", mid, method.delivery_tag)
        ch.basic_ack(method.delivery_tag)
        log("acked", mid, method.delivery_tag)

    tag = ch.basic_consume(a.queue, on_message, auto_ack=False)
    log("consuming")
    while not stop:
        conn.process_data_events(time_limit=0.05)
    # Deliveries pika buffered but did not dispatch yet are nacked (requeued) by basic_cancel.
    ch.basic_cancel(tag)
    conn.close()
    log("exit", "clean")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["produce", "consume"])
    p.add_argument("url")
    p.add_argument("queue")
    p.add_argument("log")
    p.add_argument("--producer", default="0")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--prefetch", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    return produce(a) if a.mode == "produce" else consume(a)


if __name__ == "__main__":
    sys.exit(main())
