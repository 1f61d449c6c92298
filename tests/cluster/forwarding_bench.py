"""Forwarding throughput: a queue led by node1, measured with amqp-perf (bench/amqp-perf)
through node1 (direct) and through node2 (forwarded), in the same run.

    python -m tests.cluster.forwarding_bench [seconds] [amqp-perf binary]

Scenarios (256-byte bodies, one producer and one consumer connection):
  confirm   persistent publishes with confirms (100 outstanding), publish-only
  consume   consume-only of a prefilled backlog (prefetch 100, acks)
  both      producer with confirms and consumer (prefetch 100, acks) at once
"""
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import pika

from .harness import Cluster, wait_until

ROOT = pathlib.Path(__file__).resolve().parents[2]


def perf(binary, node, args, seconds):
    cmd = [binary, "-h", node.url, "-u", "bench", "--persistent", "--no-delete", "-s", "256",
           "-z", str(seconds), "--quiet", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    line = [x for x in out.splitlines() if x.startswith("RESULT")]
    if not line:
        raise SystemExit(f"no RESULT from {' '.join(cmd)}:\n{out}")
    return dict(re.findall(r"(\w+)=(\S+)", line[-1]))


def purge(node):
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    conn.channel().queue_purge("bench")
    conn.close()


def main() -> None:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    binary = sys.argv[2] if len(sys.argv) > 2 else str(ROOT / "bench/.build/amqp-perf")
    if not os.path.exists(binary):
        raise SystemExit(f"{binary} missing: make -C bench/amqp-perf, or run bench/compare.py "
                         "once")
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(pathlib.Path(tmp), name="bench")
        try:
            cluster.start(2)
            node1, node2 = cluster.nodes
            conn = pika.BlockingConnection(pika.URLParameters(node1.url))
            conn.channel().queue_declare("bench", durable=True)
            conn.close()

            def known():
                try:
                    node2.api("/api/queues/%2F/bench")
                    return True
                except Exception:
                    return False
            wait_until(known, 10, "the queue on node2")
            rows = []
            for label, args in (
                    ("confirm", ["-c", "100", "--publish-only", "--no-drain", "-y", "0"]),
                    ("consume", ["--consume-only", "--prefill", "200000", "-q", "100"]),
                    ("both", ["-c", "100", "-q", "100"])):
                for node, where in ((node1, "node1 (leader)"), (node2, "node2 (forwarded)")):
                    purge(node1)
                    r = perf(binary, node, args, seconds)
                    rate = r["recv_rate"] if label == "consume" else r.get("confirm_rate") \
                        or r["sent_rate"]
                    rows.append((label, where, r["sent_rate"], r.get("confirm_rate", "-"),
                                 r["recv_rate"], r.get("status")))
                    print(*rows[-1], flush=True)
            print(f"\n{'scenario':<9} {'through':<19} {'sent/s':>9} {'confirm/s':>10} "
                  f"{'recv/s':>9}")
            for label, where, sent, conf, recv, _status in rows:
                print(f"{label:<9} {where:<19} {sent:>9} {conf:>10} {recv:>9}")
        finally:
            cluster.teardown()


if __name__ == "__main__":
    main()
