"""The sans-IO protocol core (amqpd.amqp.connection.Connection) driven by plain function calls:
client bytes made with pamqp go in through ``data_received``, the server's bytes come out of
``take_output`` and are decoded with pamqp. The I/O edge is a stub that records wake/close."""
from __future__ import annotations

import random
import struct

import pytest
from pamqp import body as pamqp_body
from pamqp import commands as C
from pamqp import header as pamqp_header
from pamqp import heartbeat as pamqp_heartbeat

from amqpd.amqp import handshake
from amqpd.amqp.connection import Connection
from tests.unit.stubs import (PROTOCOL_HEADER, Client, StubIO, content, decode_frames,
                              handshake_bytes, heartbeat, make_broker, method, open_, publish,
                              split_content, start_ok, tune_ok)


def close_of(frames: list):
    """The single Connection.Close among ``frames``."""
    closes = [f for ch, f in frames if isinstance(f, C.Connection.Close)]
    assert len(closes) == 1, frames
    assert all(ch == 0 for ch, f in frames if isinstance(f, C.Connection.Close))
    return closes[0]


def names(frames: list) -> list:
    return [(ch, type(f).__name__) for ch, f in frames]


# -- protocol header ----------------------------------------------------------------------------
@pytest.mark.parametrize("header", [
    b"AMQP\x00\x00\x09\x00",          # wrong revision
    b"AMQP\x00\x00\x08\x00",          # 0-8
    b"AMQP\x03\x01\x00\x00",          # AMQP 1.0 SASL
    b"AMQP\x00\x01\x00\x00",          # AMQP 1.0
    b"GET / HTTP/1.1\r\n\r\n",
    b"\x01\x00\x00\x00\x00\x00\x0c\x00",
])
@pytest.mark.parametrize("bytewise", [False, True])
def test_wrong_protocol_header(header, bytewise):
    c = Client()
    if bytewise:
        for i in range(len(header)):
            c.send(header[i:i + 1])
    else:
        c.send(header)
    assert c.raw_output() == b"AMQP\x00\x00\x09\x01"
    assert c.io.closed == [c.conn]
    # nothing more happens, whatever the peer sends next
    c.send(start_ok() + tune_ok() + open_())
    assert c.raw_output() == b""
    assert c.io.closed == [c.conn]


def test_partial_protocol_header_waits():
    c = Client()
    for i in range(7):
        c.send(PROTOCOL_HEADER[i:i + 1])
        assert c.raw_output() == b""
    assert c.io.closed == [] and c.io.woken == []
    c.send(PROTOCOL_HEADER[7:])
    start = c.expect_one(C.Connection.Start, 0)
    assert (start.version_major, start.version_minor) == (0, 9)


def test_legacy_0_9_header_is_accepted():
    """RabbitMQ also accepts the pre-0-9-1 spelling of the 0-9 header."""
    c = Client()
    c.send(b"AMQP\x01\x01\x00\x09")
    c.expect_one(C.Connection.Start, 0)
    assert c.io.closed == []


# -- handshake ----------------------------------------------------------------------------------
def test_handshake_happy_path():
    c = Client()
    c.send(PROTOCOL_HEADER)
    start = c.expect_one(C.Connection.Start, 0)
    assert (start.version_major, start.version_minor) == (0, 9)
    props = start.server_properties
    assert props["capabilities"] == handshake.CAPABILITIES
    assert all(v is True for v in props["capabilities"].values())
    for cap in ("publisher_confirms", "basic.nack", "consumer_cancel_notify",
                "authentication_failure_close", "connection.blocked"):
        assert props["capabilities"][cap] is True
    assert props["product"] == "amqpd"
    mechanisms = start.mechanisms
    mechanisms = mechanisms.decode() if isinstance(mechanisms, bytes) else mechanisms
    assert set(mechanisms.split()) == {"PLAIN", "AMQPLAIN"}
    assert "en_US" in str(start.locales)
    assert c.io.woken == [c.conn]

    c.send(start_ok())
    tune = c.expect_one(C.Connection.Tune, 0)
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)

    c.send(tune_ok(channel_max=2047, frame_max=131072, heartbeat=60))
    assert c.raw_output() == b""                 # tune-ok has no reply
    c.send(open_("/"))
    c.expect_one(C.Connection.OpenOk, 0)
    assert c.conn.is_open
    assert c.conn.user == "guest"
    assert c.conn.heartbeat == 60
    assert c.io.closed == []


def test_tune_values_come_from_config():
    c = Client(limits={"channel_max": 10, "frame_max": 8192, "heartbeat": 7})
    c.send(PROTOCOL_HEADER + start_ok())
    frames = c.methods()
    tune = frames[-1][1]
    assert isinstance(tune, C.Connection.Tune)
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (10, 8192, 7)


def test_client_may_tune_lower():
    c = Client()
    c.handshake(frame_max=4096, heartbeat=0)
    assert c.conn.frame_max == 4096
    assert c.conn.heartbeat == 0


