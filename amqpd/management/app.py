"""The aiohttp application of the management API.

Route modules: each module in ``MODULES`` has ``routes(ctx) -> list[aiohttp.web.RouteDef]``
with full paths (``/api/queues/{vhost}``); handlers take the aiohttp request and are wrapped
in ``auth.endpoint(level)``, which sets ``request["ctx"]`` (the ManagementContext) and
``request["user"]`` (the authenticated access.control.UserRecord). Another module joins with ONE line at the end of this file
(``MODULES.append(module)``).

What the middleware gives every route, as RabbitMQ's API does:
- errors as JSON ``{"error": ..., "reason": ...}`` with RabbitMQ's status codes (404 for an
  unknown path or object, 405 for a method a path does not take, 500 logged);
- a trailing slash means the same as none (``/api/queues/`` is ``/api/queues``): each route
  is registered both ways, so no redirect that a client might not follow;
- ``%2F`` stays inside its path segment (``/api/queues/%2F/q``: vhost ``/``; aiohttp matches
  the encoded path and decodes each segment)."""
import json
import logging

from aiohttp import web

from . import api_access, api_connections, api_core, api_node, api_objects
from .auth import CTX, NoCredentials

log = logging.getLogger("amqpd.management")

MODULES: list = [api_core, api_objects, api_access, api_connections, api_node]


def _json_error(status: int, err: str, reason: str, headers=None) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": err, "reason": reason}),
                        content_type="application/json", headers=headers)


@web.middleware
async def errors(request, handler):
    try:
        return await handler(request)
    except NoCredentials as exc:
        return web.Response(status=401, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status == 404 and not exc.text.startswith("{"):
            return _json_error(404, "Object Not Found", "Not Found")
        if exc.status == 405 and not exc.text.startswith("{"):
            # RabbitMQ answers 405 with an empty body and the methods allowed
            return web.Response(status=405, headers={"Allow": exc.headers.get("Allow", "")})
        raise
    except Exception:
        log.exception("management API: %s %s failed", request.method, request.path)
        return _json_error(500, "internal_error", "see the broker's log")


@web.middleware
async def no_cache(request, handler):
    response = await handler(request)
    if request.method == "GET" and request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-cache")
    return response


def make_app(ctx) -> web.Application:
    app = web.Application(middlewares=[errors, no_cache], client_max_size=64 * 1024 ** 2)
    app[CTX] = ctx
    seen = set()
    for module in MODULES:
        for route in module.routes(ctx):
            _add(app, route, seen)
    return app


def _add(app, route: web.RouteDef, seen: set) -> None:
    paths = [route.path]
    if route.path != "/":
        paths.append(route.path.rstrip("/") + "/" if not route.path.endswith("/")
                     else route.path.rstrip("/"))
    for path in paths:
        key = (route.method, path)
        if key in seen:
            continue
        seen.add(key)
        kwargs = dict(route.kwargs)
        if route.method == "GET":
            app.router.add_get(path, route.handler, **kwargs)
        else:
            kwargs.pop("allow_head", None)
            app.router.add_route(route.method, path, route.handler, **kwargs)


from . import api_policies; MODULES.append(api_policies)  # noqa: E402,E702 (docs/policies.md)
from . import api_quorum; MODULES.append(api_quorum)  # noqa: E402,E702 (docs/clustering.md)
from . import ui; MODULES.append(ui)  # noqa: E402,E702  (the web UI at /, docs/ui.md)
