"""A quorum queue's members changed at run time, with real processes (etcd, three amqpd
nodes) and pika: a member added catches up and joins the in-sync set, the leader removed
hands the queue to another member, grow and shrink over every queue, a stopped node's
replicas moved before it is forgotten — and every confirmed message is still there."""
import base64
import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request

import pika

from .harness import wait_until
from .test_replication import (channel, confirm_in_thread, declare, drain, placement, publish,
                               queue_dir, segments)


def call(node, method: str, path: str, body=None):
    """(status, parsed JSON body or None) of a management API request as guest."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(node.management_url + path, data=data, method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=90) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, (json.loads(raw) if raw else None)


def replicas(queue: str, vhost: str = "/") -> str:
    return (f"/api/queues/quorum/{urllib.parse.quote(vhost, safe='')}/"
            f"{urllib.parse.quote(queue, safe='')}/replicas")


def in_sync(cluster, queue: str, node: str) -> dict | None:
    rec = placement(cluster, queue)
    return rec if rec and node in rec["isr"] else None


def test_a_member_added_catches_up_and_the_leader_removed_hands_the_queue_over(make_cluster):
    cluster = make_cluster(3)
    node1, node2, node3 = cluster.nodes
    conn, ch = declare(node1, "orders", **{"x-quorum-initial-group-size": 2})
    rec = wait_until(lambda: placement(cluster, "orders"), 5, "the placement record")
    assert rec["leader"] == "node1" and len(rec["members"]) == 2
    spare = next(n for n in cluster.nodes if n.name not in rec["members"])
    other = next(n for n in cluster.nodes if n.name in rec["members"] and n is not node1)
    publish(ch, "orders", [b"before %d" % i for i in range(200)])

    # added through any node: the new member catches up and joins the in-sync set
    assert call(other, "POST", replicas("orders") + "/add", {"node": spare.name})[0] == 204
    rec = wait_until(lambda: in_sync(cluster, "orders", spare.name), 20,
                     f"{spare.name} in the in-sync set")
    assert sorted(rec["members"]) == sorted([node1.name, other.name, spare.name])
    assert rec["epoch"] == 1                      # no leader change for an added member
    publish(ch, "orders", [b"after %d" % i for i in range(100)])
    assert segments(spare, "orders") == segments(node1, "orders")   # confirmed: on its disk
    assert call(node3, "POST", replicas("orders") + "/add", {"node": spare.name})[0] == 204
    conn.close()

    # the leader removed: an in-sync member leads (a new epoch), node1's copy goes
    assert call(node2, "DELETE", replicas("orders") + "/delete", {"node": "node1"})[0] == 202
    rec = wait_until(lambda: (r := placement(cluster, "orders")) and "node1" not in
                     r["members"] and r, 10, "node1 removed")
    assert rec["leader"] in (other.name, spare.name) and rec["epoch"] >= 2
    wait_until(lambda: not os.path.exists(queue_dir(node1, "orders")), 10,
               "node1's copy removed")
    # every confirmed message, through node1 (a proxy now) and the new leader
    bodies = sorted(b for b, _r in drain(node1, "orders"))
    assert bodies == sorted([b"before %d" % i for i in range(200)]
                            + [b"after %d" % i for i in range(100)])
    assert call(node2, "DELETE", replicas("orders") + "/delete", {"node": "node1"})[0] == 202


def test_refusals(make_cluster):
    cluster = make_cluster(3)
    node1 = cluster["node1"]
    conn, ch = declare(node1, "solo", **{"x-quorum-initial-group-size": 1})
    ch.queue_declare("plain", durable=True)
    wait_until(lambda: placement(cluster, "solo") and placement(cluster, "plain"), 5,
               "the placement records")
    conn.close()
    status, body = call(node1, "POST", replicas("plain") + "/add", {"node": "node2"})
    assert status == 400 and "not a quorum queue" in body["reason"]
    assert call(node1, "POST", replicas("nope") + "/add", {"node": "node2"})[0] == 404
    assert call(node1, "POST", replicas("solo") + "/add", {"node": "node9"})[0] == 404
    status, body = call(node1, "POST", replicas("solo") + "/add", {})
    assert status == 400 and "node" in body["reason"]
    status, body = call(node1, "DELETE", replicas("solo") + "/delete", {"node": "node1"})
    assert status == 400 and "last member" in body["reason"]
    assert placement(cluster, "solo")["members"] == ["node1"]
    status, body = call(node1, "POST", "/api/queues/quorum/replicas/on/node2/grow",
                        {"strategy": "odd"})
    assert status == 400 and "strategy" in body["reason"]


def test_grow_and_shrink_every_queue(make_cluster):
    cluster = make_cluster(3)
    node1 = cluster["node1"]
    conn, ch = declare(node1, "q1", **{"x-quorum-initial-group-size": 1})
    ch.queue_declare("q2", durable=True,
                     arguments={"x-queue-type": "quorum", "x-quorum-initial-group-size": 1})
    ch.queue_declare("other", durable=True,
                     arguments={"x-queue-type": "quorum", "x-quorum-initial-group-size": 1})
    wait_until(lambda: all(placement(cluster, q) for q in ("q1", "q2", "other")), 5,
               "the placement records")
    publish(ch, "q1", [b"m%d" % i for i in range(50)])
    conn.close()

    status, results = call(node1, "POST",
                           "/api/queues/quorum/replicas/on/node2/grow?results=true",
                           {"strategy": "all", "queue_pattern": "^q"})
    assert status == 200
    assert sorted((r["name"], r["ok"]) for r in results) == [("q1", True), ("q2", True)]
    for q in ("q1", "q2"):
        wait_until(lambda: in_sync(cluster, q, "node2"), 20, f"node2 in {q}'s in-sync set")
    assert placement(cluster, "other")["members"] == ["node1"]      # not matched
    assert segments(cluster["node2"], "q1") == segments(node1, "q1")

    status, _ = call(node1, "DELETE", "/api/queues/quorum/replicas/on/node2/shrink")
    assert status == 202
    for q in ("q1", "q2"):
        assert placement(cluster, q)["members"] == ["node1"]
    wait_until(lambda: not os.path.exists(queue_dir(cluster["node2"], "q1")), 10,
               "node2's copy removed")
    assert sorted(b for b, _r in drain(cluster["node3"], "q1")) == \
        sorted(b"m%d" % i for i in range(50))


def test_a_removal_that_would_stop_confirms_is_refused(make_cluster):
    """Three members, one stopped (out of the in-sync set): removing an in-sync member would
    leave one in-sync copy of two voters, below a majority, so it is refused; removing the
    stopped one leaves two of two, and confirms go on."""
    cluster = make_cluster(3)
    node1 = cluster["node1"]
    conn, ch = declare(node1, "tally")
    rec = wait_until(lambda: (r := placement(cluster, "tally")) and len(r["isr"]) == 3 and r,
                     10, "three in-sync members")
    down, keep = [cluster[m] for m in rec["members"] if m != "node1"]
    assert down.stop() == 0
    wait_until(lambda: down.name not in placement(cluster, "tally")["isr"], 10,
               f"{down.name} out of the in-sync set")
    status, body = call(node1, "DELETE", replicas("tally") + "/delete", {"node": keep.name})
    assert status == 400 and "below a majority" in body["reason"], body
    assert keep.name in placement(cluster, "tally")["members"]
    status, body = call(node1, "DELETE", replicas("tally") + "/delete", {"node": down.name})
    assert status == 202, body
    rec = placement(cluster, "tally")
    assert sorted(rec["members"]) == sorted(rec["isr"]) == sorted(["node1", keep.name])
    publish(ch, "tally", [b"after"])                 # confirmed by the two left
    conn.close()


def test_a_stopped_node_is_forgotten_after_its_replicas_moved(make_cluster):
    cluster = make_cluster(3)
    node1, node2, node3 = cluster.nodes
    conn, ch = declare(node1, "ledger", **{"x-quorum-initial-group-size": 2})
    rec = wait_until(lambda: placement(cluster, "ledger"), 5, "the placement record")
    gone = cluster[next(m for m in rec["members"] if m != "node1")]
    spare = next(n for n in cluster.nodes if n.name not in rec["members"])
    publish(ch, "ledger", [b"entry %d" % i for i in range(300)])
    conn.close()

    assert gone.stop() == 0
    wait_until(lambda: not node1.running_nodes().get(gone.name), 10, f"{gone.name} stopped")
    status, body = call(node1, "DELETE", f"/api/nodes/{gone.name}")
    assert status == 204, body
    rec = placement(cluster, "ledger")
    assert sorted(rec["members"]) == sorted(["node1", spare.name])
    assert spare.name in rec["isr"]                  # in sync before the old one went
    assert gone.name not in node1.running_nodes()

    # the leader dies: the moved replica has every confirmed message
    node1.kill()
    wait_until(lambda: (r := placement(cluster, "ledger")) and r["leader"] == spare.name,
               15, f"{spare.name} leads")
    bodies = sorted(b for b, _r in drain(spare, "ledger"))
    assert bodies == sorted(b"entry %d" % i for i in range(300))


def test_members_change_under_confirmed_traffic(make_cluster):
    """A producer with confirms keeps publishing through a third node while a member is
    added and the leader is removed: every message confirmed is there at the end."""
    cluster = make_cluster(3)
    node1 = cluster["node1"]
    conn, _ch = declare(node1, "flow", **{"x-quorum-initial-group-size": 2})
    conn.close()
    rec = wait_until(lambda: placement(cluster, "flow"), 5, "the placement record")
    spare = next(n for n in cluster.nodes if n.name not in rec["members"])
    confirmed, nacked, stop = [], [], threading.Event()

    def produce():
        pconn, pch = channel(spare)
        i = 0
        while not stop.is_set():
            body = b"m%d" % i
            i += 1
            try:
                publish(pch, "flow", [body])
                confirmed.append(body)
            except pika.exceptions.NackError:
                nacked.append(body)              # not confirmed: the client republishes
        pconn.close()
    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        def more(n):
            goal = len(confirmed) + n
            wait_until(lambda: len(confirmed) >= goal, 20, f"{n} more confirms")
        more(200)
        assert call(node1, "POST", replicas("flow") + "/add", {"node": spare.name})[0] == 204
        wait_until(lambda: in_sync(cluster, "flow", spare.name), 20, "the new member in sync")
        more(200)
        assert call(spare, "DELETE", replicas("flow") + "/delete", {"node": "node1"})[0] == 202
        wait_until(lambda: placement(cluster, "flow")["leader"] != "node1", 10,
                   "another leader")
        more(200)
    finally:
        stop.set()
        thread.join(10)
    got = {b for b, _r in drain(spare, "flow")}
    lost = [b for b in confirmed if b not in got]
    assert not lost, f"{len(lost)} confirmed messages lost, e.g. {lost[:5]}"


def test_a_client_without_cancel_notifications_keeps_consuming_across_a_leader_change(
        make_cluster):
    """A client that does not advertise consumer_cancel_notify cannot be told its consumer
    ended: its node subscribes it again at the new leader, under the same tag."""
    cluster = make_cluster(3)
    node1, node3 = cluster["node1"], cluster["node3"]
    conn, ch = declare(node1, "jobs")
    rec = wait_until(lambda: placement(cluster, "jobs"), 5, "the placement record")
    params = pika.URLParameters(node3.url)
    params.client_properties = {"capabilities": {"publisher_confirms": True,
                                                 "basic.nack": True}}
    consumer = pika.BlockingConnection(params)
    cch = consumer.channel()
    got = []
    cch.basic_consume("jobs", lambda c, m, p, body: (got.append(body),
                                                     c.basic_ack(m.delivery_tag)))
    publish(ch, "jobs", [b"before"])
    deadline_wait(consumer, lambda: b"before" in got, "the first message")

    status, _ = call(node3, "DELETE", replicas("jobs") + "/delete", {"node": rec["leader"]})
    assert status == 202
    wait_until(lambda: placement(cluster, "jobs")["leader"] != rec["leader"], 10,
               "another leader")
    survivor = cluster[placement(cluster, "jobs")["leader"]]
    pconn, pch = channel(survivor)
    publish(pch, "jobs", [b"after"])
    deadline_wait(consumer, lambda: b"after" in got, "a message from the new leader")
    pconn.close()

    # the old leader back as a member, then the new leader killed: a failover
    assert call(node3, "POST", replicas("jobs") + "/add", {"node": rec["leader"]})[0] == 204
    wait_until(lambda: in_sync(cluster, "jobs", rec["leader"]), 20, "the member in sync")
    while placement(cluster, "jobs")["leader"] == "node3":   # (the consumer's node stays)
        assert call(node3, "DELETE", replicas("jobs") + "/delete", {"node": "node3"})[0] == 202
        wait_until(lambda: placement(cluster, "jobs")["leader"] != "node3", 10, "a leader")
        assert call(node3, "POST", replicas("jobs") + "/add", {"node": "node3"})[0] == 204
        wait_until(lambda: in_sync(cluster, "jobs", "node3"), 20, "node3 in sync")
    killed = placement(cluster, "jobs")
    assert len(killed["isr"]) == 3
    cluster[killed["leader"]].kill()
    wait_until(lambda: placement(cluster, "jobs")["epoch"] > killed["epoch"], 15,
               "a failover")
    survivor = cluster[placement(cluster, "jobs")["leader"]]
    pconn, pch = channel(survivor)
    thread, result = confirm_in_thread(pch, "jobs", b"after the failover")
    thread.join(15)
    assert result.get("ok"), result
    deadline_wait(consumer, lambda: b"after the failover" in got, "a message after failover")
    assert cch.is_open                              # no cancel, no channel error
    consumer.close()
    pconn.close()
    conn.close()


def deadline_wait(conn, pred, what: str, timeout: float = 15.0) -> None:
    """Process the blocking connection's events until ``pred()`` (AssertionError after
    ``timeout``)."""
    import time
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        conn.process_data_events(time_limit=0.1)
