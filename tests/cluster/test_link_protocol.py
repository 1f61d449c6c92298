"""Nodes of two amqpd versions whose node-to-node protocols differ refuse each other's links
and say why, instead of misreading each other's records (a real node, a raw socket)."""
import json
import socket

from amqpd.cluster.link import LINK_PROTOCOL


def test_a_peer_of_another_link_protocol_is_refused_and_told_why(make_cluster):
    cluster = make_cluster(1)
    node = cluster["node1"]
    with socket.create_connection(("127.0.0.1", node.cluster_port), timeout=5) as s:
        f = s.makefile("rwb")
        assert json.loads(f.readline())["link"] == LINK_PROTOCOL
        f.write(json.dumps({"cluster": "test", "node": "node9", "version": "9.9",
                            "link": LINK_PROTOCOL + 1, "role": "forward"}).encode() + b"\n")
        f.flush()
        error = json.loads(f.readline())["error"]
        assert f"node node9 speaks node-to-node protocol {LINK_PROTOCOL + 1}" in error
        assert "must run the same amqpd version" in error
        assert f.read() == b""           # and the connection is closed
    node.wait_for_line(r"ERROR .*node node9 speaks node-to-node protocol", 5)
    node.lines[:] = [line for line in node.lines if "node9" not in line]   # (expected)
