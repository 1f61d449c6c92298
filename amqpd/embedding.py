"""A real amqpd inside another program: on the caller's running event loop.

    async with amqpd.serve() as broker:          # 127.0.0.1, a free port, memory only
        connection = await aio_pika.connect(broker.url)

The broker is the same ``Node`` the command line runs. Embedding it changes nothing global in
the host process: no signal handlers, no garbage-collection policy, no logging configuration
(records go to the standard ``logging`` tree under ``amqpd``), no event-loop policy.
``amqpd.testing.BrokerThread`` runs one on its own thread for synchronous clients.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Optional, Union

from . import config as config_mod
from .access.control import Grant
from .node import Node

log = logging.getLogger("amqpd.embedding")

ConfigSource = Union[config_mod.Config, Mapping, str, "os.PathLike[str]", None]

# An embedded broker measures the host process's memory, not its own: the memory alarm of a
# standalone broker would block publishers because the test suite around it grew. Off unless a
# configuration is given.
EMBEDDED_DEFAULTS = {"resources": {"check_interval": 0}}


def build_config(*, host: str = "127.0.0.1", port: int = 0, data_dir: Optional[str] = None,
                 users: Optional[Mapping[str, str]] = None,
                 vhosts: Optional[Iterable[str]] = None,
                 config: ConfigSource = None,
                 http_port: Optional[int] = None,
                 prometheus_port: Optional[int] = None) -> config_mod.Config:
    """The configuration ``serve`` runs: ``config`` (a ``Config``, a mapping in the YAML
    file's shape, or the path of a YAML file; None: the defaults, resource alarms off) with
    the plain listener on ``host``:``port`` and the data directory ``data_dir`` (None: memory
    only). ``users`` ({name: password}) and ``vhosts`` replace the configuration's when given,
    and every user then gets full permissions on every vhost (a permission the configuration
    lists for a pair stays as it is). The management HTTP API is off unless ``http_port`` is
    given (0: a free port) or a mapping ``config`` names ``listeners.http`` itself: an
    embedded broker must not take port 15672 from the host; the Prometheus endpoint likewise
    (``prometheus_port``, or ``listeners.prometheus`` in a mapping). Raises
    ``amqpd.config.ConfigError``."""
    explicit_http = (isinstance(config, Mapping) and isinstance(config.get("listeners"), Mapping)
                     and "http" in config["listeners"])
    explicit_prometheus = (isinstance(config, Mapping)
                           and isinstance(config.get("listeners"), Mapping)
                           and "prometheus" in config["listeners"])
    if config is None:
        cfg = config_mod.from_dict(EMBEDDED_DEFAULTS)
    elif isinstance(config, config_mod.Config):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = config_mod.from_dict(dict(config))
    else:
        cfg = config_mod.load(os.fspath(config))
    changes: dict = {"storage": dataclasses.replace(cfg.storage, data_dir=data_dir)}
    if users is not None or vhosts is not None:
        names = tuple(vhosts) if vhosts is not None else cfg.vhosts
        people = cfg.users if users is None else tuple(
            config_mod.User(name, password, tags=("administrator",))
            for name, password in users.items())
        given = {(p.user, p.vhost): p for p in cfg.permissions
                 if p is not config_mod.DEFAULT_PERMISSIONS[0]}
        grants = tuple(given.get((u.name, v), config_mod.Permission(u.name, v))
                       for u in people for v in names)
        changes.update(vhosts=names, users=people, permissions=grants)
    listeners = cfg.listeners
    if not explicit_http:
        listeners = dataclasses.replace(listeners, http=None)
    if not explicit_prometheus:
        # the Prometheus endpoint only when asked for: a test suite's brokers must not all
        # want port 15692 (nor take it from a RabbitMQ on the same machine)
        listeners = dataclasses.replace(listeners, prometheus=None)
    changes["listeners"] = listeners
    cfg = dataclasses.replace(cfg, **changes)
    cfg = config_mod.override_prometheus(cfg, prometheus_port)
    return config_mod.override(cfg, host=host, port=port, http_port=http_port)


def reachable(host: str) -> str:
    """The address a client on this machine connects to for a listen address (a wildcard
    listens on loopback too)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def amqp_url(host: str, port: int, vhost: str = "/", user: Optional[str] = None,
             password: Optional[str] = None) -> str:
    """``amqp://user:password@host:port/vhost`` with the vhost percent-encoded (``/`` is
    ``%2F``), as pika, aio-pika, kombu and Celery all read it. A wildcard listen address
    becomes the loopback address clients can reach."""
    host = reachable(host)
    if ":" in host:
        host = f"[{host}]"
    auth = ""
    if user is not None:
        auth = urllib.parse.quote(user, safe="")
        if password is not None:
            auth += ":" + urllib.parse.quote(password, safe="")
        auth += "@"
    return f"amqp://{auth}{host}:{port}/{urllib.parse.quote(vhost, safe='')}"


class EmbeddedBroker:
    """A broker running on the event loop that started it. Use it as an async context
    manager (``async with amqpd.serve() as broker``), or ``broker = await amqpd.serve()``
    and ``await broker.stop()``.

    ``url`` connects to vhost ``/`` as the first configured user that has a plain password;
    ``add_vhost``/``delete_vhost`` change vhosts while it runs. Call its methods on its event
    loop (``amqpd.testing.BrokerThread`` does that for code on other threads)."""

    def __init__(self, config: config_mod.Config, import_files: Iterable[str] = ()):
        self.config = config
        self.node = Node(config, import_files)
        self._running = False

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> "EmbeddedBroker":
        """Bind, recover the data directory (if any) and accept clients. Raises what the
        command line reports: ``amqpd.config.ConfigError`` for a configuration to change,
        ``amqpd.edge.listeners.StartError`` for a busy port, ``amqpd.store.store.StoreError``
        for a data directory in use."""
        if self._running:
            return self
        await self.node.start()
        self._running = True
        data_dir = self.config.storage.data_dir
        log.debug("embedded amqpd at %s, data %s", self.url,
                  "in memory only" if data_dir is None else os.path.abspath(data_dir))
        return self

    async def stop(self, reason: str = "shutdown") -> None:
        """Close every client (320 CONNECTION_FORCED, as a broker shutting down), write out
        and release the data directory. Stopping twice does nothing."""
        if not self._running:
            return
        self._running = False
        await self.node.stop(reason)

    def __await__(self):
        return self.start().__await__()

    async def __aenter__(self) -> "EmbeddedBroker":
        return await self.start()

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._running

    # -- where it is --------------------------------------------------------------------------
    @property
    def host(self) -> str:
        """The address clients connect to (the loopback address for a wildcard listener)."""
        return reachable(self.config.listeners.amqp.host)

    @property
    def port(self) -> int:
        """The plain AMQP port (the one picked when the configuration said 0)."""
        return self.node.port

    @property
    def tls_port(self) -> Optional[int]:
        return self.node.tls_port

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:PORT/%2F``: vhost ``/`` as the first user with a
        plain password (no credentials in it when there is none)."""
        return self.vhost_url("/")

    @property
    def management_url(self) -> Optional[str]:
        """The management HTTP API's address, ``http://127.0.0.1:PORT`` (its API is under
        ``/api``), or None when it is off (the default: ``serve(http_port=0)`` turns it
        on)."""
        return self.node.management_url

    @property
    def metrics_url(self) -> Optional[str]:
        """The Prometheus endpoint (``http://127.0.0.1:PORT/metrics``) when the broker was
        started with ``prometheus_port``; else None."""
        port = self.node.prometheus_port
        if port is None:
            return None
        host = reachable(self.config.listeners.prometheus.host)
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"

    @property
    def data_dir(self) -> Optional[str]:
        """The data directory as an absolute path, or None (memory only)."""
        data_dir = self.config.storage.data_dir
        return None if data_dir is None else os.path.abspath(data_dir)

    def vhost_url(self, vhost: str, user: Optional[str] = None) -> str:
        """The URL of ``vhost`` for ``user`` (default: the first user with a plain password;
        the password is in the URL when the configuration has it in plain text)."""
        record = self._user(user)
        name = record.name if record is not None else user
        password = record.password if record is not None else None
        return amqp_url(self.host, self.port, vhost, name, password)

    def _user(self, name: Optional[str]):
        for u in self.config.users:
            if (name is None and u.password is not None) or u.name == name:
                return u
        return None

    # -- vhosts at run time -------------------------------------------------------------------
    def add_vhost(self, name: str, users: Optional[Iterable[str]] = None) -> str:
        """Create vhost ``name`` (nothing changes if it exists) and give ``users`` (default:
        every configured user) full permissions on it. Returns its URL. Vhosts added here are
        not stored in the data directory: after a restart one exists only if the
        configuration lists it."""
        self._on_loop()
        broker = self.node.broker
        broker.add_vhost(name)
        names = [u.name for u in self.config.users] if users is None else list(users)
        for user in names:
            broker.access.set_permissions(Grant(user, name, ".*", ".*", ".*"))
        return self.vhost_url(name)

    def delete_vhost(self, name: str) -> bool:
        """Delete vhost ``name`` as ``rabbitmqctl delete_vhost`` does: its connections are
        closed (320 CONNECTION_FORCED), its queues, messages, exchanges and permissions go.
        Returns False when there was no such vhost."""
        self._on_loop()
        return self.node.broker.delete_vhost(name)

    def vhosts(self) -> list[str]:
        self._on_loop()
        return list(self.node.broker.vhosts)

    def _on_loop(self) -> None:
        if not self._running:
            raise RuntimeError("the broker is not running")
        if not self.node.server.runs_here():
            raise RuntimeError("call this on the broker's event loop (amqpd.testing."
                               "BrokerThread does that for code on other threads)")


def serve(*, host: str = "127.0.0.1", port: int = 0, data_dir: Optional[str] = None,
          users: Optional[Mapping[str, str]] = None, vhosts: Optional[Iterable[str]] = None,
          config: ConfigSource = None,
          import_definitions: Iterable[str] = (),
          http_port: Optional[int] = None,
          prometheus_port: Optional[int] = None) -> EmbeddedBroker:
    """A broker for this event loop, started by ``async with`` (or ``await``).

    - ``host``, ``port``: the plain AMQP listener (default 127.0.0.1 and a free port; read
      the port back from ``broker.port`` or ``broker.url``).
    - ``data_dir``: where durable state lives; None (the default) keeps everything in memory.
    - ``users``: {name: password}; each gets full permissions on every vhost of ``vhosts``.
      Default: the configuration's (guest/guest, localhost only).
    - ``vhosts``: the vhosts that exist at start (default: the configuration's, ``/``).
    - ``config``: everything else, as a ``Config``, a mapping in the YAML file's shape, or a
      YAML file's path; ``host``, ``port`` and ``data_dir`` above always win over it.
    - ``import_definitions``: RabbitMQ definitions files imported at start.
    - ``http_port``: turns the RabbitMQ-compatible management HTTP API on (0: a free port;
      ``broker.management_url`` tells where). Off by default.
    - ``prometheus_port``: serve Prometheus metrics on 127.0.0.1 at this port (0: a free
      one; ``broker.metrics_url``); None (the default): no metrics endpoint.
    """
    cfg = build_config(host=host, port=port, data_dir=data_dir, users=users, vhosts=vhosts,
                       config=config, http_port=http_port, prometheus_port=prometheus_port)
    return EmbeddedBroker(cfg, import_definitions)
