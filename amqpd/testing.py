"""A real amqpd on its own thread and event loop, for tests and programs whose clients block
(pika's BlockingConnection, kombu, Celery) or run on another loop.

    with amqpd.testing.BrokerThread() as broker:       # 127.0.0.1, a free port, memory only
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))

It takes the keywords of ``amqpd.serve`` and changes nothing global in the host process (the
thread is a daemon thread with its own event loop; no signal handlers, no logging setup).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional, TypeVar

from .embedding import ConfigSource, EmbeddedBroker, build_config

__all__ = ["BrokerThread"]

T = TypeVar("T")


class BrokerThread:
    """``start()`` (or ``with``) runs the broker and returns once it accepts clients;
    ``stop()`` closes its clients with 320 CONNECTION_FORCED and ends the thread. The
    properties and vhost methods of ``amqpd.EmbeddedBroker`` are here too, callable from any
    thread. ``loop_factory`` makes the thread's event loop (default
    ``asyncio.new_event_loop``; e.g. ``uvloop.new_event_loop``)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 data_dir: Optional[str] = None, users: Optional[Mapping[str, str]] = None,
                 vhosts: Optional[Iterable[str]] = None, config: ConfigSource = None,
                 import_definitions: Iterable[str] = (),
                 loop_factory: Optional[Callable[[], asyncio.AbstractEventLoop]] = None,
                 http_port: Optional[int] = None,
                 prometheus_port: Optional[int] = None):
        self.config = build_config(host=host, port=port, data_dir=data_dir, users=users,
                                   vhosts=vhosts, config=config, http_port=http_port,
                                   prometheus_port=prometheus_port)
        self.broker = EmbeddedBroker(self.config, import_definitions)
        self._loop_factory = loop_factory or asyncio.new_event_loop
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._started = concurrent.futures.Future()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> "BrokerThread":
        """Start the thread and wait until the broker accepts clients (or raise why it could
        not start, as ``amqpd.serve`` would)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="amqpd", daemon=True)
            self._thread.start()
        try:
            self._started.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"amqpd did not start within {timeout} s") from None
        return self

    def _run(self) -> None:
        loop = self.loop = self._loop_factory()
        try:
            loop.run_until_complete(self.broker.start())
        except BaseException as exc:       # handed to start()'s caller
            self._started.set_exception(exc)
            loop.close()
            return
        self._started.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self, timeout: float = 30) -> None:
        """Stop the broker (its clients get 320 CONNECTION_FORCED) and end the thread.
        Stopping twice, or a broker that never started, does nothing."""
        thread = self._thread
        if thread is None or not thread.is_alive() or not self._started.done() \
                or self._started.exception() is not None:
            return
        asyncio.run_coroutine_threadsafe(self.broker.stop(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        thread.join(timeout)

    def __enter__(self) -> "BrokerThread":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.broker.running and self._thread is not None and self._thread.is_alive()

    # -- on the broker's loop -----------------------------------------------------------------
    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30) -> T:
        """Run ``fn(*args)`` on the broker's event loop and return its result (to look at or
        change broker state from another thread)."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        if self.loop is None:
            raise RuntimeError("the broker is not running")
        done: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as exc:
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result(timeout)

    # -- what EmbeddedBroker offers, from any thread ------------------------------------------
    @property
    def host(self) -> str:
        return self.broker.host

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:PORT/%2F`` (see ``EmbeddedBroker.url``)."""
        return self.broker.url

    @property
    def management_url(self) -> Optional[str]:
        """The management HTTP API's address (``http_port=0`` turns it on), or None."""
        return self.broker.management_url

    @property
    def metrics_url(self) -> Optional[str]:
        """The Prometheus endpoint when started with ``prometheus_port``; else None."""
        return self.broker.metrics_url

    @property
    def data_dir(self) -> Optional[str]:
        return self.broker.data_dir

    def vhost_url(self, vhost: str, user: Optional[str] = None) -> str:
        return self.broker.vhost_url(vhost, user)

    def add_vhost(self, name: str, users: Optional[Iterable[str]] = None) -> str:
        """Create vhost ``name`` with full permissions for ``users`` (default: every
        configured user); returns its URL."""
        return self.call(self.broker.add_vhost, name, users)

    def delete_vhost(self, name: str) -> bool:
        """Delete vhost ``name``: its connections get 320 CONNECTION_FORCED, its queues and
        exchanges go. False when there was no such vhost."""
        return self.call(self.broker.delete_vhost, name)

    def vhosts(self) -> list[str]:
        return self.call(self.broker.vhosts)