def test_amqplain_login():
    from pamqp import encode
    response = encode.field_table({"LOGIN": "guest", "PASSWORD": "guest"})[4:]
    c = Client()
    c.send(PROTOCOL_HEADER + method(0, C.Connection.StartOk(
        client_properties={}, mechanism="AMQPLAIN", response=response.decode("latin-1"),
        locale="en_US")))
    assert isinstance(c.methods()[-1][1], C.Connection.Tune)


@pytest.mark.parametrize("user,password", [("guest", "wrong"), ("nobody", "guest"),
                                           ("guest", "")])
def test_bad_password_with_authentication_failure_close(user, password):
    c = Client()
    c.send(PROTOCOL_HEADER + start_ok(user, password))
    frames = c.methods()
    assert isinstance(frames[0][1], C.Connection.Start)
    close = close_of(frames)
    assert close.reply_code == 403
    # RabbitMQ's auth_fail: a safe text, no class/method (amqp_error method = none)
    assert close.reply_text == ("ACCESS_REFUSED - Login was refused using authentication "
                                "mechanism PLAIN. For details see the broker logfile.")
    assert (close.class_id, close.method_id) == (0, 0)
    assert not c.conn.is_open
    # as RabbitMQ: the socket stays up to 3 s for the close-ok, which ends it at once
    assert c.io.lingering == [(c.conn, 3.0, True)] and c.io.closed == []
    c.send(method(0, C.Connection.CloseOk()))
    assert c.io.closed == [c.conn]


def test_bad_password_without_the_capability_just_drops():
    c = Client()
    c.send(PROTOCOL_HEADER + start_ok("guest", "wrong", caps={}))
    assert names(c.methods()) == [(0, "Start")]
    # no frame; RabbitMQ drops the socket after 3 s without reading any more
    assert c.io.lingering == [(c.conn, 3.0, False)]
    c.send(method(0, C.Connection.CloseOk()))
    assert c.methods() == [] and c.io.closed == []


def test_unsupported_mechanism_refused():
    c = Client()
    c.send(PROTOCOL_HEADER + start_ok(mechanism="EXTERNAL"))
    frames = c.methods()
    assert all(not isinstance(f, C.Connection.Tune) for _, f in frames)
    assert c.io.lingering == [(c.conn, 3.0, True)]


def test_unknown_vhost_is_530():
    c = Client()
    c.send(PROTOCOL_HEADER + start_ok() + tune_ok() + open_("no-such-vhost"))
    frames = c.methods()
    assert names(frames)[:2] == [(0, "Start"), (0, "Tune")]
    close = close_of(frames)
    assert close.reply_code == 530
    assert close.reply_text == "NOT_ALLOWED - vhost no-such-vhost not found"
    assert (close.class_id, close.method_id) == (10, 40)
    assert not c.conn.is_open
    # anything but close-ok is ignored now; close-ok (or the transport) ends it
    c.send(method(1, C.Channel.Open()))
    assert c.methods() == []
    c.send(method(0, C.Connection.CloseOk()))
    assert c.io.closed == [c.conn]


def test_vhost_without_permission_is_530():
    c = Client(vhosts=["/", "other"])
    c.send(PROTOCOL_HEADER + start_ok() + tune_ok() + open_("other"))
    close = close_of(c.methods())
    assert close.reply_code == 530


@pytest.mark.parametrize("kw,what", [
    ({"frame_max": 131073}, "frame_max"),
    ({"frame_max": 1 << 20}, "frame_max"),
    ({"frame_max": 4095}, "frame_max"),
    ({"channel_max": 2048}, "channel_max"),
])
def test_tune_ok_out_of_bounds_is_530(kw, what):
    c = Client()
    c.send(PROTOCOL_HEADER + start_ok() + tune_ok(**kw) + open_())
    frames = c.methods()
    close = close_of(frames)
    assert close.reply_code == 530
    assert what in close.reply_text
    assert (close.class_id, close.method_id) == (10, 31)
    assert not any(isinstance(f, C.Connection.OpenOk) for _, f in frames)
    assert c.io.lingering == [(c.conn, 3.0, True)]      # not tuned: RabbitMQ waits 3 s


