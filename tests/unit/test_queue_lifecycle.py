"""The queue lifecycle at the broker layer, with the injected ManualClock: no sockets, no
sleeping. Message TTL and x-expires are exact to the millisecond here (the socket tests in
tests/test_ttl.py etc. keep one real-client check per feature); limits, dead-lettering,
priorities, single active consumer and delivery limits assert exact outcomes.

Messages enter through ``VHost.publish`` (the one entry point) or, where consumers matter, through
the stub ``Client`` (a real Connection and Channel over the same broker)."""
import datetime

import pytest
from pamqp import body as pamqp_body, commands as C, header as pamqp_header

from amqpd.broker.clock import ManualClock
from amqpd.broker.publish import ACCEPTED, DUPLICATE, REJECTED, UNROUTABLE

from .stubs import Client, bodies, declare_exchange, declare_queue, make_broker, message


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def broker(clock):
    return make_broker(clock)


@pytest.fixture
def vh(broker):
    return broker.vhosts["/"]


def at(clock, t0: float, ms: int) -> None:
    """Move the clock to exactly ``ms`` milliseconds after ``t0`` (where a deadline set at t0
    falls: t0 + ms / 1000.0 is the same float the broker computed)."""
    clock.advance((t0 + ms / 1000.0) - clock.time())


def send(vh, body: bytes, routing_key: str, exchange: str = "", **props):
    return vh.publish(vh.exchange(exchange), message(body, routing_key, exchange, **props))


def dead_letters(vh, name: str = "dead", exchange: str = "dlx"):
    """A fanout dead-letter exchange with one queue bound to it."""
    ex = declare_exchange(vh, exchange, "fanout")
    q = declare_queue(vh, name)
    vh.bind(ex, q, "", {})
    return q


def taken(q) -> list:
    """Every ready entry (settled), for their headers: [(body, headers)]."""
    out = []
    while (entry := q.take()) is not None:
        q.settle(entry)
        out.append((entry.message.body, entry.message.headers or {}))
    return out


DLX = {"x-dead-letter-exchange": "dlx"}


# -- message TTL ---------------------------------------------------------------------------------
def test_queue_ttl_expires_exactly_at_the_deadline_and_dead_letters(clock, vh):
    dead = dead_letters(vh)
    q = declare_queue(vh, "q", **{"x-message-ttl": 250}, **DLX)
    t0 = clock.time()
    assert send(vh, b"m", "q") is ACCEPTED
    at(clock, t0, 249)
    assert (q.message_count, dead.message_count) == (1, 0)
    at(clock, t0, 250)
    assert (q.message_count, dead.message_count) == (0, 1)
    ((body, headers),) = taken(dead)
    assert body == b"m"
    (death,) = headers["x-death"]
    assert (death["reason"], death["queue"], death["count"]) == ("expired", "q", 1)
    assert (death["exchange"], death["routing-keys"]) == ("", ["q"])
    assert "original-expiration" not in death          # a queue TTL, not the message's
    assert death["time"] == datetime.datetime.fromtimestamp(int(clock.wall()),
                                                            datetime.timezone.utc)
    assert (headers["x-first-death-reason"], headers["x-first-death-queue"]) == ("expired", "q")
    assert (headers["x-last-death-reason"], headers["x-last-death-queue"]) == ("expired", "q")


def test_per_message_ttl_and_the_expiration_removed_from_the_dead_copy(clock, vh):
    dead = dead_letters(vh)
    q = declare_queue(vh, "q", **DLX)
    t0 = clock.time()
    send(vh, b"short", "q", expiration="100")
    send(vh, b"none", "q")
    at(clock, t0, 99)
    assert q.message_count == 2
    at(clock, t0, 100)
    assert q.message_count == 1
    entry = dead.take()
    assert entry.message.body == b"short"
    assert entry.message.properties.expiration is None
    assert entry.message.headers["x-death"][0]["original-expiration"] == "100"
    dead.settle(entry)
    clock.advance(3600)
    assert bodies(q) == [b"none"]                      # no TTL: never expires


