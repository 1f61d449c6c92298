"""Permissions changed while a connection is open take effect at its next operation: the
connection's cached decisions are dropped (access/control.py tells the user's connections).
Sans-IO: a real connection core over a memory-only broker, no sockets."""
from pamqp import commands as C

from amqpd.access.control import Grant
from tests.unit.stubs import Client, handshake_bytes, method, publish


def opened(**cfg) -> Client:
    c = Client(**cfg)
    c.send(handshake_bytes() + method(1, C.Channel.Open()))
    c.frames()
    return c


def test_revoked_write_permission_refuses_the_next_publish():
    c = opened()
    c.send(method(1, C.Queue.Declare(queue="q")) + publish(1, b"one", routing_key="q"))
    assert [type(f) for _, f in c.methods()] == [C.Queue.DeclareOk]
    assert c.broker.vhosts["/"].queues["q"].message_count == 1

    c.broker.access.set_permissions(Grant("guest", "/", ".*", "", ".*"))
    c.send(publish(1, b"two", routing_key="q"))
    close = c.expect_one(C.Channel.Close, channel=1)
    assert close.reply_code == 403
    assert close.reply_text == ("ACCESS_REFUSED - access to exchange 'amq.default' in vhost "
                                "'/' refused for user 'guest'")
    assert c.broker.vhosts["/"].queues["q"].message_count == 1


def test_granted_permission_applies_without_reconnecting():
    c = opened(permissions=[{"user": "guest", "vhost": "/", "configure": "^mine$",
                             "write": "", "read": ""}])
    c.send(method(1, C.Queue.Declare(queue="other")))
    assert c.expect_one(C.Channel.Close, channel=1).reply_code == 403
    c.send(method(1, C.Channel.CloseOk()))

    c.broker.access.set_permissions(Grant("guest", "/", ".*", ".*", ".*"))
    c.send(method(2, C.Channel.Open()) + method(2, C.Queue.Declare(queue="other")))
    assert [type(f) for _, f in c.methods()] == [C.Channel.OpenOk, C.Queue.DeclareOk]


def test_a_deleted_user_is_refused_from_its_next_operation():
    c = opened()
    c.broker.access.delete_user("guest")
    c.send(method(1, C.Queue.Declare(queue="q")))
    assert c.expect_one(C.Channel.Close, channel=1).reply_code == 403


def test_other_users_keep_their_cached_decisions():
    c = opened()
    c.broker.access.clear_permissions("someone-else", "/")
    c.send(method(1, C.Queue.Declare(queue="q")))
    assert [type(f) for _, f in c.methods()] == [C.Queue.DeclareOk]
