"""CPU per message of the durable path inside the broker, without sockets (figures to read).

    PYTHONPATH=. python3 bench/durable_path.py [--messages 200000] [--rounds 3]

A broker with a store (fsync never) and one durable queue: 1 KiB persistent messages are
published 100 at a time, taken (basic.get path: DELIVERED marker), settled (SETTLED marker),
and the commit path writes once per 100, as the edge does once per loop turn. Prints the CPU
microseconds per message of each round. Run it from two checkouts, alternating, to compare
them: it is what amqp-perf s3 costs in the domain and the store, without the noise of the
network and the load generator.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from amqpd import config as amqpd_config  # noqa: E402
from amqpd.access.control import AccessControl  # noqa: E402
from amqpd.broker.broker import Broker  # noqa: E402
from amqpd.broker.clock import ManualClock  # noqa: E402
from amqpd.store.store import Store  # noqa: E402
from tests.unit.stubs import commit_turn, declare_queue, message  # noqa: E402


def one_round(n: int) -> float:
    with tempfile.TemporaryDirectory(prefix="amqpd-durable-") as d:
        cfg = amqpd_config.from_dict({"storage": {"data_dir": d, "fsync": "never"}})
        store = Store(d, "never")
        broker = Broker(cfg, store, AccessControl(cfg), ManualClock())
        vhost = broker.vhosts["/"]
        q = declare_queue(vhost, "q", durable=True)
        ex = vhost.exchanges[""]
        batch = [message(b"x" * 1024, "q", delivery_mode=2) for _ in range(100)]
        start = time.process_time()
        for _ in range(n // 100):
            for m in batch:
                vhost.publish(ex, m)
            for _ in range(100):
                q.settle(q.take())
            commit_turn(store)
        took = time.process_time() - start
        store.close()
    return took / n * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for _ in range(args.rounds):
        print(f"{one_round(args.messages):.2f} us/msg")


if __name__ == "__main__":
    main()
