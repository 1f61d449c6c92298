"""Every running node's listeners in /api/overview (as RabbitMQ's overview lists a cluster's:
one entry per node and protocol, with "node" set) and in amqpctl cluster_status, with real
processes: etcd and three amqpd nodes, the CLI in a subprocess. Whichever node is asked, the
list is the same; a node that stops leaves it."""
import json
import subprocess
import sys

from .harness import ROOT, wait_until


def ctl(node, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amqpd.ctl", "--node", node.management_url,
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=30)


def listeners(node) -> list[dict]:
    return node.api("/api/overview")["listeners"]


def ports(node) -> set:
    """(node, protocol, port) of what the node itself bound (read from its log)."""
    return {(node.name, "amqp", node.port), (node.name, "http", node.http_port),
            (node.name, "clustering", node.cluster_port)}


def seen(entries) -> set:
    return {(e["node"], e["protocol"], e["port"]) for e in entries}


def test_overview_lists_every_running_nodes_listeners_and_cluster_status_prints_them(
        make_cluster):
    cluster = make_cluster(3)
    node1, node2, node3 = cluster.nodes
    everyone = ports(node1) | ports(node2) | ports(node3)
    for node in cluster.nodes:
        # once the node has seen the others' records (through its etcd watch)
        wait_until(lambda: everyone <= seen(listeners(node)), 10,
                   f"{node.name}'s overview to list every node's listeners")
    lists = [listeners(node) for node in cluster.nodes]
    # one list, whoever is asked: by node, then protocol; every entry RabbitMQ's fields
    assert lists[0] == lists[1] == lists[2]
    entries = lists[0]
    assert [e["node"] for e in entries] == sorted(e["node"] for e in entries)
    assert {e["node"] for e in entries} == {"node1", "node2", "node3"}
    for e in entries:
        assert set(e) == {"node", "protocol", "ip_address", "port", "socket_opts"}, e
        assert e["ip_address"] == "127.0.0.1"
    by_node = {}
    for e in entries:
        by_node.setdefault(e["node"], []).append(e["protocol"])
    for name, protocols in by_node.items():
        assert protocols == sorted(protocols), (name, protocols)
        assert protocols.count("amqp") == 1 and protocols.count("clustering") == 1
    amqp = next(e for e in entries if e["node"] == "node2" and e["protocol"] == "amqp")
    assert amqp["socket_opts"]["backlog"] == 128

    # rabbitmqctl cluster_status 3.10.8: a line per node and listener
    text = ctl(node1, "cluster_status")
    assert text.returncode == 0, text.stderr
    section = text.stdout.split("\nListeners\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    for node in cluster.nodes:
        assert (f"Node: {node.name}, interface: 127.0.0.1, port: {node.port}, protocol: amqp, "
                f"purpose: AMQP 0-9-1 and AMQP 1.0") in section
        assert (f"Node: {node.name}, interface: 127.0.0.1, port: {node.cluster_port}, "
                f"protocol: clustering, purpose: inter-node and CLI tool communication"
                ) in section
        assert (f"Node: {node.name}, interface: 127.0.0.1, port: {node.http_port}, "
                f"protocol: http, purpose: HTTP API") in section
    assert [line.split(",")[0] for line in section] == sorted(line.split(",")[0]
                                                               for line in section)
    # status is one node's (rabbitmqctl status): only node1's listeners, with their purpose
    status = ctl(node1, "status").stdout
    section = status.split("\nListeners\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(section) == len([e for e in entries if e["node"] == "node1"])
    assert (f"Interface: 127.0.0.1, port: {node1.port}, protocol: amqp, purpose: AMQP 0-9-1 "
            f"and AMQP 1.0") in section
    assert not any(f"port: {n.port}," in line for n in (node2, node3) for line in section)
    doc = json.loads(ctl(node3, "cluster_status", "--formatter", "json").stdout)
    assert sorted(doc["listeners"]) == ["node1", "node2", "node3"]
    assert {(lst["node"], lst["protocol"], lst["port"]) for lsts in doc["listeners"].values()
            for lst in lsts} == seen(entries)

    # a stopped node's listeners leave every other node's overview and cluster_status
    node2.stop()
    for node in (node1, node3):
        wait_until(lambda: "node2" not in {e["node"] for e in listeners(node)}, 10,
                   f"{node.name}'s overview to drop node2's listeners")
        assert ports(node1) | ports(node3) <= seen(listeners(node))
    text = ctl(node3, "cluster_status").stdout
    section = text.split("\nListeners\n\n", 1)[1].split("\n\n", 1)[0]
    assert "Node: node2," not in section and "Node: node1," in section
