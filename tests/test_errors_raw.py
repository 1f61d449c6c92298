"""Reply codes on the wire, compared with RabbitMQ 3.10.8.

Each test is one situation that was probed against a real RabbitMQ 3.10.8 with raw frames (pamqp
over a plain socket): the reply method (Channel.Close or Connection.Close), reply_code,
reply_text, class_id and method_id, and whether the connection still works afterwards. The
simple situations are rows of ``tests/reference_cases.py``; the ones that need a second
connection, timing or a handshake of their own are written out below.

amqpd deliberately differs from RabbitMQ in a few places; those tests assert amqpd's behaviour
and say so with a "# differs from RabbitMQ" comment. Everywhere else a mismatch is a bug: the
test asserts RabbitMQ's behaviour and is marked xfail(strict=True) with the reason.
"""
import socket
import struct
import time

import pytest
from pamqp import commands as C, encode as pamqp_encode, heartbeat as pamqp_heartbeat
from pamqp import header as pamqp_header

from tests import reference_cases as ref
from tests.rawclient import PROTOCOL_HEADER, Closed, RawClient
from tests.reference_cases import CC, XC, F, LOCKED, Replies, Silent

CAPABILITIES = {"publisher_confirms": True, "exchange_exchange_bindings": True,
                "basic.nack": True, "consumer_cancel_notify": True, "connection.blocked": True,
                "consumer_priorities": True, "authentication_failure_close": True,
                "per_consumer_qos": True, "direct_reply_to": True}
# limits.close_timeout of the brokers that tests wait out (RabbitMQ's and the default: 3 s, which
# tests/unit/test_connection_core.py checks): how long a peer gets before tune-ok, after a framing
# error or a refused login. Tests assert the wait happens and ends by it, without spending 3 s.
CLOSE_TIMEOUT = 0.5
LOGIN_REFUSED = ("ACCESS_REFUSED - Login was refused using authentication mechanism {}. For "
                 "details see the broker logfile.")


# -- helpers ---------------------------------------------------------------------------------------
def connect(port: int) -> RawClient:
    c = RawClient(port, timeout=2.0)
    # Without this, Nagle + delayed ACK add 40 ms to every two-write exchange.
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def next_frame(c: RawClient, timeout: float | None = None):
    """Next (channel, frame) that is not a heartbeat."""
    while True:
        ch, f = c.recv(timeout)
        if not isinstance(f, pamqp_heartbeat.Heartbeat):
            return ch, f


def matches(value, want) -> bool:
    if hasattr(want, "fullmatch"):
        return isinstance(value, str) and want.fullmatch(value) is not None
    return value == want


def expect_frame(c: RawClient, spec: F):
    ch, f = next_frame(c)
    assert (ch, type(f)) == (spec.ch, spec.cls), f"expected {spec}, got ch{ch} {f!r}"
    for name, want in spec.attrs.items():
        got = getattr(f, name)
        assert matches(got, want), f"{spec.cls.__name__}.{name}: {got!r} != {want!r}"
    return f


def closed_after(c: RawClient, timeout: float) -> float | None:
    """Seconds until the broker closes the socket, with no frame before (None: still open)."""
    t0 = time.monotonic()
    try:
        ch, f = c.recv(timeout)
    except (Closed, ConnectionResetError):
        return time.monotonic() - t0
    except (TimeoutError, socket.timeout):
        return None
    raise AssertionError(f"expected the socket to close, got ch{ch} {f!r}")


def assert_closed(c: RawClient, timeout: float = 1.0) -> None:
    assert closed_after(c, timeout) is not None, f"socket still open after {timeout} s"


def assert_silent(c: RawClient, wait: float = 0.3) -> None:
    try:
        ch, f = c.recv(wait)
    except (TimeoutError, socket.timeout):
        return
    raise AssertionError(f"expected nothing, got ch{ch} {f!r}")


def assert_alive(c: RawClient, ch: int = 100, open_: bool = True) -> None:
    """The connection still works: (open a channel and) passive-declare amq.direct on it. The
    replies must be the very next frames, so nothing unexpected was sent before."""
    if open_:
        c.method(ch, C.Channel.Open())
        expect_frame(c, F(ch, C.Channel.OpenOk))
    c.method(ch, C.Exchange.Declare(exchange="amq.direct", passive=True))
    expect_frame(c, F(ch, C.Exchange.DeclareOk))


def close_fields(f) -> tuple:
    return f.reply_code, f.reply_text, f.class_id, f.method_id