def test_the_shorter_of_message_and_queue_ttl_wins(clock, vh):
    q = declare_queue(vh, "q", **{"x-message-ttl": 200})
    t0 = clock.time()
    send(vh, b"message-50", "q", expiration="50")
    send(vh, b"queue-200", "q", expiration="5000")
    at(clock, t0, 50)
    assert q.message_count == 1
    at(clock, t0, 199)
    assert q.message_count == 1
    at(clock, t0, 200)
    assert q.message_count == 0


def test_expiry_wherever_the_message_sits(clock, vh):
    """A short-lived message behind a long-lived head expires on time (RabbitMQ would wait for
    it to reach the head)."""
    dead = dead_letters(vh)
    q = declare_queue(vh, "q", **DLX)
    t0 = clock.time()
    send(vh, b"head", "q", expiration="10000")
    send(vh, b"middle", "q", expiration="100")
    send(vh, b"tail", "q")
    at(clock, t0, 100)
    assert q.message_count == 2
    assert bodies(dead) == [b"middle"]
    assert bodies(q) == [b"head", b"tail"]


def test_ttl_zero_without_a_consumer_is_dead_at_once(clock, vh):
    dead = dead_letters(vh)
    q = declare_queue(vh, "q", **DLX)
    send(vh, b"now-or-never", "q", expiration="0")
    assert q.message_count == 0                         # no clock movement needed
    ((body, headers),) = taken(dead)
    assert body == b"now-or-never" and headers["x-death"][0]["reason"] == "expired"


def test_ttl_zero_with_a_waiting_consumer_is_delivered(broker, vh):
    c = consumer_client(broker, "q", arguments={"x-message-ttl": 0, **DLX})
    dead = dead_letters(vh)
    c.publish(1, b"caught", routing_key="q")
    assert [d[3] for d in deliveries(c)] == [b"caught"]
    assert dead.message_count == 0


def test_ttl_does_not_expire_an_unacked_message_but_its_requeue_does(clock, vh):
    dead = dead_letters(vh)
    q = declare_queue(vh, "q", **{"x-message-ttl": 100}, **DLX)
    t0 = clock.time()
    send(vh, b"held", "q")
    entry = q.take()
    at(clock, t0, 500)
    assert dead.message_count == 0 and q.unacked == 1   # out with a consumer: not expired
    q.requeue(entry)
    assert (q.message_count, q.unacked) == (0, 0)
    ((body, headers),) = taken(dead)
    assert body == b"held" and headers["x-death"][0]["reason"] == "expired"


def test_a_requeue_before_the_deadline_does_not_extend_it(clock, vh):
    q = declare_queue(vh, "q", **{"x-message-ttl": 100})
    t0 = clock.time()
    send(vh, b"m", "q")
    entry = q.take()
    at(clock, t0, 60)
    q.requeue(entry)
    assert q.message_count == 1
    at(clock, t0, 99)
    assert q.message_count == 1
    at(clock, t0, 100)
    assert q.message_count == 0


# -- x-expires -----------------------------------------------------------------------------------
def test_unused_queue_deleted_exactly_at_x_expires(clock, vh):
    declare_queue(vh, "q", **{"x-expires": 1000})
    t0 = clock.time()
    at(clock, t0, 999)
    assert "q" in vh.queues
    at(clock, t0, 1000)
    assert "q" not in vh.queues


def test_get_and_redeclare_reset_x_expires(clock, vh):
    q = declare_queue(vh, "q", **{"x-expires": 1000})
    t0 = clock.time()
    at(clock, t0, 800)
    assert q.take() is None                             # a basic.get is a use
    at(clock, t0, 1600)
    declare_queue(vh, "q", **{"x-expires": 1000})       # so is a redeclare
    at(clock, t0, 2599)
    assert "q" in vh.queues
    at(clock, t0, 2600)
    assert "q" not in vh.queues and q.deleted


def test_a_consumed_queue_does_not_expire_until_its_consumer_leaves(clock, broker, vh):
    c = consumer_client(broker, "q", arguments={"x-expires": 1000})
    clock.advance(60)
    assert "q" in vh.queues
    t0 = clock.time()
    c.send_method(1, C.Basic.Cancel(consumer_tag="c1"))
    assert isinstance(c.expect_one(C.Basic.CancelOk), C.Basic.CancelOk)
    at(clock, t0, 999)
    assert "q" in vh.queues
    at(clock, t0, 1000)
    assert "q" not in vh.queues


