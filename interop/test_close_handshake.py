"""Closing a connection with publishes still in flight, with Node's amqplib (the real client).

amqplib writes connection.close ahead of the publishes still in its buffer. RabbitMQ answers
close-ok and leaves the socket to the client, reading and dropping what still comes; a broker that
closes the socket right after close-ok makes amqplib's remaining writes fail ('write EPIPE'), its
error handler fire and its close() promise never settle.
"""
import json
import os
import subprocess

import pytest

from .process import AmqpdProcess
from .runner import NODE_DIR, _prepare_node


@pytest.fixture(scope="module")
def node():
    command, why = _prepare_node()
    if command is None:
        if os.environ.get("AMQPD_INTEROP_REQUIRE_ALL"):
            pytest.fail(f"amqplib needed: {why}")
        pytest.skip(why)
    return command[0]


@pytest.fixture(scope="module")
def amqpd():
    p = AmqpdProcess().start()
    yield p
    p.stop()


@pytest.mark.interop
@pytest.mark.parametrize("run", range(3))
def test_amqplib_close_with_a_full_buffer_is_clean(node, amqpd, run):
    proc = subprocess.run([node, os.path.join(NODE_DIR, "close_full_buffer.js"), amqpd.url,
                           f"close-full-buffer-{run}"],
                          capture_output=True, text=True, timeout=60, cwd=NODE_DIR)
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "fatal" not in seen, seen
    assert seen["sent"] > 100, seen              # the buffer really filled up
    assert seen["close"] == "resolved", seen
    assert seen["errors"] == [], seen
    assert seen["closed"], seen
