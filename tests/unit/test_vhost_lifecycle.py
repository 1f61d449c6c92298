"""Vhosts added and deleted while the broker runs (what ``amqpd.serve`` and the pytest plugin's
fresh vhost per test are built on). Deleting one does what ``rabbitmqctl delete_vhost`` does:
its connections are closed with 320 CONNECTION_FORCED, its queues (with their logs) and
exchanges go, and so do its grants. Sans-IO: real connection cores, no sockets."""
import os

from pamqp import commands as C

from amqpd import config as config_mod
from amqpd.access.control import Grant
from amqpd.node import build
from tests.unit.stubs import Client, handshake_bytes, make_broker, open_


def declared(broker, vhost: str, queue: str) -> Client:
    """A connection to ``vhost`` that declared ``queue`` on channel 1."""
    c = Client(broker)
    c.handshake(vhost=vhost)
    c.open_channel()
    c.send_method(1, C.Queue.Declare(queue=queue))
    c.expect_one(C.Queue.DeclareOk, 1)
    return c


def test_an_added_vhost_opens_for_a_user_with_a_grant():
    broker = make_broker()
    broker.add_vhost("shop")
    refused = Client(broker)
    refused.send(handshake_bytes(vhost="shop"))
    close = refused.methods()[-1][1]
    assert (close.reply_code, close.reply_text) == (
        530, "NOT_ALLOWED - access to vhost 'shop' refused for user 'guest'")

    broker.access.set_permissions(Grant("guest", "shop", ".*", ".*", ".*"))
    declared(broker, "shop", "orders")
    assert "orders" in broker.vhosts["shop"].queues
    assert "orders" not in broker.vhosts["/"].queues


def test_adding_a_vhost_that_exists_keeps_what_is_in_it():
    broker = make_broker()
    declared(broker, "/", "kept")
    assert broker.add_vhost("/") is broker.vhosts["/"]
    assert "kept" in broker.vhosts["/"].queues


def test_deleting_a_vhost_closes_its_connections_and_removes_its_contents():
    broker = make_broker(vhosts=["/", "t1"],
                         permissions=[{"user": "guest", "vhost": "/"},
                                      {"user": "guest", "vhost": "t1"}])
    inside, outside = Client(broker), Client(broker)
    inside.handshake(vhost="t1")
    outside.handshake(vhost="/")
    for c in (inside, outside):
        c.open_channel()
        c.send_method(1, C.Exchange.Declare(exchange="events", exchange_type="topic"))
        c.expect_one(C.Exchange.DeclareOk, 1)
        c.send_method(1, C.Queue.Declare(queue="jobs"))
        c.expect_one(C.Queue.DeclareOk, 1)
        c.publish(1, b"job", routing_key="jobs")
        assert c.methods() == []

    assert broker.delete_vhost("t1") is True
    close = inside.expect_one(C.Connection.Close, 0)
    assert (close.reply_code, close.reply_text) == (
        320, "CONNECTION_FORCED - vhost 't1' is deleted")   # RabbitMQ 3.10.8's text
    assert "t1" not in broker.vhosts and "t1" not in broker.access.vhosts
    assert broker.access.grant("guest", "t1") is None
    assert not broker.access.by_vhost.get("t1")          # released: limits count it no more
    # the other vhost's connection, queue and exchange are untouched
    assert outside.methods() == []
    assert broker.vhosts["/"].queues["jobs"].message_count == 1
    assert "events" in broker.vhosts["/"].exchanges

    again = Client(broker)
    again.send(handshake_bytes(vhost="t1"))
    close = again.methods()[-1][1]
    assert (close.reply_code, close.reply_text) == (530, "NOT_ALLOWED - vhost t1 not found")
    assert broker.delete_vhost("t1") is False


def test_a_deleted_vhost_can_be_added_again_empty():
    broker = make_broker()
    broker.add_vhost("t2")
    broker.access.set_permissions(Grant("guest", "t2", ".*", ".*", ".*"))
    declared(broker, "t2", "q")
    broker.delete_vhost("t2")
    broker.add_vhost("t2")
    assert broker.vhosts["t2"].queues == {}
    c2 = Client(broker)
    c2.send(handshake_bytes(vhost="t2"))      # the grant went with the vhost
    assert c2.methods()[-1][1].reply_code == 530


def test_a_connection_still_opening_is_refused_once_the_vhost_is_gone():
    broker = make_broker()
    broker.add_vhost("t3")
    broker.access.set_permissions(Grant("guest", "t3", ".*", ".*", ".*"))
    c = Client(broker)
    c.send(handshake_bytes(vhost="t3")[:-len(open_("t3"))])   # tuned, not yet opened
    c.methods()
    broker.delete_vhost("t3")
    c.send(open_("t3"))
    assert c.expect_one(C.Connection.Close, 0).reply_code == 530


def test_deleting_a_vhost_deletes_its_durable_queues_in_the_store(tmp_path):
    data_dir = str(tmp_path / "data")
    config = config_mod.from_dict({
        "storage": {"data_dir": data_dir}, "vhosts": ["/", "t4"],
        "permissions": [{"user": "guest", "vhost": "/"}, {"user": "guest", "vhost": "t4"}]})
    store, _access, broker = build(config)
    for vhost in ("/", "t4"):
        broker.vhosts[vhost].declare_queue("durable-q", None, False, True, False, False, {})
        broker.vhosts[vhost].declare_exchange("durable-x", "direct", False, True, False,
                                              False, {})
    queues_dir = os.path.join(data_dir, "queues")
    assert len(os.listdir(queues_dir)) == 2
    broker.delete_vhost("t4")
    store.close()

    store, _access, broker = build(config)        # the vhost is configured again: empty
    try:
        assert list(broker.vhosts["t4"].queues) == []
        assert "durable-x" not in broker.vhosts["t4"].exchanges
        assert list(broker.vhosts["/"].queues) == ["durable-q"]
        assert "durable-x" in broker.vhosts["/"].exchanges
        assert [n for n in os.listdir(queues_dir) if os.path.isdir(
            os.path.join(queues_dir, n))] == [os.path.basename(
                store._log_path("/", "durable-q"))]
    finally:
        store.close()
