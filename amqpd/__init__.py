"""amqpd: an AMQP 0-9-1 message broker that RabbitMQ clients use unchanged.

Embedding (the broker on your event loop; see docs/testing.md)::

    async with amqpd.serve() as broker:       # 127.0.0.1, a free port, memory only
        ...  # connect any AMQP 0-9-1 client to broker.url

``amqpd.testing.BrokerThread`` runs one on its own thread for synchronous clients, and the
pytest plugin (``amqpd_broker``, ``amqpd_url``, ``amqpd_vhost``) gives each test a fresh vhost.
"""
from typing import TYPE_CHECKING

from .version import __version__

if TYPE_CHECKING:      # imported on first use: `import amqpd.wire` stays light
    from .embedding import EmbeddedBroker, serve

__all__ = ["__version__", "serve", "EmbeddedBroker"]


def __getattr__(name: str):
    if name in ("serve", "EmbeddedBroker"):
        from . import embedding
        return getattr(embedding, name)
    raise AttributeError(f"module 'amqpd' has no attribute {name!r}")
