"""What write endpoints share: the JSON body (RabbitMQ's 400 ``not_json``), AMQP errors turned
into RabbitMQ's HTTP answers, and waiting until a durable change is on disk before answering
(as an AMQP client hears declare-ok only then)."""
import asyncio
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


class _Waiter:
    """Told by the commit path (store/commit.py) when a sync completed or failed."""

    def __init__(self, commit, gen: int, future):
        self.commit, self.gen, self.future = commit, gen, future

    def flush_confirms(self) -> None:
        if self.future.done():
            return
        if self.gen <= self.commit.synced_gen:
            self.future.set_result(None)
        else:
            self.commit.wait(self)

    def nack_generations(self, lo: int, hi: int) -> None:
        if lo < self.gen <= hi and not self.future.done():
            self.future.set_exception(OSError("a definition change was not made durable"))


async def durable(ctx) -> None:
    """Return once what the broker journaled so far is on disk (at once without a store)."""
    commit = getattr(ctx.broker, "commit", None)
    if commit is None or commit.journal_gen <= commit.synced_gen:
        return
    future = asyncio.get_running_loop().create_future()
    commit.wait(_Waiter(commit, commit.journal_gen, future))
    ctx.server.schedule_commit()
    try:
        await asyncio.wait_for(future, 30)
    except (OSError, asyncio.TimeoutError) as exc:
        raise error(500, "internal_error", f"cannot write to the data directory: {exc}") \
            from None


def after_change(ctx) -> None:
    """Deliveries a change made ready (a requeue, a new binding's messages) and frames it
    queued for clients (basic.cancel to consumers of a deleted queue) go out now."""
    ctx.broker.run_dispatch()
    ctx.server.flush()
