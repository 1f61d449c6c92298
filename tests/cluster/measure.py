"""Figures of docs/clustering.md, with real processes (not a test: run it by hand):

    python -m tests.cluster.measure [lease_ttl]     # from the repository root; default 3

An etcd and two nodes under a temporary directory; it prints, as p50 / max:
``kill -9`` of node2 -> node1's /api/nodes shows it not running (5 kills, at different
points of the keepalive cycle); SIGTERM -> the same (3 stops); ``queue.declare`` on node1 ->
the queue in node2's management API (10 declares). Polled every 10 ms.
"""
import pathlib
import signal
import statistics
import sys
import tempfile
import time
import urllib.error

import pika

from .harness import Cluster, wait_until


def poll(pred, timeout: float = 20.0) -> float:
    """Seconds until pred() holds, polled every 10 ms."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError("timed out")
        time.sleep(0.01)
    return time.monotonic() - start


def summary(xs) -> str:
    return f"p50 {statistics.median(xs):.2f} s, max {max(xs):.2f} s (n={len(xs)})"


def main(ttl: int) -> None:
    with tempfile.TemporaryDirectory(prefix="amqpd-cluster-") as tmp:
        cluster = Cluster(pathlib.Path(tmp), lease_ttl=ttl)
        try:
            cluster.start(2)
            node1, node2 = cluster.nodes
            gone = lambda: node1.running_nodes()["node2"] is False  # noqa: E731
            kills, stops, declares = [], [], []
            for i in range(5):
                wait_until(lambda: node1.running_nodes().get("node2"), 10, "node2 running")
                time.sleep(0.3 * i)
                node2.signal(signal.SIGKILL)
                kills.append(poll(gone))
                node2.wait()
                node2.start()
            for _ in range(3):
                wait_until(lambda: node1.running_nodes().get("node2"), 10, "node2 running")
                node2.signal(signal.SIGTERM)
                stops.append(poll(gone))
                node2.wait()
                node2.start()
            conn = pika.BlockingConnection(pika.URLParameters(node1.url))
            ch = conn.channel()
            for i in range(10):
                def there(name=f"m{i}"):
                    try:
                        node2.api(f"/api/queues/%2F/{name}")
                        return True
                    except urllib.error.HTTPError:
                        return False
                start = time.monotonic()
                ch.queue_declare(f"m{i}", durable=True)
                poll(there)
                declares.append(time.monotonic() - start)
            conn.close()
            print(f"lease_ttl {ttl}: kill -9 -> not running on another node: {summary(kills)}")
            print(f"SIGTERM -> not running on another node: {summary(stops)}")
            print(f"queue.declare on node1 -> in node2's API: {summary(declares)}")
        finally:
            cluster.teardown()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
