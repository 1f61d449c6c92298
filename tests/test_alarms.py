"""Resource alarms: publishers get connection.blocked and are no longer read from, consumers keep
draining, connection.unblocked once the alarm clears; the real memory watermark holds a fast
publisher back instead of letting the broker grow without bound."""
import asyncio
import os
import threading
import time

import pika
import pytest
from pamqp import commands as C, frame as pamqp_frame, header as pamqp_header
from pamqp import body as pamqp_body
from pamqp.exceptions import UnmarshalingException

from interop.process import AmqpdProcess
from tests.brokerthread import BrokerThread
from tests.rawclient import PROTOCOL_HEADER, RawClient
from tests.helpers import pump, ready

BLOCKING = {"connection.blocked": True, "authentication_failure_close": True}


def raw(port, capabilities=BLOCKING) -> RawClient:
    c = RawClient(port, timeout=3)
    c.handshake(capabilities=capabilities)
    c.open_channel(1)
    return c


def no_frame(c: RawClient, wait: float = 0.3) -> bool:
    """Nothing arrives for ``wait`` seconds (the only way to show something does not happen)."""
    try:
        c.recv(wait)
    except (TimeoutError, OSError):
        return True
    return False


def test_alarm_blocks_publishers_and_lets_consumers_drain(make_broker):
    b = make_broker(resources={"check_interval": 0})     # alarms set by hand below
    setup = pika.BlockingConnection(pika.URLParameters(b.url))
    setup.channel().queue_declare("work")
    pub, consumer, idle = raw(b.port), raw(b.port), raw(b.port)
    idle.publish(1, b"before the alarm", routing_key="work")   # published, then went quiet
    consumer.method(1, C.Basic.Consume(queue="work", no_ack=True, consumer_tag="c"))
    consumer.expect(C.Basic.ConsumeOk)
    assert consumer.expect(C.Basic.Deliver).delivery_tag == 1
    consumer.recv(), consumer.recv()                    # header, body

    b.call(b.server.set_alarms, {"memory"})
    pub.publish(1, b"first", routing_key="work")        # RabbitMQ blocks on a publish ...
    blocked = pub.expect(C.Connection.Blocked)
    assert blocked.reason == "low on memory"
    consumer.expect(C.Basic.Deliver)                    # ... and that publish goes through
    consumer.recv(), consumer.recv()
    for i in range(20):
        pub.publish(1, b"held %d" % i, routing_key="work")
    assert no_frame(consumer)                           # not read while blocked
    assert ready(b, "work") == 0
    # a consumer-only connection works normally, and so does one that has not published
    consumer.method(1, C.Basic.Qos(prefetch_count=0))
    consumer.expect(C.Basic.QosOk)
    assert no_frame(idle, 0.05)

    b.call(b.server.set_alarms, set())
    pub.expect(C.Connection.Unblocked)
    bodies = []
    for _ in range(20):
        consumer.expect(C.Basic.Deliver)
        consumer.recv()
        bodies.append(consumer.recv()[1].value)
    assert bodies == [b"held %d" % i for i in range(20)]
    assert no_frame(idle, 0.05)                         # never blocked, never unblocked
    for c in (pub, consumer, idle):
        c.close()
    setup.close()


def test_clients_without_the_capability_are_paused_silently(make_broker):
    b = make_broker(resources={"check_interval": 0})
    b.call(b.server.set_alarms, {"disk"})
    c = raw(b.port, capabilities={})
    c.method(1, C.Queue.Declare(queue="q"))             # not a publish: answered
    c.expect(C.Queue.DeclareOk)
    c.publish(1, b"x", routing_key="q")
    c.method(1, C.Queue.Declare(queue="q", passive=True))
    assert no_frame(c)                                  # no connection.blocked, no reading
    b.call(b.server.set_alarms, set())
    assert c.expect(C.Queue.DeclareOk).message_count == 1
    c.close()


def test_pika_gets_blocked_and_unblocked_callbacks(make_broker):
    b = make_broker(resources={"check_interval": 0})
    conn = pika.BlockingConnection(pika.URLParameters(b.url))
    events = []
    conn.add_on_connection_blocked_callback(lambda _c, m: events.append(m.method.reason))
    conn.add_on_connection_unblocked_callback(lambda _c, m: events.append("unblocked"))
    ch = conn.channel()
    ch.queue_declare("p")
    b.call(b.server.set_alarms, {"memory", "disk"})
    ch.basic_publish("", "p", b"1")
    pump(conn, lambda: events, what="connection.blocked")
    assert events == ["low on memory & disk"]
    b.call(b.server.set_alarms, {"disk"})               # one alarm left: still blocked
    b.call(b.server.set_alarms, set())
    pump(conn, lambda: len(events) >= 2, what="connection.unblocked")
    assert events == ["low on memory & disk", "unblocked"]
    assert ch.queue_declare("p", passive=True).method.message_count == 1
    conn.close()


