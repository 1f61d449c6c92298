"""Where a transient backlog beyond a queue's RAM window lives, with a real broker and pika:
in RAM while the process's memory is below resources.memory_high_watermark_paging_ratio of the
watermark (RabbitMQ's default 0.5), in the queue's scratch log when it is above (ratio 0: always).
Either way every message comes back once, in order."""
import os

import pika
import pytest

from .brokerthread import BrokerThread

WINDOW = {"queue_window": {"messages": 16, "bytes": 64 * 1024}}
N = 2000


def body(i: int) -> bytes:
    return b"t-%06d-" % i + b"x" * 100


def scratch_segments(data_dir) -> int:
    root = os.path.join(data_dir, "scratch")
    return sum(len([n for n in files if n.endswith(".seg")]) for _, _, files in os.walk(root))


def fill_and_drain(b) -> list:
    conn = pika.BlockingConnection(pika.URLParameters(b.url))
    ch = conn.channel()
    ch.queue_declare("transient", durable=False)
    ch.confirm_delivery()
    for i in range(N):
        ch.basic_publish("", "transient", body(i))
    segments = b.call(lambda: scratch_segments(b.data_dir))
    paged = b.call(lambda: b.broker.vhosts["/"].queues["transient"].pager.count)
    got = []
    for method, _props, data in ch.consume("transient", inactivity_timeout=5):
        assert method is not None, f"stalled after {len(got)} messages"
        ch.basic_ack(method.delivery_tag)
        got.append(data)
        if len(got) == N:
            break
    conn.close()
    assert got == [body(i) for i in range(N)]
    return segments, paged


@pytest.mark.parametrize("ratio, spills", [(0.5, False), (0, True)])
def test_transient_backlog_pages_out_only_under_memory_pressure(tmp_path, ratio, spills):
    b = BrokerThread(data_dir=str(tmp_path / "data"), storage=WINDOW,
                     resources={"memory_high_watermark_paging_ratio": ratio}).start()
    try:
        segments, paged = fill_and_drain(b)
        if spills:
            assert segments > 0 and paged > 0
        else:
            assert segments == 0 and paged == 0
    finally:
        b.stop()
