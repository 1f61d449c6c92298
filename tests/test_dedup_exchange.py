"""The x-message-deduplication exchange (semantics of the rabbitmq-message-deduplication plugin)
over real sockets: a fanout that routes a given x-deduplication-header value once per cache
lifetime (x-cache-ttl argument or per-message header), with a bounded cache (x-cache-size), and
the validation errors (406). The point of it: a producer retrying after a lost confirm does not
create a second copy."""
import time

import pika
import pytest
from pamqp import commands as C
from pika.exceptions import UnroutableError

from tests.rawclient import RawClient
from .helpers import drain, new_queue, refused

SIZE_TEXT = "'x-cache-size' must be an integer greater than 0"
TTL_TEXT = "'x-cache-ttl' must be an integer greater than 0"


# -- helpers ----------------------------------------------------------------------------------
def declare(ch, name: str = "dedup", **args) -> None:
    ch.exchange_declare(name, "x-message-deduplication", arguments=args)


def dedup(value, **headers) -> pika.BasicProperties:
    return pika.BasicProperties(headers={"x-deduplication-header": value, **headers})


def wait_past(deadline: float) -> None:
    """Let a cache TTL run out (time has to pass for this one)."""
    time.sleep(max(0.0, deadline - time.monotonic()))


# -- routing ----------------------------------------------------------------------------------
def test_same_header_value_routed_once(ch):
    declare(ch, **{"x-cache-size": 100})
    q = new_queue(ch, "dedup")
    for body, value in [(b"a1", "a"), (b"b1", "b"), (b"a2", "a"), (b"c1", "c"), (b"b2", "b"),
                        (b"a3", "a")]:
        ch.basic_publish("dedup", "", body, dedup(value))
    assert drain(ch, q) == [b"a1", b"b1", b"c1"]


def test_header_values_compare_by_value_and_type(ch):
    declare(ch, **{"x-cache-size": 100})
    q = new_queue(ch, "dedup")
    for body, value in [(b"int1", 1), (b"int1-again", 1), (b"str1", "1"), (b"str1-again", "1"),
                        (b"big", 2 ** 40), (b"big-again", 2 ** 40)]:
        ch.basic_publish("dedup", "", body, dedup(value))
    assert drain(ch, q) == [b"int1", b"str1", b"big"]


def test_messages_without_the_header_always_routed(ch):
    declare(ch, **{"x-cache-size": 1})
    q = new_queue(ch, "dedup")
    for i in range(3):
        ch.basic_publish("dedup", "", f"plain{i}".encode())
        ch.basic_publish("dedup", "", f"other{i}".encode(),
                         pika.BasicProperties(headers={"something": "else"}))
    assert drain(ch, q) == [b"plain0", b"other0", b"plain1", b"other1", b"plain2", b"other2"]


def test_fanout_semantics_routing_key_ignored(ch):
    declare(ch, **{"x-cache-size": 10})
    q1, q2 = new_queue(ch, "dedup", "one"), new_queue(ch, "dedup", "two")
    ch.basic_publish("dedup", "unrelated-key", b"m", dedup("id-1"))
    ch.basic_publish("dedup", "one", b"m-dup", dedup("id-1"))    # a duplicate for both queues
    ch.basic_publish("dedup", "", b"n", dedup("id-2"))
    assert drain(ch, q1) == [b"m", b"n"]
    assert drain(ch, q2) == [b"m", b"n"]


def test_cache_ttl_argument_lets_the_value_through_again(ch):
    declare(ch, **{"x-cache-size": 100, "x-cache-ttl": 300})
    q = new_queue(ch, "dedup")
    ch.basic_publish("dedup", "", b"first", dedup("id"))
    ch.basic_publish("dedup", "", b"within-ttl", dedup("id"))
    assert drain(ch, q) == [b"first"]
    cached_by = time.monotonic()            # the broker has seen "first" by now
    wait_past(cached_by + 0.35)
    ch.basic_publish("dedup", "", b"after-ttl", dedup("id"))
    ch.basic_publish("dedup", "", b"dup-of-after", dedup("id"))
    assert drain(ch, q) == [b"after-ttl"]


def test_without_ttl_entries_do_not_expire(ch):
    declare(ch, **{"x-cache-size": 100})
    q = new_queue(ch, "dedup")
    ch.basic_publish("dedup", "", b"first", dedup("id"))
    assert drain(ch, q) == [b"first"]
    wait_past(time.monotonic() + 0.3)
    ch.basic_publish("dedup", "", b"later", dedup("id"))
    assert drain(ch, q) == []


