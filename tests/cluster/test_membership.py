"""Membership through etcd, with real processes: three amqpd nodes on one etcd list each
other in /api/nodes and amqpctl cluster_status; a node killed with -9 is shown as not
running within its lease; a stopped one at once; a restarted one is running again."""
import json
import signal
import socket
import subprocess
import sys
import time

import pika

from .harness import ROOT, Node, wait_until


def ctl(node, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amqpd.ctl", "--node", node.management_url,
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_every_node_lists_the_whole_cluster(make_cluster):
    cluster = make_cluster(3)
    everyone = {"node1": True, "node2": True, "node3": True}
    for node in cluster.nodes:
        # a node sees the others once their "running" reached it through the watch
        wait_until(lambda: node.running_nodes() == everyone, 5, f"{node.name} to see all")
        overview = node.api("/api/overview")
        assert overview["node"] == node.name
        assert node.api("/api/cluster-name") == {"name": "test"}
    # the local node with its measured figures, another one from its etcd record
    me = cluster["node1"].api("/api/nodes/node1")
    other = cluster["node1"].api("/api/nodes/node2")
    assert me["mem_used"] > 0 and me["os_pid"] == str(cluster["node1"].pid)
    assert other["os_pid"] == str(cluster["node2"].pid) and other["running"] is True
    assert other["type"] == "disc" and other["uptime"] >= 0
    # each node serves clients as before
    conn = pika.BlockingConnection(pika.URLParameters(cluster["node3"].url))
    ch = conn.channel()
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"hello")
    assert ch.basic_get("q", auto_ack=True)[2] == b"hello"
    conn.close()


def test_a_killed_node_is_not_running_within_the_lease(make_cluster):
    cluster = make_cluster(3, lease_ttl=2)
    watcher, victim = cluster["node1"], cluster["node3"]
    wait_until(lambda: watcher.running_nodes().get("node3"), 5, "node3 running")
    victim.signal(signal.SIGKILL)
    killed = time.monotonic()
    victim.wait()
    wait_until(lambda: watcher.running_nodes() == {"node1": True, "node2": True,
                                                  "node3": False},
               cluster.lease_ttl + 2, "node3 shown as not running")
    seen = time.monotonic() - killed
    # the lease ends at most lease_ttl after the last refresh; etcd checks expiry every
    # 0.5 s and the poll adds a little
    assert seen < cluster.lease_ttl + 1.0, seen
    assert cluster["node2"].running_nodes()["node3"] is False
    # a node that is not running is listed with its name and state only, as RabbitMQ does
    assert watcher.api("/api/nodes/node3") == {"name": "node3", "type": "disc",
                                               "running": False, "being_drained": False}
    victim.start()
    wait_until(lambda: all(watcher.running_nodes().values()), 5, "node3 running again")


def test_a_node_restarted_right_after_a_crash_takes_its_name_back(make_cluster):
    """Its old record names this host and the data directory whose lock the new process
    holds: the old process is gone, its lease is ended at once instead of waited out."""
    cluster = make_cluster(2, lease_ttl=30)
    node1, victim = cluster["node1"], cluster["node2"]
    # node1 paused: its crash detection (the link dropped, node2's port refusing) would end
    # node2's lease before the restart could find it
    node1.signal(signal.SIGSTOP)
    try:
        victim.signal(signal.SIGKILL)
        victim.wait()
        assert "/amqpd/test/nodes/node2" in cluster.etcd.keys("/amqpd/test/nodes/")  # leased
        started = time.monotonic()
        victim.start()
        assert time.monotonic() - started < 15          # not the 30 s of the old lease
    finally:
        node1.signal(signal.SIGCONT)
    assert any("node2's previous process" in line for line in victim.lines), victim.lines
    wait_until(lambda: cluster["node1"].running_nodes() == {"node1": True, "node2": True},
               5, "node2 running again")
    assert cluster["node1"].api("/api/nodes/node2")["os_pid"] == str(victim.pid)


