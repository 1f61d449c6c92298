"""amqpd.node.Node: the composition the CLI runs and embedding builds on. A node can run with
no data directory (memory only) and installs no signal handlers; a real client talks to it."""
import asyncio
import os
import signal

import pika

from amqpd import config as config_mod
from amqpd.node import Node
from tests.brokerthread import BrokerThread


def test_a_memory_only_node_serves_durable_queues_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)               # the default data dir would be ./data
    b = BrokerThread(storage={"data_dir": None}).start()
    try:
        assert b.server.store is None
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("durable-q", durable=True)
        ch.basic_publish("", "durable-q", b"kept in memory",
                         pika.BasicProperties(delivery_mode=2))   # confirmed at once
        method, _props, body = ch.basic_get("durable-q", auto_ack=True)
        assert body == b"kept in memory"
        conn.close()
    finally:
        b.stop()
        b.cleanup()
    assert os.listdir(tmp_path) == []


def test_a_node_installs_no_signal_handlers():
    config = config_mod.from_dict({"listeners": {"amqp": {"host": "127.0.0.1", "port": 0},
                                                 "http": None, "prometheus": None},
                                   "storage": {"data_dir": None}})
    signals = (signal.SIGINT, signal.SIGTERM)

    async def run():
        # asyncio.run installs its own SIGINT handler: compare with what is in force here
        before = {sig: signal.getsignal(sig) for sig in signals}
        node = await Node(config).start()
        try:
            during = {sig: signal.getsignal(sig) for sig in before}
            reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
            writer.write(b"AMQP\x00\x00\x09\x01")
            frame = await asyncio.wait_for(reader.readexactly(7), 5)   # connection.start
            writer.close()
            await node.stop()
            after = {sig: signal.getsignal(sig) for sig in signals}
            return before, during, after, frame
        except BaseException:
            await node.stop()
            raise

    before, during, after, frame = asyncio.run(run())
    assert frame[0] == 1                       # a method frame: connection.start
    assert during == before and after == before
