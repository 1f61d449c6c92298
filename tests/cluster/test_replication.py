"""Replicated quorum queues with real processes (etcd and three amqpd nodes) and pika: the
placement a declare makes, confirmed messages on every member's disk, the in-sync set
shrinking when a member dies (confirms go on with two of three, wait with one) and growing
again when it comes back and catches up."""
import hashlib
import os
import threading
import urllib.parse

import pika

from .harness import wait_until

QUORUM = {"x-queue-type": "quorum"}


def placement(cluster, queue: str, vhost: str = "/") -> dict | None:
    key = (f"/amqpd/{cluster.name}/placement/{urllib.parse.quote(vhost, safe='')}/"
           f"{urllib.parse.quote(queue, safe='')}")
    return cluster.etcd.keys(key).get(key)


def queue_dir(node, queue: str, vhost: str = "/") -> str:
    digest = hashlib.sha1(f"{vhost}\0{queue}".encode()).hexdigest()[:24]
    return os.path.join(node.directory, "data", "queues", digest)


def segments(node, queue: str) -> dict:
    """{segment file name: its bytes} of the node's copy of the queue's log."""
    path = queue_dir(node, queue)
    out = {}
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            if name.endswith(".seg"):
                with open(os.path.join(path, name), "rb") as f:
                    out[name] = f.read()
    return out


def channel(node):
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    ch = conn.channel()
    ch.confirm_delivery()
    return conn, ch


def publish(ch, queue: str, bodies) -> None:
    """Publish with confirms (pika raises when one is nacked)."""
    for body in bodies:
        ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))


def declare(node, queue: str, **args):
    conn, ch = channel(node)
    ch.queue_declare(queue, durable=True, arguments={**QUORUM, **args})
    return conn, ch


def leader_node(cluster, queue: str):
    rec = placement(cluster, queue)
    return cluster[rec["leader"]] if rec else None


def drain(node, queue: str, timeout: float = 10.0) -> list:
    """Every message of the queue, consumed with acks: [(body, redelivered)]."""
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    ch = conn.channel()
    out = []
    for method, _props, body in ch.consume(queue, inactivity_timeout=1.0):
        if method is None:
            break
        out.append((body, method.redelivered))
        ch.basic_ack(method.delivery_tag)
    ch.cancel()
    conn.close()
    return out


def confirm_in_thread(ch, queue: str, body: bytes):
    """Publish one message with confirms on a thread: (thread, result dict)."""
    result = {}

    def run():
        try:
            publish(ch, queue, [body])
            result["ok"] = True
        except Exception as exc:         # noqa: BLE001 (reported to the test)
            result["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_declare_places_three_members_and_confirmed_messages_are_on_every_disk(make_cluster):
    cluster = make_cluster(3)
    node1, node2, node3 = cluster.nodes
    conn, ch = declare(node1, "orders")
    rec = wait_until(lambda: placement(cluster, "orders"), 5, "the placement record")
    assert rec["type"] == "quorum" and rec["leader"] == "node1" and rec["epoch"] == 1
    assert sorted(rec["members"]) == ["node1", "node2", "node3"]
    assert sorted(rec["isr"]) == ["node1", "node2", "node3"]
    publish(ch, "orders", [b"order %d" % i for i in range(100)])
    conn.close()
    # every member fsynced them before the confirm: byte-identical segments everywhere
    mine = segments(node1, "orders")
    assert mine and b"order 99" in b"".join(mine.values())
    for node in (node2, node3):
        theirs = segments(node, "orders")
        assert theirs == mine, f"{node.name}'s copy differs"
    bodies = [b for b, _r in drain(node1, "orders")]
    assert bodies == [b"order %d" % i for i in range(100)]


def test_isr_shrinks_and_grows_back(make_cluster):
    cluster = make_cluster(3)
    node1 = cluster["node1"]
    conn, ch = declare(node1, "jobs")
    wait_until(lambda: placement(cluster, "jobs"), 5, "the placement record")
    publish(ch, "jobs", [b"a%d" % i for i in range(10)])
    # one follower dies: the in-sync set loses it, confirms go on with two of three
    cluster["node3"].kill()
    publish(ch, "jobs", [b"b%d" % i for i in range(10)])
    assert sorted(placement(cluster, "jobs")["isr"]) == ["node1", "node2"]
    # the second one dies too: two of three would be below a majority, so confirms wait
    cluster["node2"].kill()
    thread, result = confirm_in_thread(ch, "jobs", b"c0")
    thread.join(2.0)
    assert thread.is_alive() and not result, "a confirm without a majority in sync"
    assert sorted(placement(cluster, "jobs")["isr"]) == ["node1", "node2"]
    # node2 comes back, catches up: the waiting confirm arrives
    cluster["node2"].start()
    thread.join(20)
    assert result.get("ok"), result
    # node3 comes back and rejoins the in-sync set
    cluster["node3"].start()
    wait_until(lambda: sorted(placement(cluster, "jobs")["isr"]) == ["node1", "node2", "node3"],
               15, "node3 back in the in-sync set")
    mine = segments(node1, "jobs")
    wait_until(lambda: segments(cluster["node3"], "jobs") == mine, 5, "node3's copy")
    conn.close()
    bodies = [b for b, _r in drain(node1, "jobs")]
    assert bodies == [b"a%d" % i for i in range(10)] + [b"b%d" % i for i in range(10)] + [b"c0"]


def test_delete_removes_the_placement_and_every_copy(make_cluster):
    cluster = make_cluster(3)
    conn, ch = declare(cluster["node1"], "gone")
    wait_until(lambda: placement(cluster, "gone"), 5, "the placement record")
    publish(ch, "gone", [b"x"] * 10)
    for node in cluster.nodes:
        assert segments(node, "gone")
    ch.queue_delete("gone")
    conn.close()
    wait_until(lambda: placement(cluster, "gone") is None, 5, "the placement removed")
    for node in cluster.nodes:
        wait_until(lambda: not os.path.exists(queue_dir(node, "gone")), 5,
                   f"{node.name}'s copy removed")
        wait_until(lambda: "gone" not in {q["name"] for q in node.api("/api/queues")}, 5,
                   f"the queue gone from {node.name}")
    # declared again: a new queue, empty, replicated again
    conn, ch = declare(cluster["node2"], "gone")
    rec = wait_until(lambda: placement(cluster, "gone"), 5, "the new placement record")
    assert rec["leader"] == "node2" and rec["epoch"] == 1
    publish(ch, "gone", [b"new"])
    conn.close()
    assert [b for b, _r in drain(cluster["node2"], "gone")] == [b"new"]