# -- length limits -------------------------------------------------------------------------------
def test_max_length_drop_head_dead_letters_the_oldest(vh):
    dead = dead_letters(vh)
    q = declare_queue(vh, "q", **{"x-max-length": 3}, **DLX)
    for i in range(5):
        assert send(vh, b"m%d" % i, "q") is ACCEPTED
    assert q.message_count == 3
    got = taken(dead)
    assert [b for b, _ in got] == [b"m0", b"m1"]
    assert [h["x-death"][0]["reason"] for _, h in got] == ["maxlen", "maxlen"]
    assert bodies(q) == [b"m2", b"m3", b"m4"]


def test_max_length_bytes_drop_head_counts_body_bytes(vh):
    dead = dead_letters(vh)
    q = declare_queue(vh, "q", **{"x-max-length-bytes": 10}, **DLX)
    for body in (b"aaaa", b"bbbb", b"cc", b"dddddd"):
        send(vh, body, "q")
    # 4 + 4 + 2 = 10 fits; + 6 = 16 bytes: the oldest go until 8 bytes are left
    assert bodies(dead) == [b"aaaa", b"bbbb"]
    assert bodies(q) == [b"cc", b"dddddd"]


def test_reject_publish_refuses_the_newest_without_dead_lettering(vh):
    dead = dead_letters(vh)
    q = declare_queue(vh, "q", **{"x-max-length": 2, "x-overflow": "reject-publish"}, **DLX)
    assert [send(vh, b"m%d" % i, "q") for i in range(4)] == [ACCEPTED, ACCEPTED, REJECTED,
                                                              REJECTED]
    assert dead.message_count == 0
    assert bodies(q) == [b"m0", b"m1"]
    assert send(vh, b"m4", "q") is ACCEPTED             # room again


def test_reject_publish_dlx_refuses_and_dead_letters(vh):
    dead = dead_letters(vh)
    q = declare_queue(vh, "q", **{"x-max-length-bytes": 4,
                                  "x-overflow": "reject-publish-dlx"}, **DLX)
    assert send(vh, b"1234", "q") is ACCEPTED
    assert send(vh, b"5", "q") is REJECTED
    ((body, headers),) = taken(dead)
    assert body == b"5"
    assert (headers["x-death"][0]["reason"], headers["x-death"][0]["queue"]) == ("maxlen", "q")
    assert bodies(q) == [b"1234"]


def test_unacked_messages_do_not_count_toward_the_limit(vh):
    q = declare_queue(vh, "q", **{"x-max-length": 2, "x-overflow": "reject-publish"})
    send(vh, b"a", "q")
    send(vh, b"b", "q")
    held = [q.take(), q.take()]
    assert send(vh, b"c", "q") is ACCEPTED
    assert send(vh, b"d", "q") is ACCEPTED
    assert send(vh, b"e", "q") is REJECTED
    for entry in held:                                  # back over the limit: requeue keeps them
        q.requeue(entry)
    assert bodies(q) == [b"a", b"b", b"c", b"d"]


# -- dead-lettering ------------------------------------------------------------------------------
def test_rejected_message_dead_lettered_with_its_history(clock, vh):
    dead = dead_letters(vh)
    src = declare_exchange(vh, "src", "topic")
    q = declare_queue(vh, "work", **DLX)
    vh.bind(src, q, "orders.#", {})
    vh.publish(src, message(b"order", "orders.new", "src", headers={"keep": "me"}))
    q.reject(q.take())
    ((body, headers),) = taken(dead)
    assert (body, headers["keep"]) == (b"order", "me")
    (death,) = headers["x-death"]
    assert (death["reason"], death["queue"], death["count"]) == ("rejected", "work", 1)
    assert (death["exchange"], death["routing-keys"]) == ("src", ["orders.new"])
    assert headers["x-first-death-exchange"] == headers["x-last-death-exchange"] == "src"


