"""The ``cluster`` section: errors name the key's path; without it a node is the single
node it always was and never loads the cluster code (nor needs etcd)."""
import subprocess
import sys

import pytest

from amqpd import config

from .harness import ROOT

BASE = {"name": "prod", "node": "node1"}


def test_the_issue_example_is_accepted():
    cfg = config.from_dict({"cluster": {"name": "prod", "node": "node1",
                                        "etcd": ["http://127.0.0.1:2379"],
                                        "listen": {"host": "127.0.0.1", "port": 25672},
                                        "lease_ttl": 3}})
    assert cfg.cluster == config.Cluster("prod", "node1")
    assert config.from_dict({}).cluster is None


@pytest.mark.parametrize("section, message", [
    ({"node": "n1"}, "cluster.name: required"),
    ({"name": "prod"}, "cluster.node: required"),
    (dict(BASE, node="my node"), "cluster.node: expected letters, digits and _ . @ -"),
    (dict(BASE, name="a/b"), "cluster.name: expected letters"),
    (dict(BASE, etcd="http://127.0.0.1:2379"), "cluster.etcd: expected a list, got str"),
    (dict(BASE, etcd=[]), "cluster.etcd: at least one etcd endpoint is needed"),
    (dict(BASE, etcd=["127.0.0.1:2379"]), "cluster.etcd[0]: expected a URL like"),
    (dict(BASE, etcd=["http://a:1", 5]), "cluster.etcd[1]: expected a string, got int"),
    (dict(BASE, etcd=["https://e:2379"]), "cluster.etcd[0]: https endpoints are not "
                                          "supported yet"),
    (dict(BASE, listen={"port": 70000}), "cluster.listen.port: expected 0..65535"),
    (dict(BASE, listen={"hots": "x"}), "cluster.listen.hots: unknown key"),
    (dict(BASE, lease_ttl=1), "cluster.lease_ttl: expected at least 2 seconds"),
    (dict(BASE, lease_ttl=2.5), "cluster.lease_ttl: expected an integer"),
    (dict(BASE, leader=True), "cluster.leader: unknown key"),
])
def test_errors_name_the_key(section, message):
    with pytest.raises(config.ConfigError) as info:
        config.from_dict({"cluster": section})
    assert str(info.value).startswith(message), str(info.value)


def test_check_config_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cluster: {name: prod, node: n1, lease_ttl: 0}\n")
    result = subprocess.run([sys.executable, "-m", "amqpd", "--check-config", "-c", str(path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cluster.lease_ttl: expected at least 2 seconds" in result.stderr


def test_a_single_node_loads_no_cluster_code(tmp_path):
    """No cluster section: the node starts and serves without importing amqpd.cluster."""
    code = (
        "import asyncio, sys\n"
        "from amqpd import config\n"
        "from amqpd.node import Node\n"
        "async def main():\n"
        "    cfg = config.override(config.from_dict({'listeners': {'http': None,\n"
        "        'prometheus': None}}), port=0, data_dir=sys.argv[1])\n"
        "    node = await Node(cfg).start()\n"
        "    assert node.cluster is None and node.port\n"
        "    await node.stop()\n"
        "asyncio.run(main())\n"
        "assert 'amqpd.cluster' not in sys.modules\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data")], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr
