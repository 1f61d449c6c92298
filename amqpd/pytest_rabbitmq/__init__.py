"""A drop-in for pytest-rabbitmq: its fixtures, factories and options, served by an embedded
amqpd instead of a RabbitMQ server started with Erlang (opt in with ``-p
amqpd.pytest_rabbitmq``).

- ``rabbitmq_proc`` (session): the broker; ``.host``, ``.port``, ``.list_queues()``,
  ``.list_exchanges()`` as pytest-rabbitmq's executor.
- ``rabbitmq`` (function): a ``pika.BlockingConnection`` to vhost ``/`` as guest; after the
  test, the queues and exchanges it left are deleted (``factories.clear_rabbitmq``).
- ``factories.rabbitmq_proc(...)`` and ``factories.rabbitmq(proc_fixture_name, teardown)``
  with pytest-rabbitmq's signatures, for more brokers.
- Its options: ``--rabbitmq-host``/``rabbitmq_host`` and ``--rabbitmq-port``/``rabbitmq_port``
  are used; the others (``--rabbitmq-server``, ``-ctl``, ``-node``, ``-plugindir``,
  ``-distribution-port``, ``-port-search-count``) are accepted and mean nothing here.

pytest-rabbitmq's own plugin is blocked when this one is loaded first (``-p`` on the command
line or in ``addopts``), so both may stay installed. See docs/testing.md.
"""
from __future__ import annotations

import tempfile

import pytest

from . import factories

# (option, help, ini default) as pytest-rabbitmq declares them
OPTIONS = (
    ("host", "Host at which RabbitMQ will accept connections", "127.0.0.1"),
    ("port", "Port at which RabbitMQ will accept connections", None),
    ("port_search_count", "Number of times, pytest-rabbitmq will search for free port "
     "(ignored by amqpd)", "5"),
    ("distribution_port", "Port at which RabbitMQ nodes will communicate with each other "
     "(ignored by amqpd)", None),
    ("ctl", "RabbitMQ ctl path (ignored by amqpd)", "/usr/lib/rabbitmq/bin/rabbitmqctl"),
    ("server", "RabbitMQ server path (ignored by amqpd)",
     "/usr/lib/rabbitmq/bin/rabbitmq-server"),
    ("plugindir", "Directory where 'plugin' file is located (ignored by amqpd)",
     tempfile.gettempdir()),
    ("node", "Node name for rabbitmq instance (ignored by amqpd)", None),
)


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if pluginmanager.has_plugin("pytest_rabbitmq"):
        raise pytest.UsageError(
            "amqpd.pytest_rabbitmq replaces pytest-rabbitmq, which is loaded already: load "
            "amqpd's with -p amqpd.pytest_rabbitmq (command line or addopts), or add "
            "-p no:pytest_rabbitmq")
    pluginmanager.set_blocked("pytest_rabbitmq")       # its entry point, loaded after -p
    for name, help_text, default in OPTIONS:
        parser.addini(f"rabbitmq_{name}", help=help_text, default=default)
        parser.addoption(f"--rabbitmq-{name.replace('_', '-')}", action="store",
                         dest=f"rabbitmq_{name}", help=help_text)


rabbitmq_proc = factories.rabbitmq_proc()
rabbitmq = factories.rabbitmq("rabbitmq_proc")
