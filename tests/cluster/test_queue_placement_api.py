"""Queues show their leader and members (issue 15, "Operations"), as RabbitMQ 3.10 shows
quorum queues: the management API's ``type``, ``node`` (the leader), and for a quorum queue
``leader``, ``members`` and ``online`` (the members whose node is running), on every node of
the cluster; ``amqpctl list_queues name type leader members online`` prints them as
rabbitmqctl 3.10.8 does (empty for a classic queue, ``[n1,n2]`` lists for a quorum one).

The queues are declared over AMQP. Each queue's placement record is claimed in etcd with
create-if-absent, exactly as the declaring node claims it (classic: the declaring node alone;
quorum: the declaring node first, then the others): where the node's own claim got there
first, the test reads that one instead, so this holds before and after the declare path
writes records itself."""
import base64
import json
import os
import subprocess
import sys
import urllib.error

import pika

from .harness import ROOT, wait_until


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def placement_key(cluster, vhost: str, name: str) -> str:
    from urllib.parse import quote
    return f"/amqpd/{cluster.name}/placement/{quote(vhost, safe='')}/{quote(name, safe='')}"


def claim(cluster, vhost: str, name: str, kind: str, members: list) -> dict:
    """The queue's placement record: the one in etcd, or this one created if none is."""
    key = placement_key(cluster, vhost, name)
    rec = {"type": kind, "epoch": 1, "leader": members[0], "members": members, "isr": members}
    answer = cluster.etcd.call("/v3/kv/txn", {
        "compare": [{"key": b64(key), "target": "CREATE", "create_revision": "0"}],
        "success": [{"request_put": {"key": b64(key), "value": b64(json.dumps(rec))}}],
        "failure": [{"request_range": {"key": b64(key)}}]})
    if answer.get("succeeded"):
        return rec
    kvs = answer["responses"][0]["response_range"]["kvs"]
    return json.loads(base64.b64decode(kvs[0]["value"]))


def queue_fields(node, name: str) -> dict | None:
    """The queue as its own page shows it, once the listing shows the same placement fields
    (None while they differ: a placement change seen between the two reads)."""
    listed = [q for q in node.api("/api/queues/%2F") if q["name"] == name]
    one = node.api(f"/api/queues/%2F/{name}")
    fields = ("type", "node", "leader", "members", "online")
    assert len(listed) <= 1
    if not listed or {k: listed[0].get(k) for k in fields} != {k: one.get(k) for k in fields}:
        return None
    return one


def shown(node, name: str):
    """queue_fields, or None while the queue is not on that node yet (the metadata sync)."""
    try:
        return queue_fields(node, name)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def ctl(node, *args) -> str:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "amqpd.ctl", "--node", node.management_url,
                           *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_queues_show_their_type_leader_and_members_on_every_node(make_cluster):
    cluster = make_cluster(3)
    node1, node2, node3 = cluster.nodes
    conn = pika.BlockingConnection(pika.URLParameters(node2.url))
    ch = conn.channel()
    ch.queue_declare("orders", durable=True, arguments={"x-queue-type": "quorum"})
    ch.queue_declare("audit", durable=True)
    ch.queue_declare("scratch", durable=False)        # transient: no placement, its node's
    quorum = claim(cluster, "/", "orders", "quorum", ["node2", "node1", "node3"])
    classic = claim(cluster, "/", "audit", "classic", ["node2"])
    assert quorum["type"] == "quorum" and classic["members"] == ["node2"]
    members = sorted(quorum["members"])

    for node in cluster.nodes:
        qq = wait_until(lambda: (q := shown(node, "orders")) and q.get("members") and q, 5,
                        f"the quorum queue's members on {node.name}")
        assert qq["type"] == "quorum"
        assert qq["leader"] == qq["node"] == quorum["leader"]
        assert sorted(qq["members"]) == members and sorted(qq["online"]) == members
        cq = wait_until(lambda: (q := shown(node, "audit")) and q.get("node") == "node2"
                        and q, 5, f"the classic queue's leader on {node.name}")
        assert cq["type"] == "classic"
        assert "leader" not in cq and "members" not in cq and "online" not in cq
    transient = wait_until(lambda: queue_fields(node2, "scratch"), 5, "the transient queue")
    assert transient["type"] == "classic" and transient["node"] == "node2"
    assert "members" not in transient

    # amqpctl, as rabbitmqctl 3.10.8 prints it: lists for a quorum queue, nothing for classic
    out = ctl(node1, "list_queues", "-q", "name", "type", "leader", "members", "online")
    rows = {line.split("\t")[0]: line.split("\t") for line in out.splitlines()[1:]}
    assert rows["audit"] == ["audit", "classic", "", "", ""]
    name, kind, leader, listed, online = rows["orders"]
    assert (kind, leader) == ("quorum", quorum["leader"])
    assert listed == "[" + ",".join(quorum["members"]) + "]"
    assert sorted(online.strip("[]").split(",")) == members
    out = json.loads(ctl(node1, "list_queues", "--formatter", "json", "name", "type",
                         "leader", "members", "online"))
    by_name = {row["name"]: row for row in out}
    assert by_name["audit"] == {"name": "audit", "type": "classic", "leader": "",
                                "members": "", "online": ""}
    assert by_name["orders"]["members"] == quorum["members"]
    conn.close()

    # a member that stops is no longer online; it stays a member
    down = next(n for n in cluster.nodes if n.name != quorum["leader"])
    assert down.stop() == 0
    up = [n for n in cluster.nodes if n is not down]
    for node in up:
        qq = wait_until(lambda: (q := queue_fields(node, "orders"))
                        and down.name not in q["online"] and q, 5,
                        f"{down.name} not online on {node.name}")
        assert sorted(qq["members"]) == members
        assert sorted(qq["online"]) == sorted(n.name for n in up)


def replication_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("amqpd.cluster.replication") is not None


def test_the_new_leader_is_shown_after_the_leader_dies(make_cluster):
    """RabbitMQ shows a quorum queue's new leader, and its old one as a member not online."""
    import pytest
    if not replication_available():
        pytest.skip("needs replicated quorum queues (amqpd/cluster/replication.py)")
    cluster = make_cluster(3)
    node1 = cluster["node1"]
    conn = pika.BlockingConnection(pika.URLParameters(node1.url))
    conn.channel().queue_declare("jobs", durable=True, arguments={"x-queue-type": "quorum"})
    conn.close()
    qq = wait_until(lambda: (q := shown(node1, "jobs")) and q.get("members")
                    and len(q["online"]) == 3 and q, 10, "the queue's three members")
    old = cluster[qq["leader"]]
    old.kill()
    for node in (n for n in cluster.nodes if n is not old):
        now = wait_until(lambda: (q := shown(node, "jobs")) and q["leader"] != old.name
                         and old.name not in q["online"] and q, 15,
                         f"a new leader shown on {node.name}")
        assert now["node"] == now["leader"] and now["leader"] in now["online"]
        assert sorted(now["members"]) == sorted(qq["members"])
