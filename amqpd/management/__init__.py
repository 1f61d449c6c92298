"""The management plane: a RabbitMQ-compatible HTTP API (aiohttp) on the broker's own event
loop. ``app.make_app(ctx)`` builds the application from the route modules in ``app.MODULES``;
``listener.HTTPListener`` serves it; the node (node.py) starts it once the AMQP listeners
serve. See docs/management.md."""