def test_a_stopped_node_says_so_at_once_and_comes_back(make_cluster):
    cluster = make_cluster(2, lease_ttl=10)
    node1, node2 = cluster["node1"], cluster["node2"]
    wait_until(lambda: node1.running_nodes() == {"node1": True, "node2": True}, 5, "both")
    stopped = time.monotonic()
    assert node2.stop() == 0
    # the lease is revoked on the way out: far sooner than its 10 s
    wait_until(lambda: node1.running_nodes() == {"node1": True, "node2": False}, 5,
               "node2 shown as stopped")
    assert time.monotonic() - stopped < 5
    node2.start()
    wait_until(lambda: node1.running_nodes() == {"node1": True, "node2": True}, 5,
               "node2 back")


def test_cluster_status_prints_what_rabbitmqctl_prints(make_cluster):
    cluster = make_cluster(3)
    node1 = cluster["node1"]
    # all three known and running (all() of a view that has not seen node3 yet would pass)
    wait_until(lambda: node1.running_nodes() == {"node1": True, "node2": True, "node3": True},
               5, "all running")
    cluster["node2"].stop()
    wait_until(lambda: node1.running_nodes()["node2"] is False, 5, "node2 stopped")
    result = ctl(node1, "cluster_status")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("Cluster status of node node1 ...\nBasics\n\nCluster name: test\n")
    assert "\nDisk Nodes\n\nnode1\nnode2\nnode3\n" in text
    assert "\nRunning Nodes\n\nnode1\nnode3\n" in text
    assert "\nMaintenance status\n\nNode: node1, status: not under maintenance\n" in text
    assert "\nAlarms\n\n(none)\n" in text and "\nNetwork Partitions\n\n(none)\n" in text
    assert (f"Node: node1, interface: 127.0.0.1, port: {node1.port}, protocol: amqp, "
            f"purpose: AMQP 0-9-1 and AMQP 1.0") in text
    doc = json.loads(ctl(node1, "cluster_status", "--formatter", "json").stdout)
    assert doc["cluster_name"] == "test"
    assert doc["disk_nodes"] == ["node1", "node2", "node3"]
    assert doc["running_nodes"] == ["node1", "node3"]
    assert set(doc["versions"]) == {"node1", "node3"}
    assert doc["ram_nodes"] == [] and doc["partitions"] == {} and doc["alarms"] == []


def test_node_to_node_port_greets_with_the_node_name(make_cluster):
    cluster = make_cluster(1)
    node = cluster["node1"]
    with socket.create_connection(("127.0.0.1", node.cluster_port), timeout=5) as s:
        greeting = json.loads(s.makefile("rb").readline())
        assert greeting["cluster"] == "test" and greeting["node"] == "node1"
    with socket.create_connection(("127.0.0.1", node.cluster_port), timeout=5) as s:
        f = s.makefile("rwb")
        f.readline()
        f.write(b'{"cluster": "other", "node": "x"}\n')
        f.flush()
        assert "cluster test" in json.loads(f.readline())["error"]
        assert f.read() == b""           # and the connection is closed


def test_a_second_node_with_the_same_name_is_refused(make_cluster, tmp_path):
    cluster = make_cluster(1)
    twin = Node(str(tmp_path / "twin"), "node1", "test", [cluster.etcd.url], lease_ttl=2)
    twin.start(wait=False)
    try:
        assert twin.wait(15) == 1
    finally:
        twin.kill()
    assert any("a node named 'node1' is already running in cluster 'test'" in line
               for line in twin.lines), twin.lines
    # and the first one was left alone
    assert cluster["node1"].running_nodes() == {"node1": True}


def test_no_etcd_is_a_failed_start_that_says_why(tmp_path, etcd):
    url = etcd.url
    etcd.kill()
    node = Node(str(tmp_path / "alone"), "node1", "test", [url])
    node.start(wait=False)
    try:
        assert node.wait(15) == 1
    finally:
        node.kill()
    assert any("cluster.etcd: no etcd endpoint answered" in line for line in node.lines), \
        node.lines


def test_a_paused_node_drops_out_and_comes_back_when_resumed(make_cluster):
    """SIGSTOP: the node cannot refresh its lease, so the others see it as not running; on
    SIGCONT it finds its lease gone and registers again."""
    cluster = make_cluster(2, lease_ttl=2)
    node1, node2 = cluster.nodes
    wait_until(lambda: node1.running_nodes() == {"node1": True, "node2": True}, 5, "both")
    node2.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: node1.running_nodes()["node2"] is False, cluster.lease_ttl + 2,
                   "the paused node2 shown as not running")
    finally:
        node2.signal(signal.SIGCONT)
    node2.wait_for_line("lease expired .* registering again", 10)
    wait_until(lambda: node1.running_nodes()["node2"] is True, 5, "node2 running again")
    assert node2.api("/api/overview")["node"] == "node2"      # and it served all along


