"""Users, permissions and vhosts at run time (administrator), through amqpd/admin.py: applied
at once, stored in the data directory as a definitions import is."""
from aiohttp import web

from ..admin import AdminError
from ..config import HASHING_ALGORITHMS, password_hash_problem
from .api_core import vhost_json
from .auth import bad_request, endpoint, error, not_found
from .body import created_or_not, no_content, read_json
from .listing import json_response, respond


def user_json(record) -> dict:
    return {"name": record.name, "password_hash": record.exported_hash(),
            "hashing_algorithm": record.hashing_algorithm, "tags": list(record.tags),
            "limits": record.limits()}


def _tags(value) -> tuple:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    if isinstance(value, list):
        return tuple(str(t).strip() for t in value if str(t).strip())
    raise bad_request("tags must be a string or a list")


def _admin(request):
    return request["ctx"].admin


# -- users --------------------------------------------------------------------------------------
@endpoint("administrator")
async def users(request):
    ctx = request["ctx"]
    items = sorted((user_json(u) for u in ctx.access.users.values()), key=lambda u: u["name"])
    return respond(request, items)


@endpoint("administrator")
async def users_without_permissions(request):
    ctx = request["ctx"]
    having = {user for user, _vhost in ctx.access.grants}
    items = sorted((user_json(u) for u in ctx.access.users.values() if u.name not in having),
                   key=lambda u: u["name"])
    return json_response(items)


@endpoint("administrator")
async def user(request):
    record = request["ctx"].access.user(request.match_info["name"])
    if record is None:
        raise not_found()
    return json_response(user_json(record))


@endpoint("administrator")
async def put_user(request):
    name = request.match_info["name"]
    body = await read_json(request)
    tags = _tags(body.get("tags"))
    password = body.get("password")
    password_hash = body.get("password_hash")
    algorithm = body.get("hashing_algorithm", "rabbit_password_hashing_sha256")
    if algorithm not in HASHING_ALGORITHMS:
        raise bad_request(f"unknown hashing_algorithm {algorithm!r}")
    if password is not None and not isinstance(password, str):
        raise bad_request("password must be a string")
    if password_hash is not None:
        if not isinstance(password_hash, str):
            raise bad_request("password_hash must be a string")
        problem = password_hash_problem(password_hash)
        if problem == "not base64":
            raise error(400, "bad_request", ["not_base64", password_hash])
        if problem:
            raise bad_request(f"password_hash {problem}")
    admin = _admin(request)
    exists = request["ctx"].access.user(name) is not None
    if password is None and password_hash is None and not exists:
        password_hash = ""            # RabbitMQ: a user without a password (cannot log in)
    try:
        created = admin.put_user(name, password=password, password_hash=password_hash,
                                 tags=tags, hashing_algorithm=algorithm)
    except AdminError as exc:
        raise bad_request(str(exc)) from None
    return created_or_not(created)


@endpoint("administrator")
async def delete_user(request):
    if not _admin(request).delete_user(request.match_info["name"]):
        raise not_found()
    return no_content()


@endpoint("administrator")
async def bulk_delete_users(request):
    body = await read_json(request)
    names = body.get("users")
    if not isinstance(names, list):
        raise bad_request("users must be a list")
    for name in names:
        _admin(request).delete_user(str(name))
    return no_content()


@endpoint("administrator")
async def user_permissions(request):
    ctx = request["ctx"]
    name = request.match_info["name"]
    if ctx.access.user(name) is None:
        raise not_found()
    items = [g.to_json() for (u, _v), g in sorted(ctx.access.grants.items()) if u == name]
    return json_response(items)


# -- permissions --------------------------------------------------------------------------------
@endpoint("administrator")
async def permissions(request):
    ctx = request["ctx"]
    items = [g.to_json() for _key, g in sorted(ctx.access.grants.items())]
    return respond(request, items)


@endpoint("administrator")
async def vhost_permissions(request):
    ctx = request["ctx"]
    vhost = request.match_info["vhost"]
    if vhost not in ctx.broker.vhosts:
        raise not_found()
    items = [g.to_json() for (_u, v), g in sorted(ctx.access.grants.items()) if v == vhost]
    return json_response(items)


@endpoint("administrator")
async def permission(request):
    ctx = request["ctx"]
    grant = ctx.access.grant(request.match_info["user"], request.match_info["vhost"])
    if grant is None:
        raise not_found()
    return json_response(grant.to_json())


@endpoint("administrator")
async def put_permission(request):
    ctx = request["ctx"]
    vhost, name = request.match_info["vhost"], request.match_info["user"]
    body = await read_json(request)
    if vhost not in ctx.broker.vhosts or ctx.access.user(name) is None:
        raise bad_request("vhost_or_user_not_found")
    missing = [k for k in ("configure", "write", "read") if k not in body]
    if missing:
        raise bad_request("[" + ",".join(f"{{key_missing,{k}}}" for k in missing) + "]")
    try:
        created = _admin(request).set_permissions(name, vhost, str(body["configure"]),
                                                  str(body["write"]), str(body["read"]))
    except AdminError as exc:
        raise bad_request(str(exc)) from None
    return created_or_not(created)


@endpoint("administrator")
async def delete_permission(request):
    if not _admin(request).clear_permissions(request.match_info["user"],
                                             request.match_info["vhost"]):
        raise not_found()
    return no_content()


# -- vhosts -------------------------------------------------------------------------------------
@endpoint("administrator")
async def put_vhost(request):
    name = request.match_info["vhost"]
    body = await read_json(request)
    description = body.get("description", "")
    admin = _admin(request)
    try:
        created = admin.put_vhost(name, str(description or ""), _tags(body.get("tags")))
    except AdminError as exc:
        raise bad_request(str(exc)) from None
    if created:     # RabbitMQ gives the user who created it full permissions there
        admin.set_permissions(request["user"].name, name, ".*", ".*", ".*")
    return created_or_not(created)


@endpoint("administrator")
async def delete_vhost(request):
    ctx = request["ctx"]
    if not _admin(request).delete_vhost(request.match_info["vhost"]):
        raise not_found()
    ctx.server.flush()
    return no_content()


def routes(ctx):
    return [
        web.get("/api/users", users),
        web.get("/api/users/without-permissions", users_without_permissions),
        web.post("/api/users/bulk-delete", bulk_delete_users),
        web.get("/api/users/{name}", user),
        web.put("/api/users/{name}", put_user),
        web.delete("/api/users/{name}", delete_user),
        web.get("/api/users/{name}/permissions", user_permissions),
        web.get("/api/permissions", permissions),
        web.get("/api/permissions/{vhost}/{user}", permission),
        web.put("/api/permissions/{vhost}/{user}", put_permission),
        web.delete("/api/permissions/{vhost}/{user}", delete_permission),
        web.get("/api/vhosts/{vhost}/permissions", vhost_permissions),
        web.put("/api/vhosts/{vhost}", put_vhost),
        web.delete("/api/vhosts/{vhost}", delete_vhost),
    ]


__all__ = ["routes", "user_json", "vhost_json"]