def test_dead_letter_routing_key_replaces_the_routing_key(vh):
    dlx = declare_exchange(vh, "dlx", "direct")
    parked = declare_queue(vh, "parked")
    other = declare_queue(vh, "other")
    vh.bind(dlx, parked, "parking", {})
    vh.bind(dlx, other, "work", {})
    q = declare_queue(vh, "work", **DLX, **{"x-dead-letter-routing-key": "parking"})
    send(vh, b"m", "work")
    q.reject(q.take())
    assert other.message_count == 0
    entry = parked.take()
    assert entry.message.routing_key == "parking"
    assert entry.message.headers["x-death"][0]["routing-keys"] == ["work"]


def test_repeated_rejections_count_up_in_one_x_death_entry(vh):
    """A queue that dead-letters into itself: a rejection is a consumer's decision, so each
    round is allowed and counted."""
    q = declare_queue(vh, "retry", **{"x-dead-letter-exchange": "",
                                      "x-dead-letter-routing-key": "retry"})
    send(vh, b"job", "retry")
    for _ in range(3):
        q.reject(q.take())
    ((body, headers),) = taken(q)
    (death,) = headers["x-death"]
    assert (body, death["reason"], death["count"]) == (b"job", "rejected", 3)


def test_an_expiry_cycle_is_dropped(clock, vh):
    """ttl -> dead-letter back into the same queue without a rejection: a cycle, dropped."""
    q = declare_queue(vh, "loop", **{"x-message-ttl": 10, "x-dead-letter-exchange": "",
                                     "x-dead-letter-routing-key": "loop"})
    send(vh, b"m", "loop")
    clock.advance(0.010)
    assert q.message_count == 0                         # expired once, then the cycle broke
    clock.advance(10)
    assert q.message_count == 0 and clock.pending() == 0


def test_a_missing_dead_letter_exchange_drops_the_message(vh):
    q = declare_queue(vh, "q", **{"x-dead-letter-exchange": "not-there"})
    send(vh, b"m", "q")
    q.reject(q.take())
    assert (q.message_count, q.unacked) == (0, 0)
    assert all(x.message_count == 0 for x in vh.queues.values())


# -- priorities ----------------------------------------------------------------------------------
def test_priority_order_fifo_within_a_priority_and_capped_at_the_maximum(vh):
    q = declare_queue(vh, "pq", **{"x-max-priority": 5})
    for priority, body in [(1, b"a1"), (5, b"b1"), (1, b"a2"), (9, b"c1"), (None, b"z1"),
                           (5, b"b2"), (0, b"z2")]:
        props = {} if priority is None else {"priority": priority}
        send(vh, body, "pq", **props)
    assert bodies(q) == [b"b1", b"c1", b"b2", b"a1", b"a2", b"z1", b"z2"]


def test_a_requeued_message_returns_ahead_of_its_priority(vh):
    q = declare_queue(vh, "pq", **{"x-max-priority": 3})
    send(vh, b"low", "pq", priority=1)
    send(vh, b"high1", "pq", priority=3)
    send(vh, b"high2", "pq", priority=3)
    first = q.take()
    assert first.message.body == b"high1"
    q.requeue(first)
    got = []
    while (entry := q.take()) is not None:
        got.append((entry.message.body, entry.redelivered))
        q.settle(entry)
    assert got == [(b"high1", True), (b"high2", False), (b"low", False)]


# -- delivery limit (quorum queues) ---------------------------------------------------------------
def test_delivery_limit_dead_letters_after_the_limit_with_a_delivery_count(vh):
    dead = dead_letters(vh)
    q = declare_queue(vh, "qq", durable=True, **{"x-queue-type": "quorum",
                                                 "x-delivery-limit": 2}, **DLX)
    send(vh, b"poison", "qq")
    counts = []
    for _ in range(3):
        entry = q.take()
        counts.append((entry.message.headers or {}).get("x-delivery-count"))
        q.requeue(entry)
    assert counts == [None, 1, 2]
    assert (q.message_count, q.unacked) == (0, 0)
    ((body, headers),) = taken(dead)
    assert body == b"poison"
    assert headers["x-death"][0]["reason"] == "delivery_limit"
    assert "x-delivery-count" not in headers


