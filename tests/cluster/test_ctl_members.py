"""amqpctl's quorum membership verbs (rabbitmq-queues' add_member, delete_member, grow, shrink)
end to end: etcd and three amqpd nodes, quorum queues declared with pika, the real command in
a subprocess against a node's management port, and the change seen where an operator looks:
``amqpctl list_queues name members`` on another node, and the queue's placement in etcd."""
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pika
import pytest

from amqpd.cluster.replication import choose_members

from .harness import ROOT, wait_until
from .test_replication import QUORUM, drain, placement, publish

NODES = ["node1", "node2", "node3"]


def ctl(node, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amqpd.ctl", "--node", node.management_url,
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def ok(result) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def refused(result, *words) -> str:
    """rabbitmq-queues' refusal: 69, the reason on stderr (naming ``words``)."""
    assert result.returncode == 69, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("Error: "), result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    return result.stderr


def need_endpoints(node):
    """Skip until amqpd's API has the quorum replica endpoints: asked without credentials, a
    route answers 401 (authentication comes first), a path with no route 404."""
    for method, path in (("POST", "/api/queues/quorum/%2F/q/replicas/add"),
                         ("DELETE", "/api/queues/quorum/%2F/q/replicas/delete"),
                         ("POST", "/api/queues/quorum/replicas/on/n/grow"),
                         ("DELETE", "/api/queues/quorum/replicas/on/n/shrink")):
        req = urllib.request.Request(node.management_url + path, method=method)
        try:
            urllib.request.urlopen(req, timeout=5).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 401:
                pytest.skip(f"amqpd's API has no {method} {path} yet "
                            f"(amqpd/management/api_quorum.py)")


def declare(node, name: str, size: int, durable: bool = True, quorum: bool = True):
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    ch = conn.channel()
    ch.confirm_delivery()
    args = {**QUORUM, "x-quorum-initial-group-size": size} if quorum else {}
    ch.queue_declare(name, durable=durable, arguments=args)
    return conn, ch


def members_listed(node, queue: str) -> set:
    """The queue's members as ``amqpctl list_queues name members`` prints them."""
    for line in ok(ctl(node, "list_queues", "-s", "name", "members")).splitlines():
        name, members = line.split("\t")
        if name == queue:
            assert members.startswith("[") and members.endswith("]"), members
            return set(filter(None, members[1:-1].split(",")))
    return set()


def in_sync(cluster, queue: str, nodes) -> bool:
    rec = placement(cluster, queue) or {}
    return set(nodes) <= set(rec.get("isr", ()))


def names_placed(first: str, second: str, count: int, prefix: str) -> list[str]:
    """Queue names that a declare on ``first`` with two members places on first and second
    (the rendezvous hash every node computes), so the test knows the members beforehand."""
    out = []
    for i in range(200):
        name = f"{prefix}{i}"
        if choose_members("/", name, first, NODES, 2) == [first, second]:
            out.append(name)
            if len(out) == count:
                return out
    raise AssertionError("no such names")


def test_add_member_and_delete_member_change_the_members(make_cluster):
    cluster = make_cluster(3)
    node1, node2, node3 = cluster.nodes
    need_endpoints(node1)
    (name,) = names_placed("node1", "node2", 1, "orders")
    conn, ch = declare(node1, name, 2)
    publish(ch, name, [b"m%d" % i for i in range(10)])
    conn.close()
    rec = wait_until(lambda: placement(cluster, name), 5, "the placement record")
    assert sorted(rec["members"]) == ["node1", "node2"]
    wait_until(lambda: members_listed(node3, name) == {"node1", "node2"}, 10,
               "node3 to list the queue's members")

    result = ctl(node1, "add_member", name, "node3")
    assert ok(result) == f"Adding a replica for queue {name} on node node3...\n"
    assert result.stderr == ""
    # seen on every node, and node3 catches up into the in-sync set
    for node in cluster.nodes:
        wait_until(lambda: members_listed(node, name) == set(NODES), 10,
                   f"{node.name} to list node3 as a member")
    wait_until(lambda: in_sync(cluster, name, NODES), 30, "node3 in sync")
    # a member added again: nothing to do, as rabbitmq-queues
    assert ok(ctl(node2, "add_member", name, "node3")).startswith("Adding a replica")
    assert members_listed(node2, name) == set(NODES)

    # the leader leaves: an in-sync member leads it, nothing is lost
    result = ctl(node3, "-q", "delete_member", "--vhost", "/", name, "node1")
    assert ok(result) == ""
    for node in cluster.nodes:
        wait_until(lambda: members_listed(node, name) == {"node2", "node3"}, 10,
                   f"{node.name} to list node1 gone")
    assert placement(cluster, name)["leader"] in ("node2", "node3")
    assert ok(ctl(node1, "delete_member", name, "node1")) == (
        f"Removing a replica of queue {name} on node node1...\n")   # not a member: nothing
    assert sorted(b for b, _r in drain(node1, name)) == sorted(b"m%d" % i for i in range(10))


def test_refusals_are_69_with_the_reason(make_cluster):
    cluster = make_cluster(3)
    node1, node2, node3 = cluster.nodes
    need_endpoints(node1)
    (pair,) = names_placed("node1", "node2", 1, "pair")
    for name, size in ((pair, 2), ("solo", 1)):
        declare(node1, name, size)[0].close()
    declare(node1, "plain", 1, quorum=False)[0].close()
    wait_until(lambda: placement(cluster, "solo") and placement(cluster, pair), 5,
               "the placements")

    result = ctl(node1, "add_member", "nosuch", "node2")
    assert result.stdout == "Adding a replica for queue nosuch on node node2...\n"
    refused(result, "nosuch")
    refused(ctl(node1, "delete_member", "-p", "no-vh", "solo", "node1"), "solo")
    refused(ctl(node1, "add_member", "plain", "node2"), "plain", "quorum")
    refused(ctl(node1, "add_member", pair, "node9"), "node9")
    result = ctl(node1, "delete_member", "solo", "node1")
    assert result.stdout == "Removing a replica of queue solo on node node1...\n"
    refused(result, "last member")
    assert members_listed(node1, "solo") == {"node1"}

    node3.stop()
    wait_until(lambda: node1.running_nodes()["node3"] is False, 5, "node3 stopped")
    refused(ctl(node1, "add_member", pair, "node3"), "node3", "not running")
    result = ctl(node1, "grow", "node3", "all")
    assert result.stdout == "Growing all quorum queues on node3...\n"
    refused(result, "node3", "not running")
    refused(ctl(node1, "grow", "node9", "all"), "node9")
    assert members_listed(node2, pair) == {"node1", "node2"}


def results(lines) -> list:
    """grow's or shrink's rows as [vhost, name, result], sorted; the size column is checked
    in test_grow_and_shrink_report_the_member_count_after_the_change."""
    return sorted([v, n, r] for v, n, _size, r in (line.split("\t") for line in lines))


def test_grow_and_shrink_print_a_line_per_queue(make_cluster):
    cluster = make_cluster(3)
    node1, node2, node3 = cluster.nodes
    need_endpoints(node1)
    g1, g2 = names_placed("node1", "node3", 2, "g")
    for name in (g1, g2):
        declare(node1, name, 2)[0].close()
    declare(node3, "solo", 1)[0].close()          # node3 alone
    for name in (g1, g2, "solo"):
        wait_until(lambda: placement(cluster, name), 5, f"{name}'s placement")
    wait_until(lambda: in_sync(cluster, g1, ["node1", "node3"])
               and in_sync(cluster, g2, ["node1", "node3"]), 10, "both members in sync")
    rows = sorted([["/", g1, "ok"], ["/", g2, "ok"]])

    out = ok(ctl(node2, "grow", "node2", "all", "--queue-pattern", "^g"))
    lines = out.splitlines()
    assert lines[:2] == ["Growing all quorum queues on node2...", "vhost\tname\tsize\tresult"]
    assert results(lines[2:]) == rows
    for name in (g1, g2):
        wait_until(lambda: members_listed(node1, name) == set(NODES), 10, f"{name} grown")
    assert members_listed(node1, "solo") == {"node3"}            # not matched
    wait_until(lambda: in_sync(cluster, g1, NODES) and in_sync(cluster, g2, NODES), 30,
               "node2 in sync")
    # nothing left to grow: an empty line, as rabbitmq-queues
    assert ok(ctl(node1, "grow", "node2", "all", "--vhost-pattern", "^/$",
                  "--queue-pattern", "^g")) == "Growing all quorum queues on node2...\n\n"

    # node3 leaves all three; solo's last member stays, reported in its row (exit 0)
    out = ok(ctl(node1, "shrink", "node3"))
    lines = out.splitlines()
    assert lines[:2] == ["Shrinking quorum queues on node3...", "vhost\tname\tsize\tresult"]
    got = sorted(line.split("\t") for line in lines[2:])
    assert results(lines[2:])[:2] == rows
    assert got[2][:3] == ["/", "solo", "1"] and got[2][3].startswith("error: ")
    assert "last member" in got[2][3]
    for name in (g1, g2):
        wait_until(lambda: members_listed(node2, name) == {"node1", "node2"}, 10,
                   f"{name} shrunk")
    # again: only solo is left on node3, and it is the only error
    assert ok(ctl(node1, "shrink", "node3", "--errors-only", "-s")).splitlines() == [
        "\t".join(got[2])]
    doc = json.loads(ok(ctl(node1, "shrink", "node3", "--formatter", "json")))
    assert doc == [{"vhost": "/", "name": "solo", "size": 1, "result": got[2][3]}]

    # "even": only the queues with an even number of members (g1, g2: two; solo: one)
    out = ok(ctl(node2, "grow", "node3", "even", "-q"))
    assert results(out.splitlines()[1:]) == rows
    for name in (g1, g2):
        wait_until(lambda: members_listed(node3, name) == set(NODES), 10, f"{name} regrown")


@pytest.mark.xfail(strict=False, reason=(
    "BUG: queue_members.QueueMembers._each reads a row's size from the placement view right "
    "after the compare-and-swap, before the etcd watch brought the new record (so usually "
    "the count before the change; racy, hence not strict). LEAD: take it from the record "
    "written, then drop this mark"))
def test_grow_and_shrink_report_the_member_count_after_the_change(make_cluster):
    # rabbitmq-queues 3.10.8: size is the member count after the change (Size + 1 for grow,
    # Size - 1 for shrink), the count as it is for a queue that failed
    cluster = make_cluster(3)
    node1, node2, _node3 = cluster.nodes
    need_endpoints(node1)
    (name,) = names_placed("node1", "node3", 1, "sized")
    declare(node1, name, 2)[0].close()
    wait_until(lambda: in_sync(cluster, name, ["node1", "node3"]), 10, "both in sync")
    out = ok(ctl(node1, "grow", "node2", "all", "-s"))
    assert out.splitlines() == [f"/\t{name}\t3\tok"]
    wait_until(lambda: in_sync(cluster, name, NODES), 30, "node2 in sync")
    out = ok(ctl(node2, "shrink", "node1", "-s"))
    assert out.splitlines() == [f"/\t{name}\t2\tok"]
