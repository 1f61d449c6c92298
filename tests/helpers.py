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


def drain(ch, queue: str) -> list:
    """Every ready message body in the queue, in order (basic.get, no-ack)."""
    bodies = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def refused(fn, *args, **kw) -> ChannelClosedByBroker:
    """Run a synchronous pika call that the broker must answer with channel.close."""
    with pytest.raises(ChannelClosedByBroker) as info:
        fn(*args, **kw)
    return info.value


def reply(exc) -> tuple:
    return exc.reply_code, exc.reply_text


def vhost_of(broker) -> str:
    return urllib.parse.unquote(urllib.parse.urlparse(broker.url).path[1:]) or "/"
