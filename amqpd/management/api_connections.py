"""Connections, channels and consumers. Management users see their own; monitoring and
administrator users see everyone's. DELETE of a connection closes it as RabbitMQ does: 320
CONNECTION_FORCED with the reason from the ``X-Reason`` header."""
from aiohttp import web

from . import model
from .api_core import _vhosts_of
from .auth import check_vhost, endpoint, has_level, not_found, sees_all
from .body import no_content
from .listing import json_response, respond


def visible_connections(request):
    ctx, user = request["ctx"], request["user"]
    everyone = sees_all(user)
    return [c for c in ctx.connections() if everyone or c.user == user.name]


def _find_connection(request):
    name = request.match_info["name"]
    for conn in visible_connections(request):
        if model.name_of(conn) == name:
            return conn
    raise not_found()


@endpoint("management")
async def connections(request):
    ctx = request["ctx"]
    now = ctx.now()
    vhost = request.match_info.get("vhost")
    conns = visible_connections(request)
    if vhost is not None:
        check_vhost(ctx, request["user"], vhost)
        conns = [c for c in conns if c.vhost is not None and c.vhost.name == vhost]
    items = [model.connection_json(ctx, c, now) for c in conns]
    items.sort(key=lambda c: c["name"])
    return respond(request, items)


@endpoint("management")
async def connection(request):
    ctx = request["ctx"]
    return json_response(model.connection_json(ctx, _find_connection(request)))


@endpoint("management")
async def delete_connection(request):
    ctx, user = request["ctx"], request["user"]
    conn = _find_connection(request)
    if conn.user != user.name and not has_level(user, "administrator"):
        raise not_found()
    reason = request.headers.get("X-Reason", "Closed via management plugin")
    conn.close(320, f"CONNECTION_FORCED - {reason}")
    ctx.server.flush()
    return no_content()


@endpoint("management")
async def connection_channels(request):
    ctx = request["ctx"]
    conn = _find_connection(request)
    now = ctx.now()
    items = [model.channel_json(ctx, ch, now)
             for _n, ch in sorted(conn.channels.items())]
    return respond(request, items)


def _channels(request):
    for conn in visible_connections(request):
        for _n, ch in sorted(conn.channels.items()):
            yield ch


@endpoint("management")
async def channels(request):
    ctx = request["ctx"]
    now = ctx.now()
    vhost = request.match_info.get("vhost")
    if vhost is not None:
        check_vhost(ctx, request["user"], vhost)
    items = [model.channel_json(ctx, ch, now) for ch in _channels(request)
             if vhost is None or ch.conn.vhost.name == vhost]
    items.sort(key=lambda c: c["name"])
    return respond(request, items)


@endpoint("management")
async def channel(request):
    ctx = request["ctx"]
    name = request.match_info["name"]
    for ch in _channels(request):
        if f"{model.name_of(ch.conn)} ({ch.number})" == name:
            return json_response(model.channel_json(ctx, ch))
    raise not_found()


@endpoint("management")
async def consumers(request):
    ctx, user = request["ctx"], request["user"]
    everyone = sees_all(user)
    items = []
    for v in sorted(_vhosts_of(request), key=lambda v: v.name):
        for q in sorted(v.queues.values(), key=lambda q: q.name):
            for c in q.consumers:
                if everyone or c.channel.conn.user == user.name:
                    items.append(model.consumer_json(ctx, c))
    return respond(request, items)


def routes(ctx):
    return [
        web.get("/api/connections", connections),
        web.get("/api/vhosts/{vhost}/connections", connections),
        web.get("/api/connections/{name}", connection),
        web.delete("/api/connections/{name}", delete_connection),
        web.get("/api/connections/{name}/channels", connection_channels),
        web.get("/api/channels", channels),
        web.get("/api/vhosts/{vhost}/channels", channels),
        web.get("/api/channels/{name}", channel),
        web.get("/api/consumers", consumers),
        web.get("/api/consumers/{vhost}", consumers),
    ]
