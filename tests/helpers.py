"""Small helpers shared by the integration tests (pika on real sockets)."""
import time
import urllib.parse

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker


def connect(broker, **params) -> pika.BlockingConnection:
    """A pika connection to the test broker; keyword arguments set connection parameters."""
    p = pika.URLParameters(broker.url)
    for key, value in params.items():
        setattr(p, key, value)
    return pika.BlockingConnection(p)


def pump(conns, pred, timeout: float = 5.0, what: str = "condition") -> None:
    """Let pika dispatch callbacks on one connection (or a list) until ``pred()`` holds."""
    if not isinstance(conns, (list, tuple)):
        conns = [conns]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        for c in conns:
            c.process_data_events(time_limit=0.01)


def let_time_pass(conn, seconds: float) -> None:
    """Keep the connection serviced while time passes (where the point of a test is time)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        conn.process_data_events(time_limit=min(0.02, max(0.0, end - time.monotonic())))


def count(ch, queue: str, durable: bool = False) -> int:
    """Ready messages in a queue (passive declare)."""
    return ch.queue_declare(queue, passive=True, durable=durable).method.message_count


def drain(ch, queue: str, flags: bool = False, ack: bool = True) -> list:
    """Every ready message of the queue, in order, by basic.get: the bodies, or
    (body, redelivered) pairs with ``flags``. ``ack=False`` leaves them unacked on ``ch``."""
    out = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=ack)
        if method is None:
            return out
        out.append((body, method.redelivered) if flags else body)


def new_queue(ch, exchange: str = "", key: str = "", arguments=None) -> str:
    """A server-named exclusive queue, bound to ``exchange`` with ``key`` when one is given."""
    q = ch.queue_declare("", exclusive=True).method.queue
    if exchange:
        ch.queue_bind(q, exchange, key, arguments=arguments)
    return q


class Recorder:
    """An auto-ack consumer that keeps (method, properties, body) of each delivery, and the
    monotonic time each arrived (``times``)."""

    def __init__(self, ch, queue: str):
        self.ch = ch
        self.got: list = []
        self.times: list = []
        ch.basic_consume(queue, self.on_message, auto_ack=True)

    def on_message(self, ch, method, props, body):
        self.got.append((method, props, body))
        self.times.append(time.monotonic())

    @property
    def bodies(self) -> list:
        return [b for _m, _p, b in self.got]


def dead_queue(conn, exchange: str = "dlx", kind: str = "fanout", queue: str = "dead",
               key: str = "") -> Recorder:
    """A dead-letter exchange with one queue bound to it, consumed by a Recorder on a channel
    of its own."""
    ch = conn.channel()
    ch.exchange_declare(exchange, kind)
    ch.queue_declare(queue)
    ch.queue_bind(queue, exchange, key)
    return Recorder(ch, queue)


def refused(fn, *args, **kw) -> ChannelClosedByBroker:
    """Run a synchronous pika call that the broker must answer with channel.close."""
    with pytest.raises(ChannelClosedByBroker) as info:
        fn(*args, **kw)
    return info.value


def reply(exc) -> tuple:
    return exc.reply_code, exc.reply_text


def rabbit_text(text: str) -> str:
    """RabbitMQ cuts reply texts longer than 255 bytes to 252 bytes and '...'."""
    raw = text.encode()
    return text if len(raw) <= 255 else (raw[:252] + b"...").decode()


def vhost_of(broker) -> str:
    return urllib.parse.unquote(urllib.parse.urlparse(broker.url).path[1:]) or "/"


# -- the broker's own view (read on its loop) -------------------------------------------------
def server_queue(broker, name: str, vhost: str = "/"):
    """The broker's Queue object (or None); only read it through ``broker.call``."""
    return broker.broker.vhosts[vhost].queues.get(name)


def queue_exists(broker, name: str, vhost: str = "/") -> bool:
    return broker.call(lambda: server_queue(broker, name, vhost) is not None)


def ready(broker, name: str, vhost: str = "/") -> int:
    """Ready messages, as the broker counts them."""
    return broker.call(lambda: server_queue(broker, name, vhost).message_count)


def unacked(broker, name: str, vhost: str = "/") -> int:
    """Messages delivered and not yet settled, as the broker counts them."""
    return broker.call(lambda: server_queue(broker, name, vhost).unacked)
