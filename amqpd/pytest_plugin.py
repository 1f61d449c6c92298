"""pytest fixtures for code that talks AMQP 0-9-1 (registered through the ``pytest11`` entry
point: installing amqpd is enough).

- ``amqpd_broker`` (session): one broker for the session, on a free port, in memory, on its
  own thread (``amqpd.testing.BrokerThread``); started the first time a test asks for it.
- ``amqpd_vhost`` (function): a fresh vhost for this test, deleted (with every queue,
  message and exchange in it, its connections closed) when the test ends.
- ``amqpd_url`` (function): ``amqp://guest:guest@127.0.0.1:PORT/<amqpd_vhost>``.

``--amqpd-url URL`` (ini ``amqpd_url``) runs the same fixtures against a broker that is
already running, e.g. RabbitMQ. Fresh vhosts there need RabbitMQ's management API:
``--amqpd-management-url http://127.0.0.1:15672`` (ini ``amqpd_management_url``); without it
every test shares the URL's vhost. See docs/testing.md.

Nothing heavy is imported until a fixture is used: this module is loaded by every pytest run
in an environment where amqpd is installed.
"""
from __future__ import annotations

import base64
import json
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request
from typing import Iterator, Optional

import pytest

__all__ = ["ExternalBroker"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("amqpd", "amqpd broker fixtures (amqpd_broker, amqpd_url)")
    url_help = ("AMQP URL of a running broker (e.g. RabbitMQ) for amqpd_broker/amqpd_url "
                "instead of an embedded amqpd")
    mgmt_help = ("RabbitMQ management API (http://host:15672) used to give each test a fresh "
                 "vhost on the --amqpd-url broker; without it, tests share the URL's vhost")
    group.addoption("--amqpd-url", dest="amqpd_url", default=None, metavar="URL",
                    help=url_help)
    group.addoption("--amqpd-management-url", dest="amqpd_management_url", default=None,
                    metavar="URL", help=mgmt_help)
    parser.addini("amqpd_url", url_help, default=None)
    parser.addini("amqpd_management_url", mgmt_help, default=None)


def _option(config: pytest.Config, name: str) -> Optional[str]:
    return config.getoption(name) or config.getini(name) or None


class ExternalBroker:
    """A broker the session did not start, reached at ``url``. With ``management_url`` (a
    RabbitMQ management API), ``add_vhost``/``delete_vhost`` create and delete vhosts through
    it; without, there is one vhost (the URL's) and ``isolates`` is False."""

    def __init__(self, url: str, management_url: Optional[str] = None):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise pytest.UsageError(f"--amqpd-url: expected an amqp:// or amqps:// URL, "
                                    f"got {url!r}")
        self.parts = parts
        self.scheme = parts.scheme
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        self.user = urllib.parse.unquote(parts.username or "guest")
        self.password = urllib.parse.unquote(parts.password or "guest")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        # "amqp://host/" is vhost "/" for pika, aio-pika and kombu alike
        self.vhost = urllib.parse.unquote(path) or "/"
        self.url = self.vhost_url(self.vhost)
        self.management_url = management_url.rstrip("/") if management_url else None
        if self.management_url and self.management_url.endswith("/api"):
            self.management_url = self.management_url[:-4]

    @property
    def isolates(self) -> bool:
        return self.management_url is not None

    def vhost_url(self, vhost: str, user: Optional[str] = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = (urllib.parse.quote(user or self.user, safe="") + ":"
                + urllib.parse.quote(self.password, safe="") + "@")
        query = f"?{self.parts.query}" if self.parts.query else ""
        return (f"{self.scheme}://{auth}{host}:{self.port}/"
                f"{urllib.parse.quote(vhost, safe='')}{query}")

    def add_vhost(self, name: str, users=None) -> str:
        if not self.isolates:
            return self.url
        quoted = urllib.parse.quote(name, safe="")
        self._api("PUT", f"/api/vhosts/{quoted}", {})
        for user in users or [self.user]:
            self._api("PUT", f"/api/permissions/{quoted}/{urllib.parse.quote(user, safe='')}",
                      {"configure": ".*", "write": ".*", "read": ".*"})
        return self.vhost_url(name)

    def delete_vhost(self, name: str) -> bool:
        if not self.isolates:
            return False
        try:
            self._api("DELETE", f"/api/vhosts/{urllib.parse.quote(name, safe='')}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    def _api(self, method: str, path: str, body: Optional[dict] = None) -> None:
        mgmt = urllib.parse.urlsplit(self.management_url)
        user = urllib.parse.unquote(mgmt.username) if mgmt.username else self.user
        password = urllib.parse.unquote(mgmt.password) if mgmt.password else self.password
        netloc = mgmt.hostname + (f":{mgmt.port}" if mgmt.port else "")
        url = urllib.parse.urlunsplit((mgmt.scheme, netloc, mgmt.path + path, "", ""))
        data = json.dumps(body).encode() if body is not None else None
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Basic {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30):
            pass

    def stop(self) -> None:
        """Not ours to stop."""


@pytest.fixture(scope="session")
def amqpd_broker(request: pytest.FixtureRequest):
    """The session's broker: an embedded amqpd (``amqpd.testing.BrokerThread``, memory only,
    a free port on 127.0.0.1, user guest/guest), or the ``--amqpd-url`` broker."""
    url = _option(request.config, "amqpd_url")
    if url:
        yield ExternalBroker(url, _option(request.config, "amqpd_management_url"))
        return
    from .testing import BrokerThread
    broker = BrokerThread().start()
    try:
        yield broker
    finally:
        broker.stop()


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@pytest.fixture
def amqpd_vhost(amqpd_broker, request: pytest.FixtureRequest) -> Iterator[str]:
    """A vhost of this test alone, named after it; deleted when it ends, with everything in
    it (its connections are closed with 320 CONNECTION_FORCED). Against ``--amqpd-url``
    without ``--amqpd-management-url``: the URL's vhost, shared by every test."""
    if isinstance(amqpd_broker, ExternalBroker) and not amqpd_broker.isolates:
        yield amqpd_broker.vhost
        return
    name = f"{_UNSAFE.sub('-', request.node.name)[:48]}-{secrets.token_hex(4)}"
    amqpd_broker.add_vhost(name)
    try:
        yield name
    finally:
        amqpd_broker.delete_vhost(name)


@pytest.fixture
def amqpd_url(amqpd_broker, amqpd_vhost: str) -> str:
    """``amqp://guest:guest@127.0.0.1:PORT/<this test's vhost>``, for pika, aio-pika, kombu,
    Celery or any AMQP 0-9-1 client."""
    return amqpd_broker.vhost_url(amqpd_vhost)
