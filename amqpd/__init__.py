"""amqpd: an AMQP 0-9-1 message broker that RabbitMQ clients use unchanged."""
from .version import __version__

__all__ = ["__version__"]
