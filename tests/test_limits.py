"""Limits answer with RabbitMQ's error (texts probed on RabbitMQ 3.10.8 where it has the limit)
and the broker keeps serving everyone else while one client is over a limit."""
import time

import pika
import pytest
from pamqp import commands as C

from tests.rawclient import PROTOCOL_HEADER, Closed, RawClient, open_reply
from tests.helpers import ready

USERS = [{"name": "guest", "password": "guest"},
         {"name": "one", "password": "pw", "max_connections": 1},
         {"name": "chan", "password": "pw", "max_channels": 3},
         {"name": "slow", "password": "pw", "max_publish_rate": 500}]
PERMS = [{"user": u["name"]} for u in USERS] + [{"user": "guest", "vhost": "v2"}]


def alive(c: RawClient, number: int = 7) -> None:
    c.open_channel(number)
    c.method(number, C.Exchange.Declare(exchange="amq.direct", passive=True))
    c.expect(C.Exchange.DeclareOk)


def test_node_connection_limit(make_broker):
    b = make_broker(limits={"max_connections": 2})
    first, second = open_reply(b.port), open_reply(b.port)
    assert open_reply(b.port) == (
        530, "NOT_ALLOWED - connection refused: node connection limit (2) is reached", 10, 40)
    alive(first)
    first.close()
    b.wait_for(lambda: len(b.server.protocols) == 1, what="the first connection to go")
    third = open_reply(b.port)
    alive(third)
    second.close()
    third.close()


def test_vhost_connection_limit(make_broker):
    b = make_broker(vhosts=["/", "v2"], users=USERS, permissions=PERMS,
                    limits={"max_connections_per_vhost": 1})
    first = open_reply(b.port)
    assert open_reply(b.port) == (
        530, "NOT_ALLOWED - access to vhost '/' refused for user 'guest': connection limit (1) "
             "is reached", 10, 40)
    other = open_reply(b.port, vhost="v2")         # the limit is per vhost
    alive(other)
    first.close()
    other.close()


def test_user_connection_limit(make_broker):
    b = make_broker(users=USERS, permissions=PERMS)
    first = open_reply(b.port, "one", "pw")
    assert open_reply(b.port, "one", "pw") == (
        530, "NOT_ALLOWED - connection refused for user 'one': user connection limit (1) is "
             "reached", 10, 40)
    alive(open_reply(b.port))      # other users are not affected
    first.close()


def test_user_channel_limit_counts_all_connections(make_broker):
    b = make_broker(users=USERS, permissions=PERMS)
    a, c = open_reply(b.port, "chan", "pw"), open_reply(b.port, "chan", "pw")
    a.open_channel(1)
    a.open_channel(2)
    c.open_channel(1)
    c.method(2, C.Channel.Open())
    close = c.expect(C.Connection.Close)
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        530, "NOT_ALLOWED - number of channels opened for user 'chan' has reached the maximum "
             "allowed user limit of (3)", 0, 0)
    c.method(0, C.Connection.CloseOk())
    assert c.is_closed()
    a.method(2, C.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
    a.expect(C.Channel.CloseOk)
    a.open_channel(3)              # a closed channel frees its place
    a.close()
    c.close()


def test_queue_limit_per_vhost(make_broker):
    b = make_broker(limits={"max_queues_per_vhost": 2})
    conn = pika.BlockingConnection(pika.URLParameters(b.url))
    ch = conn.channel()
    ch.queue_declare("q1")
    ch.queue_declare("q2")
    ch.queue_declare("q1")                 # re-declaring an existing queue is fine
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare("q3")
    assert info.value.reply_code == 406
    assert info.value.reply_text == (
        "PRECONDITION_FAILED - cannot declare queue 'q3' in vhost '/': queue limit in vhost "
        "'/' (2) is reached")
    conn.channel().queue_delete("q2")
    conn.channel().queue_declare("q3")
    conn.close()


def test_handshake_timeout_drops_silent_and_slow_clients(make_broker):
    b = make_broker(limits={"handshake_timeout": 0.3})
    silent = RawClient(b.port)
    halfway = RawClient(b.port)
    halfway.send(PROTOCOL_HEADER)
    halfway.expect(C.Connection.Start)
    started = time.monotonic()
    good = open_reply(b.port)              # the broker answers others meanwhile
    alive(good)
    for c in (silent, halfway):
        with pytest.raises((Closed, ConnectionResetError)):
            while True:
                c.recv(3)
    assert 0.2 < time.monotonic() - started < 3
    alive(good, 8)                         # an open connection is never timed out
    for c in (silent, halfway, good):
        c.close()


def test_oversized_message_is_refused_and_others_keep_going(make_broker):
    b = make_broker(limits={"max_message_size": 1000})
    big, other = open_reply(b.port), open_reply(b.port)
    big.open_channel(1)
    big.publish(1, b"x" * 1001, routing_key="nowhere")
    close = big.expect(C.Channel.Close)
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        406, "PRECONDITION_FAILED - message size 1001 is larger than configured max size 1000",
        60, 40)
    alive(other)
    big.method(1, C.Channel.CloseOk())
    alive(big)
    big.close()
    other.close()


def test_publish_rate_limit_per_user(make_broker):
    """500 messages/s for user 'slow', over both its connections: 1000 messages cannot be
    taken in faster than (1000 - 500 burst - one 8 KiB read's overshoot) / 500 s."""
    b = make_broker(users=USERS, permissions=PERMS)
    setup = pika.BlockingConnection(pika.URLParameters(b.url))
    setup.channel().queue_declare("rate")
    pubs = [open_reply(b.port, "slow", "pw") for _ in range(2)]
    for c in pubs:
        c.open_channel(1)
    started = time.monotonic()
    for c in pubs:
        for _ in range(500):
            c.publish(1, b"m", routing_key="rate")
    # a user without a limit is served at once meanwhile
    fast = setup.channel()
    fast.queue_declare("free")
    for _ in range(200):
        fast.basic_publish("", "free", b"f")
    fast.queue_declare("free")        # a round trip: everything before it was taken in
    assert ready(b, "free") == 200
    assert time.monotonic() - started < 0.5
    b.wait_for(lambda: b.broker.vhosts["/"].queues["rate"].message_count == 1000, timeout=10,
               what="the rate-limited messages")
    elapsed = time.monotonic() - started
    assert elapsed > (1000 - 500 - 200) / 500, elapsed
    for c in pubs:
        alive(c)
        c.close()
    setup.close()
