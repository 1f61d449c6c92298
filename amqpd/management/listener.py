"""An HTTP(S) listener on the broker's event loop: aiohttp's AppRunner and TCPSite. The
management API uses it; the Prometheus listener can too (any aiohttp application).

A port that cannot be bound is reported as the AMQP listeners' are (edge/listeners.py):
StartError for a port in use, ConfigError for an address or privilege problem."""
import logging

from aiohttp import web

from ..edge.listeners import listen_error, tls_context

log = logging.getLogger("amqpd.management")


class HTTPListener:
    """``app_factory()`` makes the aiohttp application; ``listener`` is the configuration
    (host, port, and optional TLS keys certfile/keyfile/cafile/verify_peer/
    fail_if_no_peer_cert); ``name`` is its configuration key (``http``) for messages."""

    def __init__(self, app_factory, listener, name: str = "http", tls=None):
        self.app_factory = app_factory
        self.listener = listener
        self.name = name
        self.tls = tls
        if tls is None and getattr(listener, "certfile", None):
            self.tls = tls_context(listener, name)
        self.runner = None
        self.port = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    async def start(self) -> None:
        # a keep-alive client must not hold up the broker's stop: 1 s to finish requests
        self.runner = web.AppRunner(self.app_factory(), access_log=None,
                                    handle_signals=False, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.listener.host, self.listener.port,
                           ssl_context=self.tls, reuse_address=True, backlog=128)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            self.runner = None
            raise listen_error(self.name, self.listener, exc) from None
        self.port = self.runner.addresses[0][1]
        # not "listening on": that line is the AMQP address, which tools and tests look for
        title, path = _TITLES.get(self.name, (self.name, "/"))
        log.info("%s on %s://%s:%d%s", title, self.scheme, self.listener.host, self.port, path)

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()


_TITLES = {"http": ("management API and web UI", "/"),
           "prometheus": ("Prometheus metrics", "/metrics")}
