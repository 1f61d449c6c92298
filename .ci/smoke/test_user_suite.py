"""A user's test file, run by .ci/run in a fresh venv that holds only the built wheel, pytest,
pytest-asyncio and the clients: the plugin comes from the wheel's pytest11 entry point, the
default configuration from its package data."""
import subprocess
import sys

import aio_pika
import kombu
import pika
import pytest


def test_pika_publishes(amqpd_url):
    conn = pika.BlockingConnection(pika.URLParameters(amqpd_url))
    ch = conn.channel()
    ch.queue_declare("same-name")
    ch.basic_publish("", "same-name", b"from the first test")
    conn.close()


def test_the_next_test_does_not_see_it(amqpd_url):
    conn = pika.BlockingConnection(pika.URLParameters(amqpd_url))
    ch = conn.channel()
    ch.queue_declare("same-name")
    assert ch.basic_get("same-name", auto_ack=True) == (None, None, None)
    conn.close()


@pytest.mark.asyncio
async def test_aio_pika(amqpd_url):
    async with await aio_pika.connect(amqpd_url) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue("same-name")
        assert q.declaration_result.message_count == 0
        await ch.default_exchange.publish(aio_pika.Message(b"x"), routing_key="same-name")
        message = await q.get(timeout=5)
        await message.ack()
        assert message.body == b"x"


def test_kombu(amqpd_url):
    with kombu.Connection(amqpd_url) as conn:
        q = conn.SimpleQueue("kombu-queue")
        q.put({"n": 1})
        message = q.get(timeout=5)
        message.ack()
        assert message.payload == {"n": 1}
        q.close()


def test_the_default_configuration_ships_in_the_wheel():
    out = subprocess.run([sys.executable, "-m", "amqpd", "--print-default-config"],
                         capture_output=True, text=True, check=True).stdout
    assert "data_dir: ~/.local/state/amqpd" in out and "listeners:" in out
