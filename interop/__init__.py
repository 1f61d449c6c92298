"""End-to-end tests that run amqpd from its CLI as a subprocess and drive it with real clients."""
