"""Fixtures for the cluster tests: ``etcd`` (one member) and ``cluster`` (etcd and amqpd
nodes), all under tmp_path and torn down by pid. Without Debian's etcd-server (.ci/run
installs it) the tests are skipped and say why; in CI (AMQPD_INTEROP_REQUIRE_ALL=1) that is
a failure instead."""
import os

import pytest

from .harness import ETCD, Cluster, EtcdServer


def need_etcd():
    if ETCD is None:
        why = "etcd is not installed (apt-get install etcd-server; .ci/run does)"
        if os.environ.get("AMQPD_INTEROP_REQUIRE_ALL"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture
def etcd(tmp_path):
    need_etcd()
    server = EtcdServer(str(tmp_path / "etcd")).start()
    yield server
    server.kill()


@pytest.fixture
def make_cluster(tmp_path):
    """make_cluster(count=3, lease_ttl=2) -> a started Cluster (etcd + nodes node1..N)."""
    need_etcd()
    made = []

    def make(count: int = 3, **kw) -> Cluster:
        cluster = Cluster(tmp_path, **kw)
        made.append(cluster)
        return cluster.start(count)

    yield make
    errors = []
    for cluster in made:
        cluster.teardown()
        errors += [f"{node.name}: {line}" for node in cluster.nodes
                   for line in node.previous_lines + node.lines
                   if " ERROR " in line or "Traceback" in line]
    assert not errors, "the nodes logged errors:\n" + "\n".join(errors)
