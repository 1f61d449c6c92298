"""The x-delayed-message exchange at the broker layer with the injected ManualClock: messages are
released in due order, exactly at their due time and not a millisecond before, with no sleeping
(tests/test_delayed.py keeps the real-client checks: confirms, restarts, clients)."""
import pytest

from amqpd.broker.clock import ManualClock
from amqpd.broker.publish import ACCEPTED
from amqpd.wire.tables import SignedInt

from .stubs import bodies, declare_exchange, declare_queue, make_broker, message


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def vh(clock):
    return make_broker(clock).vhosts["/"]


def at(clock, t0: float, ms: int) -> None:
    """Move the clock to exactly t0 + ms / 1000.0 (the float the exchange computed)."""
    clock.advance((t0 + ms / 1000.0) - clock.time())


def delayed(vh, kind: str = "direct", name: str = "dx"):
    return declare_exchange(vh, name, "x-delayed-message", **{"x-delayed-type": kind})


def send(vh, ex, body: bytes, key: str = "k", delay=None):
    headers = {} if delay is None else {"x-delay": delay}
    return vh.publish(ex, message(body, key, ex.name, headers=headers))


def test_released_in_due_order_exactly_at_the_due_time(clock, vh):
    ex = delayed(vh)
    q = declare_queue(vh, "q")
    vh.bind(ex, q, "k", {})
    t0 = clock.time()
    for body, delay in [(b"300", 300), (b"100a", 100), (b"200", 200), (b"100b", 100)]:
        assert send(vh, ex, body, delay=delay) is ACCEPTED
    assert q.message_count == 0
    at(clock, t0, 99)
    assert q.message_count == 0
    at(clock, t0, 100)
    assert bodies(q) == [b"100a", b"100b"]              # same due time: publish order
    at(clock, t0, 199)
    assert q.message_count == 0
    at(clock, t0, 200)
    assert bodies(q) == [b"200"]
    at(clock, t0, 299)
    assert q.message_count == 0
    at(clock, t0, 300)
    assert bodies(q) == [b"300"]
    assert ex.pending == []


def test_the_released_message_carries_x_delay_negated(clock, vh):
    ex = delayed(vh)
    q = declare_queue(vh, "q")
    vh.bind(ex, q, "k", {})
    send(vh, ex, b"m", delay=250)
    clock.advance(0.25)
    entry = q.take()
    assert entry.message.headers["x-delay"] == -250
    assert isinstance(entry.message.headers["x-delay"], SignedInt)
    assert entry.message.routing_key == "k" and entry.message.exchange == "dx"


@pytest.mark.parametrize("delay", [None, 0, -5, 2 ** 32], ids=["none", "zero", "negative",
                                                                  "over-max"])
def test_no_positive_delay_routes_at_once(clock, vh, delay):
    ex = delayed(vh)
    q = declare_queue(vh, "q")
    vh.bind(ex, q, "k", {})
    send(vh, ex, b"now", delay=delay)
    assert bodies(q) == [b"now"]
    assert ex.pending == []


def test_a_numeric_string_delay_is_milliseconds(clock, vh):
    ex = delayed(vh)
    q = declare_queue(vh, "q")
    vh.bind(ex, q, "k", {})
    t0 = clock.time()
    send(vh, ex, b"m", delay="150")
    at(clock, t0, 149)
    assert q.message_count == 0
    at(clock, t0, 150)
    assert bodies(q) == [b"m"]


def test_routing_happens_at_release_with_the_bindings_of_then(clock, vh):
    ex = delayed(vh, "topic")
    early = declare_queue(vh, "early")
    late = declare_queue(vh, "late")
    vh.bind(ex, early, "orders.*", {})
    send(vh, ex, b"m", key="orders.new", delay=100)
    vh.unbind(ex, early, "orders.*", {})
    vh.bind(ex, late, "orders.#", {})
    clock.advance(0.1)
    assert (early.message_count, bodies(late)) == (0, [b"m"])


def test_a_held_message_is_accepted_even_with_nothing_bound(clock, vh):
    ex = delayed(vh)
    assert send(vh, ex, b"m", delay=100) is ACCEPTED    # unroutable only once released
    clock.advance(0.1)
    assert ex.pending == []


def test_deleting_the_exchange_drops_what_it_holds(clock, vh):
    ex = delayed(vh)
    q = declare_queue(vh, "q")
    vh.bind(ex, q, "k", {})
    send(vh, ex, b"m", delay=100)
    vh.delete_exchange("dx", if_unused=False)
    clock.advance(1)
    assert q.message_count == 0
    # a new exchange of the same name does not inherit the old one's messages
    ex2 = delayed(vh)
    vh.bind(ex2, q, "k", {})
    clock.advance(1)
    assert q.message_count == 0


@pytest.mark.parametrize("delay", [None, 100], ids=["at-once", "delayed"])
def test_headers_routing_type_routes_by_headers(clock, vh, delay):
    ex = delayed(vh, "headers")
    q = declare_queue(vh, "q")
    vh.bind(ex, q, "", {"x-match": "all", "h": "v"})
    headers = {"h": "v"} if delay is None else {"h": "v", "x-delay": delay}
    vh.publish(ex, message(b"m", "", "dx", headers=headers))
    clock.advance(0.1)
    assert bodies(q) == [b"m"]
