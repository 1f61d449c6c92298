"""pytest-rabbitmq's fixture factories, with its signatures, served by an embedded amqpd.

    rabbitmq_my_proc = factories.rabbitmq_proc(port=None)
    rabbitmq_my = factories.rabbitmq("rabbitmq_my_proc")

Each ``rabbitmq_proc`` fixture is its own broker (memory only, its own thread), as each of
pytest-rabbitmq's is its own RabbitMQ node.
"""
from __future__ import annotations

import logging
import random
import socket
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import pytest

from ..testing import BrokerThread

log = logging.getLogger("amqpd.pytest_rabbitmq")

__all__ = ["rabbitmq_proc", "rabbitmq", "clear_rabbitmq", "AmqpdProcess"]

PortType = Union[str, int, tuple, set, list, None]


class AmqpdProcess:
    """What pytest-rabbitmq's ``rabbitmq_proc`` yields (its ``RabbitMqExecutor``): ``host``,
    ``port``, ``running()``, ``list_exchanges()``, ``list_queues()`` (of vhost ``/``), and
    ``start()``/``stop()``. ``broker`` is the ``amqpd.testing.BrokerThread`` behind it, whose
    other attributes (``url``, ``call()``, ``add_vhost()``...) it passes on."""

    def __init__(self, host: str, port: int):
        self.broker = BrokerThread(host=host, port=port)

    def start(self) -> "AmqpdProcess":
        self.broker.start()
        return self

    def stop(self) -> "AmqpdProcess":
        self.broker.stop()
        return self

    def running(self) -> bool:
        return self.broker.running

    def __getattr__(self, name: str) -> Any:
        """``host``, ``port``, ``url``, ``call()``... : the BrokerThread's."""
        if name == "broker":            # not made yet: no recursion
            raise AttributeError(name)
        return getattr(self.broker, name)

    def list_exchanges(self) -> list[str]:
        """The exchanges of vhost ``/`` (``amq.*`` included, the nameless default not)."""
        return self.broker.call(lambda: [name for name in self._vhost().exchanges if name])

    def list_queues(self) -> list[str]:
        """The queues of vhost ``/``."""
        return self.broker.call(lambda: list(self._vhost().queues))

    def rabbitctl_output(self, *args: str) -> str:
        raise NotImplementedError(
            f"amqpd has no rabbitmqctl (asked: {' '.join(args)}); use list_queues(), "
            "list_exchanges(), or broker.call(fn) to look at the broker")

    def _vhost(self):
        return self.broker.broker.node.broker.vhosts["/"]


def clear_rabbitmq(process: AmqpdProcess, rabbitmq_connection) -> None:
    """pytest-rabbitmq's teardown: delete every queue and exchange of vhost ``/`` but the
    reserved ``amq.*`` ones, through the connection."""
    channel = rabbitmq_connection.channel()
    for exchange in process.list_exchanges():
        if not exchange.startswith("amq."):
            channel.exchange_delete(exchange)
    for queue in process.list_queues():
        if not queue.startswith("amq."):
            channel.queue_delete(queue)


def _option(request: pytest.FixtureRequest, name: str) -> Any:
    return request.config.getoption(f"rabbitmq_{name}") or \
        request.config.getini(f"rabbitmq_{name}")


def _free(host: str, port: int) -> bool:
    try:
        with socket.create_server((host, port)):
            return True
    except OSError:
        return False


def choose_port(host: str, spec: PortType) -> Optional[int]:
    """pytest-rabbitmq's (port-for's) port: -1: not chosen here (the option decides); None:
    any free port (0: the broker picks); a number: that one; (lo, hi): a free one of that
    range; {a, b}: a free one of those; a list: a free one of all its members."""
    if isinstance(spec, int) and spec == -1:
        return None
    if spec is None:
        return 0
    if isinstance(spec, (int, str)):
        return int(spec)
    members = spec if isinstance(spec, list) else [spec]
    candidates: list[int] = []
    for member in members:
        if isinstance(member, tuple):
            candidates.extend(range(member[0], member[1] + 1))
        else:
            candidates.extend(int(p) for p in member)
    random.shuffle(candidates)
    for port in candidates:
        if _free(host, port):
            return port
    raise pytest.UsageError(f"no free port in {spec!r}")


def rabbitmq_proc(server: Optional[str] = None, host: Optional[str] = None,
                  port: PortType = -1, distribution_port: PortType = -1,
                  node: Optional[str] = None, ctl: Optional[str] = None,
                  plugindir: Optional[Path] = None, logsdir: Optional[Path] = None
                  ) -> Callable[..., Iterator[AmqpdProcess]]:
    """A session fixture: a broker on ``host`` (default ``--rabbitmq-host``, 127.0.0.1) and
    ``port`` (default ``--rabbitmq-port``, else a free one). ``server``, ``ctl``, ``node``,
    ``plugindir``, ``distribution_port`` and ``logsdir`` are accepted for pytest-rabbitmq's
    sake and mean nothing to amqpd."""

    @pytest.fixture(scope="session")
    def rabbitmq_proc_fixture(request: pytest.FixtureRequest) -> Iterator[AmqpdProcess]:
        where = host or _option(request, "host") or "127.0.0.1"
        chosen = choose_port(where, port)
        if chosen is None:
            chosen = choose_port(where, _option(request, "port"))
        process = AmqpdProcess(where, chosen).start()
        try:
            yield process
        finally:
            process.stop()

    return rabbitmq_proc_fixture


def rabbitmq(process_fixture_name: str,
             teardown: Callable[[AmqpdProcess, Any], None] = clear_rabbitmq
             ) -> Callable[..., Iterator[Any]]:
    """A function fixture: a ``pika.BlockingConnection`` to vhost ``/`` of the broker of
    ``process_fixture_name`` as guest; ``teardown(process, connection)`` runs after the
    test (default: delete the queues and exchanges it left)."""

    @pytest.fixture
    def rabbitmq_factory(request: pytest.FixtureRequest) -> Iterator[Any]:
        import pika
        process = request.getfixturevalue(process_fixture_name)
        connection = pika.BlockingConnection(pika.ConnectionParameters(
            host=process.host, port=process.port, virtual_host="/",
            credentials=pika.PlainCredentials("guest", "guest")))
        yield connection
        teardown(process, connection)
        try:
            connection.close()
        except pika.exceptions.AMQPError as exc:
            log.warning("closing the rabbitmq fixture's connection: %s", exc)

    return rabbitmq_factory