def test_a_hung_etcd_member_is_left_for_the_next(tmp_path):
    """Three etcd members; the one every node talks to first is paused (SIGSTOP): requests
    time out there and go to the next member, and the watches that hang on it are cut and
    opened again there, so a node killed afterwards is still seen to die."""
    from .conftest import need_etcd
    from .harness import Node, etcd_members
    need_etcd()
    members = etcd_members(str(tmp_path / "etcd"))
    nodes = []
    try:
        urls = [m.url for m in members]
        nodes = [Node(str(tmp_path / f"node{i}"), f"node{i}", "test", urls, lease_ttl=2)
                 for i in (1, 2)]
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            node.wait_started()
        node1, node2 = nodes
        wait_until(lambda: node1.running_nodes() == {"node1": True, "node2": True}, 5, "both")
        members[0].signal(signal.SIGSTOP)
        node2.signal(signal.SIGKILL)
        node2.wait()
        # an etcd leader change renews every lease once: up to two TTLs, plus the election
        # and the request timeouts on the paused member
        wait_until(lambda: node1.running_nodes() == {"node1": True, "node2": False}, 15,
                   "node2 seen dead through the other members")
    finally:
        members[0].signal(signal.SIGCONT)
        for node in nodes:
            node.kill()
        for member in members:
            member.kill()


def test_forget_cluster_node_removes_a_stopped_node_only(make_cluster):
    cluster = make_cluster(2, lease_ttl=10)
    node1, node2 = cluster.nodes
    wait_until(lambda: node1.running_nodes() == {"node1": True, "node2": True}, 5, "both")
    refused = ctl(node1, "forget_cluster_node", "node2")
    assert refused.returncode == 69
    assert "node node2 is running: stop it before it is forgotten" in refused.stderr
    unknown = ctl(node1, "forget_cluster_node", "node9")
    assert unknown.returncode == 69
    assert "The node selected is not in the cluster." in unknown.stderr
    assert node2.stop() == 0
    done = ctl(node1, "forget_cluster_node", "node2")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Removing node node2 from the cluster\n"
    wait_until(lambda: node1.running_nodes() == {"node1": True}, 5, "node2 forgotten")
    assert "/amqpd/test/members/node2" not in cluster.etcd.keys("/amqpd/test/members/")


def test_each_node_keeps_a_link_to_every_other(make_cluster):
    """The node-to-node links (RabbitMQ's cluster_links in /api/nodes): one from each node to
    every other running node, gone when the peer dies, back when it runs again."""
    cluster = make_cluster(3)
    node1 = cluster["node1"]

    def links():
        return {link["name"]: link["peer_port"]
                for link in node1.api("/api/nodes/node1")["cluster_links"]}

    wait_until(lambda: links() == {"node2": cluster["node2"].cluster_port,
                                   "node3": cluster["node3"].cluster_port}, 10, "two links")
    cluster["node3"].signal(signal.SIGKILL)
    cluster["node3"].wait()
    wait_until(lambda: set(links()) == {"node2"}, 5, "the link to node3 gone")
    cluster["node3"].start()          # on another free port: the link follows its record
    wait_until(lambda: links() == {"node2": cluster["node2"].cluster_port,
                                   "node3": cluster["node3"].cluster_port}, 10, "node3 back")


def test_a_busy_node_to_node_port_is_a_failed_start_naming_the_key(tmp_path, etcd):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = Node(str(tmp_path / "n"), "node1", "test", [etcd.url])
        node.config["cluster"]["listen"]["port"] = port
        node.start(wait=False)
        try:
            assert node.wait(20) == 1
        finally:
            node.kill()
    assert any(f"cluster.listen: 127.0.0.1:{port} is already in use" in line
               for line in node.lines), node.lines
    assert etcd.keys("/amqpd/") == {}          # it never joined
