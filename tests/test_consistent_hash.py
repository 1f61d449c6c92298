"""The x-consistent-hash exchange (semantics of RabbitMQ's bundled consistent-hash plugin) over
real sockets: the spread over queues follows the binding weights, a key always lands in the same
queue, removing a queue moves only that queue's keys, hashing on a header or a property, and the
validation errors (406 with the plugin's texts).

Bulk publishes go through a raw socket with hand-built frames, so 100,000 keys take a moment."""
import struct
import time
import uuid

import pika
import pytest
from pamqp import commands as C

from tests.rawclient import RawClient
from .helpers import count, new_queue, refused

FRAME_END = b"\xce"


# -- helpers ----------------------------------------------------------------------------------
def _shortstr(s: str) -> bytes:
    b = s.encode()
    return bytes([len(b)]) + b


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + FRAME_END


def publish_frames(exchange: str, routing_key: str, body: bytes, channel: int = 1) -> bytes:
    """basic.publish + content header (no properties) + body, built by hand (fast)."""
    method = struct.pack(">HHH", 60, 40, 0) + _shortstr(exchange) + _shortstr(routing_key) \
        + b"\x00"
    header = struct.pack(">HHQH", 60, 0, len(body), 0)
    return (_frame(1, channel, method) + _frame(2, channel, header)
            + _frame(3, channel, body))


