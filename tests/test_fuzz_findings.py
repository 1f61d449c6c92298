"""One regression test per distinct fuzz finding (issue 10, point 7).

Each test replays the fuzzer's minimal input (as raw frames, on a fresh connection to a real
broker, exactly as ``python3 bench/fuzz.py`` sent it: the handshake, the input on its own
channel, then a marker round trip) and asserts what RabbitMQ 3.10.8 answers to the same bytes
(probed with ``python -m tests.fuzzing.probe``), and that the broker logged no traceback.

A test marked ``xfail(strict=True, reason="FUZZ: <signature>")`` is a finding amqpd still
has; the signature is the fuzzer's (exception type and place, or kind of violation and
frame), and tests/test_fuzz.py tolerates exactly those. Fix it, remove the mark.
"""
import struct
import time

import pytest

from .fuzzing import streams as S
from .fuzzing import wire as W
from .fuzzing.replay import connect, run_stream
from .fuzzing.wire import Array, Raw, Table, Typed

CH = 2                          # the channel the fuzzer put chan-stage inputs on


def open_signatures() -> set:
    """The fuzz signatures whose regression test is still marked xfail (known findings)."""
    found = set()
    for name, fn in globals().items():
        if not name.startswith("test_"):
            continue
        for mark in getattr(fn, "pytestmark", []):
            reason = mark.kwargs.get("reason", "")
            if mark.name == "xfail" and reason.startswith("FUZZ: "):
                found.add(reason[len("FUZZ: "):])
    return found


def fuzz(reason: str):
    return pytest.mark.xfail(strict=True, reason="FUZZ: " + reason)


@pytest.fixture
def broker(make_broker):
    """A broker that drops a connection it is done with (refused login, framing error, before
    tune-ok) after 0.5 s instead of RabbitMQ's 3 s (limits.close_timeout): the replays that read
    until the socket closes do not spend 3 s each."""
    return make_broker(limits={"close_timeout": 0.5})