def test_per_message_cache_ttl_header(ch):
    declare(ch, **{"x-cache-size": 100})            # no TTL on the exchange
    q = new_queue(ch, "dedup")
    ch.basic_publish("dedup", "", b"short", dedup("s", **{"x-cache-ttl": 200}))
    ch.basic_publish("dedup", "", b"forever", dedup("f"))
    ch.basic_publish("dedup", "", b"short-dup", dedup("s"))
    assert drain(ch, q) == [b"short", b"forever"]
    wait_past(time.monotonic() + 0.25)
    ch.basic_publish("dedup", "", b"short-again", dedup("s"))
    ch.basic_publish("dedup", "", b"forever-dup", dedup("f"))
    assert drain(ch, q) == [b"short-again"]


def test_per_message_ttl_overrides_the_exchange_ttl(ch):
    declare(ch, **{"x-cache-size": 100, "x-cache-ttl": 60_000})
    q = new_queue(ch, "dedup")
    ch.basic_publish("dedup", "", b"m1", dedup("id", **{"x-cache-ttl": 150}))
    assert drain(ch, q) == [b"m1"]
    wait_past(time.monotonic() + 0.2)
    ch.basic_publish("dedup", "", b"m2", dedup("id"))
    assert drain(ch, q) == [b"m2"]


def test_a_duplicate_does_not_extend_the_ttl(ch):
    declare(ch, **{"x-cache-size": 100, "x-cache-ttl": 600})
    q = new_queue(ch, "dedup")
    before = time.monotonic()
    ch.basic_publish("dedup", "", b"m1", dedup("id"))
    assert drain(ch, q) == [b"m1"]
    cached_by = time.monotonic()            # cached between `before` and now
    wait_past(before + 0.2)
    ch.basic_publish("dedup", "", b"dup", dedup("id"))       # dropped; must not re-cache
    assert drain(ch, q) == []
    wait_past(cached_by + 0.65)             # past m1's expiry, before a refreshed one
    ch.basic_publish("dedup", "", b"m2", dedup("id"))
    assert drain(ch, q) == [b"m2"]


def test_cache_size_bound_evicts_the_oldest(ch):
    declare(ch, **{"x-cache-size": 2})
    q = new_queue(ch, "dedup")
    # a, b fill the cache; c evicts a; b is still a duplicate; a is new again (evicting b).
    for value in ["a", "b", "c", "b", "a", "c"]:
        ch.basic_publish("dedup", "", value.encode(), dedup(value))
    assert drain(ch, q) == [b"a", b"b", b"c", b"a"]


def test_cache_is_per_exchange(ch):
    declare(ch, "d1", **{"x-cache-size": 10})
    declare(ch, "d2", **{"x-cache-size": 10})
    q1, q2 = new_queue(ch, "d1"), new_queue(ch, "d2")
    ch.basic_publish("d1", "", b"1", dedup("same"))
    ch.basic_publish("d2", "", b"2", dedup("same"))
    assert (drain(ch, q1), drain(ch, q2)) == ([b"1"], [b"2"])


def test_deleting_the_exchange_forgets_its_cache(ch):
    declare(ch, **{"x-cache-size": 10})
    q = new_queue(ch, "dedup")
    ch.basic_publish("dedup", "", b"before", dedup("id"))
    ch.exchange_delete("dedup")
    declare(ch, **{"x-cache-size": 10})
    ch.queue_bind(q, "dedup")
    ch.basic_publish("dedup", "", b"after", dedup("id"))
    assert drain(ch, q) == [b"before", b"after"]


def test_duplicate_with_mandatory_is_returned(connect):
    """A duplicate is routed nowhere: with mandatory it comes back (basic.return 312)."""
    conn = connect()
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda _c, m, _p, b: returned.append((m.reply_code, b)))
    declare(ch, **{"x-cache-size": 10})
    q = new_queue(ch, "dedup")
    ch.basic_publish("dedup", "", b"m", dedup("id"), mandatory=True)
    ch.basic_publish("dedup", "", b"dup", dedup("id"), mandatory=True)
    assert drain(ch, q) == [b"m"]
    conn.process_data_events(time_limit=0)
    assert returned == [(312, b"dup")]