def test_client_connection_close_gets_close_ok():
    c = Client()
    c.handshake()
    c.open_channel(1)
    c.send_method(0, C.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
    c.expect_one(C.Connection.CloseOk, 0)
    # the client closes the socket; until it does (at most 30 s) its input is read and dropped
    assert c.io.closed == [] and c.io.lingering == [(c.conn, 30.0, True)]
    c.send(publish(1, b"late", "", "q") + method(1, C.Channel.Open()))
    assert c.frames() == []
    c.send_method(0, C.Connection.Close(reply_code=200, reply_text="again", class_id=0,
                                        method_id=0))
    c.expect_one(C.Connection.CloseOk, 0)
    c.conn.connection_lost()


def test_client_close_waits_heartbeat_at_most():
    c = Client()
    c.handshake(heartbeat=5)
    c.send_method(0, C.Connection.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
    c.expect_one(C.Connection.CloseOk, 0)
    assert c.io.lingering == [(c.conn, 5, True)]
    c.send_method(0, C.Connection.CloseOk())       # "close now"
    assert c.io.closed == [c.conn]


# -- in-memory round trip -----------------------------------------------------------------------
def test_declare_publish_get_round_trip():
    c = Client()
    c.handshake()
    c.open_channel(1)
    c.send_method(1, C.Queue.Declare(queue="rt"))
    ok = c.expect_one(C.Queue.DeclareOk, 1)
    assert (ok.queue, ok.message_count, ok.consumer_count) == ("rt", 0, 0)

    props = C.Basic.Properties(content_type="text/plain", delivery_mode=2,
                               headers={"k": "v", "n": 5}, message_id="m-1",
                               correlation_id="é-1")
    c.publish(1, b"hello world", routing_key="rt", properties=props)
    c.publish(1, b"", routing_key="rt")
    assert c.methods() == []                       # publishes have no reply

    get_ok, hdr, body = c.get(1, "rt")
    assert isinstance(get_ok, C.Basic.GetOk)
    assert (get_ok.delivery_tag, get_ok.redelivered, get_ok.exchange, get_ok.routing_key,
            get_ok.message_count) == (1, False, "", "rt", 1)
    assert body == b"hello world"
    assert hdr.properties == props

    get_ok, hdr, body = c.get(1, "rt", no_ack=True)
    assert (get_ok.delivery_tag, get_ok.message_count, body) == (2, 0, b"")

    get_empty, _, _ = c.get(1, "rt")
    assert isinstance(get_empty, C.Basic.GetEmpty)

    c.send_method(1, C.Basic.Ack(delivery_tag=1))
    assert c.methods() == []
    c.send_method(1, C.Queue.Declare(queue="rt", passive=True))
    assert c.expect_one(C.Queue.DeclareOk, 1).message_count == 0


def test_content_header_reemitted_verbatim():
    """The header frame a consumer gets is byte for byte the one the publisher sent."""
    c = Client()
    c.handshake()
    c.open_channel(1)
    c.send_method(1, C.Queue.Declare(queue="vb"))
    c.methods()
    props = C.Basic.Properties(headers={"a": [1, "two", {"x": True}]}, app_id="ü", priority=9,
                               expiration="60000", user_id="guest")
    sent = content(1, b"payload", props)
    c.send(method(1, C.Basic.Publish(routing_key="vb")) + sent)
    c.send_method(1, C.Basic.Get(queue="vb", no_ack=True))
    raw = c.raw_output()
    assert raw.endswith(sent)


def test_multi_frame_body_with_small_frame_max():
    c = Client()
    c.handshake(frame_max=4096)
    c.open_channel(1)
    c.send_method(1, C.Queue.Declare(queue="big"))
    c.methods()
    body = bytes(range(256)) * 60                   # 15360 bytes: 4 body frames
    c.publish(1, body, routing_key="big")
    c.send_method(1, C.Basic.Get(queue="big", no_ack=True))
    raw = c.raw_output()
    frames = decode_frames(raw)
    assert [type(f).__name__ for _, f in frames] == ["GetOk", "ContentHeader"] + \
        ["ContentBody"] * 4
    pos = 0
    while pos < len(raw):                           # every frame within the negotiated size
        size = struct.unpack_from(">I", raw, pos + 3)[0]
        assert size + 8 <= 4096
        pos += size + 8
    assert split_content(frames)[2] == body


def test_exchange_routing_and_mandatory_return():
    c = Client()
    c.handshake()
    c.open_channel(1)
    for m in (C.Exchange.Declare(exchange="ex", exchange_type="direct"),
              C.Queue.Declare(queue="qa"),
              C.Queue.Bind(queue="qa", exchange="ex", routing_key="a")):
        c.send_method(1, m)
    assert names(c.methods()) == [(1, "DeclareOk"), (1, "DeclareOk"), (1, "BindOk")]
    c.publish(1, b"routed", exchange="ex", routing_key="a", mandatory=True)
    assert c.methods() == []
    c.publish(1, b"lost", exchange="ex", routing_key="zzz", mandatory=True)
    ret, hdr, body = split_content(c.methods())
    assert isinstance(ret, C.Basic.Return)
    assert (ret.reply_code, ret.reply_text, ret.exchange, ret.routing_key) == (
        312, "NO_ROUTE", "ex", "zzz")
    assert body == b"lost"
    c.publish(1, b"dropped", exchange="ex", routing_key="zzz")   # not mandatory: silent
    assert c.methods() == []
    get_ok, _, body = c.get(1, "qa")
    assert (get_ok.exchange, get_ok.routing_key, body) == ("ex", "a", b"routed")


def test_consumer_delivery_and_ack():
    c = Client()
    c.handshake()
    c.open_channel(1)
    c.send_method(1, C.Queue.Declare(queue="cq"))
    c.send_method(1, C.Basic.Qos(prefetch_count=1))
    c.send_method(1, C.Basic.Consume(queue="cq", consumer_tag="ctag-1"))
    assert names(c.methods()) == [(1, "DeclareOk"), (1, "QosOk"), (1, "ConsumeOk")]
    c.publish(1, b"one", routing_key="cq")
    c.publish(1, b"two", routing_key="cq")
    deliver, _, body = split_content(c.methods())     # prefetch 1: only the first
    assert (deliver.consumer_tag, deliver.delivery_tag, deliver.redelivered, body) == (
        "ctag-1", 1, False, b"one")
    c.send_method(1, C.Basic.Ack(delivery_tag=1))
    deliver, _, body = split_content(c.methods())
    assert (deliver.delivery_tag, body) == (2, b"two")
    c.send_method(1, C.Basic.Nack(delivery_tag=2, requeue=True))
    deliver, _, body = split_content(c.methods())
    assert (deliver.delivery_tag, deliver.redelivered, body) == (3, True, b"two")


# -- channel errors -----------------------------------------------------------------------------
def _channel_error_client():
    c = Client()
    c.handshake()
    c.open_channel(1)
    c.send_method(1, C.Queue.Declare(queue="nope", passive=True))
    return c


def test_channel_error_404_on_passive_declare():
    c = _channel_error_client()
    close = c.expect_one(C.Channel.Close, 1)
    assert close.reply_code == 404
    assert close.reply_text == "NOT_FOUND - no queue 'nope' in vhost '/'"
    assert (close.class_id, close.method_id) == (50, 10)
    assert c.conn.is_open


def test_frames_on_a_closing_channel_are_discarded_until_close_ok():
    c = _channel_error_client()
    c.expect_one(C.Channel.Close, 1)
    c.send_method(1, C.Queue.Declare(queue="would-be-created"))
    c.send(publish(1, b"discarded", routing_key="x"))      # its content is checked, dropped
    c.send_method(1, C.Basic.Get(queue="nope"))
    c.send_method(1, C.Basic.Ack(delivery_tag=99))
    c.send_method(1, C.Queue.Declare(queue="nope", passive=True))
    assert c.methods() == []
    assert "would-be-created" not in c.broker.vhosts["/"].queues
    assert c.conn.is_open and c.io.closed == []
    # other channels are unaffected meanwhile
    c.open_channel(2)
    c.send_method(2, C.Queue.Declare(queue="other"))
    c.expect_one(C.Queue.DeclareOk, 2)
    # close-ok frees the number, which can be opened again
    c.send_method(1, C.Channel.CloseOk())
    assert c.methods() == []
    c.open_channel(1)
    c.send_method(1, C.Queue.Declare(queue="other", passive=True))
    c.expect_one(C.Queue.DeclareOk, 1)


def test_channel_error_requeues_the_channels_unacked_messages():
    c = Client()
    c.handshake()
    c.open_channel(1)
    c.open_channel(2)
    c.send_method(1, C.Queue.Declare(queue="ce"))
    c.methods()
    c.publish(1, b"m", routing_key="ce")
    assert c.get(1, "ce")[2] == b"m"
    c.send_method(1, C.Basic.Ack(delivery_tag=42))             # unknown tag: 406
    close = c.expect_one(C.Channel.Close, 1)
    assert (close.reply_code, close.class_id, close.method_id) == (406, 60, 80)
    get_ok, _, body = c.get(2, "ce")
    assert (get_ok.redelivered, body) == (True, b"m")


def test_client_channel_close_requeues_unacked():
    c = Client()
    c.handshake()
    c.open_channel(1)
    c.open_channel(2)
    c.send_method(1, C.Queue.Declare(queue="cc"))
    c.methods()
    c.publish(1, b"m", routing_key="cc")
    c.get(1, "cc")
    c.send_method(1, C.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
    c.expect_one(C.Channel.CloseOk, 1)
    get_ok, _, body = c.get(2, "cc")
    assert (get_ok.redelivered, body) == (True, b"m")


def test_crossing_channel_close_is_answered():
    c = _channel_error_client()
    c.expect_one(C.Channel.Close, 1)
    c.send_method(1, C.Channel.Close(reply_code=200, reply_text="ok", class_id=0, method_id=0))
    c.expect_one(C.Channel.CloseOk, 1)


def test_client_channel_close_and_reopen():
    c = Client()
    c.handshake()
    c.open_channel(3)
    c.send_method(3, C.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
    c.expect_one(C.Channel.CloseOk, 3)
    c.open_channel(3)


def test_method_on_unopened_channel_is_504():
    c = Client()
    c.handshake()
    c.send_method(5, C.Queue.Declare(queue="q"))
    close = c.expect_one(C.Connection.Close, 0)
    assert close.reply_code == 504
    assert close.reply_text == "CHANNEL_ERROR - expected 'channel.open'"
    assert (close.class_id, close.method_id) == (50, 10)
    assert not c.conn.is_open
    c.send_method(5, C.Channel.Open())               # ignored while closing
    assert c.methods() == []
    c.send_method(0, C.Connection.CloseOk())
    assert c.io.closed == [c.conn]


def test_channel_max_bounds_open_channels_not_numbers():
    c = Client(limits={"channel_max": 2})
    c.send(PROTOCOL_HEADER + start_ok() + tune_ok(channel_max=2) + open_())
    c.methods()
    c.open_channel(65535)
    c.open_channel(7)
    c.send_method(8, C.Channel.Open())
    close = c.expect_one(C.Connection.Close, 0)
    assert close.reply_code == 530
    assert (close.class_id, close.method_id) == (0, 0)          # as RabbitMQ 3.10 sends it


def test_unknown_method_is_503():
    c = Client()
    c.handshake()
    c.open_channel(1)
    c.send(struct.pack(">BHIHH", 1, 1, 4, 60, 999) + b"\xce")
    close = c.expect_one(C.Connection.Close, 0)
    assert close.reply_code == 503
    assert (close.class_id, close.method_id) == (60, 999)


def test_second_channel_open_is_504():
    c = Client()
    c.handshake()
    c.open_channel(1)
    c.send_method(1, C.Channel.Open())
    close = c.expect_one(C.Connection.Close, 0)
    assert close.reply_code == 504


def test_content_header_without_publish_is_505():
    c = Client()
    c.handshake()
    c.open_channel(1)
    c.send(content(1, b"orphan"))
    close = close_of(c.methods())
    assert close.reply_code == 505
    assert close.reply_text == ("UNEXPECTED_FRAME - expected method frame, got non method "
                                "frame instead")
    assert not c.conn.is_open


def test_content_body_without_publish_is_505():
    c = Client()
    c.handshake()
    c.open_channel(1)
    c.send(content(1, b"orphan")[-(8 + 6):])      # just the body frame
    assert close_of(c.methods()).reply_code == 505


def test_method_instead_of_content_header_is_505():
    c = Client()
    c.handshake()
    c.open_channel(1)
    c.send_method(1, C.Basic.Publish(routing_key="x"))
    c.send_method(1, C.Basic.Qos(prefetch_count=1))
    close = close_of(c.methods())
    assert close.reply_code == 505


def test_content_on_unopened_channel_is_504():
    c = Client()
    c.handshake()
    c.send(content(4, b"x"))
    assert close_of(c.methods()).reply_code == 504


def test_heartbeat_on_a_channel_is_505_and_unknown_frame_type_501():
    c = Client()
    c.handshake()
    c.open_channel(1)
    c.send(struct.pack(">BHI", 8, 1, 0) + b"\xce")
    assert close_of(c.methods()).reply_code == 505
    c = Client()
    c.handshake()
    c.send(struct.pack(">BHI", 9, 0, 1) + b"x\xce")
    assert close_of(c.methods()).reply_code == 501


def test_oversize_frame_after_tune_is_501():
    c = Client()
    c.handshake(frame_max=4096)
    c.open_channel(1)
    c.send(method(1, C.Basic.Publish(routing_key="q")) + content(1, b"z" * 5000, frame_max=8192))
    close = close_of(c.methods())
    assert close.reply_code == 501


# -- heartbeats ---------------------------------------------------------------------------------
def _heartbeats(frames: list) -> int:
    return sum(isinstance(f, pamqp_heartbeat.Heartbeat) for _, f in frames)


def test_heartbeat_sent_when_idle_and_dead_peer_detected():
    c = Client()
    c.handshake(heartbeat=10)
    c.frames()
    wakes = len(c.io.woken)
    # tick 1: the peer spoke; RabbitMQ's first heartbeat comes half an interval after open-ok
    # ticks 2-4: silence both ways: we send heartbeats, the peer is not dead yet
    for _ in range(4):
        assert c.conn.heartbeat_tick() is True
        frames = c.frames()
        assert _heartbeats(frames) == 1 and len(frames) == 1
        assert frames[0][0] == 0
    assert len(c.io.woken) == wakes + 4
    # tick 5: four silent ticks (two heartbeat intervals): the peer is gone
    assert c.conn.heartbeat_tick() is False
    assert not c.conn.is_open
    assert c.io.closed == []        # the caller drops the transport; no connection.close sent
    assert c.frames() == []


def test_peer_traffic_resets_the_heartbeat_timeout():
    c = Client()
    c.handshake(heartbeat=10)
    c.frames()
    for _ in range(20):
        assert c.conn.heartbeat_tick() is True
        assert c.conn.heartbeat_tick() is True
        c.send(heartbeat())                         # peer heartbeat: no reply, just liveness
        c.frames()
    for _ in range(4):
        assert c.conn.heartbeat_tick() is True
    assert c.conn.heartbeat_tick() is False


def test_no_heartbeat_while_other_output_flows():
    c = Client()
    c.handshake(heartbeat=10)
    c.open_channel(1)
    c.conn.heartbeat_tick()
    for _ in range(3):
        c.send_method(1, C.Basic.Qos(prefetch_count=0))   # each tick interval has a reply
        frames = c.frames()
        assert c.conn.heartbeat_tick() is True
        assert _heartbeats(frames + c.frames()) == 0


def test_partial_frame_counts_as_traffic():
    c = Client()
    c.handshake(heartbeat=10)
    c.conn.heartbeat_tick()
    frame = method(0, C.Connection.Close(reply_code=200, reply_text="x", class_id=0, method_id=0))
    for i in range(6):
        c.send(frame[i:i + 1])                      # never a complete frame, still alive
        assert c.conn.heartbeat_tick() is True


# -- connection loss ----------------------------------------------------------------------------
def _publish_three(c: Client, queue: str) -> None:
    c.send_method(1, C.Queue.Declare(queue=queue))
    c.methods()
    for body in (b"m1", b"m2", b"m3"):
        c.publish(1, body, routing_key=queue)


def test_connection_lost_requeues_unacked_as_redelivered():
    broker = make_broker()
    a = Client(broker)
    a.handshake()
    a.open_channel(1)
    _publish_three(a, "lost")
    assert a.get(1, "lost")[2] == b"m1"
    assert a.get(1, "lost")[2] == b"m2"
    a.conn.connection_lost()
    assert not a.conn.is_open

    b = Client(broker)
    b.handshake()
    b.open_channel(1)
    got = [b.get(1, "lost", no_ack=True) for _ in range(3)]
    assert [(m.redelivered, body) for m, _, body in got] == [
        (True, b"m1"), (True, b"m2"), (False, b"m3")]
    assert [m.message_count for m, _, _ in got] == [2, 1, 0]
    assert isinstance(b.get(1, "lost")[0], C.Basic.GetEmpty)


def test_connection_lost_requeues_consumer_deliveries():
    broker = make_broker()
    a = Client(broker)
    a.handshake()
    a.open_channel(1)
    _publish_three(a, "lostc")
    a.send_method(1, C.Basic.Consume(queue="lostc", consumer_tag="t"))
    frames = a.methods()
    assert [type(f).__name__ for _, f in frames].count("Deliver") == 3
    a.send_method(1, C.Basic.Ack(delivery_tag=2))
    a.conn.connection_lost()

    b = Client(broker)
    b.handshake()
    b.open_channel(1)
    got = [b.get(1, "lostc", no_ack=True) for _ in range(2)]
    assert [(m.redelivered, body) for m, _, body in got] == [(True, b"m1"), (True, b"m3")]
    assert isinstance(b.get(1, "lostc")[0], C.Basic.GetEmpty)


def test_dead_peer_requeues_unacked():
    broker = make_broker()
    a = Client(broker)
    a.handshake(heartbeat=4)
    a.open_channel(1)
    _publish_three(a, "hb")
    a.get(1, "hb")
    while a.conn.heartbeat_tick():
        pass
    b = Client(broker)
    b.handshake()
    b.open_channel(1)
    get_ok, _, body = b.get(1, "hb")
    assert (get_ok.redelivered, body) == (True, b"m1")


def test_exclusive_queue_deleted_with_its_connection():
    broker = make_broker()
    a = Client(broker)
    a.handshake()
    a.open_channel(1)
    a.send_method(1, C.Queue.Declare(queue="excl", exclusive=True))
    a.methods()
    a.conn.connection_lost()
    assert "excl" not in broker.vhosts["/"].queues


# -- read boundaries ----------------------------------------------------------------------------
def split_stream(data: bytes) -> list:
    """Protocol header then one element per frame (a reference framer)."""
    assert data.startswith(PROTOCOL_HEADER)
    out, pos = [data[:8]], 8
    while pos < len(data):
        size = struct.unpack_from(">I", data, pos + 3)[0]
        out.append(data[pos:pos + size + 8])
        pos += size + 8
    return out


def full_session() -> bytes:
    """A whole client session, pipelined: handshake, two channels, an exchange and queues,
    small, empty and multi-frame messages, basic.get, a consumer with prefetch, acks, a nack,
    a mandatory return, publisher confirms, a channel error with discarded frames and a
    reopen, and a clean connection close."""
    fm = 4096
    props = C.Basic.Properties(content_type="application/json", delivery_mode=2,
                               headers={"x": 1, "y": "ü"}, priority=3)
    big = bytes(range(256)) * 40                   # 10240 bytes -> 3 body frames at 4096
    parts = [
        handshake_bytes(frame_max=fm, heartbeat=0),
        method(1, C.Channel.Open()), method(2, C.Channel.Open()),
        method(1, C.Exchange.Declare(exchange="ex.s", exchange_type="direct")),
        method(1, C.Queue.Declare(queue="q.a")), method(1, C.Queue.Declare(queue="q.b")),
        method(1, C.Queue.Bind(queue="q.a", exchange="ex.s", routing_key="a")),
        method(1, C.Queue.Bind(queue="q.b", exchange="ex.s", routing_key="b")),
        publish(1, b"small", "ex.s", "a", props, fm),
        publish(1, big, "ex.s", "a", None, fm),
        publish(1, b"", "ex.s", "b", None, fm),
        publish(1, b"returned", "ex.s", "nowhere", props, fm, mandatory=True),
        method(1, C.Basic.Get(queue="q.a")), method(1, C.Basic.Get(queue="q.a")),
        method(1, C.Basic.Get(queue="q.a")),
        method(1, C.Basic.Ack(delivery_tag=2, multiple=True)),
        method(2, C.Basic.Qos(prefetch_count=1)),
        method(2, C.Basic.Consume(queue="q.b", consumer_tag="c1")),
        publish(1, b"b2", "ex.s", "b", None, fm), publish(1, b"b3", "ex.s", "b", None, fm),
        method(2, C.Basic.Ack(delivery_tag=1)),
        method(2, C.Basic.Nack(delivery_tag=2, multiple=False, requeue=True)),
        method(2, C.Basic.Ack(delivery_tag=3)),
        method(2, C.Basic.Ack(delivery_tag=4)),
        method(2, C.Basic.Cancel(consumer_tag="c1")),
        method(2, C.Confirm.Select()),
        publish(2, b"c1", "", "q.b", None, fm), publish(2, big, "", "q.b", props, fm),
        method(1, C.Queue.Declare(queue="missing", passive=True)),
        method(1, C.Queue.Declare(queue="never")),
        publish(1, big, "ex.s", "a", None, fm),
        method(1, C.Basic.Get(queue="q.b")),
        method(1, C.Channel.CloseOk()),
        method(1, C.Channel.Open()),
        method(1, C.Basic.Get(queue="q.b", no_ack=True)),
        method(1, C.Basic.Get(queue="q.b", no_ack=True)),
        method(1, C.Basic.Get(queue="q.b", no_ack=True)),
        method(0, C.Connection.Close(reply_code=200, reply_text="done", class_id=0, method_id=0)),
    ]
    return b"".join(parts)


EXPECTED_SESSION = [
    (0, "Start"), (0, "Tune"), (0, "OpenOk"), (1, "OpenOk"), (2, "OpenOk"),
    (1, "DeclareOk"), (1, "DeclareOk"), (1, "DeclareOk"), (1, "BindOk"), (1, "BindOk"),
    (1, "Return"), (1, "ContentHeader"), (1, "ContentBody"),
    (1, "GetOk"), (1, "ContentHeader"), (1, "ContentBody"),
    (1, "GetOk"), (1, "ContentHeader")] + [(1, "ContentBody")] * 3 + [
    (1, "GetEmpty"),
    (2, "QosOk"), (2, "ConsumeOk"), (2, "Deliver"), (2, "ContentHeader"),
    (2, "Deliver"), (2, "ContentHeader"), (2, "ContentBody"),
    (2, "Deliver"), (2, "ContentHeader"), (2, "ContentBody"),
    (2, "Deliver"), (2, "ContentHeader"), (2, "ContentBody"),
    (2, "CancelOk"), (2, "SelectOk"), (2, "Ack"), (2, "Ack"),
    (1, "Close"), (1, "OpenOk"),
    (1, "GetOk"), (1, "ContentHeader"), (1, "ContentBody"),
    (1, "GetOk"), (1, "ContentHeader")] + [(1, "ContentBody")] * 3 + [
    (1, "GetEmpty"), (0, "CloseOk")]


def run_session(chunks) -> tuple:
    c = Client()
    for chunk in chunks:
        c.send(chunk)
    return c.raw_output(), c


def test_full_session_frame_by_frame():
    out, c = run_session(split_stream(full_session()))
    frames = decode_frames(out)
    assert names(frames) == EXPECTED_SESSION
    assert c.io.lingering == [(c.conn, 30.0, True)]
    methods = [f for _, f in frames if not isinstance(f, (pamqp_header.ContentHeader,
                                                         pamqp_body.ContentBody))]
    deliveries = [m for m in methods if isinstance(m, C.Basic.Deliver)]
    assert [(d.delivery_tag, d.redelivered) for d in deliveries] == [
        (1, False), (2, False), (3, True), (4, False)]
    acks = [m for m in methods if isinstance(m, C.Basic.Ack)]
    assert [(a.delivery_tag, a.multiple) for a in acks] == [(1, False), (2, False)]
    close = next(m for m in methods if isinstance(m, C.Channel.Close))
    assert (close.reply_code, close.class_id, close.method_id) == (404, 50, 10)
    assert "never" not in c.broker.vhosts["/"].queues
    gets = [m for m in methods if isinstance(m, C.Basic.GetOk)]
    assert [(g.delivery_tag, g.exchange, g.routing_key) for g in gets] == [
        (1, "ex.s", "a"), (2, "ex.s", "a"), (1, "", "q.b"), (2, "", "q.b")]


def test_full_session_byte_by_byte_equals_frame_by_frame():
    data = full_session()
    reference, _ = run_session(split_stream(data))
    out, c = run_session(data[i:i + 1] for i in range(len(data)))
    assert out == reference
    assert c.io.lingering == [(c.conn, 30.0, True)]


def session_without_dispatch_races() -> bytes:
    """The same session minus consumers and confirms: those legitimately batch per read
    (dispatch and confirm acks run once per data_received), everything else must not."""
    fm = 4096
    big = bytes(range(256)) * 40
    return b"".join([
        handshake_bytes(frame_max=fm, heartbeat=0),
        method(1, C.Channel.Open()),
        method(1, C.Queue.Declare(queue="q")),
        publish(1, b"one", "", "q", C.Basic.Properties(message_id="1"), fm),
        publish(1, big, "", "q", None, fm),
        publish(1, b"", "", "q", None, fm),
        publish(1, b"r", "amq.direct", "none", None, fm, mandatory=True),
        method(1, C.Basic.Get(queue="q")), method(1, C.Basic.Get(queue="q")),
        method(1, C.Basic.Reject(delivery_tag=2, requeue=True)),
        method(1, C.Basic.Get(queue="q")), method(1, C.Basic.Get(queue="q")),
        method(1, C.Basic.Get(queue="q")),
        method(1, C.Exchange.Declare(exchange="missing", passive=True)),
        publish(1, big, "", "q", None, fm),
        method(1, C.Channel.CloseOk()), method(1, C.Channel.Open()),
        method(1, C.Basic.Get(queue="q")),
        method(0, C.Connection.Close(reply_code=200, reply_text="done", class_id=0, method_id=0)),
    ])


@pytest.mark.parametrize("seed", range(3))
def test_session_independent_of_read_boundaries(seed):
    data = session_without_dispatch_races()
    reference, _ = run_session([data])
    frames = decode_frames(reference)
    assert names(frames)[-1] == (0, "CloseOk")
    assert sum(isinstance(f, C.Basic.GetOk) for _, f in frames) == 5
    assert sum(isinstance(f, C.Channel.Close) for _, f in frames) == 1
    rng = random.Random(seed)
    pos, chunks = 0, []
    while pos < len(data):
        size = rng.choice((1, 2, 7, 8, 9, rng.randrange(1, 5000)))
        chunks.append(data[pos:pos + size])
        pos += size
    assert run_session(chunks)[0] == reference
    assert run_session(split_stream(data))[0] == reference
    if seed == 0:
        assert run_session(data[i:i + 1] for i in range(len(data)))[0] == reference


@pytest.mark.parametrize("bad", ["oversize", "frame_end"])
def test_frames_before_a_framing_error_are_handled_in_one_read(bad):
    declare = method(1, C.Queue.Declare(queue="before-error"))
    if bad == "oversize":
        tail = struct.pack(">BHI", 3, 1, 200000) + b"x"
    else:
        tail = method(1, C.Basic.Qos(prefetch_count=1))[:-1] + b"\x00"
    results = []
    for chunks in ([declare + tail], [declare, tail]):
        c = Client()
        c.handshake()
        c.open_channel(1)
        for chunk in chunks:
            c.send(chunk)
        results.append((names(c.methods()), "before-error" in c.broker.vhosts["/"].queues))
    assert results[1] == ([(1, "DeclareOk"), (0, "Close")], True)
    assert results[0] == results[1]


def test_negotiated_frame_max_applies_to_frames_pipelined_after_tune_ok():
    data = (handshake_bytes(frame_max=4096) + method(1, C.Channel.Open())
            + method(1, C.Queue.Declare(queue="q"))
            + publish(1, b"x" * 5000, "", "q", None, frame_max=8192))
    for chunks in ([data[i:i + 1] for i in range(len(data))], [data]):
        out, c = run_session(chunks)
        frames = decode_frames(out)
        close = close_of(frames)
        assert close.reply_code == 501
        assert c.broker.vhosts["/"].queues["q"].message_count == 0


def test_connection_object_is_usable_without_client_helper():
    """The documented contract, spelled out once without the helper class."""
    io = StubIO()
    conn = Connection(make_broker(), io, "peer")
    conn.data_received(handshake_bytes())
    assert io.woken == [conn]
    out = decode_frames(conn.take_output())
    assert [type(f).__name__ for _, f in out] == ["Start", "Tune", "OpenOk"]
    assert conn.take_output() == b""
    conn.connection_lost()
    assert io.closed == []
