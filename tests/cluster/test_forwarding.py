"""Any node serves any client (issue 15, stage 3), with real processes and pika: a classic
durable queue is led by the node it was declared on, and the other nodes forward publishes,
consumers, gets, counts, purge and delete to it over the node-to-node link."""
import threading
import time

import pika
import pytest

from .harness import wait_until


def connect(node):
    return pika.BlockingConnection(pika.URLParameters(node.url))


def placement(cluster, queue: str, vhost: str = "%2F") -> dict:
    keys = cluster.etcd.keys(f"/amqpd/{cluster.name}/placement/")
    return keys.get(f"/amqpd/{cluster.name}/placement/{vhost}/{queue}")


def forwarded(node, queue: str) -> bool:
    """The queue is known on ``node`` (its definition came through the cluster)."""
    try:
        node.api(f"/api/queues/%2F/{queue}")
        return True
    except Exception:
        return False


def declare_on(cluster, node, queue: str, **arguments):
    """Declare a durable queue on ``node`` and wait until every other node has it."""
    conn = connect(node)
    conn.channel().queue_declare(queue, durable=True, arguments=arguments or None)
    conn.close()
    wait_until(lambda: placement(cluster, queue), 5, f"the placement of {queue}")
    for other in cluster.nodes:
        wait_until(lambda: forwarded(other, queue), 5, f"{queue} on {other.name}")


def consume(ch, queue: str, count: int, timeout: float = 10.0, ack: bool = False,
            **kw) -> list:
    """``count`` deliveries (method, properties, body) through a blocking consumer (each
    acked as it comes when ``ack``)."""
    got = []
    deadline = time.monotonic() + timeout
    for method, props, body in ch.consume(queue, inactivity_timeout=0.2, **kw):
        if method is not None:
            got.append((method, props, body))
            if ack:
                ch.basic_ack(method.delivery_tag)
            if len(got) == count:
                break
        if time.monotonic() > deadline:
            break
    ch.cancel()
    return got


def test_publish_consume_get_through_other_nodes(make_cluster):
    cluster = make_cluster(3)
    node1, node2, node3 = cluster.nodes
    declare_on(cluster, node1, "orders")
    assert placement(cluster, "orders")["leader"] == "node1"
    # publishes with confirms through node2 and node3 land in node1's queue
    for node in (node2, node3):
        conn = connect(node)
        ch = conn.channel()
        ch.confirm_delivery()
        for i in range(50):
            ch.basic_publish("", "orders", f"{node.name} {i}".encode(),
                             pika.BasicProperties(delivery_mode=2), mandatory=True)
        conn.close()
    conn = connect(node1)
    assert conn.channel().queue_declare("orders", passive=True).method.message_count == 100
    conn.close()
    # queue.declare through node2 gives the leader's counts
    conn2 = connect(node2)
    ch2 = conn2.channel()
    assert ch2.queue_declare("orders", passive=True).method.message_count == 100
    # consume through node2 (acks), then node3
    ch2.basic_qos(prefetch_count=10)
    got = consume(ch2, "orders", 40, ack=True)
    assert len(got) == 40
    conn3 = connect(node3)
    ch3 = conn3.channel()
    ch3.basic_qos(prefetch_count=0)
    got3 = consume(ch3, "orders", 30)
    assert len(got3) == 30
    ch3.basic_ack(got3[-1][0].delivery_tag, multiple=True)
    # basic.get through node2, ack
    method, _props, body = ch2.basic_get("orders")
    assert method is not None and body
    ch2.basic_ack(method.delivery_tag)
    assert ch2.queue_declare("orders", passive=True).method.message_count == 29
    # purge through node2
    assert ch2.queue_purge("orders").method.message_count == 29
    method, _props, _body = ch2.basic_get("orders", auto_ack=True)
    assert method is None
    conn3.close()
    conn2.close()


