"""What write endpoints share: the JSON body (RabbitMQ's 400 ``not_json``), AMQP errors turned
into RabbitMQ's HTTP answers, and waiting until a durable change is on disk before answering
(as an AMQP client hears declare-ok only then)."""
import json

from aiohttp import web

from .. import errors
from .auth import bad_request, error


async def read_json(request, default=None) -> dict:
    raw = await request.read()
    if not raw.strip():
        if default is not None:
            return default
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("not_json") from None
    if not isinstance(value, dict):
        raise bad_request("not_json")
    return value


def amqp_error(exc: errors.AMQPError) -> web.HTTPException:
    """RabbitMQ's management answers a refused declare/delete with 400 and the AMQP error's
    text (an inequivalent argument, an unknown exchange type); a missing object is 404."""
    if exc.code == 404:
        return error(404, "Object Not Found", "Not Found")
    if exc.code == 403:
        return error(401, "not_authorised", exc.text)
    return bad_request(exc.text)


def no_content() -> web.Response:
    return web.Response(status=204)


def created_or_not(created: bool) -> web.Response:
    """RabbitMQ: 201 when a PUT created the object, 204 when it was there."""
    return web.Response(status=201 if created else 204)


async def durable(ctx) -> None:
    """Return once what the broker journaled so far is on disk (at once without a store)."""
    try:
        await ctx.server.durable(30)
    except OSError as exc:            # a failed fsync, or TimeoutError after 30 s
        raise error(500, "internal_error", f"cannot write to the data directory: {exc}") \
            from None


def after_change(ctx) -> None:
    """Deliveries a change made ready (a requeue, a new binding's messages) and frames it
    queued for clients (basic.cancel to consumers of a deleted queue) go out now."""
    ctx.broker.run_dispatch()
    ctx.server.flush()
