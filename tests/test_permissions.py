"""Users, vhost access and the configure/write/read permission table, on the wire.

Every AMQP method in RabbitMQ's permission table (https://www.rabbitmq.com/access-control.html)
is checked allowed and refused, with the reply RabbitMQ 3.10.8 sends. The expected texts and
the order of checks were probed on a real RabbitMQ 3.10.8 with the same raw frames.

User ``alice`` gets patterns that read a resource's name as a list of granted permissions:
``p-CWR-x`` may be configured, written and read, ``p-W-x`` only written, ``p--x`` nothing.
"""
import re

import pika
import pytest
from pamqp import commands as C

from tests.brokerthread import BrokerThread
from tests.rawclient import RawClient, open_reply

USERS = [{"name": "guest", "password": "guest"},
         {"name": "alice", "password": "alice-pw"},
         {"name": "bob", "password_hash": "EOd/N94UbGUUAFnJTyhdLezMoXvlHOYUE/aoRlvIQHJ6bPTj"},
         {"name": "nobody", "password": "nobody-pw"},
         {"name": "empty", "password": "empty-pw"}]
PERMISSIONS = [{"user": "guest"},
               {"user": "alice", "configure": "^p-[^-]*C", "write": "^p-[^-]*W",
                "read": "^p-[^-]*R"},
               {"user": "bob", "configure": ".*", "write": "^amq\\.default$", "read": ".*"},
               {"user": "empty", "configure": "", "write": "", "read": ""}]
LOGIN_REFUSED = ("ACCESS_REFUSED - Login was refused using authentication mechanism {}. For "
                 "details see the broker logfile.")


def refused(kind: str, name: str, user: str = "alice") -> str:
    return f"ACCESS_REFUSED - access to {kind} '{name}' in vhost '/' refused for user '{user}'"


@pytest.fixture(scope="module")
def broker():
    b = BrokerThread(users=USERS, permissions=PERMISSIONS, vhosts=["/", "other"]).start()
    yield b
    b.stop()
    b.cleanup()


@pytest.fixture(scope="module")
def guest(broker):
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    yield conn.channel()
    conn.close()


def login(broker, user="alice", password="alice-pw", vhost="/") -> RawClient:
    c = RawClient(broker.port)
    c.handshake(user, password, vhost)
    c.open_channel(1)
    return c


@pytest.fixture
def alice(broker):
    c = login(broker)
    yield c
    c.close()


def expect_refusal(c: RawClient, code, text, class_id, method_id) -> None:
    close = c.expect(C.Channel.Close)
    assert (close.reply_code, close.class_id, close.method_id) == (code, class_id, method_id), \
        (close.reply_code, close.reply_text, close.class_id, close.method_id)
    if hasattr(text, "fullmatch"):
        assert text.fullmatch(close.reply_text), close.reply_text
    else:
        assert close.reply_text == text
    c.method(1, C.Channel.CloseOk())
    c.open_channel(1)