def check_channel_close(c: RawClient, want: CC) -> None:
    """Channel.Close as RabbitMQ sends it; after close-ok the same channel number opens again."""
    ch, f = next_frame(c)
    assert (ch, type(f)) == (want.ch, C.Channel.Close), f"expected Channel.Close, got ch{ch} {f!r}"
    assert close_fields(f) == (want.code, want.text, want.class_id, want.method_id)
    c.method(want.ch, C.Channel.CloseOk())
    assert_alive(c, want.ch)


def expect_connection_close(c: RawClient, want: XC):
    ch, f = next_frame(c)
    assert (ch, type(f)) == (0, C.Connection.Close), f"expected Connection.Close, got ch{ch} {f!r}"
    if want.text is None:
        # differs from RabbitMQ: FRAME_ERROR texts (no Erlang terms); only code and ids compared
        assert (f.reply_code, f.class_id, f.method_id) == (want.code, want.class_id,
                                                           want.method_id), close_fields(f)
    elif want.text.endswith("*"):
        assert f.reply_text.startswith(want.text[:-1]), close_fields(f)
        assert (f.reply_code, f.class_id, f.method_id) == (want.code, want.class_id,
                                                           want.method_id), close_fields(f)
    else:
        assert close_fields(f) == (want.code, want.text, want.class_id, want.method_id)
    return f


def check_connection_close(c: RawClient, want: XC) -> None:
    """Connection.Close; after close-ok the socket closes with nothing else sent."""
    expect_connection_close(c, want)
    c.method(0, C.Connection.CloseOk())
    # RabbitMQ closes at once, or 3 s (close_timeout) later after a FRAME_ERROR (see
    # test_frame_error_close_*)
    assert_closed(c, 5.0)


def check_refused_before_open(c: RawClient, want: XC) -> None:
    """Errors before connection.open: a Connection.Close; as RabbitMQ, the socket waits (up to
    3 s) for the close-ok, which closes it at once."""
    expect_connection_close(c, want)
    assert_silent(c, 0.2)
    c.method(0, C.Connection.CloseOk())
    assert_closed(c, 1.0)


def run_step(c: RawClient, step) -> None:
    if isinstance(step, ref.Open):
        c.open_channel(step.ch)
    elif isinstance(step, ref.Send):
        c.send(step.data)
    elif isinstance(step, ref.Sync):
        c.method(step.ch, step.method)
        expect_frame(c, F(step.ch, step.reply, step.attrs))
    elif isinstance(step, ref.Get):
        c.method(step.ch, C.Basic.Get(queue=step.queue, no_ack=step.no_ack))
        expect_frame(c, F(step.ch, C.Basic.GetOk))
        expect_frame(c, F(step.ch, pamqp_header.ContentHeader))
        next_frame(c)
    else:
        raise TypeError(step)


def start(c: RawClient, mechanism: str = "PLAIN", response: str = "\0guest\0guest",
          capabilities: dict | None = None) -> C.Connection.Start:
    """Protocol header and start-ok; returns the server's Connection.Start."""
    c.send(PROTOCOL_HEADER)
    s = c.expect(C.Connection.Start)
    props = {"product": "test_errors_raw"}
    if capabilities is not None:
        props["capabilities"] = capabilities
    c.method(0, C.Connection.StartOk(client_properties=props, mechanism=mechanism,
                                     response=response))
    return s


def start_ok_raw(mechanism: str, response: bytes, props: dict) -> bytes:
    """A start-ok whose SASL response is arbitrary bytes (AMQPLAIN's table)."""
    args = (pamqp_encode.field_table(props) + pamqp_encode.short_string(mechanism)
            + struct.pack(">I", len(response)) + response + pamqp_encode.short_string("en_US"))
    return ref.raw_method(0, 10, 11, args)


def tune_and_open(c: RawClient, channel_max: int = 2047, frame_max: int = 131072,
                  heartbeat: int = 0) -> None:
    """Tune-ok and connection.open in one write, as the probe sent them."""
    c.send(ref.method(0, C.Connection.TuneOk(channel_max=channel_max, frame_max=frame_max,
                                             heartbeat=heartbeat))
           + ref.method(0, C.Connection.Open(virtual_host="/")))


@pytest.fixture
def client(broker):
    c = connect(broker.port)
    yield c
    c.close()


@pytest.fixture
def quick(make_broker):
    """A broker whose close waits last CLOSE_TIMEOUT (for tests that wait one out)."""
    return make_broker(limits={"close_timeout": CLOSE_TIMEOUT})