def test_disk_free_limit_measured_on_the_data_dir(make_broker):
    b = make_broker(resources={"disk_free_limit": "1000000TB", "check_interval": 0.02})
    assert b.call(lambda: set(b.server.alarms.active)) == {"disk"}
    c = raw(b.port)
    c.method(1, C.Queue.Declare(queue="d"))
    c.expect(C.Queue.DeclareOk)
    c.publish(1, b"x", routing_key="d")
    assert c.expect(C.Connection.Blocked).reason == "low on disk"
    b.call(setattr, b.server.monitor, "disk_free_limit", 1)     # as if space was freed
    c.expect(C.Connection.Unblocked)
    assert ready(b, "d") == 1
    c.close()


def test_blocked_connections_are_not_dropped_for_missed_heartbeats(make_broker):
    """The broker does not read a blocked connection, so its heartbeats pile up unread: the
    heartbeat monitor is paused meanwhile, as in RabbitMQ. Ticks are driven by hand here."""
    b = make_broker(resources={"check_interval": 0})
    pub = RawClient(b.port, timeout=3)
    pub.handshake(capabilities=BLOCKING, heartbeat_s=60)
    pub.open_channel(1)
    b.call(b.server.set_alarms, {"memory"})
    pub.publish(1, b"x", routing_key="nowhere")
    pub.expect(C.Connection.Blocked)

    def tick_all():
        for p in list(b.server.protocols):
            p.conn.received = False     # as if nothing came in since the last tick
            p._heartbeat()

    for _ in range(6):                  # three intervals without reading a byte
        b.call(tick_all)
    assert b.connection_count() == 1
    b.call(b.server.set_alarms, set())
    pub.expect(C.Connection.Unblocked)
    for _ in range(4):                  # unblocked and silent: now it is dropped
        b.call(tick_all)
    b.wait_for(lambda: not b.server.protocols, what="the silent peer to be dropped")
    pub.close()


def test_blocked_publishers_are_closed_cleanly_at_shutdown():
    """Shutdown reads blocked connections again, so their close-ok arrives (no 3 s wait)."""
    b = BrokerThread(resources={"check_interval": 0}).start()
    try:
        c = raw(b.port)
        b.call(b.server.set_alarms, {"memory"})
        c.publish(1, b"x", routing_key="nowhere")
        c.expect(C.Connection.Blocked)
        started = time.monotonic()
        stopping = asyncio.run_coroutine_threadsafe(b.node.stop(), b.loop)
        close = c.expect(C.Connection.Close)
        assert close.reply_code == 320
        c.method(0, C.Connection.CloseOk())
        assert c.is_closed()
        stopping.result(5)
        assert time.monotonic() - started < 2
        c.close()
    finally:
        b.loop.call_soon_threadsafe(b.loop.stop)
        b.thread.join(5)
        b.loop.close()
        b.cleanup()


# -- the real memory watermark -----------------------------------------------------------------------
WATERMARK = 90_000_000        # bytes of broker RSS (its baseline is ~30 MB)
BODY = b"m" * 65536