# -- the permission table ---------------------------------------------------------------------------
# (id, guest set-up, alice's method, expected reply class, or (code, text, class, method))
X, Q = C.Exchange, C.Queue
CASES = [
    # exchange.declare: configure on the exchange
    ("exchange.declare", [], X.Declare(exchange="p-C-x1", exchange_type="direct"), X.DeclareOk),
    ("exchange.declare refused", [], X.Declare(exchange="p-WR-x1", exchange_type="direct"),
     (403, refused("exchange", "p-WR-x1"), 40, 10)),
    # passive declare needs no permission
    ("exchange.declare passive", [("exchange", "p--x2")],
     X.Declare(exchange="p--x2", exchange_type="direct", passive=True), X.DeclareOk),
    # with an alternate exchange: also read on the exchange, write on the AE
    ("exchange.declare AE", [],
     X.Declare(exchange="p-CR-x3", exchange_type="fanout",
               arguments={"alternate-exchange": "p-W-ae"}), X.DeclareOk),
    ("exchange.declare AE no read", [],
     X.Declare(exchange="p-C-x4", exchange_type="fanout",
               arguments={"alternate-exchange": "p-W-ae"}),
     (403, refused("exchange", "p-C-x4"), 40, 10)),
    ("exchange.declare AE no write", [],
     X.Declare(exchange="p-CR-x5", exchange_type="fanout",
               arguments={"alternate-exchange": "p-R-ae"}),
     (403, refused("exchange", "p-R-ae"), 40, 10)),
    # exchange.delete: configure, checked before existence
    ("exchange.delete", [("exchange", "p-C-x6")], X.Delete(exchange="p-C-x6"), X.DeleteOk),
    ("exchange.delete refused", [("exchange", "p-WR-x7")], X.Delete(exchange="p-WR-x7"),
     (403, refused("exchange", "p-WR-x7"), 40, 20)),
    ("exchange.delete refused missing", [], X.Delete(exchange="p-WR-nx"),
     (403, refused("exchange", "p-WR-nx"), 40, 20)),
    # queue.declare: configure on the queue
    ("queue.declare", [], Q.Declare(queue="p-C-q1"), Q.DeclareOk),
    ("queue.declare refused", [], Q.Declare(queue="p-WR-q1"),
     (403, refused("queue", "p-WR-q1"), 50, 10)),
    ("queue.declare server-named refused", [], Q.Declare(queue="", exclusive=True),
     (403, re.compile(re.escape("ACCESS_REFUSED - access to queue 'amq.gen-") + r".*"
                      + re.escape("' in vhost '/' refused for user 'alice'")), 50, 10)),
    ("queue.declare passive", [("queue", "p--q2")], Q.Declare(queue="p--q2", passive=True),
     Q.DeclareOk),
    # with a dead-letter exchange: also read on the queue, write on the DLX
    ("queue.declare DLX", [],
     Q.Declare(queue="p-CR-q3", arguments={"x-dead-letter-exchange": "p-W-dlx"}), Q.DeclareOk),
    ("queue.declare DLX no read", [],
     Q.Declare(queue="p-C-q4", arguments={"x-dead-letter-exchange": "p-W-dlx"}),
     (403, refused("queue", "p-C-q4"), 50, 10)),
    ("queue.declare DLX no write", [],
     Q.Declare(queue="p-CR-q5", arguments={"x-dead-letter-exchange": "p-R-dlx"}),
     (403, refused("exchange", "p-R-dlx"), 50, 10)),
    # queue.delete: configure
    ("queue.delete", [("queue", "p-C-q6")], Q.Delete(queue="p-C-q6"), Q.DeleteOk),
    ("queue.delete refused", [("queue", "p-WR-q7")], Q.Delete(queue="p-WR-q7"),
     (403, refused("queue", "p-WR-q7"), 50, 40)),
    # queue.purge: read
    ("queue.purge", [("queue", "p-R-q8")], Q.Purge(queue="p-R-q8"), Q.PurgeOk),
    ("queue.purge refused", [("queue", "p-CW-q9")], Q.Purge(queue="p-CW-q9"),
     (403, refused("queue", "p-CW-q9"), 50, 30)),
    # queue.bind / unbind: write on the queue, read on the exchange
    ("queue.bind", [("queue", "p-W-q10"), ("exchange", "p-R-x10")],
     Q.Bind(queue="p-W-q10", exchange="p-R-x10", routing_key="k"), Q.BindOk),
    ("queue.bind no write", [("queue", "p-CR-q11"), ("exchange", "p-R-x11")],
     Q.Bind(queue="p-CR-q11", exchange="p-R-x11", routing_key="k"),
     (403, refused("queue", "p-CR-q11"), 50, 20)),
    ("queue.bind no read", [("queue", "p-W-q12"), ("exchange", "p-CW-x12")],
     Q.Bind(queue="p-W-q12", exchange="p-CW-x12", routing_key="k"),
     (403, refused("exchange", "p-CW-x12"), 50, 20)),
    ("queue.unbind", [("queue", "p-W-q13"), ("exchange", "p-R-x13"),
                      ("bind", "p-W-q13", "p-R-x13", "k")],
     Q.Unbind(queue="p-W-q13", exchange="p-R-x13", routing_key="k"), Q.UnbindOk),
    ("queue.unbind no write", [("queue", "p-CR-q14"), ("exchange", "p-R-x14")],
     Q.Unbind(queue="p-CR-q14", exchange="p-R-x14", routing_key="k"),
     (403, refused("queue", "p-CR-q14"), 50, 50)),
    ("queue.unbind no read", [("queue", "p-W-q15"), ("exchange", "p-CW-x15")],
     Q.Unbind(queue="p-W-q15", exchange="p-CW-x15", routing_key="k"),
     (403, refused("exchange", "p-CW-x15"), 50, 50)),
    # exchange.bind / unbind: write on the destination, read on the source
    ("exchange.bind", [("exchange", "p-W-d16"), ("exchange", "p-R-s16")],
     X.Bind(destination="p-W-d16", source="p-R-s16", routing_key="k"), X.BindOk),
    ("exchange.bind no write", [("exchange", "p-CR-d17"), ("exchange", "p-R-s17")],
     X.Bind(destination="p-CR-d17", source="p-R-s17", routing_key="k"),
     (403, refused("exchange", "p-CR-d17"), 40, 30)),
    ("exchange.bind no read", [("exchange", "p-W-d18"), ("exchange", "p-CW-s18")],
     X.Bind(destination="p-W-d18", source="p-CW-s18", routing_key="k"),
     (403, refused("exchange", "p-CW-s18"), 40, 30)),
    ("exchange.unbind", [("exchange", "p-W-d19"), ("exchange", "p-R-s19")],
     X.Unbind(destination="p-W-d19", source="p-R-s19", routing_key="k"), X.UnbindOk),
    ("exchange.unbind no write", [("exchange", "p-CR-d20"), ("exchange", "p-R-s20")],
     X.Unbind(destination="p-CR-d20", source="p-R-s20", routing_key="k"),
     (403, refused("exchange", "p-CR-d20"), 40, 40)),
    ("exchange.unbind no read", [("exchange", "p-W-d21"), ("exchange", "p-CW-s21")],
     X.Unbind(destination="p-W-d21", source="p-CW-s21", routing_key="k"),
     (403, refused("exchange", "p-CW-s21"), 40, 40)),
    # basic.get / basic.consume: read on the queue
    ("basic.get", [("queue", "p-R-q22")], C.Basic.Get(queue="p-R-q22"), C.Basic.GetEmpty),
    ("basic.get refused", [("queue", "p-CW-q23")], C.Basic.Get(queue="p-CW-q23"),
     (403, refused("queue", "p-CW-q23"), 60, 70)),
    ("basic.consume", [("queue", "p-R-q24")],
     C.Basic.Consume(queue="p-R-q24", consumer_tag="t"), C.Basic.ConsumeOk),
    ("basic.consume refused", [("queue", "p-CW-q25")],
     C.Basic.Consume(queue="p-CW-q25", consumer_tag="t"),
     (403, refused("queue", "p-CW-q25"), 60, 20)),
]