def test_nack_requeue_redelivers_and_reject_dead_letters(make_cluster):
    cluster = make_cluster(2)
    node1, node2 = cluster.nodes
    conn = connect(node1)
    ch = conn.channel()
    ch.exchange_declare("dlx", "fanout", durable=True)
    ch.queue_declare("dead", durable=True)
    ch.queue_bind("dead", "dlx")
    conn.close()
    declare_on(cluster, node1, "work", **{"x-dead-letter-exchange": "dlx"})
    wait_until(lambda: forwarded(node2, "dead"), 5, "dead on node2")
    conn = connect(node2)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", "work", b"one", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("", "work", b"two", pika.BasicProperties(delivery_mode=2))
    ch.basic_qos(prefetch_count=1)
    (method, _p, body), = consume(ch, "work", 1)
    assert body == b"one" and not method.redelivered
    ch.basic_nack(method.delivery_tag, requeue=True)
    (method, _p, body), = consume(ch, "work", 1)
    assert body == b"one" and method.redelivered
    ch.basic_reject(method.delivery_tag, requeue=False)
    (method, _p, body), = consume(ch, "work", 1)
    assert body == b"two"
    ch.basic_ack(method.delivery_tag)
    method, props, body = ch.basic_get("dead", auto_ack=True)
    assert body == b"one" and props.headers["x-death"][0]["reason"] == "rejected"
    conn.close()


def test_mandatory_unrouted_returns_and_delete_through_other_node(make_cluster):
    cluster = make_cluster(2)
    node1, node2 = cluster.nodes
    declare_on(cluster, node1, "gone")
    conn = connect(node2)
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish("", "no-such-queue", b"x", mandatory=True)
    ch.basic_publish("", "gone", b"a", pika.BasicProperties(delivery_mode=2))
    assert ch.queue_delete("gone").method.message_count == 1
    wait_until(lambda: not forwarded(node1, "gone"), 5, "gone deleted on node1")
    wait_until(lambda: not placement(cluster, "gone"), 5, "its placement removed")
    conn.close()


def test_consumer_through_other_node_when_leader_dies(make_cluster):
    cluster = make_cluster(2)
    node1, node2 = cluster.nodes
    declare_on(cluster, node1, "jobs")
    conn = connect(node2)
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish("", "jobs", f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
    cancelled = threading.Event()
    got = []

    def on_message(ch_, method, props, body):
        got.append(body)

    cconn = connect(node2)
    cch = cconn.channel()
    cch.basic_qos(prefetch_count=5)
    cch.add_on_cancel_callback(lambda frame: cancelled.set())
    cch.basic_consume("jobs", on_message)
    wait_until(lambda: (cconn.process_data_events(0.05), len(got) >= 5)[1], 10,
               "deliveries through node2")
    node1.kill()
    wait_until(lambda: (cconn.process_data_events(0.05), cancelled.is_set())[1], 10,
               "basic.cancel on node2's consumer")
    # publishes while the leader is gone are nacked, never confirmed
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", "jobs", b"late", pika.BasicProperties(delivery_mode=2))
    conn.close()
    cconn.close()
    node1.start()
    # every confirmed message is still there (the unacked ones came back)
    conn = connect(node2)
    ch = conn.channel()
    bodies = set()

    def count():
        try:
            return ch.queue_declare("jobs", passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            return None
    wait_until(lambda: conn.channel().queue_declare("jobs", passive=True) and True, 10,
               "jobs reachable through node2 again")
    ch = conn.channel()
    assert ch.queue_declare("jobs", passive=True).method.message_count == 20
    while True:
        method, _p, body = ch.basic_get("jobs", auto_ack=True)
        if method is None:
            break
        bodies.add(body)
    assert bodies == {f"m{i}".encode() for i in range(20)}
    conn.close()


def test_leader_change_cancels_consumers_and_old_acks_are_dropped(make_cluster):
    import base64
    import json
    cluster = make_cluster(3)
    node1, node2, node3 = cluster.nodes
    declare_on(cluster, node1, "moving")
    conn = connect(node3)
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", "moving", f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
    cancelled = []
    got = []
    ch.basic_qos(prefetch_count=10)
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame))
    ch.basic_consume("moving", lambda c, m, p, b: got.append(m.delivery_tag))
    wait_until(lambda: (conn.process_data_events(0.05), len(got) == 5)[1], 10,
               "deliveries through node3")
    # the placement moves to node2 (as a failover would move a replicated queue's)
    key = f"/amqpd/{cluster.name}/placement/%2F/moving"
    rec = {"type": "classic", "epoch": 2, "leader": "node2", "members": ["node2"],
           "isr": ["node2"]}
    cluster.etcd.call("/v3/kv/put", {
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(json.dumps(rec).encode()).decode()})
    wait_until(lambda: (conn.process_data_events(0.05), cancelled)[1], 10,
               "basic.cancel on node3's consumer")
    # acks of deliveries made under the old leader are taken (no 406), and dropped
    for tag in got:
        ch.basic_ack(tag)
    # the queue is now node2's: publishes through node3 and node1 reach it, and node1's
    # copy forwards what it held there (those acks were dropped: the messages come back)
    ch.basic_publish("", "moving", b"after", pika.BasicProperties(delivery_mode=2))
    assert ch.is_open
    node1.wait_for_line(r"'moving' in vhost '/': 5 message\(s\) forwarded to node node2")
    conn1 = connect(node1)
    ch1 = conn1.channel()
    wait_until(lambda: ch1.queue_declare("moving", passive=True).method.message_count == 6,
               5, "node1 forwarding to node2")
    bodies = {ch1.basic_get("moving", auto_ack=True)[2] for _ in range(6)}
    assert bodies == {b"after"} | {f"m{i}".encode() for i in range(5)}
    conn1.close()
    conn.close()