# -- the point: retry after a lost confirm ----------------------------------------------------
def test_retry_after_lost_confirm_does_not_duplicate(broker, connect):
    ch = connect().channel()
    ch.exchange_declare("orders", "x-message-deduplication", durable=True,
                        arguments={"x-cache-size": 1000})
    ch.queue_declare("orders-q", durable=True)
    ch.queue_bind("orders-q", "orders")
    # Attempt 1: published in confirm mode, but the connection dies before the producer reads
    # the confirm (the socket is closed without reading anything).
    raw = RawClient(broker.port)
    raw.handshake()
    raw.open_channel()
    raw.call(1, C.Confirm.Select(), C.Confirm.SelectOk)
    raw.publish(1, b"order-42", exchange="orders",
                properties=C.Basic.Properties(delivery_mode=2,
                                              headers={"x-deduplication-header": "order-42"}))
    raw.close()
    broker.wait_for(lambda: len(broker.server.protocols) == 1,
                    what="the lost producer's connection to be gone")
    # Attempt 2: the producer retries the same message on a new connection; it is confirmed.
    conn2 = connect()
    ch2 = conn2.channel()
    ch2.confirm_delivery()
    ch2.basic_publish("orders", "", b"order-42",
                      pika.BasicProperties(delivery_mode=2,
                                           headers={"x-deduplication-header": "order-42"}))
    # A retry with mandatory is confirmed too, but comes back as unroutable (a duplicate).
    with pytest.raises(UnroutableError):
        ch2.basic_publish("orders", "", b"order-42", dedup("order-42"), mandatory=True)
    ch2.basic_publish("orders", "", b"order-43",
                      pika.BasicProperties(delivery_mode=2,
                                           headers={"x-deduplication-header": "order-43"}))
    assert drain(ch, "orders-q") == [b"order-42", b"order-43"]
    ch.queue_delete("orders-q")


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [{}, {"x-cache-size": 0}, {"x-cache-size": -5},
                                  {"x-cache-size": "abc"}, {"x-cache-size": True},
                                  {"x-cache-ttl": 100}])
def test_cache_size_required_positive_integer_406(connect, args):
    conn = connect()
    ch = conn.channel()
    e = refused(ch.exchange_declare, "dedup", "x-message-deduplication", arguments=args)
    assert e.reply_code == 406
    assert e.reply_text.startswith("PRECONDITION_FAILED - Missing or invalid argument,")
    assert e.reply_text.endswith(SIZE_TEXT)
    ch = conn.channel()
    assert refused(ch.exchange_declare, "dedup", passive=True).reply_code == 404


@pytest.mark.parametrize("ttl", [0, -1, "abc", True])
def test_cache_ttl_must_be_positive_integer_406(ch, ttl):
    e = refused(ch.exchange_declare, "dedup", "x-message-deduplication",
                arguments={"x-cache-size": 10, "x-cache-ttl": ttl})
    assert e.reply_code == 406
    assert e.reply_text.startswith("PRECONDITION_FAILED - Invalid argument,")
    assert e.reply_text.endswith(TTL_TEXT)


def test_validation_raw_class_method(broker):
    with RawClient(broker.port) as raw:
        raw.handshake()
        raw.open_channel()
        raw.method(1, C.Exchange.Declare(exchange="dedup",
                                         exchange_type="x-message-deduplication"))
        close = raw.expect(C.Channel.Close)
        assert (close.reply_code, close.class_id, close.method_id) == (406, 40, 10)


def test_numeric_string_cache_arguments_accepted(ch):
    declare(ch, **{"x-cache-size": "2", "x-cache-ttl": "60000"})
    q = new_queue(ch, "dedup")
    for value in ["a", "a", "b"]:
        ch.basic_publish("dedup", "", value.encode(), dedup(value))
    assert drain(ch, q) == [b"a", b"b"]


def test_invalid_cache_persistence_406(ch):
    e = refused(ch.exchange_declare, "dedup", "x-message-deduplication",
                arguments={"x-cache-size": 10, "x-cache-persistence": "tape"})
    assert e.reply_code == 406
    assert e.reply_text.endswith("'x-cache-persistence' must be either 'disk' or 'memory'")


@pytest.mark.parametrize("persistence", ["disk", "memory"])
def test_cache_persistence_values_accepted(ch, persistence):
    declare(ch, **{"x-cache-size": 10, "x-cache-persistence": persistence})
    q = new_queue(ch, "dedup")
    ch.basic_publish("dedup", "", b"1", dedup("x"))
    ch.basic_publish("dedup", "", b"2", dedup("x"))
    assert drain(ch, q) == [b"1"]