# RabbitMQ checks permissions before it looks the resources up, and (AE/DLX) read before
# write: where both are wrong, the permission error is the reply.
ORDER_CASES = [
    ("exchange.declare AE neither", [],
     X.Declare(exchange="p-C-x30", exchange_type="fanout",
               arguments={"alternate-exchange": "p--ae"}),
     (403, refused("exchange", "p-C-x30"), 40, 10)),
    ("queue.declare DLX neither", [],
     Q.Declare(queue="p-C-q31", arguments={"x-dead-letter-exchange": "p--dlx"}),
     (403, refused("queue", "p-C-q31"), 50, 10)),
    ("basic.get refused missing", [], C.Basic.Get(queue="p--nq"),
     (403, refused("queue", "p--nq"), 60, 70)),
    ("basic.consume refused missing", [], C.Basic.Consume(queue="p--nq"),
     (403, refused("queue", "p--nq"), 60, 20)),
    ("queue.purge refused missing", [], Q.Purge(queue="p--nq"),
     (403, refused("queue", "p--nq"), 50, 30)),
    ("queue.bind refused missing", [("exchange", "p-R-x32")],
     Q.Bind(queue="p--nq", exchange="p-R-x32"), (403, refused("queue", "p--nq"), 50, 20)),
    ("exchange.bind refused missing", [("exchange", "p-R-s33")],
     X.Bind(destination="p--nx", source="p-R-s33"),
     (403, refused("exchange", "p--nx"), 40, 30)),
]


def setup(guest, steps) -> None:
    for step in steps:
        if step[0] == "exchange":
            guest.exchange_declare(step[1], "direct")
        elif step[0] == "queue":
            guest.queue_declare(step[1])
        elif step[0] == "bind":
            guest.queue_bind(step[1], step[2], step[3])


