"""``/api/policies`` and ``/api/operator-policies``: list (all, per vhost), get, put, delete,
with RabbitMQ 3.10.8's JSON, status codes and reasons (recorded from its API; see
docs/policies.md):

- lists: every management user, filtered to the vhosts it can see (401 "User not authorised
  to access virtual host" for a vhost it cannot, 404 for one that does not exist);
- one policy (GET/PUT/DELETE): the ``policymaker`` tag and access to the vhost, else 401
  "User not authorised to access object"; one operator policy: ``administrator`` only;
- PUT answers 201 when the policy is new, 204 when it replaced one; a PUT into a missing vhost
  404 ``{"error": "not_found", "reason": "vhost_not_found"}``; a body that is not a JSON
  object 400 ``not_json``; a missing key 400 ``[{key_missing,pattern}]``; a refused policy
  400 ``Validation failed\\n\\n<why>\\n`` (for /api/policies with ``<``, ``>`` and ``&``
  HTML-escaped, as RabbitMQ's policy resource does and its operator-policy resource does not);
- DELETE answers 204, or 404 when there is no such policy.
"""
import json

from aiohttp import web

from ..broker.policy import PolicyError
from .auth import can_see_vhost, endpoint, error, has_level

POLICIES, OPERATOR = "/api/policies", "/api/operator-policies"


def _json(value, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(value, separators=(",", ":"),
                                        ensure_ascii=False).encode(),
                        status=status, content_type="application/json")


def _not_found() -> web.HTTPException:
    return error(404, "Object Not Found", "Not Found")


def _operator(request) -> bool:
    return request.path.startswith(OPERATOR)


def _visible_vhost(request) -> str:
    """The {vhost} of a per-vhost listing, checked as RabbitMQ checks it."""
    ctx, user = request["ctx"], request["user"]
    vhost = request.match_info["vhost"]
    if vhost not in ctx.broker.vhosts:
        raise _not_found()
    if not can_see_vhost(ctx, user, vhost):
        raise error(401, "not_authorised", "User not authorised to access virtual host")
    return vhost


def _may_change(request) -> str:
    """The {vhost} of one policy, after RabbitMQ's checks for one object."""
    ctx, user = request["ctx"], request["user"]
    vhost = request.match_info["vhost"]
    if _operator(request):
        if not has_level(user, "administrator"):
            raise error(401, "not_authorised", "Not administrator user")
    elif not has_level(user, "policymaker") or not (
            has_level(user, "administrator") or ctx.access.grant(user.name, vhost) is not None):
        raise error(401, "not_authorised", "User not authorised to access object")
    return vhost


@endpoint("management")
async def list_all(request):
    ctx, user = request["ctx"], request["user"]
    items = [p.to_json() for p in ctx.broker.policies.list(operator=_operator(request))
             if can_see_vhost(ctx, user, p.vhost)]
    return _json(items)


@endpoint("management")
async def list_vhost(request):
    ctx = request["ctx"]
    vhost = _visible_vhost(request)
    return _json([p.to_json() for p in ctx.broker.policies.list(vhost, _operator(request))])


@endpoint("management")
async def get_one(request):
    ctx = request["ctx"]
    vhost = _may_change(request)
    policy = ctx.broker.policies.get(vhost, request.match_info["name"], _operator(request))
    if policy is None:
        raise _not_found()
    return _json(policy.to_json())


@endpoint("management")
async def put_one(request):
    ctx = request["ctx"]
    vhost = _may_change(request)
    operator = _operator(request)
    try:
        body = json.loads(await request.read() or b"null")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise error(400, "bad_request", "not_json")
    if vhost not in ctx.broker.vhosts:
        raise error(404, "not_found", "vhost_not_found")
    try:
        created = ctx.broker.policies.set(vhost, request.match_info["name"], body, operator)
    except PolicyError as exc:
        reason = exc.reason
        if not operator:
            reason = reason.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        raise error(400, "bad_request", reason) from None
    except KeyError:
        raise error(404, "not_found", "vhost_not_found") from None
    except OSError as exc:
        raise error(500, "internal_error",
                    f"cannot write to the data directory: {exc.strerror or exc}") from None
    return web.Response(status=201 if created else 204)


@endpoint("management")
async def delete_one(request):
    ctx = request["ctx"]
    vhost = _may_change(request)
    try:
        deleted = ctx.broker.policies.delete(vhost, request.match_info["name"],
                                             _operator(request))
    except OSError as exc:
        raise error(500, "internal_error",
                    f"cannot write to the data directory: {exc.strerror or exc}") from None
    if not deleted:
        raise _not_found()
    return web.Response(status=204)


def routes(ctx):
    out = []
    for base in (POLICIES, OPERATOR):
        out += [web.get(base, list_all),
                web.get(base + "/{vhost}", list_vhost),
                web.get(base + "/{vhost}/{name}", get_one),
                web.put(base + "/{vhost}/{name}", put_one),
                web.delete(base + "/{vhost}/{name}", delete_one)]
    return out
