"""Failover of quorum queues with real processes: the leader killed (kill -9), paused
(SIGSTOP, then SIGCONT: the deposed leader confirms nothing, truncates to the new leader's
log and follows it) and stopped (SIGTERM: it hands over first). Clients connect to the
queue's leader, read from its placement record (forwarding between nodes is another stage's).

``python -m tests.cluster.test_failover [runs]`` measures failover time (fault -> first
confirm from the new leader) for kill -9 at lease_ttl 3 and prints p50/max."""
import signal
import statistics
import sys
import time

import pika

from .harness import wait_until
from .test_replication import (channel, confirm_in_thread, declare, drain, placement, publish,
                               segments)


def new_leader(cluster, queue: str, old: str, timeout: float = 15.0) -> dict:
    return wait_until(lambda: (lambda r: r if r and r["leader"] != old else None)(
        placement(cluster, queue)), timeout, f"a leader other than {old}", interval=0.02)


def first_confirm(node, queue: str, body: bytes, deadline: float) -> None:
    """Publish until one is confirmed by ``node`` (it may still be taking over)."""
    while True:
        try:
            conn, ch = channel(node)
            try:
                publish(ch, queue, [body])
                return
            finally:
                try:
                    conn.close()
                except Exception:          # noqa: BLE001
                    pass
        except (pika.exceptions.AMQPError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_leader_killed_a_new_one_serves_every_confirmed_message(make_cluster):
    cluster = make_cluster(3)
    conn, ch = declare(cluster["node1"], "orders")
    wait_until(lambda: placement(cluster, "orders"), 5, "the placement record")
    publish(ch, "orders", [b"m%d" % i for i in range(50)])
    # a consumer holds five unacked when the leader dies
    consumer = pika.BlockingConnection(pika.URLParameters(cluster["node1"].url))
    cch = consumer.channel()
    cch.basic_qos(prefetch_count=5)
    taken = []
    for method, _p, body in cch.consume("orders", inactivity_timeout=5):
        taken.append(body)
        if len(taken) == 5:
            break
    cluster["node1"].kill()
    rec = new_leader(cluster, "orders", "node1")
    assert rec["epoch"] == 2 and "node1" not in rec["isr"]
    leader = cluster[rec["leader"]]
    first_confirm(leader, "orders", b"after", time.monotonic() + 15)
    got = drain(leader, "orders")
    bodies = [b for b, _r in got]
    assert bodies == [b"m%d" % i for i in range(50)] + [b"after"]
    # the ones the old leader had handed out come back redelivered (all it held: see
    # replication.py), the one published after the failover is new
    assert all(r for b, r in got if b in taken)
    assert not got[-1][1]
    # the old leader comes back as a follower and catches up
    cluster["node1"].start()
    wait_until(lambda: "node1" in placement(cluster, "orders")["isr"], 15, "node1 in sync")
    assert segments(cluster["node1"], "orders") == segments(leader, "orders")


def test_leader_killed_right_after_the_declare(make_cluster):
    """The members may not have the queue's definition from the cluster's metadata yet
    (it follows within a second): they know it from the leader's greeting."""
    cluster = make_cluster(3)
    conn, ch = declare(cluster["node1"], "early", **{"x-max-length": 1000})
    publish(ch, "early", [b"e%d" % i for i in range(5)])
    cluster["node1"].kill()
    rec = new_leader(cluster, "early", "node1")
    leader = cluster[rec["leader"]]
    first_confirm(leader, "early", b"after", time.monotonic() + 15)
    assert [b for b, _r in drain(leader, "early")] == [b"e%d" % i for i in range(5)] + [b"after"]
    assert leader.api("/api/queues/%2F/early")["arguments"] == {"x-queue-type": "quorum",
                                                                "x-max-length": 1000}


def test_clients_on_other_nodes_go_on_after_the_leader_dies(make_cluster):
    """Through forwarding: a publisher on node3 and a consumer on node2, the leader node1
    killed; publishes nacked meanwhile are published again; every confirmed one is
    consumed."""
    cluster = make_cluster(3)
    conn, ch = declare(cluster["node1"], "spread")
    wait_until(lambda: placement(cluster, "spread"), 5, "the placement record")
    conn.close()
    wait_until(lambda: "spread" in {q["name"] for q in cluster["node3"].api("/api/queues")},
               5, "the queue on node3")
    pconn, pch = channel(cluster["node3"])
    publish(pch, "spread", [b"p%d" % i for i in range(20)])      # forwarded to node1
    cluster["node1"].kill()
    confirmed = [b"p%d" % i for i in range(20)]
    deadline = time.monotonic() + 15
    for i in range(20, 30):
        body = b"p%d" % i
        while True:
            try:
                publish(pch, "spread", [body])
                confirmed.append(body)
                break
            except pika.exceptions.NackError:      # the leader went: published again
                assert time.monotonic() < deadline, "no leader took over"
                time.sleep(0.05)
            except (pika.exceptions.AMQPError, OSError):
                assert time.monotonic() < deadline, "no leader took over"
                time.sleep(0.05)
                pconn, pch = channel(cluster["node3"])
    got = wait_until(lambda: drain(cluster["node2"], "spread") or None, 10, "messages")
    bodies = [b for b, _r in got]
    assert set(confirmed) <= set(bodies), set(confirmed) - set(bodies)
    pconn.close()


def test_paused_leader_confirms_nothing_then_truncates_and_follows(make_cluster):
    cluster = make_cluster(3)
    node1 = cluster["node1"]
    conn, ch = declare(node1, "jobs")
    wait_until(lambda: placement(cluster, "jobs"), 5, "the placement record")
    publish(ch, "jobs", [b"j%d" % i for i in range(20)])
    node1.signal(signal.SIGSTOP)
    # a publish to the paused leader: read by it only when it wakes up
    thread, result = confirm_in_thread(ch, "jobs", b"to the paused one")
    rec = new_leader(cluster, "jobs", "node1")
    leader = cluster[rec["leader"]]
    first_confirm(leader, "jobs", b"after", time.monotonic() + 15)
    node1.signal(signal.SIGCONT)
    thread.join(20)
    assert not thread.is_alive()
    assert "ok" not in result, "the deposed leader confirmed a publish"
    node1.wait_for_line(r"no longer the leader at epoch 1", 10)
    # it truncates to the new leader's log and rejoins the in-sync set
    wait_until(lambda: "node1" in placement(cluster, "jobs")["isr"], 15, "node1 in sync")
    wait_until(lambda: segments(node1, "jobs") == segments(leader, "jobs"), 5,
               "node1's files equal to the new leader's")
    bodies = [b for b, _r in drain(leader, "jobs")]
    assert bodies[:20] == [b"j%d" % i for i in range(20)] and b"after" in bodies
    assert b"to the paused one" not in bodies


def test_graceful_stop_hands_leadership_over(make_cluster):
    cluster = make_cluster(3)
    node1 = cluster["node1"]
    conn, ch = declare(node1, "mail")
    wait_until(lambda: placement(cluster, "mail"), 5, "the placement record")
    publish(ch, "mail", [b"x%d" % i for i in range(30)])
    conn.close()
    node1.signal(signal.SIGTERM)
    rec = new_leader(cluster, "mail", "node1")
    assert node1.wait() == 0
    node1.wait_for_line(r"handed over to node[23]", 1)
    leader = cluster[rec["leader"]]
    leader.wait_for_line(r"queue 'mail' in vhost '/': leader at epoch", 10)
    first_confirm(leader, "mail", b"after", time.monotonic() + 10)
    bodies = [b for b, _r in drain(leader, "mail")]
    assert bodies == [b"x%d" % i for i in range(30)] + [b"after"]


def test_delivery_limit_holds_across_a_failover(make_cluster):
    cluster = make_cluster(3)
    conn, ch = declare(cluster["node1"], "tasks", **{"x-delivery-limit": 2})
    wait_until(lambda: placement(cluster, "tasks"), 5, "the placement record")
    publish(ch, "tasks", [b"poison", b"fine"])
    consumer = pika.BlockingConnection(pika.URLParameters(cluster["node1"].url))
    cch = consumer.channel()
    for _ in range(2):                         # delivered twice, requeued twice
        method, _props, body = cch.basic_get("tasks")
        assert body == b"poison"
        cch.basic_nack(method.delivery_tag, requeue=True)
    publish(ch, "tasks", [b"fence"])           # confirmed after the markers were shipped
    cluster["node1"].kill()
    rec = new_leader(cluster, "tasks", "node1")
    leader = cluster[rec["leader"]]
    first_confirm(leader, "tasks", b"after", time.monotonic() + 15)
    lconn = pika.BlockingConnection(pika.URLParameters(leader.url))
    lch = lconn.channel()
    method, props, body = lch.basic_get("tasks")
    assert body == b"poison" and method.redelivered
    assert props.headers["x-delivery-count"] == 2
    lch.basic_nack(method.delivery_tag, requeue=True)   # the third return: over the limit
    rest = []
    while True:
        method, _props, body = lch.basic_get("tasks", auto_ack=True)
        if method is None:
            break
        rest.append(body)
    assert rest == [b"fine", b"fence", b"after"]
    lconn.close()


# -- measuring ---------------------------------------------------------------------------------
def measure(tmp_root: str, runs: int = 5, lease_ttl: int = 3, fault: str = "kill") -> list:
    """The leader of a queue killed (kill -9) or stopped (SIGTERM): seconds from the fault to
    the new placement record and to the first confirm from the new leader, per run (the
    publisher's connections to the other nodes are open beforehand)."""
    import pathlib
    from .harness import Cluster
    times = []
    for run in range(runs):
        cluster = Cluster(pathlib.Path(tmp_root) / f"run{run}", lease_ttl=lease_ttl).start(3)
        try:
            conn, ch = declare(cluster["node1"], "q")
            wait_until(lambda: placement(cluster, "q"), 5, "the placement record")
            publish(ch, "q", [b"warm"] * 10)
            others = {n.name: channel(n) for n in cluster.nodes[1:]}
            time.sleep(run * lease_ttl / max(1, runs) / 3)   # spread over the keepalive cycle
            fault_at = time.monotonic()
            if fault == "kill":
                cluster["node1"].kill()
            else:
                cluster["node1"].signal(signal.SIGTERM)
            try:
                rec = new_leader(cluster, "q", "node1", timeout=30)
            except AssertionError:
                for node in cluster.nodes:
                    print(f"--- {node.name}\n" + "\n".join(node.lines[-40:]))
                raise
            placed = time.monotonic() - fault_at
            _conn, lch = others[rec["leader"]]
            while True:
                try:
                    publish(lch, "q", [b"after"])
                    break
                except pika.exceptions.NackError:
                    time.sleep(0.005)                   # not leading yet: nacked
            times.append((placed, time.monotonic() - fault_at))
            print(f"run {run}: record {times[-1][0]:.2f} s, first confirm {times[-1][1]:.2f} s",
                  flush=True)
        finally:
            cluster.teardown()
    return times


if __name__ == "__main__":
    import tempfile
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    fault = sys.argv[2] if len(sys.argv) > 2 else "kill"
    with tempfile.TemporaryDirectory() as root:
        results = measure(root, count, fault=fault)
    confirms = [c for _p, c in results]
    print(f"failover ({fault} -> first confirm from the new leader), lease_ttl 3, {count} runs: "
          f"p50 {statistics.median(confirms):.2f} s, max {max(confirms):.2f} s")