def run_case(broker, guest, alice, steps, method, want) -> None:
    setup(guest, steps)
    alice.method(1, method)
    if isinstance(want, tuple):
        expect_refusal(alice, *want)
    else:
        alice.expect(want)


@pytest.mark.parametrize("steps,method,want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_permission_table(broker, guest, alice, steps, method, want):
    run_case(broker, guest, alice, steps, method, want)


@pytest.mark.parametrize("steps,method,want", [
    pytest.param(*c[1:])
    for c in ORDER_CASES], ids=[c[0] for c in ORDER_CASES])
def test_permission_check_order(broker, guest, alice, steps, method, want):
    run_case(broker, guest, alice, steps, method, want)


def test_publish_needs_write_on_the_exchange(broker, guest, alice):
    guest.exchange_declare("p-W-pub", "fanout")
    guest.exchange_declare("p-CR-pub", "fanout")
    guest.queue_declare("pub-sink")
    guest.queue_bind("pub-sink", "p-W-pub")
    alice.publish(1, b"allowed", exchange="p-W-pub")
    alice.publish(1, b"refused", exchange="p-CR-pub")
    expect_refusal(alice, 403, refused("exchange", "p-CR-pub"), 60, 40)
    # the default exchange is checked under the name amq.default
    alice.publish(1, b"refused", exchange="", routing_key="pub-sink")
    expect_refusal(alice, 403, refused("exchange", "amq.default"), 60, 40)
    assert guest.basic_get("pub-sink", auto_ack=True)[2] == b"allowed"
    assert guest.basic_get("pub-sink", auto_ack=True)[0] is None


def test_write_on_amq_default_allows_the_default_exchange(broker, guest):
    guest.queue_declare("bob-sink")
    c = login(broker, "bob", "bob-pw")
    try:
        c.publish(1, b"via default", exchange="", routing_key="bob-sink")
        c.publish(1, b"refused", exchange="amq.fanout")
        expect_refusal(c, 403, refused("exchange", "amq.fanout", "bob"), 60, 40)
    finally:
        c.close()
    assert guest.basic_get("bob-sink", auto_ack=True)[2] == b"via default"


def test_empty_pattern_grants_nothing(broker):
    c = login(broker, "empty", "empty-pw")
    try:
        c.method(1, Q.Declare(queue="anything"))
        expect_refusal(c, 403, refused("queue", "anything", "empty"), 50, 10)
        c.method(1, X.Declare(exchange="amq.direct", passive=True))   # passive needs nothing
        c.expect(X.DeclareOk)
    finally:
        c.close()


def test_refusal_leaves_the_connection_usable(broker, alice):
    alice.method(1, Q.Declare(queue="p--q40"))
    expect_refusal(alice, 403, refused("queue", "p--q40"), 50, 10)
    alice.method(1, Q.Declare(queue="p-C-q40"))
    assert alice.expect(Q.DeclareOk).queue == "p-C-q40"


def test_pika_sees_403_as_a_channel_error(broker):
    params = pika.URLParameters(f"amqp://alice:alice-pw@127.0.0.1:{broker.port}/")
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare("not-allowed")
        assert info.value.reply_code == 403
        assert info.value.reply_text == refused("queue", "not-allowed")
        ch = conn.channel()
        ch.queue_declare("p-C-pika")
    finally:
        conn.close()


# -- logging in and opening a vhost -----------------------------------------------------------------
def handshake_reply(broker, user, password, vhost="/", mechanism="PLAIN"):
    c = RawClient(broker.port)
    try:
        c.handshake(user, password, vhost, mechanism=mechanism)
    except AssertionError:
        pass
    else:
        c.close()
        return "open"
    return c


def test_password_hash_from_rabbitmq_logs_in(broker):
    """bob's password_hash was made by RabbitMQ 3.10 (rabbitmqctl add_user bob bob-pw)."""
    c = RawClient(broker.port)
    c.handshake("bob", "bob-pw")                 # raises unless connection.open-ok came
    c.open_channel(1)
    assert c.call(1, C.Exchange.Declare(exchange="amq.direct", passive=True),
                  C.Exchange.DeclareOk) is not None
    c.close()


@pytest.mark.parametrize("user,password", [("alice", "wrong"), ("nobody-there", "x"),
                                           ("bob", "alice-pw")])
def test_bad_credentials_are_refused_with_rabbitmqs_text(broker, user, password):
    with RawClient(broker.port) as c:
        c.send(b"AMQP\x00\x00\x09\x01")
        c.expect(C.Connection.Start)
        c.method(0, C.Connection.StartOk(
            client_properties={"capabilities": {"authentication_failure_close": True}},
            mechanism="PLAIN", response=f"\0{user}\0{password}"))
        close = c.expect(C.Connection.Close)
        assert (close.reply_code, close.reply_text) == (403, LOGIN_REFUSED.format("PLAIN"))
        c.method(0, C.Connection.CloseOk())      # as RabbitMQ: close-ok drops the socket
        assert c.is_closed()


def open_refusal(broker, user, password, vhost) -> tuple:
    reply = open_reply(broker.port, user, password, vhost)
    if isinstance(reply, RawClient):
        reply.close()
        raise AssertionError(f"{user} opened vhost {vhost!r}")
    return reply


def test_vhost_without_permissions_is_530_at_open(broker):
    assert open_refusal(broker, "nobody", "nobody-pw", "/") == (
        530, "NOT_ALLOWED - access to vhost '/' refused for user 'nobody'", 10, 40)
    assert open_refusal(broker, "alice", "alice-pw", "other") == (
        530, "NOT_ALLOWED - access to vhost 'other' refused for user 'alice'", 10, 40)
    assert open_refusal(broker, "alice", "alice-pw", "nope") == (
        530, "NOT_ALLOWED - vhost nope not found", 10, 40)


def test_vhosts_are_isolated(make_broker):
    b = make_broker(vhosts=["/", "blue"],
                    permissions=[{"user": "guest", "vhost": "/"},
                                 {"user": "guest", "vhost": "blue"}])
    root = pika.BlockingConnection(pika.URLParameters(b.url))
    blue = pika.BlockingConnection(pika.URLParameters(b.url + "blue"))
    root.channel().queue_declare("same-name")
    blue_ch = blue.channel()
    blue_ch.queue_declare("same-name")
    root.channel().basic_publish("", "same-name", b"root")
    assert blue_ch.basic_get("same-name", auto_ack=True)[0] is None
    root.close()
    blue.close()


# -- loopback users -----------------------------------------------------------------------------------
def local_address() -> str | None:
    """A non-loopback address of this machine, if it has one."""
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.123", 9))        # no packet is sent for a UDP connect
        addr = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if addr.startswith("127.") else addr


def test_guest_only_from_loopback_sans_io():
    """The rule itself, with the peer address the I/O edge would pass."""
    from tests.unit.stubs import Client, PROTOCOL_HEADER, start_ok
    for peer, allowed in (("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
                          ("10.1.2.3", False), ("::ffff:10.1.2.3", False)):
        c = Client()
        c.conn.peer_ip = peer
        c.send(PROTOCOL_HEADER + start_ok("guest", "guest"))
        frames = [type(f).__name__ for _, f in c.methods()]
        assert frames == (["Start", "Tune"] if allowed else ["Start", "Close"]), (peer, frames)
    c = Client(loopback_users=[])
    c.conn.peer_ip = "10.1.2.3"
    c.send(PROTOCOL_HEADER + start_ok("guest", "guest"))
    assert [type(f).__name__ for _, f in c.methods()] == ["Start", "Tune"]


def test_guest_only_from_loopback_on_a_real_socket(make_broker, caplog):
    addr = local_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address")
    b = make_broker(listeners={"amqp": {"host": "0.0.0.0", "port": 0}},
                    users=USERS, permissions=PERMISSIONS)
    with RawClient(b.port, host=addr) as c:
        c.send(b"AMQP\x00\x00\x09\x01")
        c.expect(C.Connection.Start)
        c.method(0, C.Connection.StartOk(
            client_properties={"capabilities": {"authentication_failure_close": True}},
            mechanism="PLAIN", response="\0guest\0guest"))
        close = c.expect(C.Connection.Close)
        assert (close.reply_code, close.reply_text) == (403, LOGIN_REFUSED.format("PLAIN"))
    assert "user 'guest' can only connect via localhost" in caplog.text
    c = RawClient(b.port, host=addr)            # other users may come from anywhere
    c.handshake("alice", "alice-pw")
    c.close()