def test_declare_ok_comes_once_the_cluster_has_the_queue(make_cluster):
    cluster = make_cluster(2)
    node1, node2 = cluster.nodes
    conn = connect(node1)
    conn.channel().queue_declare("fresh", durable=True)
    # at declare-ok, etcd has both its placement and its definition
    assert placement(cluster, "fresh")["leader"] == "node1"
    meta = cluster.etcd.keys(f"/amqpd/{cluster.name}/meta/queues/")
    assert f"/amqpd/{cluster.name}/meta/queues/%2F/fresh" in meta
    conn.close()


def test_a_restarted_node_forwards_to_the_leader_again(make_cluster):
    cluster = make_cluster(2)
    node1, node2 = cluster.nodes
    declare_on(cluster, node1, "kept")
    assert node2.stop() == 0
    node2.start()
    node2.wait_for_line(r"queue 'kept' in vhost '/' is led by node node1: forwarded there")
    conn = connect(node2)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", "kept", b"after restart", pika.BasicProperties(delivery_mode=2))
    conn.close()
    conn = connect(node1)
    assert conn.channel().basic_get("kept", auto_ack=True)[2] == b"after restart"
    conn.close()


def test_a_queue_whose_placement_went_is_claimed_again_by_its_leader(make_cluster):
    import base64
    cluster = make_cluster(2)
    node1, node2 = cluster.nodes
    declare_on(cluster, node1, "again")
    key = f"/amqpd/{cluster.name}/placement/%2F/again"
    cluster.etcd.call("/v3/kv/deleterange", {"key": base64.b64encode(key.encode()).decode()})
    wait_until(lambda: (placement(cluster, "again") or {}).get("leader") == "node1", 5,
               "node1 to claim it again")
    conn = connect(node2)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", "again", b"still node1's", pika.BasicProperties(delivery_mode=2))
    conn.close()
    conn = connect(node1)
    assert conn.channel().basic_get("again", auto_ack=True)[2] == b"still node1's"
    conn.close()


def test_an_exclusive_consumer_on_the_leader_refuses_consumers_on_other_nodes(make_cluster):
    """As RabbitMQ: basic.consume on a queue in exclusive use is 403 ACCESS_REFUSED on the
    consuming channel, wherever the client is connected (not a consume-ok, then a cancel)."""
    cluster = make_cluster(2)
    node1, node2 = cluster["node1"], cluster["node2"]
    declare_on(cluster, node1, "solo")
    owner = connect(node1)
    owner.channel().basic_consume("solo", lambda *a: None, exclusive=True)
    other = connect(node2)
    ch = other.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        ch.basic_consume("solo", lambda *a: None)
    assert refused.value.reply_code == 403
    assert refused.value.reply_text == \
        "ACCESS_REFUSED - queue 'solo' in vhost '/' in exclusive use"
    assert other.is_open                          # the channel only
    owner.close()
    ch = other.channel()
    ch.basic_consume("solo", lambda *a: None, exclusive=True)   # free again: taken
    other.close()
