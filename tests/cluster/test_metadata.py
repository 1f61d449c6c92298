"""Cluster metadata through etcd, with real processes: what is declared on one node (over
AMQP or the management API) is there on every node, deletes too, and a node that was down
catches up when it starts again."""
import base64
import json
import urllib.error
import urllib.parse
import urllib.request

import pika

from .harness import wait_until


def call(node, method: str, path: str, body=None) -> int:
    req = urllib.request.Request(node.management_url + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def names(node, path: str) -> set:
    """The names listed at the path; none while it is 404 (a vhost not there yet)."""
    try:
        return {item["name"] for item in node.api(path)}
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return set()
        raise


def q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def bindings(node, vhost: str = "/") -> set:
    return {(b["source"], b["destination"], b["routing_key"])
            for b in node.api(f"/api/bindings/{q(vhost)}") if b["source"]}


def test_topology_declared_on_one_node_is_on_every_node(make_cluster):
    cluster = make_cluster(3)
    node1, node2, node3 = cluster.nodes
    conn = pika.BlockingConnection(pika.URLParameters(node1.url))
    ch = conn.channel()
    ch.exchange_declare("orders", "topic", durable=True)
    ch.queue_declare("eu-orders", durable=True, arguments={"x-max-length": 100})
    ch.queue_bind("eu-orders", "orders", "eu.#")
    ch.queue_declare("scratch", durable=False)          # transient: stays on its node
    conn.close()
    for node in (node2, node3):
        wait_until(lambda: ("orders", "eu-orders", "eu.#") in bindings(node), 5,
                   f"the binding on {node.name}")
        queue = node.api("/api/queues/%2F/eu-orders")
        assert queue["durable"] is True and queue["arguments"] == {"x-max-length": 100}
        assert node.api("/api/exchanges/%2F/orders")["type"] == "topic"
        assert "scratch" not in names(node, "/api/queues/%2F")
    # a publish on node3 is routed by the replicated binding into node3's copy of the queue
    conn = pika.BlockingConnection(pika.URLParameters(node3.url))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("orders", "eu.fr", b"order 1")
    assert ch.basic_get("eu-orders", auto_ack=True)[2] == b"order 1"
    # and a delete on node3 reaches the others
    ch.queue_unbind("eu-orders", "orders", "eu.#")
    ch.queue_delete("eu-orders")
    conn.close()
    for node in (node1, node2):
        wait_until(lambda: "eu-orders" not in names(node, "/api/queues/%2F"), 5,
                   f"the delete on {node.name}")
        assert ("orders", "eu-orders", "eu.#") not in bindings(node)
    assert call(node2, "DELETE", "/api/exchanges/%2F/orders") == 204
    for node in (node1, node3):
        wait_until(lambda: "orders" not in names(node, "/api/exchanges/%2F"), 5,
                   f"the exchange gone on {node.name}")


def test_vhosts_users_permissions_and_policies_are_shared(make_cluster):
    cluster = make_cluster(2)
    node1, node2 = cluster.nodes
    assert call(node1, "PUT", "/api/vhosts/shop") == 201
    assert call(node1, "PUT", "/api/users/alice", {"password": "s3cret", "tags": ""}) == 201
    assert call(node1, "PUT", "/api/permissions/shop/alice",
                {"configure": ".*", "write": ".*", "read": ".*"}) == 201
    assert call(node1, "PUT", "/api/policies/shop/cap",
                {"pattern": "^jobs", "definition": {"max-length": 5},
                 "apply-to": "queues"}) == 201
    wait_until(lambda: "cap" in names(node2, "/api/policies/shop"), 5, "the policy on node2")
    assert "shop" in names(node2, "/api/vhosts")
    # alice logs in on node2 with the password set on node1, into the vhost made there
    url = f"amqp://alice:s3cret@127.0.0.1:{node2.port}/shop"
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare("jobs", durable=True)
    for i in range(8):
        ch.basic_publish("", "jobs", b"job %d" % i)
    conn.close()
    # the policy from node1 applies on node2: max-length 5
    wait_until(lambda: node2.api("/api/queues/shop/jobs")["messages"] == 5, 5, "5 messages")
    # a user and a policy deleted on node2 are gone on node1
    assert call(node2, "DELETE", "/api/users/alice") == 204
    assert call(node2, "DELETE", "/api/policies/shop/cap") == 204
    wait_until(lambda: "alice" not in names(node1, "/api/users"), 5, "alice gone on node1")
    wait_until(lambda: not names(node1, "/api/policies/shop"), 5, "the policy gone on node1")
    assert all(p["user"] != "alice" for p in node1.api("/api/permissions"))


def test_a_node_that_was_down_catches_up(make_cluster):
    cluster = make_cluster(2)
    node1, node2 = cluster.nodes
    conn = pika.BlockingConnection(pika.URLParameters(node1.url))
    ch = conn.channel()
    ch.queue_declare("kept", durable=True)
    ch.queue_declare("dropped", durable=True)
    conn.close()
    wait_until(lambda: {"kept", "dropped"} <= names(node2, "/api/queues/%2F"), 5,
               "both queues on node2")
    assert node2.stop() == 0
    # while node2 is down: one queue deleted, one declared, a vhost made
    conn = pika.BlockingConnection(pika.URLParameters(node1.url))
    ch = conn.channel()
    ch.queue_delete("dropped")
    ch.queue_declare("new", durable=True)
    conn.close()
    assert call(node1, "PUT", "/api/vhosts/later") == 201
    wait_until(lambda: cluster.etcd.keys("/amqpd/test/meta/vhosts/later"), 5,
               "the vhost in etcd")
    node2.start()
    # caught up before it let clients in: no waiting here
    queues = names(node2, "/api/queues/%2F")
    assert "new" in queues and "kept" in queues and "dropped" not in queues
    assert "later" in names(node2, "/api/vhosts")
    # and its restart did not bring the deleted queue back to the cluster
    wait_until(lambda: "dropped" not in names(node1, "/api/queues/%2F"), 1, "still gone")
    assert not cluster.etcd.keys("/amqpd/test/meta/queues/%2F/dropped")


def test_a_memory_only_node_takes_the_clusters_metadata(make_cluster):
    """storage.data_dir null: nothing agreed survives its restart, so it starts from the
    cluster's metadata (and adds its own)."""
    cluster = make_cluster(1)
    node1 = cluster["node1"]
    mem = cluster.add("mem", extra={"storage": {"data_dir": None}})
    conn = pika.BlockingConnection(pika.URLParameters(node1.url))
    conn.channel().queue_declare("durable-q", durable=True)
    conn.close()
    wait_until(lambda: "durable-q" in names(mem, "/api/queues/%2F"), 5, "the queue on mem")
    assert mem.stop() == 0
    mem.start()
    assert "durable-q" in names(mem, "/api/queues/%2F")
    assert node1.running_nodes() == {"mem": True, "node1": True}
