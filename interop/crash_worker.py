"""A crash-test client run as its own OS process (see interop/test_crash.py).

    python interop/crash_worker.py produce URLFILE LOG --producer P --rate R --seed S
    python interop/crash_worker.py consume URLFILE LOG --prefetch 20 --rate R --seed S

The broker is SIGKILLed and restarted under the worker again and again, so the worker never
gives up: whenever its connection breaks it reconnects (every RETRY seconds) to the URL the
controller last wrote to URLFILE, re-declares the topology and carries on, until SIGTERM.

Every event is one line ``<time.monotonic()> <event> [fields...]`` appended to LOG and flushed
at once, so the log survives anything (CLOCK_MONOTONIC is system-wide: times compare across
processes and with the controller's).

Producer lines: ``connected N``, ``pub ID`` (before basic.publish), ``confirmed ID`` (basic.ack
from the broker arrived), ``nacked ID`` / ``unroutable ID``, ``lost ID ERROR`` (the connection
died with the publish unconfirmed), ``disconnected ERROR``, ``exit clean``.
Consumer lines: ``connected N``, ``consuming``, ``recv ID REDELIVERED TAG``, ``bad ID BODYHEX``,
``acking ID TAG`` (just before basic.ack is sent), ``acked ID TAG`` (bookkeeping only: the ack
was handed to the socket but may have died with the broker), ``disconnected ERROR``,
``exit clean``.
"""
import argparse
import random
import signal
import sys
import time

import pika
from pika.exceptions import AMQPError, NackError, UnroutableError

EXCHANGE = "crash-x"
QUEUE = "crash-q"
ROUTING_KEY = "crash"
RETRY = 0.05
CONNECTION_ERRORS = (AMQPError, OSError, EOFError)


class Log:
    def __init__(self, path: str):
        self.f = open(path, "a", buffering=1, encoding="ascii")

    def __call__(self, *fields) -> None:
        self.f.write(" ".join([f"{time.monotonic():.6f}", *map(str, fields)]) + "\n")
        self.f.flush()


def body_for(mid: str) -> bytes:
    return f"crash {mid} ".encode() + b"y" * 48


def declare(ch) -> None:
    ch.exchange_declare(EXCHANGE, "direct", durable=True)
    ch.queue_declare(QUEUE, durable=True)
    ch.queue_bind(QUEUE, EXCHANGE, ROUTING_KEY)


def error_name(exc: BaseException) -> str:
    return type(exc).__name__


class Worker:
    def __init__(self, a):
        self.a = a
        self.log = Log(a.log)
        self.stop = False
        self.connections = 0
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, *_):
        self.stop = True

    def connect(self):
        """Block until connected (or told to stop); None when stopping."""
        while not self.stop:
            try:
                with open(self.a.urlfile) as f:
                    url = f.read().strip()
                params = pika.URLParameters(url)
                params.connection_attempts = 1
                params.socket_timeout = 2
                params.stack_timeout = 4
                params.blocked_connection_timeout = 10
                conn = pika.BlockingConnection(params)
            except CONNECTION_ERRORS:
                time.sleep(RETRY)
                continue
            self.connections += 1
            self.log("connected", self.connections)
            return conn
        return None

    @staticmethod
    def close(conn) -> None:
        try:
            if conn.is_open:
                conn.close()
        except CONNECTION_ERRORS:
            pass

    # -- producer -------------------------------------------------------------------------------
    def produce(self) -> int:
        a, log = self.a, self.log
        seq = 0
        interval = 1.0 / a.rate if a.rate > 0 else 0.0
        next_at = time.monotonic()
        while not self.stop:
            conn = self.connect()
            if conn is None:
                break
            mid = None
            try:
                ch = conn.channel()
                declare(ch)
                ch.confirm_delivery()
                while not self.stop:
                    if interval:
                        next_at = max(next_at + interval, time.monotonic() - 0.1)
                        delay = next_at - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                    seq += 1
                    mid = f"p{a.producer}-{seq:07d}"   # never reused, even after a failed publish
                    log("pub", mid)
                    try:
                        ch.basic_publish(EXCHANGE, ROUTING_KEY, body_for(mid), mandatory=True,
                                         properties=pika.BasicProperties(message_id=mid,
                                                                         delivery_mode=2))
                    except NackError:
                        log("nacked", mid)
                    except UnroutableError:
                        log("unroutable", mid)
                    else:
                        log("confirmed", mid)
                    mid = None
            except CONNECTION_ERRORS as exc:
                if mid is not None:
                    log("lost", mid, error_name(exc))
                log("disconnected", error_name(exc))
                time.sleep(RETRY)
                continue
            self.close(conn)
        log("exit", "clean")
        return 0

    # -- consumer -------------------------------------------------------------------------------
    def consume(self) -> int:
        a, log = self.a, self.log
        rng = random.Random(a.seed)
        interval = 1.0 / a.rate if a.rate > 0 else 0.0
        pace = [time.monotonic()]

        def on_message(ch, method, props, body):
            if self.stop:
                # Told to stop: leave it unacked (the close requeues it). Returning without an
                # ack also ends pika's dispatch loop, which acks would keep refilling.
                return
            mid = props.message_id
            log("recv", mid, int(method.redelivered), method.delivery_tag)
            if body != body_for(str(mid)):
                log("bad", mid, body[:40].hex())
            # Hold it a moment (now and then longer) so every kill finds unacked messages, and
            # consume slower than the producers publish so a backlog builds up in the store.
            hold = rng.uniform(0.01, 0.04) if rng.random() < 0.02 else rng.uniform(0, 0.002)
            pace[0] = max(pace[0] + interval, time.monotonic() - 0.1)
            time.sleep(max(hold, pace[0] - time.monotonic()))
            log("acking", mid, method.delivery_tag)
            ch.basic_ack(method.delivery_tag)
            log("acked", mid, method.delivery_tag)

        while not self.stop:
            conn = self.connect()
            if conn is None:
                break
            try:
                ch = conn.channel()
                declare(ch)
                ch.basic_qos(prefetch_count=a.prefetch)
                tag = ch.basic_consume(QUEUE, on_message, auto_ack=False)
                log("consuming")
                while not self.stop:
                    conn.process_data_events(time_limit=0.05)
                # Deliveries pika buffered but did not dispatch are requeued by the cancel.
                ch.basic_cancel(tag)
            except CONNECTION_ERRORS as exc:
                log("disconnected", error_name(exc))
                time.sleep(RETRY)
                continue
            self.close(conn)
        log("exit", "clean")
        return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["produce", "consume"])
    p.add_argument("urlfile")
    p.add_argument("log")
    p.add_argument("--producer", default="0")
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--prefetch", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    w = Worker(a)
    return w.produce() if a.mode == "produce" else w.consume()


if __name__ == "__main__":
    sys.exit(main())
