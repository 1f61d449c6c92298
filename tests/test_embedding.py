"""amqpd.serve() (the broker on the caller's event loop) and amqpd.testing.BrokerThread (on a
thread of its own), driven by real clients: what they expose, what their keywords do, and
that embedding changes nothing global in the host process."""
import asyncio
import gc
import logging
import os
import signal
import threading

import aio_pika
import aiormq
import kombu
import pika
import pytest

import amqpd
from amqpd.config import ConfigError
from amqpd.edge.listeners import StartError
from amqpd.testing import BrokerThread


def test_the_facade_exports_what_it_documents():
    assert set(amqpd.__all__) == {"__version__", "serve", "EmbeddedBroker"}
    assert amqpd.serve.__module__ == "amqpd.embedding"
    with pytest.raises(AttributeError):
        amqpd.nothing_here


async def test_serve_runs_a_broker_on_this_loop_that_aio_pika_uses():
    async with amqpd.serve() as broker:
        assert broker.host == "127.0.0.1" and broker.port > 0
        assert broker.url == f"amqp://guest:guest@127.0.0.1:{broker.port}/%2F"
        assert broker.management_url is None and broker.data_dir is None
        async with await aio_pika.connect(broker.url) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue("hello", durable=True)
            await ch.default_exchange.publish(
                aio_pika.Message(b"world", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key="hello")
            message = await q.get(timeout=5)
            assert message.body == b"world"
            await message.ack()
    assert not broker.running


async def test_await_serve_and_stop_twice():
    broker = await amqpd.serve()
    reader, writer = await asyncio.open_connection(broker.host, broker.port)
    writer.write(b"AMQP\x00\x00\x09\x01")
    assert (await asyncio.wait_for(reader.readexactly(1), 5)) == b"\x01"   # connection.start
    writer.close()
    await broker.stop()
    await broker.stop()


async def test_vhosts_added_and_deleted_while_running():
    async with amqpd.serve() as broker:
        url = broker.add_vhost("shop")
        assert url == f"amqp://guest:guest@127.0.0.1:{broker.port}/shop"
        assert broker.vhosts() == ["/", "shop"]
        conn = await aio_pika.connect(url)
        closed = asyncio.get_running_loop().create_future()
        conn.close_callbacks.add(lambda _conn, exc: closed.done() or closed.set_result(exc))
        ch = await conn.channel()
        await ch.declare_queue("orders")
        assert broker.delete_vhost("shop") is True
        exc = await asyncio.wait_for(closed, 5)
        assert "320" in str(exc) and "vhost 'shop' is deleted" in str(exc)
        assert broker.delete_vhost("shop") is False
        assert broker.vhosts() == ["/"]
        with pytest.raises(aiormq.exceptions.AMQPError):     # 530 at connection.open
            await aio_pika.connect(url)


async def test_vhost_methods_refuse_another_thread():
    async with amqpd.serve() as broker:
        failure = []

        def elsewhere():
            try:
                broker.add_vhost("x")
            except RuntimeError as exc:
                failure.append(str(exc))

        thread = threading.Thread(target=elsewhere)
        thread.start()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        assert failure and "event loop" in failure[0]
        assert broker.vhosts() == ["/"]


async def test_users_and_vhosts_keywords():
    async with amqpd.serve(users={"app": "s3cret", "ops": "pw"}, vhosts=["/", "jobs"]) as broker:
        assert broker.url == f"amqp://app:s3cret@127.0.0.1:{broker.port}/%2F"
        for user, password in (("app", "s3cret"), ("ops", "pw")):
            url = f"amqp://{user}:{password}@127.0.0.1:{broker.port}/jobs"
            async with await aio_pika.connect(url) as conn:
                await (await conn.channel()).declare_queue("work")
        with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
            await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{broker.port}/")


async def test_config_as_a_mapping_and_as_a_file(tmp_path):
    async with amqpd.serve(config={"limits": {"frame_max": 8192}}) as broker:
        async with await aio_pika.connect(broker.url) as conn:
            assert conn.transport.connection.connection_tune.frame_max == 8192   # tune-ok's
    path = tmp_path / "amqpd.yaml"
    path.write_text("limits: {frame_max: 16384}\nlisteners: {amqp: {port: 1}}\n"
                    "storage: {data_dir: /nonexistent}\n")
    async with amqpd.serve(config=path) as broker:      # host, port, data_dir: the keywords'
        assert broker.port != 1 and broker.data_dir is None
        async with await aio_pika.connect(broker.url) as conn:
            assert conn.transport.connection.connection_tune.frame_max == 16384
    with pytest.raises(ConfigError, match="limits.hartbeat: unknown key"):
        amqpd.serve(config={"limits": {"hartbeat": 1}})


async def test_a_data_dir_keeps_durable_messages_across_restarts(tmp_path):
    data_dir = str(tmp_path / "data")
    async with amqpd.serve(data_dir=data_dir) as broker:
        assert broker.data_dir == os.path.abspath(data_dir)
        async with await aio_pika.connect(broker.url) as conn:
            ch = await conn.channel()
            await ch.declare_queue("kept", durable=True)
            await ch.default_exchange.publish(
                aio_pika.Message(b"still here", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key="kept")
    async with amqpd.serve(data_dir=data_dir) as broker:
        async with await aio_pika.connect(broker.url) as conn:
            q = await (await conn.channel()).declare_queue("kept", durable=True)
            message = await q.get(timeout=5)
            assert message.body == b"still here"
            await message.ack()


async def test_a_busy_port_fails_the_start_and_leaves_nothing_running():
    async with amqpd.serve() as first:
        with pytest.raises(StartError, match="already in use"):
            async with amqpd.serve(port=first.port):
                pass


async def test_embedding_changes_nothing_global(caplog):
    signals = (signal.SIGINT, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    before = ({s: signal.getsignal(s) for s in signals}, gc.isenabled(), gc.get_threshold(),
              list(logging.getLogger().handlers), logging.getLogger().level,
              logging.getLogger("amqpd").handlers[:], type(asyncio.get_event_loop_policy()),
              loop.get_exception_handler())
    caplog.set_level(logging.INFO, logger="amqpd")
    async with amqpd.serve() as broker:
        during = ({s: signal.getsignal(s) for s in signals}, gc.isenabled(), gc.get_threshold(),
                  list(logging.getLogger().handlers), logging.getLogger().level,
                  logging.getLogger("amqpd").handlers[:],
                  type(asyncio.get_event_loop_policy()), loop.get_exception_handler())
        async with await aio_pika.connect(broker.url):
            pass
    assert during == before
    listening = [r for r in caplog.records if "listening on" in r.getMessage()]
    assert listening and all(r.name.startswith("amqpd.") for r in caplog.records
                             if r.name.startswith("amqpd"))
    assert f":{broker.port}" in listening[0].getMessage()


# -- BrokerThread -------------------------------------------------------------------------------
def test_broker_thread_serves_blocking_clients():
    with BrokerThread() as broker:
        conn = pika.BlockingConnection(pika.URLParameters(broker.url))
        ch = conn.channel()
        ch.queue_declare("q")
        ch.basic_publish("", "q", b"via pika")
        with kombu.Connection(broker.url) as kconn:
            q = kconn.SimpleQueue("q", queue_opts={"durable": False})
            message = q.get(timeout=5)
            assert message.body == b"via pika"
            message.ack()
            q.close()
        assert broker.call(lambda: broker.broker.node.broker.vhosts["/"].queues["q"]
                           .message_count) == 0
        conn.close()
    assert not broker.running


def test_broker_thread_stop_closes_clients_with_320():
    broker = BrokerThread().start()
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    broker.stop()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        conn.process_data_events(time_limit=10)
    assert closed.value.reply_code == 320
    broker.stop()                        # twice: nothing


def test_broker_thread_vhosts_from_another_thread():
    with BrokerThread(vhosts=["/", "a"]) as broker:
        assert broker.vhosts() == ["/", "a"]
        url = broker.add_vhost("b")
        conn = pika.BlockingConnection(pika.URLParameters(url))
        assert broker.delete_vhost("b") is True
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            conn.process_data_events(time_limit=10)
        assert closed.value.args == (320, "CONNECTION_FORCED - vhost 'b' is deleted")


def test_broker_thread_start_failure_is_raised_in_the_caller():
    with BrokerThread() as first:
        with pytest.raises(StartError, match="already in use"):
            BrokerThread(port=first.port).start()


def test_broker_thread_with_another_loop_factory():
    uvloop = pytest.importorskip("uvloop")
    with BrokerThread(loop_factory=uvloop.new_event_loop) as broker:
        assert isinstance(broker.loop, uvloop.Loop)
        conn = pika.BlockingConnection(pika.URLParameters(broker.url))
        conn.channel().queue_declare("q")
        conn.close()
