import pika
import pytest

from .brokerthread import BrokerThread
from .helpers import vhost_of


@pytest.fixture
def make_broker():
    """Start amqpd instances with config overrides; each is stopped at teardown, and the
    teardown fails if a test left client connections open."""
    started = []

    def make(**overrides) -> BrokerThread:
        b = BrokerThread(**overrides).start()
        started.append(b)
        return b

    yield make
    leaked = []
    for b in started:
        try:
            # longer than the 3 s a broker keeps a socket it closed after a framing error
            b.wait_for(lambda: not b.server.protocols, timeout=6, what="clients to disconnect")
        except AssertionError:
            leaked.append(b.connection_count())
        b.stop()
        b.cleanup()
    assert not leaked, f"test leaked {leaked} open client connection(s)"


@pytest.fixture
def broker(make_broker) -> BrokerThread:
    return make_broker()


@pytest.fixture
def connect(broker):
    """pika connections that are closed at teardown (the broker fixture fails on leaks)."""
    conns = []

    def make() -> pika.BlockingConnection:
        c = pika.BlockingConnection(pika.URLParameters(broker.url))
        conns.append(c)
        return c

    yield make
    for c in conns:
        if c.is_open:
            c.close()


@pytest.fixture
def conn(connect):
    return connect()


@pytest.fixture
def ch(conn):
    return conn.channel()


@pytest.fixture
def vh(broker):
    return vhost_of(broker)