@pytest.fixture
def tracebacks(caplog):
    """Log records the broker wrote with a traceback (read at the end of the test)."""
    caplog.set_level("WARNING")
    return lambda: [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def replay(broker, stage: str, *chunks: bytes, channel: int = CH, timeout: float = 5.0):
    """Send one input as the fuzzer does (``streams.full_stream``) and return the Outcome."""
    data = b"".join(chunks)
    return run_stream(broker.port, S.full_stream(stage, data, channel), stage, timeout,
                      channel=channel if stage == "chan" else None)


def frames(broker, stage: str, *chunks: bytes, channel: int = CH, wait: float = 0.3) -> list:
    """Every (channel, class, method, payload) the broker sends for the input until the marker
    (plus ``wait`` seconds for what a timer sends later)."""
    sock = connect(broker.port)
    sock.sendall(S.full_stream(stage, b"".join(chunks), channel))
    reader = S.Reader()
    got = []
    deadline = time.monotonic() + 5
    quiet = None
    try:
        while time.monotonic() < (quiet or deadline):
            sock.settimeout(max(0.01, (quiet or deadline) - time.monotonic()))
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            for ftype, ch, payload in reader.frames(data):
                if ftype == W.FRAME_METHOD:
                    c, m = struct.unpack_from(">HH", payload)
                    got.append((ch, c, m, payload))
                    if (c, m) == (60, 11) and ch == S.MARKER_CHANNEL:
                        quiet = time.monotonic() + wait
                    if (c, m) == (20, 40):
                        sock.sendall(S.channel_close_ok(ch))
                    elif (c, m) == (10, 50):
                        sock.sendall(S.CLOSE_OK)
                else:
                    got.append((ch, ftype, None, payload))
    finally:
        sock.close()
    return got


def queue_declare(name: bytes, args=None, **flags) -> bytes:
    values = {"queue": name, "arguments": Table(args or {})}
    values.update(flags)
    return W.method(CH, "Queue.Declare", values)


def exchange_declare(name: bytes, kind: bytes, args=None, **flags) -> bytes:
    values = {"exchange": name, "exchange_type": kind, "arguments": Table(args or {})}
    values.update(flags)
    return W.method(CH, "Exchange.Declare", values)


def bind(queue: bytes, exchange: bytes, key: bytes = b"", args=None) -> bytes:
    return W.method(CH, "Queue.Bind", {"queue": queue, "exchange": exchange,
                                       "routing_key": key, "arguments": Table(args or {})})


def publish(exchange: bytes, key: bytes, props: dict, body: bytes = b"x") -> bytes:
    return (W.method(CH, "Basic.Publish", {"exchange": exchange, "routing_key": key})
            + W.content_header(CH, len(body), props) + W.frame(W.FRAME_BODY, CH, body))


def get(queue: bytes) -> bytes:
    return W.method(CH, "Basic.Get", {"queue": queue, "no_ack": True})


def deep(depth: int, kind: str = "F") -> Raw:
    """A field value of tables (or arrays) nested ``depth`` deep."""
    inner = b"V"
    for _ in range(depth):
        if kind == "F":
            body = W.shortstr(b"k") + inner
            inner = b"F" + W.long_(len(body)) + body
        else:
            inner = b"A" + W.long_(len(inner)) + inner
    return Raw(inner[:1], inner[1:])


def soft_close(out, code: int, text: str, class_id: int, method_id: int) -> None:
    assert out.conn_close is None, out.summary()
    assert out.channel_closes == [(CH, code, text, class_id, method_id)], out.summary()
    assert out.marker, out.summary()


def answered(out) -> None:
    """The input was handled without any error: no close, and the marker came back."""
    assert out.conn_close is None and not out.channel_closes, out.summary()
    assert out.marker, out.summary()


# -- publish: message properties ------------------------------------------------------------------
@pytest.mark.parametrize("expiration", [b"--1", "²".encode()])
def test_expiration_that_is_no_integer(broker, tracebacks, expiration):
    # fuzzer minimal input: basic.publish, content header with expiration '--1', body
    out = replay(broker, "chan", publish(b"", b"fz.q0", {"expiration": expiration}))
    soft_close(out, 406, f"PRECONDITION_FAILED - invalid expiration '{expiration.decode()}': "
                         "no_integer", 60, 40)
    assert not tracebacks()


REPLY_TO = b"amq.rabbitmq.reply-to"


def reply_to_publish(props: dict) -> list:
    """A direct reply-to requester: consumes amq.rabbitmq.reply-to, publishes a request with
    reply_to set (amqpd rewrites the property block), fetches it back."""
    props = dict(props, reply_to=REPLY_TO)
    return [queue_declare(b"fz.rt", exclusive=True),
            W.method(CH, "Basic.Consume", {"queue": REPLY_TO, "no_ack": True}),
            publish(b"", b"fz.rt", props), get(b"fz.rt")]


def got_message(got) -> bytes:
    """The content header payload of the basic.get-ok in ``frames`` output."""
    for i, (ch, c, m, _p) in enumerate(got):
        if (c, m) == (60, 71):
            return got[i + 1][3]
    raise AssertionError(f"no basic.get-ok in {[(c, m) for _ch, c, m, _p in got]}")


def test_reply_to_request_with_non_utf8_message_id(broker, tracebacks):
    # a shortstr property is binary to RabbitMQ: the request is delivered as sent
    got = frames(broker, "chan", *reply_to_publish({"message_id": b"\xff\xfe"}))
    assert W.shortstr(b"\xff\xfe") in got_message(got)
    assert not tracebacks()


def test_reply_to_request_with_truncated_property_block(broker, tracebacks):
    # fuzzer minimal input: flags announce a timestamp the block does not hold. RabbitMQ
    # cannot parse it and closes the publisher with a bare 541 (no bug: a refused message).
    header = W.frame(W.FRAME_HEADER, CH, W.short(60) + W.short(0) + W.longlong(1)
                     + W.short(0x0240) + W.shortstr(REPLY_TO))       # reply_to + timestamp
    out = replay(broker, "chan", W.method(CH, "Basic.Consume", {"queue": REPLY_TO,
                                                               "no_ack": True}),
                 W.method(CH, "Basic.Publish", {"routing_key": b"fz.q0"}), header,
                 W.frame(W.FRAME_BODY, CH, b"x"))
    assert out.conn_close == (541, "INTERNAL_ERROR", 0, 0), out.summary()
    assert not tracebacks()


def test_reply_to_request_with_deeply_nested_headers(broker, tracebacks):
    # RabbitMQ delivers it; amqpd refuses tables nested deeper than 100 at publish, as no
    # client decodes them (pika's recursion gives up long before): 541, deliberately, without
    # a traceback (docs/supported.md). Never a crash in the reply_to rewrite.
    out = replay(broker, "chan", *reply_to_publish({"headers": Table({b"x-death": deep(600)})}))
    assert out.conn_close == (541, "INTERNAL_ERROR", 0, 0), out.summary()
    assert not tracebacks()


def test_reply_to_request_with_huge_double_header(broker, tracebacks):
    # a double is re-encoded as a 32-bit float on the rewrite path: 1e300 does not fit
    got = frames(broker, "chan", *reply_to_publish({"headers": Table({b"d": Typed("d", 1e300)})}))
    assert W.field_value(Typed("d", 1e300)) in got_message(got)
    assert not tracebacks()


def test_dead_lettering_a_message_with_a_far_future_timestamp(broker, tracebacks):
    # The TTL timer dead-letters it; decoding its properties fails (year out of range), the
    # timer callback dies with a traceback and the message is gone (RabbitMQ: dead-lettered).
    got = frames(broker, "chan",
                 queue_declare(b"fz.dlq", exclusive=True),
                 queue_declare(b"fz.ttl", {b"x-message-ttl": 0, b"x-dead-letter-exchange": b"",
                                           b"x-dead-letter-routing-key": b"fz.dlq"},
                               exclusive=True),
                 publish(b"", b"fz.ttl", {"timestamp": 2 ** 63}),
                 *[W.method(CH, "Basic.Qos", {}) + get(b"fz.dlq") for _ in range(20)])
    assert any((c, m) == (60, 71) for _ch, c, m, _p in got), "message not dead-lettered"
    assert not tracebacks()


def test_dead_lettering_a_message_whose_x_death_is_not_an_array(broker, tracebacks):
    got = frames(broker, "chan",
                 queue_declare(b"fz.dlq", exclusive=True),
                 queue_declare(b"fz.ttl", {b"x-message-ttl": 0, b"x-dead-letter-exchange": b"",
                                           b"x-dead-letter-routing-key": b"fz.dlq"},
                               exclusive=True),
                 publish(b"", b"fz.ttl", {"headers": Table({b"x-death": Typed("D", (2, 1))})}),
                 *[W.method(CH, "Basic.Qos", {}) + get(b"fz.dlq") for _ in range(20)])
    assert any((c, m) == (60, 71) for _ch, c, m, _p in got), "message not dead-lettered"
    assert not tracebacks()


def test_connection_error_while_holding_an_expired_undecodable_message(broker, tracebacks):
    # fuzzer minimal input (channel 633): declare fz.dlq and fz.q3 (TTL, DLX ''), publish a
    # message whose message_id is not UTF-8, basic.get it (unacked), then a malformed
    # basic.reject (frame error). Closing the connection requeues the message, it has
    # expired, dead-lettering decodes its properties and raises: the exception escapes the
    # connection ("Fatal error on transport"), the socket drops without connection.close and
    # the message is lost. RabbitMQ: connection.close 501, the message is dead-lettered.
    args = {b"x-message-ttl": 50, b"x-dead-letter-exchange": b"",
            b"x-dead-letter-routing-key": b"fz.dlq"}
    sock = connect(broker.port)
    sock.sendall(S.HANDSHAKE + S.channel_open(CH) + queue_declare(b"fz.dlq")
                 + queue_declare(b"fz.q3", args)
                 + publish(b"", b"fz.q3", {"message_id": b"\xff\xfe"})
                 + W.method(CH, "Basic.Get", {"queue": b"fz.q3"}))
    reader = S.Reader()
    seen = []
    deadline = time.monotonic() + 5
    while (60, 71) not in seen and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        seen += [struct.unpack_from(">HH", p) for t, _c, p in reader.frames(sock.recv(65536))
                 if t == W.FRAME_METHOD]
    assert (60, 71) in seen, seen                       # basic.get-ok: held, unacked
    # ... and its TTL (50 ms) passes while it is out: nothing to wait on, time is the point
    time.sleep(0.1)
    sock.sendall(W.frame(9, 0, b""))                    # a frame error: unknown frame type
    closes = []
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except OSError:
            break
        if not data:
            break
        closes += [S.parse_close(p) for t, _c, p in reader.frames(data)
                   if t == W.FRAME_METHOD and p[:4] == b"\x00\x0a\x00\x32"]
        if closes:
            sock.sendall(S.CLOSE_OK)
    sock.close()
    assert closes and closes[0][0] == 501, closes
    got = frames(broker, "chan", get(b"fz.dlq"), W.method(CH, "Queue.Delete", {"queue": b"fz.q3"}),
                 W.method(CH, "Queue.Delete", {"queue": b"fz.dlq"}))
    assert W.shortstr(b"\xff\xfe") in got_message(got), "the message was not dead-lettered"
    assert not tracebacks()


# -- queue.declare / exchange.declare arguments ------------------------------------------------------
def test_queue_with_non_utf8_dead_letter_exchange(broker, tracebacks):
    out = replay(broker, "chan", queue_declare(b"fz.q0", {b"x-dead-letter-exchange": b"\xff\xfe"},
                                               exclusive=True))
    answered(out)
    assert not tracebacks()


def test_queue_name_with_a_nul_byte(broker, tracebacks):
    # fuzzer minimal input: queue.declare 'fz.q0\x00' (RabbitMQ: any bytes up to 255)
    out = replay(broker, "chan", queue_declare(b"fz.q0\x00", exclusive=True))
    answered(out)
    assert not tracebacks()


def test_queue_with_non_utf8_queue_mode(broker, tracebacks):
    out = replay(broker, "chan", queue_declare(b"fz.q1", {b"x-queue-mode": b"\xff\xfe"},
                                               exclusive=True))
    # RabbitMQ logs this 406 and its channel crashes before sending it; amqpd sends it, the
    # bytes shown as Latin-1 as RabbitMQ's log shows them (docs/supported.md)
    soft_close(out, 406, "PRECONDITION_FAILED - invalid arg 'x-queue-mode' for queue 'fz.q1' in "
                         "vhost '/': \"unsupported queue mode '\u00ff\u00fe'\"", 50, 10)
    assert not tracebacks()


def test_durable_queue_with_non_utf8_string_argument(broker, tracebacks):
    out = replay(broker, "chan", queue_declare(b"fz.d1", {b"x-deduplication-header": b"\xff"},
                                               durable=True),
                 W.method(CH, "Queue.Delete", {"queue": b"fz.d1"}))
    answered(out)
    assert not tracebacks()


def test_durable_queue_with_huge_double_argument(broker, tracebacks):
    out = replay(broker, "chan", queue_declare(b"fz.d2", {b"k": Typed("d", 1e300)}, durable=True),
                 W.method(CH, "Queue.Delete", {"queue": b"fz.d2"}))
    answered(out)
    assert not tracebacks()


def test_exchange_with_non_utf8_alternate_exchange(broker, tracebacks):
    # fuzzer minimal input (hex, channel 2 here): exchange.declare fz.xd x-delayed-message
    # {alternate-exchange: <<255,254>>}; RabbitMQ checks the type after: a direct one here
    out = replay(broker, "chan", exchange_declare(b"fz.x0", b"direct",
                                                  {b"alternate-exchange": b"\xff\xfe"}),
                 W.method(CH, "Exchange.Delete", {"exchange": b"fz.x0"}))
    answered(out)
    assert not tracebacks()


def test_delayed_exchange_with_non_utf8_delayed_type(broker, tracebacks):
    # the plugin looks the type up like a declare does: unknown type, a connection error
    out = replay(broker, "chan", exchange_declare(b"fz.xd", b"x-delayed-message",
                                                  {b"x-delayed-type": b"\xff\xfe"}))
    assert out.conn_close is not None and out.conn_close[0] == 503, out.summary()
    assert out.conn_close[1].startswith("COMMAND_INVALID - unknown exchange type")
    assert out.conn_close[2:] == (40, 10)
    assert not tracebacks()


def test_deduplication_exchange_with_cache_size_that_is_no_integer(broker, tracebacks):
    out = replay(broker, "chan", exchange_declare(b"fz.xdd", b"x-message-deduplication",
                                                  {b"x-cache-size": b"--5"}))
    soft_close(out, 406, "PRECONDITION_FAILED - Missing or invalid argument, 'x-cache-size' "
                         "must be an integer greater than 0", 40, 10)
    assert not tracebacks()


def test_deduplication_header_that_is_a_byte_array(broker, tracebacks):
    # fuzzer minimal input: a publish (to amq.fanout, which another input had bound to a
    # deduplication exchange) whose x-deduplication-header is a field of type 'x' (byte
    # array): amqpd decodes it to a bytearray, which cannot be a cache key: 541. The plugin
    # takes any value: the second message with the same value is a duplicate.
    props = {"headers": Table({b"x-deduplication-header": Typed("x", b"id-1")})}
    got = frames(broker, "chan",
                 exchange_declare(b"fz.xdd", b"x-message-deduplication",
                                  {b"x-cache-size": 10}, auto_delete=True),
                 queue_declare(b"fz.q0", exclusive=True), bind(b"fz.q0", b"fz.xdd"),
                 publish(b"fz.xdd", b"", props), publish(b"fz.xdd", b"", props),
                 get(b"fz.q0"), get(b"fz.q0"))
    methods = [(c, m) for _ch, c, m, _p in got if m is not None]
    assert (10, 50) not in methods and (20, 40) not in methods, methods
    assert methods.count((60, 71)) == 1 and methods.count((60, 72)) == 1, methods
    assert not tracebacks()


def test_consistent_hash_exchange_with_non_utf8_hash_property(broker, tracebacks):
    out = replay(broker, "chan", exchange_declare(b"fz.xc", b"x-consistent-hash",
                                                  {b"hash-property": b"\xff\xfe"}))
    soft_close(out, 406, "PRECONDITION_FAILED - Unsupported property: \u00ff\u00fe", 40, 10)
    assert not tracebacks()


def test_consistent_hash_exchange_with_array_hash_header(broker, tracebacks):
    # amqpd accepts the declare, then fails (541) on every publish. RabbitMQ refuses the
    # declare (its channel crashes: a bare 541 INTERNAL_ERROR); a 406 would do as well. Or,
    # if the declare is accepted, a publish must be routed like any other.
    got = frames(broker, "chan", exchange_declare(b"fz.xc", b"x-consistent-hash",
                                                  {b"hash-header": Array([b"h"])},
                                                  auto_delete=True),
                 queue_declare(b"fz.q0", exclusive=True), bind(b"fz.q0", b"fz.xc", b"1"),
                 publish(b"fz.xc", b"", {"headers": Table({b"h": b"v"})}), get(b"fz.q0"))
    methods = [(c, m) for _ch, c, m, _p in got if m is not None]
    closes = [S.parse_close(p) for _ch, c, m, p in got if (c, m) in ((20, 40), (10, 50))]
    if (40, 11) in methods:                               # declared: must route
        assert (60, 71) in methods and not closes, (methods, closes)
    else:                                                 # refused at the declare
        assert closes and (closes[0][0] == 406 and closes[0][2:] == (40, 10)
                           or closes[0] == (541, "INTERNAL_ERROR", 0, 0)), closes
    assert not tracebacks()


def test_consistent_hash_exchange_with_array_hash_property(broker, tracebacks):
    # fuzzer minimal input: exchange.declare fz.xc x-consistent-hash {hash-property: [...]}.
    # RabbitMQ's channel crashes on it too (a bare 541 INTERNAL_ERROR); a 406 would do.
    out = replay(broker, "chan", exchange_declare(b"fz.xc", b"x-consistent-hash",
                                                  {b"hash-property": Array([b"message_id"])},
                                                  auto_delete=True))
    if out.conn_close is not None:
        assert out.conn_close == (541, "INTERNAL_ERROR", 0, 0), out.summary()
    else:
        assert [c[1:2] + c[3:] for c in out.channel_closes] == [(406, 40, 10)], out.summary()
    assert not tracebacks()


def test_headers_binding_with_deeply_nested_x_match(broker, tracebacks):
    # RabbitMQ takes the binding and answers 406 about the x-match type; amqpd refuses method
    # arguments nested deeper than 100 levels as undecodable (docs/supported.md)
    out = replay(broker, "chan", queue_declare(b"fz.q0", exclusive=True),
                 bind(b"fz.q0", b"amq.headers", b"", {b"x-match": deep(400, "A")}))
    assert out.conn_close == (501, "FRAME_ERROR - cannot decode Queue.Bind arguments", 50, 20), \
        out.summary()
    assert not tracebacks()


def test_headers_binding_with_deeply_nested_x_match_table(broker, tracebacks):
    # RabbitMQ takes the binding and answers 406 about the x-match type; amqpd refuses method
    # arguments nested deeper than 100 levels as undecodable (docs/supported.md)
    out = replay(broker, "chan", queue_declare(b"fz.q0", exclusive=True),
                 bind(b"fz.q0", b"amq.headers", b"", {b"x-match": deep(400)}))
    assert out.conn_close == (501, "FRAME_ERROR - cannot decode Queue.Bind arguments", 50, 20), \
        out.summary()
    assert not tracebacks()


def test_consistent_hash_binding_weight_1000_is_cheap(broker, tracebacks):
    # fuzzer minimal input: queue.bind to an x-consistent-hash exchange with routing key
    # (weight) '100000'; the broker built the ring for seconds and answered no one. RabbitMQ
    # binds weight 1000 at once.
    replay(broker, "chan", exchange_declare(b"fz.xc", b"x-consistent-hash", auto_delete=True))
    t0 = time.monotonic()
    out = replay(broker, "chan", queue_declare(b"fz.q0", exclusive=True),
                 bind(b"fz.q0", b"fz.xc", b"1000"))
    answered(out)
    assert time.monotonic() - t0 < 0.5, f"bind took {time.monotonic() - t0:.2f} s"
    assert not tracebacks()


# -- handshake and connection class ------------------------------------------------------------------
def test_amqplain_response_nested_600_deep(broker, tracebacks):
    # RabbitMQ: a syntax error in start-ok; before tune it just closes the socket. Any
    # refusal (a 403/502 connection.close or the socket closing) is right; 541 is not.
    login = deep(600)
    response = W.shortstr(b"LOGIN") + login.code + login.data
    out = replay(broker, "pre", W.PROTOCOL_HEADER, W.method(0, "Connection.StartOk", {
        "client_properties": Table({b"capabilities": Table({
            b"authentication_failure_close": True})}),
        "mechanism": b"AMQPLAIN", "response": response, "locale": b"en_US"}))
    assert out.eof and not out.opened, out.summary()
    # (this one is 4283 bytes: over the 4096 bytes RabbitMQ allows before tune, so 501)
    assert out.conn_close is None or out.conn_close[0] in (403, 501, 502), out.summary()
    assert not tracebacks()


def test_connection_close_ok_nobody_asked_for(broker, tracebacks):
    # fuzzer minimal input: 01 0000 00000004 000a0033 ce, after connection.open
    out = replay(broker, "conn", W.method(0, "Connection.CloseOk"))
    assert out.conn_close == (504, "CHANNEL_ERROR - unexpected method in connection state "
                                   "running", 10, 51), out.summary()
    assert not tracebacks()


@pytest.mark.parametrize("name", ["Connection.Blocked", "Connection.Unblocked",
                                  "Connection.UpdateSecretOk"])
def test_server_only_connection_methods_from_the_client(broker, tracebacks, name):
    # found by bench/fuzz.py --differential: amqpd ignored them; RabbitMQ 3.10.8 (probed)
    # answers 504 'unexpected method in connection state running' with the method's ids
    args = {"reason": b""} if name == "Connection.Blocked" else {}
    out = replay(broker, "conn", W.method(0, name, args))
    assert out.conn_close is not None and out.conn_close[:2] == (
        504, "CHANNEL_ERROR - unexpected method in connection state running"), out.summary()
    assert not tracebacks()


def test_headers_binding_with_a_32_bit_float_x_match(broker, tracebacks):
    # fuzzer minimal input (1M-input run on the fixed broker): queue.bind to a headers
    # exchange with x-match = float 1e30 (type 'f'); formatting the 406 text raised (541)
    out = replay(broker, "chan",
                 exchange_declare(b"fz.xh", b"headers", {}, auto_delete=True),
                 queue_declare(b"fz.q0", exclusive=True),
                 bind(b"fz.q0", b"fz.xh", b"", {b"x-match": Typed("f", 1e30)}))
    assert out.conn_close is None, out.summary()
    assert [c[1:2] + c[3:] for c in out.channel_closes] == [(406, 50, 20)], out.summary()
    assert "(value 1.0000000150474662e30)" in out.channel_closes[0][2], out.summary()
    assert not tracebacks()