class AsyncRaw:
    """A minimal asyncio AMQP client (pamqp frames), so publishing can wait on TCP
    back-pressure while blocked/unblocked frames are still read."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.buf = b""
        self.frames = asyncio.Queue()
        self.events = []

    @classmethod
    async def connect(cls, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self = cls(reader, writer)
        writer.write(PROTOCOL_HEADER)
        self.task = asyncio.create_task(self._read())
        await self.expect(C.Connection.Start)
        self.send(0, C.Connection.StartOk(client_properties={"capabilities": BLOCKING},
                                          mechanism="PLAIN", response="\0guest\0guest"))
        tune = await self.expect(C.Connection.Tune)
        self.send(0, C.Connection.TuneOk(channel_max=tune.channel_max,
                                         frame_max=tune.frame_max, heartbeat=0))
        self.send(0, C.Connection.Open(virtual_host="/"))
        await self.expect(C.Connection.OpenOk)
        self.send(1, C.Channel.Open())
        await self.expect(C.Channel.OpenOk)
        return self

    def send(self, channel, method):
        self.writer.write(pamqp_frame.marshal(method, channel))

    async def _read(self):
        while True:
            data = await self.reader.read(1 << 16)
            if not data:
                return
            self.buf += data
            while len(self.buf) >= 8:
                try:
                    used, ch, frame = pamqp_frame.unmarshal(self.buf)
                except UnmarshalingException:
                    break
                self.buf = self.buf[used:]
                if isinstance(frame, (C.Connection.Blocked, C.Connection.Unblocked)):
                    self.events.append((type(frame).__name__, time.monotonic()))
                else:
                    self.frames.put_nowait(frame)

    async def expect(self, cls):
        frame = await asyncio.wait_for(self.frames.get(), 10)
        assert isinstance(frame, cls), frame
        return frame

    async def publish(self, routing_key, body):
        self.writer.write(b"".join((
            pamqp_frame.marshal(C.Basic.Publish(routing_key=routing_key), 1),
            pamqp_frame.marshal(pamqp_header.ContentHeader(0, len(body), C.Basic.Properties()), 1),
            pamqp_frame.marshal(pamqp_body.ContentBody(body), 1))))
        await self.writer.drain()          # waits while the broker does not read

    async def close(self):
        self.task.cancel()
        self.writer.close()


def rss(pid) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
async def test_memory_watermark_holds_a_fast_publisher_back(tmp_path):
    cfg = tmp_path / "amqpd.yaml"
    # The backlog must stay in RAM for the watermark to be reached: a window far larger than
    # it (by default queues page what is beyond 2,048 messages / 8 MiB out of memory).
    cfg.write_text(f"resources:\n  memory_high_watermark: {WATERMARK}\n"
                   f"  check_interval: 0.02\n"
                   f"storage:\n  queue_window:\n    messages: 1000000\n    bytes: 8GiB\n")
    proc = AmqpdProcess("--config", str(cfg), "--log-level", "info",
                        data_dir=str(tmp_path / "data")).start()
    peak = [0]
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            try:
                peak[0] = max(peak[0], rss(proc.proc.pid))
            except OSError:
                return
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    pub = con = None
    try:
        pub = await AsyncRaw.connect(proc.port)
        con = await AsyncRaw.connect(proc.port)
        pub.send(1, C.Queue.Declare(queue="big"))
        await pub.expect(C.Queue.DeclareOk)
        con.send(1, C.Basic.Qos(prefetch_count=5))
        await con.expect(C.Basic.QosOk)
        con.send(1, C.Basic.Consume(queue="big", consumer_tag="slow"))
        await con.expect(C.Basic.ConsumeOk)
        consumed = [0]
        slow = [True]

        async def consume():
            while True:
                deliver = await con.frames.get()
                await con.frames.get()
                size = 0
                while size < len(BODY):
                    size += len((await con.frames.get()).value)
                consumed[0] += 1
                if slow[0]:
                    await asyncio.sleep(0.005)       # ~200 messages/s: far slower than publishing
                con.send(1, C.Basic.Ack(delivery_tag=deliver.delivery_tag))

        async def produce():
            n = 0
            while True:
                await pub.publish("big", BODY)
                n += 1
                published[0] = n

        published = [0]
        consumer_task = asyncio.create_task(consume())
        producer = asyncio.create_task(produce())
        deadline = time.monotonic() + 20
        while not pub.events and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert pub.events and pub.events[0][0] == "Blocked", "the publisher was never blocked"
        # From here the publisher keeps pushing as fast as it can while the consumer drains
        # slowly (until it has taken 60 more): the broker blocks it whenever it reaches the
        # watermark (and unblocks it whenever draining brings it back under), so its memory
        # stays bounded and the consumer keeps going.
        consumed_at_block, sent_at_block = consumed[0], published[0]
        while consumed[0] <= consumed_at_block + 60:
            assert time.monotonic() < deadline, "the consumer stopped while blocked"
            await asyncio.sleep(0.01)
        assert peak[0] < WATERMARK * 1.15, f"broker RSS {peak[0] / 1e6:.1f} MB"
        print(f"first blocked after {sent_at_block} messages; then {published[0] - sent_at_block}"
              f" more were sent, {consumed[0] - consumed_at_block} consumed; "
              f"{len(pub.events)} blocked/unblocked events; peak RSS {peak[0] / 1e6:.1f} MB")
        # Stop publishing, drain fast: RSS falls back under the watermark, unblocked follows.
        producer.cancel()
        slow[0] = False
        while (len(pub.events) % 2 or not pub.events) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        names = [e[0] for e in pub.events]
        assert names == ["Blocked", "Unblocked"] * (len(names) // 2), names
        assert peak[0] < WATERMARK * 1.15, f"broker RSS {peak[0] / 1e6:.1f} MB"
        consumer_task.cancel()
    finally:
        sampling.set()
        for c in (pub, con):
            if c is not None:
                await c.close()
        proc.stop()
        proc.cleanup()
    assert any("memory resource limit alarm set" in line for line in proc.log), proc.log