def blast(broker, exchange: str, keys) -> None:
    """Publish one message per routing key (body = key) over a raw socket, then make a round
    trip on the same channel so that every publish has been routed."""
    with RawClient(broker.port, timeout=60) as raw:
        raw.handshake()
        raw.open_channel()
        chunk = []
        for key in keys:
            chunk.append(publish_frames(exchange, key, key.encode()))
            if len(chunk) == 5000:
                raw.send(b"".join(chunk))
                chunk = []
        raw.send(b"".join(chunk))
        raw.call(1, C.Basic.Qos(prefetch_count=0), C.Basic.QosOk)
        raw.method(1, C.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
        raw.expect(C.Channel.CloseOk)
        raw.method(0, C.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
        raw.expect(C.Connection.CloseOk)


def placement(ch, queues, total: int, timeout: float = 10) -> dict:
    """body -> queue for the ``total`` messages in the queues (consumed with no-ack; a body
    found twice fails the test)."""
    where: dict = {}
    dupes: list = []

    def on_message(queue):
        def cb(_ch, _method, _props, body):
            if body in where:
                dupes.append(body)
            where[body] = queue
        return cb

    tags = [ch.basic_consume(q, on_message(q), auto_ack=True) for q in queues]
    deadline = time.monotonic() + timeout
    while len(where) + len(dupes) < total:
        assert time.monotonic() < deadline, f"got {len(where)} of {total} messages"
        ch.connection.process_data_events(time_limit=0.01)
    for tag in tags:
        ch.basic_cancel(tag)
    assert dupes == []
    return where


def bodies_by_queue(ch, queues) -> dict:
    out = {}
    for q in queues:
        got = []
        while True:
            method, _props, body = ch.basic_get(q, auto_ack=True)
            if method is None:
                break
            got.append(body)
        out[q] = got
    return out


# -- spread -----------------------------------------------------------------------------------
def test_equal_weights_spread_100k_keys_over_4_queues(broker, ch):
    ch.exchange_declare("chx", "x-consistent-hash")
    queues = [new_queue(ch, "chx", "1") for _ in range(4)]
    n = 100_000
    blast(broker, "chx", (f"key-{i}" for i in range(n)))
    counts = [count(ch, q) for q in queues]
    shares = [c / n for c in counts]
    print("consistent-hash spread of 100,000 keys over 4 queues (weight 1 each):",
          ", ".join(f"{s:.2%}" for s in shares))
    assert sum(counts) == n                     # every key routed to exactly one queue
    for s in shares:
        assert 0.20 <= s <= 0.30, shares


def test_weights_1_to_2(broker, ch):
    ch.exchange_declare("chx", "x-consistent-hash")
    light, heavy = new_queue(ch, "chx", "1"), new_queue(ch, "chx", "2")
    n = 30_000
    blast(broker, "chx", (f"w-{i}" for i in range(n)))
    a, b = count(ch, light), count(ch, heavy)
    print(f"consistent-hash weights 1:2 over {n} keys: {a} : {b} (ratio {b / a:.2f})")
    assert a + b == n
    assert 1.7 <= b / a <= 2.3


def test_same_key_always_lands_in_the_same_queue(broker, ch):
    ch.exchange_declare("chx", "x-consistent-hash")
    queues = [new_queue(ch, "chx", "1") for _ in range(4)]
    keys = [f"k{i}" for i in range(300)]
    blast(broker, "chx", keys * 4)           # each key four times, interleaved
    got = bodies_by_queue(ch, queues)
    home: dict = {}
    for q, bodies in got.items():
        for body in bodies:
            assert home.setdefault(body, q) == q, f"{body!r} went to two queues"
    assert len(home) == 300
    assert all(sum(1 for b in bodies if b == k) in (0, 4)
               for bodies in got.values() for k in set(bodies))
    assert all(got[q] for q in queues)       # and all four queues are used


@pytest.mark.parametrize("how", ["unbind", "queue.delete"])
def test_removing_a_queue_moves_only_its_keys(broker, ch, how):
    ch.exchange_declare("chx", "x-consistent-hash")
    queues = [new_queue(ch, "chx", "1") for _ in range(4)]
    keys = [f"mv-{i}" for i in range(4000)]
    blast(broker, "chx", keys)
    before = placement(ch, queues, len(keys))
    gone = queues[2]
    if how == "unbind":
        ch.queue_unbind(gone, "chx", "1")
    else:
        ch.queue_delete(gone)
    kept = [q for q in queues if q != gone]
    blast(broker, "chx", keys)
    after = placement(ch, kept, len(keys))
    if how == "unbind":
        assert count(ch, gone) == 0
    moved = [k for k in keys if before[k.encode()] != after[k.encode()]]
    stayed_wrong = [k for k in moved if before[k.encode()] != gone]
    print(f"removing 1 of 4 queues moved {len(moved)} of {len(keys)} keys "
          f"({len(stayed_wrong)} of them from other queues)")
    assert stayed_wrong == []                 # only the removed queue's keys moved...
    assert {after[k.encode()] for k in moved} == set(kept)   # ...and they spread over the rest


def test_adding_a_queue_takes_keys_only_from_others_to_it(broker, ch):
    ch.exchange_declare("chx", "x-consistent-hash")
    queues = [new_queue(ch, "chx", "1") for _ in range(3)]
    keys = [f"add-{i}" for i in range(3000)]
    blast(broker, "chx", keys)
    before = placement(ch, queues, len(keys))
    newcomer = new_queue(ch, "chx", "1")
    blast(broker, "chx", keys)
    after = placement(ch, queues + [newcomer], len(keys))
    moved = [k for k in keys if before[k.encode()] != after[k.encode()]]
    assert moved and all(after[k.encode()] == newcomer for k in moved)
    assert 0.15 <= len(moved) / len(keys) <= 0.35   # about a quarter of the keys


def test_routing_with_pika_basic_publish(ch):
    """The same, through an ordinary client: identical keys follow each other."""
    ch.exchange_declare("chx", "x-consistent-hash", durable=False)
    queues = [new_queue(ch, "chx", "3") for _ in range(2)]
    for i in range(50):
        for _ in range(2):
            ch.basic_publish("chx", f"order-{i}", f"order-{i}".encode())
    got = bodies_by_queue(ch, queues)
    assert sum(len(b) for b in got.values()) == 100
    for bodies in got.values():
        for b in set(bodies):
            assert bodies.count(b) == 2


def test_durable_exchange_places_keys_the_same_after_restart(tmp_path):
    from tests.brokerthread import BrokerThread

    keys = [f"r-{i}" for i in range(1000)]
    names = [f"chq-{i}" for i in range(4)]

    def run_once() -> dict:
        b = BrokerThread(data_dir=str(tmp_path)).start()
        try:
            conn = pika.BlockingConnection(pika.URLParameters(b.url))
            ch = conn.channel()
            ch.exchange_declare("chx-d", "x-consistent-hash", durable=True)
            for q in names:
                ch.queue_declare(q, durable=True)
                ch.queue_bind(q, "chx-d", "2")
            blast(b, "chx-d", keys)
            where = placement(ch, names, len(keys))
            conn.close()
            b.wait_for(lambda: not b.server.protocols, timeout=3, what="clients to go")
            return where
        finally:
            b.stop()

    first = run_once()
    second = run_once()                 # bindings recovered from disk
    assert first == second
    assert set(first.values()) == set(names)


# -- hashing on a header or a property ------------------------------------------------------
def test_hash_header(ch):
    ch.exchange_declare("chx-h", "x-consistent-hash", arguments={"hash-header": "hash-on"})
    queues = [new_queue(ch, "chx-h", "1") for _ in range(2)]
    for i in range(400):
        value = f"v{i % 200}"
        # The routing key varies and must not matter.
        ch.basic_publish("chx-h", f"rk-{i}", value.encode(),
                         pika.BasicProperties(headers={"hash-on": value}))
    got = bodies_by_queue(ch, queues)
    assert sum(len(b) for b in got.values()) == 400
    for bodies in got.values():
        assert 0.30 <= len(bodies) / 400 <= 0.70
        for b in set(bodies):
            assert bodies.count(b) == 2      # both copies of a header value together


def test_hash_header_missing_is_not_routed(ch):
    ch.exchange_declare("chx-h", "x-consistent-hash", arguments={"hash-header": "hash-on"})
    queues = [new_queue(ch, "chx-h", "1") for _ in range(2)]
    returned = []
    ch.add_on_return_callback(lambda _c, m, _p, b: returned.append((m.reply_code, b)))
    ch.basic_publish("chx-h", "rk", b"no-headers", mandatory=True)
    ch.basic_publish("chx-h", "rk", b"other-header", pika.BasicProperties(headers={"x": 1}),
                     mandatory=True)
    ch.basic_publish("chx-h", "rk", b"with", pika.BasicProperties(headers={"hash-on": "a"}),
                     mandatory=True)
    got = bodies_by_queue(ch, queues)
    assert sorted(b for bodies in got.values() for b in bodies) == [b"with"]
    ch.connection.process_data_events(time_limit=0)
    assert returned == [(312, b"no-headers"), (312, b"other-header")]


def test_hash_property_message_id(ch):
    ch.exchange_declare("chx-p", "x-consistent-hash",
                        arguments={"hash-property": "message_id"})
    queues = [new_queue(ch, "chx-p", "1") for _ in range(2)]
    ids = [str(uuid.UUID(int=i)) for i in range(200)]
    for rep in range(2):
        for i, mid in enumerate(ids):
            ch.basic_publish("chx-p", f"rk-{rep}-{i}", mid.encode(),
                             pika.BasicProperties(message_id=mid))
    ch.basic_publish("chx-p", "rk", b"no-message-id")
    got = bodies_by_queue(ch, queues)
    assert sum(len(b) for b in got.values()) == 400          # the one without an id: dropped
    for bodies in got.values():
        assert 0.30 <= len(bodies) / 400 <= 0.70
        for b in set(bodies):
            assert bodies.count(b) == 2


@pytest.mark.parametrize("prop,make", [
    ("correlation_id", lambda i: pika.BasicProperties(correlation_id=f"c{i % 50}")),
    ("timestamp", lambda i: pika.BasicProperties(timestamp=1_700_000_000 + i % 50)),
])
def test_hash_property_other_supported(ch, prop, make):
    ch.exchange_declare("chx-p", "x-consistent-hash", arguments={"hash-property": prop})
    queues = [new_queue(ch, "chx-p", "1") for _ in range(2)]
    for i in range(100):
        ch.basic_publish("chx-p", f"rk{i}", str(i % 50).encode(), make(i))
    got = bodies_by_queue(ch, queues)
    assert sum(len(b) for b in got.values()) == 100
    assert all(got.values())
    for bodies in got.values():
        for b in set(bodies):
            assert bodies.count(b) == 2


# -- validation -------------------------------------------------------------------------------
def test_hash_header_and_property_together_406(ch):
    e = refused(ch.exchange_declare, "chx", "x-consistent-hash",
                arguments={"hash-header": "h", "hash-property": "message_id"})
    assert (e.reply_code, e.reply_text) == (
        406, "PRECONDITION_FAILED - hash-header and hash-property are mutually exclusive")


def test_unsupported_hash_property_406(ch):
    e = refused(ch.exchange_declare, "chx", "x-consistent-hash",
                arguments={"hash-property": "app_id"})
    assert e.reply_code == 406
    assert e.reply_text.startswith("PRECONDITION_FAILED - Unsupported property: app_id")


def test_unsupported_hash_property_exact_text(ch):
    e = refused(ch.exchange_declare, "chx", "x-consistent-hash",
                arguments={"hash-property": "app_id"})
    assert (e.reply_code, e.reply_text) == (406,
                                            "PRECONDITION_FAILED - Unsupported property: app_id")


@pytest.mark.parametrize("key", ["abc", "", "1.5", "-1"])
def test_invalid_binding_key_406(connect, key):
    conn = connect()
    ch = conn.channel()
    ch.exchange_declare("chx", "x-consistent-hash")
    q = ch.queue_declare("chq").method.queue
    e = refused(ch.queue_bind, q, "chx", key)
    assert e.reply_code == 406
    # No binding was made: a message goes nowhere.
    ch = conn.channel()
    ch.basic_publish("chx", "anything", b"x")
    assert count(ch, q) == 0
    ch.queue_delete(q)


def test_invalid_binding_key_raw_class_method(broker):
    with RawClient(broker.port) as raw:
        raw.handshake()
        raw.open_channel()
        raw.call(1, C.Exchange.Declare(exchange="chx", exchange_type="x-consistent-hash"),
                 C.Exchange.DeclareOk)
        raw.call(1, C.Queue.Declare(queue="chq", exclusive=True), C.Queue.DeclareOk)
        raw.method(1, C.Queue.Bind(queue="chq", exchange="chx", routing_key="x"))
        close = raw.expect(C.Channel.Close)
        assert (close.reply_code, close.class_id, close.method_id) == (406, 50, 20)


def test_non_integer_binding_key_exact_text(ch):
    ch.exchange_declare("chx", "x-consistent-hash")
    q = new_queue(ch)
    e = refused(ch.queue_bind, q, "chx", "abc")
    assert (e.reply_code, e.reply_text) == (
        406, 'PRECONDITION_FAILED - The binding key must be an integer: <<"abc">>')


@pytest.mark.parametrize("key", ["0", "-1"])
def test_binding_key_below_one_406(connect, key):
    ch = connect().channel()
    ch.exchange_declare("chx", "x-consistent-hash")
    q = new_queue(ch)
    e = refused(ch.queue_bind, q, "chx", key)
    assert (e.reply_code, e.reply_text) == (
        406, "PRECONDITION_FAILED - The binding key must be greater than 0")