# -- consumers over a stub connection -------------------------------------------------------------
def consumer_client(broker, queue: str, arguments=None, tag: str = "c1", prefetch: int = 0,
                    declare: bool = True) -> Client:
    c = Client(broker)
    c.handshake()
    c.open_channel(1)
    if declare:
        c.send_method(1, C.Queue.Declare(queue=queue, arguments=arguments or {},
                                         durable=bool(arguments and "x-queue-type" in arguments)))
        c.expect_one(C.Queue.DeclareOk)
    if prefetch:
        c.send_method(1, C.Basic.Qos(prefetch_count=prefetch))
        c.expect_one(C.Basic.QosOk)
    c.send_method(1, C.Basic.Consume(queue=queue, consumer_tag=tag))
    frames = c.methods()
    assert isinstance(frames[0][1], C.Basic.ConsumeOk), frames
    return c


def deliveries(c: Client) -> list:
    """The deliveries in the client's output: [(consumer tag, delivery tag, redelivered, body)]."""
    out = []
    for _ch, frame in c.methods():
        if isinstance(frame, C.Basic.Deliver):
            out.append([frame.consumer_tag, frame.delivery_tag, frame.redelivered, b""])
        elif isinstance(frame, pamqp_body.ContentBody):
            out[-1][3] += frame.value
        else:
            assert isinstance(frame, pamqp_header.ContentHeader), frame
    return [tuple(d) for d in out]


def test_single_active_consumer_hands_over_after_the_first_settles(broker, vh):
    sac = {"x-single-active-consumer": True}
    first = consumer_client(broker, "sac", sac, tag="first", prefetch=2)
    second = consumer_client(broker, "sac", sac, tag="second", declare=False)
    for i in range(4):
        first.publish(1, b"m%d" % i, routing_key="sac")
    assert [(d[0], d[3]) for d in deliveries(first)] == [("first", b"m0"), ("first", b"m1")]
    assert deliveries(second) == []
    first.send_method(1, C.Basic.Cancel(consumer_tag="first"))
    first.expect_one(C.Basic.CancelOk)
    assert deliveries(second) == []                 # m0 and m1 are still held by the first
    first.send_method(1, C.Basic.Nack(delivery_tag=2, multiple=True, requeue=True))
    assert deliveries(first) == []
    assert [(d[0], d[2], d[3]) for d in deliveries(second)] == [
        ("second", True, b"m0"), ("second", True, b"m1"), ("second", False, b"m2"),
        ("second", False, b"m3")]
    assert vh.queues["sac"].message_count == 0


# -- deduplication -------------------------------------------------------------------------------
def test_queue_deduplication_until_the_message_leaves(vh):
    q = declare_queue(vh, "dq", **{"x-message-deduplication": True})
    dup = {"headers": {"x-deduplication-header": "id-1"}}
    assert q.enqueue(message(b"first", "dq", **dup)) is ACCEPTED
    assert q.enqueue(message(b"again", "dq", **dup)) is DUPLICATE
    assert q.enqueue(message(b"plain", "dq")) is ACCEPTED     # no id: never a duplicate
    assert q.message_count == 2
    entry = q.take()
    assert entry.message.body == b"first"
    assert q.enqueue(message(b"while-unacked", "dq", **dup)) is DUPLICATE
    q.settle(entry)
    assert send(vh, b"after-ack", "dq", **dup) is ACCEPTED
    assert bodies(q) == [b"plain", b"after-ack"]


def test_publish_reports_duplicate_when_its_only_queue_dropped_it(vh):
    declare_queue(vh, "dq", **{"x-message-deduplication": True})
    dup = {"headers": {"x-deduplication-header": "id-1"}}
    assert send(vh, b"first", "dq", **dup) is ACCEPTED
    assert send(vh, b"again", "dq", **dup) is DUPLICATE


def test_deduplication_exchange_forgets_an_id_after_its_cache_ttl(clock, vh):
    ex = declare_exchange(vh, "dx", "x-message-deduplication",
                          **{"x-cache-size": 10, "x-cache-ttl": 500})
    q = declare_queue(vh, "q")
    vh.bind(ex, q, "", {})
    t0 = clock.time()

    def pub(body):
        return vh.publish(ex, message(body, "", "dx",
                                      headers={"x-deduplication-header": "k"}))
    assert pub(b"1") is ACCEPTED
    at(clock, t0, 499)
    assert pub(b"2") is UNROUTABLE
    at(clock, t0, 501)
    assert pub(b"3") is ACCEPTED
    assert bodies(q) == [b"1", b"3"]