@pytest.fixture
def quick_client(quick):
    c = connect(quick.port)
    yield c
    c.close()


def assert_closed_by_timeout(c: RawClient, since: float) -> None:
    """The broker drops the socket CLOSE_TIMEOUT after ``since`` (not at once, not never)."""
    gone = closed_after(c, CLOSE_TIMEOUT + 2.0)
    assert gone is not None, "the socket was never closed"
    waited = time.monotonic() - since
    assert CLOSE_TIMEOUT * 0.8 < waited < CLOSE_TIMEOUT + 1.5, waited


def opened(broker, **handshake) -> RawClient:
    """A connection after the handshake, with channel 1 open."""
    c = connect(broker.port)
    try:
        c.handshake(**handshake)
        c.open_channel(1)
    except BaseException:
        c.close()
        raise
    return c


# == the table (tests/reference_cases.py) =========================================================
def _params():
    for group, cases in ref.TABLE.items():
        for case in cases:
            marks = [pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else []
            yield pytest.param(case, id=f"{group}:{case.id}", marks=marks)


@pytest.mark.parametrize("case", list(_params()))
def test_reference(quick, case: ref.Case):
    # every case runs after connection.open, where close_timeout only times the drop after a
    # framing error (the close-ok wait is min(heartbeat, 30 s)): those take 0.5 s, not 3 s
    with connect(quick.port) as c:
        c.handshake(**case.handshake)
        c.open_channel(1)
        for step in case.setup:
            run_step(c, step)
        c.send(case.send)
        want = case.expect
        if isinstance(want, CC):
            check_channel_close(c, want)
        elif isinstance(want, XC):
            check_connection_close(c, want)
        else:
            if isinstance(want, Replies):
                for spec in want.frames:
                    expect_frame(c, spec)
            else:
                assert isinstance(want, Silent)
            assert_alive(c, case.alive_ch, case.alive_open)


# == §1 protocol header and handshake =============================================================
def test_start_and_tune_contents(client):
    client.send(PROTOCOL_HEADER)
    s = client.expect(C.Connection.Start)
    assert (s.version_major, s.version_minor) == (0, 9)
    assert (s.mechanisms, s.locales) == ("AMQPLAIN PLAIN", "en_US")
    assert s.server_properties["capabilities"] == CAPABILITIES
    # the values (product 'RabbitMQ', version '3.10.8', ...) identify the broker: keys only
    assert set(s.server_properties) == {"capabilities", "cluster_name", "copyright",
                                        "information", "platform", "product", "version"}
    client.method(0, C.Connection.StartOk(client_properties={}, mechanism="PLAIN",
                                          response="\0guest\0guest"))
    t = client.expect(C.Connection.Tune)
    assert (t.channel_max, t.frame_max, t.heartbeat) == (2047, 131072, 60)


def test_old_style_0_9_header_is_accepted(client):
    client.send(b"AMQP\x01\x01\x00\x09")
    s = client.expect(C.Connection.Start)
    assert (s.version_major, s.version_minor) == (0, 9)


def test_0_8_header_is_refused(client):
    # differs from RabbitMQ: it still speaks 0-8 (Connection.Start 8-0); amqpd answers 0-9-1
    client.send(b"AMQP\x01\x01\x08\x00")
    assert client.read_raw(1.0) == PROTOCOL_HEADER
    assert_closed(client, 0.5)


@pytest.mark.parametrize("data", [
    pytest.param(b"AMQP\x00\x00\x08\x00", id="0-8"),
    pytest.param(b"AMQP\x00\x00\x09\x02", id="0-9-2"),
    pytest.param(b"AMQP\x00\x01\x00\x00", id="1.0"),
    pytest.param(b"AMQP\x03\x01\x00\x00", id="1.0-sasl"),
    pytest.param(b"HTTP/1.1 200 OK\r\n\r\n", id="http-response"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http-get"),
])
def test_wrong_protocol_header(client, data):
    client.send(data)
    t0 = time.monotonic()
    assert client.read_raw(1.0) == PROTOCOL_HEADER
    assert time.monotonic() - t0 < 0.5          # and the socket is closed at once


@pytest.mark.parametrize("data", [pytest.param(b"", id="nothing"),
                                  pytest.param(b"AMQP\x00", id="5-bytes")])
def test_handshake_timeout(make_broker, data):
    # differs from RabbitMQ: the timeout is configurable (0.3 s here; both default to 10 s)
    b = make_broker(limits={"handshake_timeout": 0.3})
    with connect(b.port) as c:
        t0 = time.monotonic()
        if data:
            c.send(data)
        assert c.read_raw(3.0) == b""
        assert 0.25 < time.monotonic() - t0 < 1.3


@pytest.mark.parametrize("sent,want", [
    pytest.param(lambda c: c.method(1, C.Channel.Open()),
                 XC(504, "CHANNEL_ERROR - *", 20, 10), id="channel-open-instead-of-start-ok"),
    pytest.param(lambda c: (c.method(0, C.Connection.StartOk(
        client_properties={}, mechanism="PLAIN", response="\0guest\0guest")),
        c.expect(C.Connection.Tune), c.method(0, C.Connection.Open(virtual_host="/"))),
                 XC(504, "CHANNEL_ERROR - *", 10, 40), id="open-instead-of-tune-ok"),
])
def test_wrong_method_during_handshake(client, sent, want):
    # differs from RabbitMQ: it closes silently after 3 s; amqpd sends 504 first (and, as
    # RabbitMQ, keeps the socket 3 s for the close-ok)
    client.send(PROTOCOL_HEADER)
    client.expect(C.Connection.Start)
    sent(client)
    check_refused_before_open(client, want)


def test_heartbeat_before_start_ok_is_ignored(client):
    client.send(PROTOCOL_HEADER)
    client.expect(C.Connection.Start)
    client.send(ref.heartbeat(0))
    client.method(0, C.Connection.StartOk(client_properties={}, mechanism="PLAIN",
                                          response="\0guest\0guest"))
    client.expect(C.Connection.Tune)
    tune_and_open(client)
    expect_frame(client, F(0, C.Connection.OpenOk))


def test_client_connection_close(client):
    client.handshake()
    client.method(0, C.Connection.Close(reply_code=200, reply_text="bye", class_id=0,
                                        method_id=0))
    expect_frame(client, F(0, C.Connection.CloseOk))
    # As RabbitMQ: the client closes the socket. Until it does (at most min(heartbeat, 30 s)),
    # what it still sends is read and dropped, a repeated close gets close-ok again.
    client.send(ref.publish(1, "", "q-late") + ref.method(2, C.Channel.Open()))
    assert_silent(client, 0.5)
    client.method(0, C.Connection.Close(reply_code=200, reply_text="again", class_id=0,
                                        method_id=0))
    expect_frame(client, F(0, C.Connection.CloseOk))
    client.method(0, C.Connection.CloseOk())        # ends it at once
    assert_closed(client, 1.0)


def test_client_close_socket_dropped_after_heartbeat(client):
    client.handshake(heartbeat_s=1)
    client.method(0, C.Connection.Close(reply_code=200, reply_text="bye", class_id=0,
                                        method_id=0))
    expect_frame(client, F(0, C.Connection.CloseOk))
    t0 = time.monotonic()
    while True:          # heartbeats go on while the socket waits for the client to close it
        try:
            ch, f = client.recv(3.0)
        except (Closed, ConnectionResetError):
            break
        assert isinstance(f, pamqp_heartbeat.Heartbeat), f
    assert 0.5 < time.monotonic() - t0 < 2.5       # min(heartbeat, 30 s) = 1 s


def test_bad_credentials_socket_kept_close_timeout_for_close_ok(quick_client):
    start(quick_client, "PLAIN", "\0guest\0wrong", {"authentication_failure_close": True})
    expect_connection_close(quick_client, XC(403, LOGIN_REFUSED.format("PLAIN"), 0, 0))
    assert_closed_by_timeout(quick_client, time.monotonic())


# == §3 tune-ok ===================================================================================
@pytest.mark.parametrize("tune,text", [
    ({"frame_max": 1048576},
     "negotiated frame_max = 1048576 is higher than the maximum allowed value (131072)"),
    ({"frame_max": 1024},
     "negotiated frame_max = 1024 is lower than the minimum allowed value (4096)"),
    ({"channel_max": 65535},
     "negotiated channel_max = 65535 is higher than the maximum allowed value (2047)"),
], ids=["frame-max-1048576", "frame-max-1024", "channel-max-65535"])
def test_tune_ok_out_of_range(client, tune, text):
    # differs from RabbitMQ: it closes silently after 3 s (the text is only in its log); amqpd
    # sends 530 with that text first
    start(client)
    client.expect(C.Connection.Tune)
    tune_and_open(client, **tune)
    check_refused_before_open(client, XC(530, "NOT_ALLOWED - " + text, 10, 31))


@pytest.mark.parametrize("tune", [{"frame_max": 0}, {"channel_max": 0}],
                         ids=["frame-max-0", "channel-max-0"])
def test_tune_ok_zero_means_server_value(client, tune):
    # differs from RabbitMQ: it refuses 0 (silent close after 3 s); amqpd takes its own value
    start(client)
    client.expect(C.Connection.Tune)
    tune_and_open(client, **tune)
    expect_frame(client, F(0, C.Connection.OpenOk))
    assert_alive(client)


@pytest.mark.parametrize("tune", [{"frame_max": 4096}, {"heartbeat": 1000}],
                         ids=["frame-max-4096", "heartbeat-1000"])
def test_tune_ok_accepted(client, tune):
    start(client)
    client.expect(C.Connection.Tune)
    tune_and_open(client, **tune)
    expect_frame(client, F(0, C.Connection.OpenOk))
    assert_alive(client)


def test_heartbeat_0_sends_no_heartbeats(client):
    client.handshake(heartbeat_s=0)
    try:
        ch, f = client.recv(0.7)
    except (TimeoutError, socket.timeout):
        pass
    else:
        raise AssertionError(f"expected nothing, got ch{ch} {f!r}")
    assert_alive(client)


def test_heartbeat_1_silent_client_is_dropped(client):
    client.handshake(heartbeat_s=1)
    t0 = time.monotonic()            # the client's last send (tune-ok + open)
    beats = []
    while True:
        try:
            ch, f = client.recv(4.0)
        except (Closed, ConnectionResetError):
            break
        assert ch == 0 and isinstance(f, pamqp_heartbeat.Heartbeat), f   # no Close
        beats.append(time.monotonic() - t0)
    dropped = time.monotonic() - t0
    assert len(beats) >= 2, beats
    gaps = [b - a for a, b in zip(beats, beats[1:])]
    assert all(0.35 < g < 0.7 for g in gaps), beats        # every heartbeat/2 = 0.5 s
    # differs from RabbitMQ: it drops a silent peer 3 s (3 intervals) after its last frame
    assert 1.5 <= dropped < 3.0, dropped


@pytest.mark.parametrize("heartbeat", [1, 2])
def test_first_heartbeat_half_an_interval_after_open(client, heartbeat):
    """RabbitMQ: Open-Ok, then heartbeats at 0.5, 1.0, 1.5 ... s (1.0, 2.0 ... for 2)."""
    client.handshake(heartbeat_s=heartbeat)
    t0 = time.monotonic()
    ch, f = client.recv(heartbeat / 2 + 0.25)
    assert ch == 0 and isinstance(f, pamqp_heartbeat.Heartbeat), f
    assert time.monotonic() - t0 > heartbeat / 2 - 0.25


# A client that heartbeats (heartbeat=1) is kept past the point a silent one is dropped:
# tests/test_redelivery.py::test_heartbeating_client_is_not_dropped (3 s, so only there).


# == §4 authentication and vhost ==================================================================
def test_bad_password_without_capability_closes_silently(quick_client):
    start(quick_client, response="\0guest\0wrong", capabilities={})
    assert_closed_by_timeout(quick_client, time.monotonic())       # no frame before


@pytest.mark.parametrize("mechanism,response", [
    ("PLAIN", "\0guest\0wrong"), ("PLAIN", "\0nobody\0x"),
    ("AMQPLAIN", pamqp_encode.field_table({"LOGIN": "guest", "PASSWORD": "bad"})[4:]),
], ids=["plain-bad-password", "plain-unknown-user", "amqplain-bad-password"])
def test_bad_credentials_with_capability(client, mechanism, response):
    caps = {"authentication_failure_close": True}
    client.send(PROTOCOL_HEADER)
    client.expect(C.Connection.Start)
    if isinstance(response, bytes):
        client.send(start_ok_raw(mechanism, response, {"capabilities": caps}))
    else:
        client.method(0, C.Connection.StartOk(client_properties={"capabilities": caps},
                                              mechanism=mechanism, response=response))
    check_refused_before_open(client, XC(403, LOGIN_REFUSED.format(mechanism), 0, 0))


@pytest.mark.parametrize("mechanism,response,caps", [
    ("PLAIN", "garbage", {"authentication_failure_close": True}),
    ("FOO", "x", {}),
    ("FOO", "x", {"authentication_failure_close": True}),
    ("EXTERNAL", "", {"authentication_failure_close": True}),
], ids=["plain-malformed", "unknown-mechanism", "unknown-mechanism-capability", "external"])
def test_sasl_errors(client, mechanism, response, caps):
    # differs from RabbitMQ: it closes silently after 3 s; amqpd sends 403 first
    start(client, mechanism, response, caps)
    check_refused_before_open(client, XC(403, "ACCESS_REFUSED - *", *((0, 0) if mechanism ==
                                                                      "PLAIN" else (10, 11))))


def test_amqplain_without_length_prefix(client):
    table = pamqp_encode.field_table({"LOGIN": "guest", "PASSWORD": "guest"})
    client.send(PROTOCOL_HEADER)
    client.expect(C.Connection.Start)
    client.send(start_ok_raw("AMQPLAIN", table[4:], {}))
    client.expect(C.Connection.Tune)
    tune_and_open(client)
    expect_frame(client, F(0, C.Connection.OpenOk))
    assert_alive(client)


def test_amqplain_with_length_prefix_is_refused(quick_client):
    # RabbitMQ closes silently (after 3 s); so does amqpd (bad credentials, no capability)
    table = pamqp_encode.field_table({"LOGIN": "guest", "PASSWORD": "guest"})
    quick_client.send(PROTOCOL_HEADER)
    quick_client.expect(C.Connection.Start)
    quick_client.send(start_ok_raw("AMQPLAIN", table, {}))
    assert_closed_by_timeout(quick_client, time.monotonic())


def test_unknown_vhost(client):
    start(client)
    client.expect(C.Connection.Tune)
    client.send(ref.method(0, C.Connection.TuneOk(channel_max=2047, frame_max=131072,
                                                  heartbeat=0))
                + ref.method(0, C.Connection.Open(virtual_host="nope")))
    check_connection_close(client, XC(530, "NOT_ALLOWED - vhost nope not found", 10, 40))


# == §5 framing (the rest is in the table) ========================================================
def test_oversize_body_frame_header_then_payload(quick):
    with opened(quick, frame_max=4096) as c:
        c.send(ref.method(1, C.Basic.Publish(exchange="", routing_key="x")) + ref.header(1, 4100))
        data = ref.body(1, b"x" * 4100)
        c.send(data[:7])
        try:
            c.send(data[7:])
        except OSError:
            pass
        expect_connection_close(c, XC(501, None, 0, 0))


def test_lone_frame_header_within_frame_max_waits(broker):
    with opened(broker, frame_max=4096) as c:
        c.send(ref.body(1, b"x" * 4089)[:7])
        assert_silent(c, 0.3)


@pytest.mark.parametrize("ch,class_id,method_id", [(1, 99, 10), (0, 99, 10), (1, 60, 999)],
                         ids=["99.10-ch1", "99.10-ch0", "60.999-ch1"])
def test_unknown_method(broker, ch, class_id, method_id):
    # differs from RabbitMQ: its reader crashes and drops TCP at once; amqpd sends 503
    with opened(broker) as c:
        c.send(ref.raw_method(ch, class_id, method_id))
        check_connection_close(c, XC(503, "COMMAND_INVALID - *", class_id, method_id))


def test_declare_ok_counts_exclude_unacked(broker):
    with opened(broker) as c:
        run_step(c, ref.declare_q())
        c.send(ref.publish(1, "", "q1") * 3)
        c.open_channel(2)
        c.method(2, C.Basic.Consume(queue="q1", consumer_tag="ct1"))
        expect_frame(c, F(2, C.Basic.ConsumeOk))
        for tag in (1, 2, 3):
            expect_frame(c, F(2, C.Basic.Deliver, {"delivery_tag": tag}))
            for spec in ref.content(2):
                expect_frame(c, spec)
        c.method(1, C.Queue.Declare(queue="q1", passive=True))
        expect_frame(c, F(1, C.Queue.DeclareOk, {"message_count": 0, "consumer_count": 1}))
        assert_alive(c)


def test_frame_error_close_without_close_ok(quick):
    """RabbitMQ drops the socket 3 s (close_timeout) after a FRAME_ERROR Close
    ('fatal_frame_error')."""
    with opened(quick) as c:
        c.send(ref.raw_method(1, 20, 10, pamqp_encode.short_string(""), end=0))
        expect_connection_close(c, XC(501, None, 0, 0))
        assert_closed_by_timeout(c, time.monotonic())


def test_frame_error_close_ignores_close_ok(quick):
    with opened(quick) as c:
        c.send(ref.raw_method(1, 20, 10, pamqp_encode.short_string(""), end=0))
        expect_connection_close(c, XC(501, None, 0, 0))
        t0 = time.monotonic()
        c.method(0, C.Connection.CloseOk())           # not read: the stream is out of sync
        assert_closed_by_timeout(c, t0)


# == §6 after an error ============================================================================
def passive_missing_queue(c: RawClient) -> None:
    c.method(1, C.Queue.Declare(queue="nq", passive=True))
    expect_frame(c, F(1, C.Channel.Close, {"reply_code": 404}))


def test_methods_and_content_on_closing_channel_are_dropped(broker):
    with opened(broker) as c:
        passive_missing_queue(c)
        c.send(ref.publish(1, "", "x") + ref.method(1, C.Queue.Declare(queue="q2"))
               + ref.method(1, C.Basic.Qos(prefetch_count=1)))
        c.method(1, C.Channel.CloseOk())
        assert_alive(c, 1)          # channel.open on the same number: Open-Ok, nothing before
        c.method(1, C.Queue.Declare(queue="q2", passive=True))    # the declare was dropped
        expect_frame(c, F(1, C.Channel.Close, {"reply_code": 404}))
        c.method(1, C.Channel.CloseOk())


def test_stray_body_on_closing_channel(broker):
    with opened(broker) as c:
        passive_missing_queue(c)
        # (RabbitMQ drops the channel.open that follows, once it has sent its Close)
        c.send(ref.body(1, b"zzz") + ref.method(100, C.Channel.Open()))
        check_connection_close(c, XC(505, ref.EXPECTED_METHOD, 0, 0))


def test_channel_open_before_close_ok(broker):
    with opened(broker) as c:
        passive_missing_queue(c)
        c.method(1, C.Channel.Open())
        check_connection_close(c, XC(504, ref.SECOND_OPEN, 20, 10))


def test_crossing_channel_close(broker):
    with opened(broker) as c:
        passive_missing_queue(c)
        c.method(1, C.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
        expect_frame(c, F(1, C.Channel.CloseOk))
        # a crossing close does not complete the close handshake
        c.method(1, C.Channel.Open())
        check_connection_close(c, XC(504, ref.SECOND_OPEN, 20, 10))


def test_connection_close_waits_for_close_ok(broker):
    with opened(broker) as c:
        c.method(1, C.Channel.Open())
        expect_connection_close(c, XC(504, ref.SECOND_OPEN, 20, 10))
        # RabbitMQ: 30 s (heartbeat 0); only its start is checked here, the 30 s is a unit test
        # (tests/unit/test_connection_core.py)
        assert closed_after(c, 1.0) is None


def test_publish_error_waits_for_the_content(broker):
    with opened(broker) as c:
        c.send(ref.method(1, C.Basic.Publish(exchange="nx", routing_key="k")) + ref.header(1, 5))
        assert_silent(c, 0.3)
        c.send(ref.body(1, b"hello"))
        check_channel_close(c, CC(404, ref.no_exchange(), 60, 40))


# == §8 queues: another connection's exclusive queue, cancel notifications ========================
@pytest.fixture
def owner(broker):
    """A connection owning the exclusive queue q1."""
    c = opened(broker)
    c.method(1, C.Queue.Declare(queue="q1", exclusive=True))
    expect_frame(c, F(1, C.Queue.DeclareOk))
    yield c
    c.close()


@pytest.mark.parametrize("op,class_id,method_id", [
    (C.Queue.Declare(queue="q1", exclusive=True), 50, 10),
    (C.Queue.Declare(queue="q1"), 50, 10),
    (C.Queue.Declare(queue="q1", passive=True), 50, 10),
    (C.Basic.Consume(queue="q1"), 60, 20),
    (C.Queue.Bind(queue="q1", exchange="amq.direct", routing_key="k"), 50, 20),
    (C.Queue.Purge(queue="q1"), 50, 30),
    (C.Queue.Delete(queue="q1"), 50, 40),
    (C.Basic.Get(queue="q1"), 60, 70),
], ids=["declare-same-args", "declare-non-exclusive", "declare-passive", "consume", "bind",
        "purge", "delete", "get"])
def test_exclusive_queue_of_other_connection(broker, owner, op, class_id, method_id):
    with opened(broker) as c:
        c.method(1, op)
        check_channel_close(c, CC(405, LOCKED, class_id, method_id))


def test_exclusive_queue_of_other_connection_unbind_missing_binding(broker, owner):
    with opened(broker) as c:       # (the probe had not bound q1: no binding to remove)
        c.method(1, C.Queue.Unbind(queue="q1", exchange="amq.direct", routing_key="k"))
        expect_frame(c, F(1, C.Queue.UnbindOk))
        assert_alive(c)


def test_exclusive_queue_of_other_connection_publish(broker, owner):
    with opened(broker) as c:
        c.send(ref.publish(1, "", "q1", b"to-q1"))
        assert_alive(c)
    owner.method(1, C.Basic.Get(queue="q1", no_ack=True))
    expect_frame(owner, F(1, C.Basic.GetOk))
    for spec in ref.content(1, b"to-q1"):
        expect_frame(owner, spec)


def test_exclusive_queue_gone_after_owner_closes(broker, owner):
    owner.method(0, C.Connection.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
    expect_frame(owner, F(0, C.Connection.CloseOk))
    with opened(broker) as c:
        c.method(1, C.Queue.Declare(queue="q1", passive=True))
        check_channel_close(c, CC(404, ref.no_queue("q1"), 50, 10))


def test_get_with_exclusive_consumer_on_other_connection(broker):
    with opened(broker) as a, opened(broker) as b:
        a.method(1, C.Queue.Declare(queue="q1"))
        expect_frame(a, F(1, C.Queue.DeclareOk))
        a.method(1, C.Basic.Consume(queue="q1", consumer_tag="a", exclusive=True))
        expect_frame(a, F(1, C.Basic.ConsumeOk))
        b.method(1, C.Basic.Get(queue="q1"))
        expect_frame(b, F(1, C.Basic.GetEmpty))
        assert_alive(b)


def delete_under_consumer(c: RawClient) -> list:
    run_step(c, ref.declare_q())
    c.method(1, C.Basic.Consume(queue="q1", consumer_tag="cc"))
    expect_frame(c, F(1, C.Basic.ConsumeOk))
    c.open_channel(2)
    c.method(2, C.Queue.Delete(queue="q1"))
    return [next_frame(c), next_frame(c)]


def test_queue_deleted_under_consumer_sends_cancel(broker):
    with opened(broker) as c:       # the client announces consumer_cancel_notify
        frames = delete_under_consumer(c)
        by_type = {type(f): (ch, f) for ch, f in frames}
        assert set(by_type) == {C.Queue.DeleteOk, C.Basic.Cancel}, frames
        ch, cancel = by_type[C.Basic.Cancel]
        assert (ch, cancel.consumer_tag, cancel.nowait) == (1, "cc", True)
        assert by_type[C.Queue.DeleteOk][0] == 2
        assert_alive(c)


def test_queue_deleted_under_consumer_delete_ok_first(broker):
    with opened(broker) as c:
        frames = delete_under_consumer(c)
        assert [(ch, type(f)) for ch, f in frames] == [(2, C.Queue.DeleteOk), (1, C.Basic.Cancel)]


# == §9 publisher confirms ========================================================================
def confirm_four(c: RawClient) -> list:
    """pub1 mandatory unroutable, pub2 mandatory routed, pub3 unroutable, pub4 routed."""
    run_step(c, ref.declare_q())
    c.method(1, C.Confirm.Select())
    expect_frame(c, F(1, C.Confirm.SelectOk))
    c.send(ref.publish(1, "amq.direct", "nobody", mandatory=True)
           + ref.publish(1, "", "q1", mandatory=True)
           + ref.publish(1, "amq.direct", "nobody") + ref.publish(1, "", "q1"))
    frames = [expect_frame(c, F(1, C.Basic.Return, {"reply_code": 312,
                                                     "reply_text": "NO_ROUTE"}))]
    for spec in ref.content(1):
        expect_frame(c, spec)
    acked = set()
    while acked != {1, 2, 3, 4}:
        ch, f = next_frame(c)
        assert ch == 1 and isinstance(f, C.Basic.Ack), f"expected an ack, got ch{ch} {f!r}"
        acked |= set(range(1, f.delivery_tag + 1)) if f.multiple else {f.delivery_tag}
        frames.append(f)
    return frames


def test_confirms_return_before_ack_and_unroutable_acked(broker):
    with opened(broker) as c:
        confirm_four(c)
        assert_alive(c)


@pytest.mark.xfail(reason="BUG: confirms are coalesced per read into Ack(4, multiple=True); "
                          "RabbitMQ sends Ack(1), Ack(2), Ack(3), Ack(4), each multiple=False "
                          "(channel.py flush_confirms)", strict=True)
def test_confirms_one_ack_per_publish(broker):
    with opened(broker) as c:
        acks = confirm_four(c)[1:]
        assert [(a.delivery_tag, a.multiple) for a in acks] == [(1, False), (2, False),
                                                                 (3, False), (4, False)]
