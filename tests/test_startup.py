"""Server.start in the order that makes a failed start quick and clean: checks that create
nothing, then the ports bound, then the data dir taken and recovered, then clients accepted.
A start that fails after binding gives its ports back."""
import fcntl
import socket

import pika
import pytest

from amqpd.config import ConfigError
from amqpd.edge.listeners import StartError
from amqpd.store.store import StoreError
from tests.brokerthread import BrokerThread


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_listen(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


def test_busy_port_is_a_start_error_and_leaves_no_data_dir(tmp_path):
    data = tmp_path / "data"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        b = BrokerThread(data_dir=str(data), listeners={"amqp": {"port": port}})
        with pytest.raises(StartError, match=f"127.0.0.1:{port} is already in use"):
            b.start()
    assert not data.exists()


def test_a_failure_after_binding_releases_the_port(tmp_path):
    """The data dir is locked by another owner: the store refuses after the port was bound;
    the port must be free again, and no client was ever accepted meanwhile."""
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    with open(data / "LOCK", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        b = BrokerThread(data_dir=str(data), listeners={"amqp": {"port": port}})
        with pytest.raises(StoreError, match="in use by another amqpd"):
            b.start()
    assert can_listen(port)
    ok = BrokerThread(data_dir=str(data), listeners={"amqp": {"port": port}}).start()
    try:
        pika.BlockingConnection(pika.URLParameters(ok.url)).close()
    finally:
        ok.stop()


def test_bad_tls_file_is_a_config_error_before_anything_is_bound(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    b = BrokerThread(data_dir=str(data), listeners={
        "amqp": {"port": port},
        "amqps": {"port": 0, "certfile": str(tmp_path / "nope.pem")}})
    with pytest.raises(ConfigError, match=r"listeners\.amqps\.certfile: .*nope\.pem does not exist"):
        b.start()
    assert not data.exists()
    assert can_listen(port)


def test_dangling_permissions_are_logged_not_fatal(make_broker, caplog):
    b = make_broker(vhosts=["/"], permissions=[{"user": "guest"}, {"user": "guest",
                                                                   "vhost": "nowhere"}])
    assert "permissions[1]: vhost 'nowhere' does not exist" in caplog.text
    pika.BlockingConnection(pika.URLParameters(b.url)).close()
