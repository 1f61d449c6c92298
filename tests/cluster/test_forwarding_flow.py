"""Back-pressure across the forwarding links (link_flow.py), with real processes and pika: a
publisher without confirms on a node that does not lead its queue cannot make that node
buffer without bound when the leader falls behind, and a leader's resource alarm blocks the
publishers of other nodes that forward to it, as RabbitMQ's cluster-wide alarms do."""
import signal
import threading
import time

from .harness import wait_until
from .test_forwarding import connect, declare_on

BODY = 16 << 10
COUNT = 8000                       # 128 MiB through node2, far more than its bound


def rss(node) -> int:
    with open(f"/proc/{node.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Sampler(threading.Thread):
    """node's VmRSS, sampled until stopped; ``peak`` and a sample count to wait on."""

    def __init__(self, node):
        super().__init__(daemon=True)
        self.node, self.peak, self.samples = node, 0, 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.peak = max(self.peak, rss(self.node))
            self.samples += 1
            self.stopping.wait(0.02)


def test_a_fast_publisher_through_another_node_is_held_by_the_link(make_cluster):
    cluster = make_cluster(2, lease_ttl=10)      # node1 is paused below, not gone
    node1, node2 = cluster["node1"], cluster["node2"]
    declare_on(cluster, node1, "flow")

    got: set = set()
    consumed = threading.Event()

    def consume():                              # slow: one message at a time, each acked
        conn = connect(node1)
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1)

        def on_message(ch, method, _props, body):
            got.add(int(body[:8]))
            ch.basic_ack(method.delivery_tag)
            if len(got) == COUNT:
                ch.stop_consuming()
        ch.basic_consume("flow", on_message)
        ch.start_consuming()
        conn.close()
        consumed.set()

    sent = [0]
    published = threading.Event()

    def publish():                              # no confirms: as fast as node2 reads
        conn = connect(node2)
        ch = conn.channel()
        pad = b"x" * (BODY - 8)
        for i in range(COUNT):
            ch.basic_publish("", "flow", b"%08d" % i + pad)
            sent[0] = i + 1
        published.set()
        conn.close()

    sampler = Sampler(node2)
    sampler.start()
    wait_until(lambda: sampler.samples > 0, 5, "a first RSS sample")
    baseline = sampler.peak
    threading.Thread(target=consume, daemon=True).start()
    threading.Thread(target=publish, daemon=True).start()
    wait_until(lambda: sent[0] >= 200, 30, "the first publishes")
    node1.signal(signal.SIGSTOP)   # the leader falls behind altogether
    try:
        node2.wait_for_line(r"forwarding to node node1: .* over the link's high watermark",
                            30)
        seen = sampler.samples                 # let the publisher push a while longer
        wait_until(lambda: sampler.samples >= seen + 50, 30, "more RSS samples")
        assert not published.is_set(), "node2 kept reading the publisher"
        held_at = sent[0]
    finally:
        node1.signal(signal.SIGCONT)
    assert consumed.wait(180), f"{len(got)} of {COUNT} consumed"
    assert published.wait(30)
    sampler.stopping.set()
    sampler.join()
    assert got == set(range(COUNT))
    growth = sampler.peak - baseline
    print(f"node2 VmRSS {baseline >> 20} MiB -> peak {sampler.peak >> 20} MiB "
          f"(+{growth >> 20} MiB) for {COUNT * BODY >> 20} MiB published; "
          f"{held_at} of {COUNT} sent while node1 was stopped")
    assert growth < 64 << 20


def test_a_leaders_alarm_blocks_publishers_on_other_nodes(make_cluster):
    cluster = make_cluster(0)
    node1 = cluster.add("node1", extra={"resources": {"disk_free_limit": 10 ** 15}})
    node1.wait_for_line(r"disk resource limit alarm set")
    node2 = cluster.add("node2")
    declare_on(cluster, node1, "held")
    node2.wait_for_line(r"cluster: node node1 is low on disk: publishers to its queues are "
                        r"blocked")

    conn = connect(node2)
    blocked = []
    conn.add_on_connection_blocked_callback(lambda _conn, frame: blocked.append(frame))
    ch = conn.channel()
    ch.queue_declare("local", durable=False)
    ch.basic_publish("", "local", b"node2's own queue: not held")   # no cluster link
    conn.process_data_events(0.2)
    assert blocked == []
    ch.basic_publish("", "held", b"to node1")
    deadline = time.monotonic() + 15
    while not blocked and time.monotonic() < deadline:
        conn.process_data_events(0.1)
    assert blocked, "no connection.blocked from node2"
    assert blocked[0].method.reason == "low on disk"
    # what was published before the block went through: node1 has it
    wait_until(lambda: node1.api("/api/queues/%2F/held").get("messages") == 1, 10,
               "the publish at node1")
    # a consumer on node2 is not held
    other = connect(node2)
    och = other.channel()
    method, _props, body = och.basic_get("held", auto_ack=True)
    assert body == b"to node1"
    other.close()
    # conn is not read while blocked, so a close would wait for ever (as with RabbitMQ):
    # the nodes go at teardown
