"""A backlog far beyond a tiny RAM window (storage.queue_window), with a real broker and pika:
filled with confirms, only the window in RAM, restarted, drained in order with the redelivered
flags right; basic.get and consumers both read through the paged part."""
import time

import pika
import pytest

from .brokerthread import BrokerThread

PERSISTENT = pika.BasicProperties(delivery_mode=2)
WINDOW = {"storage": {"queue_window": {"messages": 16, "bytes": 64 * 1024}}}
N = 3000


def body(i: int) -> bytes:
    return b"msg-%06d-" % i + b"x" * 200


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "data")


def start(data_dir) -> BrokerThread:
    return BrokerThread(data_dir=data_dir, **WINDOW).start()


def fill(url, n=N):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare("backlog", durable=True)
    ch.confirm_delivery()
    for i in range(n):
        ch.basic_publish("", "backlog", body(i), PERSISTENT)
    conn.close()


def state(b):
    def look():
        q = b.broker.vhosts["/"].queues["backlog"]
        return q.message_count, len(q.ready) + len(q.ready.back), q.pager.count
    return b.call(look)


def test_backlog_beyond_the_window_restarts_and_drains_in_order(data_dir):
    b = start(data_dir)
    try:
        fill(b.url)
        count, in_ram, paged = state(b)
        assert count == N and in_ram <= 16 and paged == N - in_ram
        # take 10 without acking, then drop the connection: they go back, redelivered
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        got = [ch.basic_get("backlog") for _ in range(10)]
        assert [g[2] for g in got] == [body(i) for i in range(10)]
        conn.close()
        b.wait_for(lambda: b.broker.vhosts["/"].queues["backlog"].message_count == N,
                   what="requeue")
    finally:
        b.stop()
    b = start(data_dir)
    try:
        count, in_ram, paged = state(b)
        assert count == N and in_ram == 0 and paged == N     # read in when first consumed
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        ch.basic_qos(prefetch_count=50)
        seen = []
        for method, _props, payload in ch.consume("backlog", inactivity_timeout=5):
            assert method is not None, f"stalled after {len(seen)} messages"
            seen.append((payload, method.redelivered))
            ch.basic_ack(method.delivery_tag)
            if len(seen) == N:
                break
        ch.cancel()
        assert [p for p, _ in seen] == [body(i) for i in range(N)]
        assert [r for _, r in seen] == [True] * 10 + [False] * (N - 10)
        assert ch.queue_declare("backlog", durable=True).method.message_count == 0
        conn.close()
    finally:
        b.stop()


def test_consumers_keep_up_with_publishers_through_the_paged_part(data_dir):
    """Publishing and consuming at once, the window small: every message once, in order."""
    b = start(data_dir)
    try:
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        pub = conn.channel()
        pub.queue_declare("backlog", durable=True)
        pub.confirm_delivery()
        sub = conn.channel()
        sub.basic_qos(prefetch_count=50)
        seen = []

        def on_message(ch, method, _props, payload):
            seen.append(payload)
            ch.basic_ack(method.delivery_tag)

        sub.basic_consume("backlog", on_message)
        for i in range(1500):
            pub.basic_publish("", "backlog", body(i), PERSISTENT)
        deadline = time.monotonic() + 60
        while len(seen) < 1500 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.5)
        assert seen == [body(i) for i in range(1500)]
        conn.close()
    finally:
        b.stop()


def test_purge_and_delete_of_a_paged_queue(data_dir):
    b = start(data_dir)
    try:
        fill(b.url, 2000)
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        assert ch.queue_purge("backlog").method.message_count == 2000
        ch.basic_publish("", "backlog", b"after", PERSISTENT)
        assert ch.basic_get("backlog", auto_ack=True)[2] == b"after"
        fill(b.url, 500)
        assert ch.queue_delete("backlog").method.message_count == 500
        conn.close()
    finally:
        b.stop()
    b = start(data_dir)
    try:
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        assert ch.queue_declare("backlog", durable=True).method.message_count == 0
        conn.close()
    finally:
        b.stop()
