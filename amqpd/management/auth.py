"""HTTP Basic authentication against the broker's users, and RabbitMQ's management tags:

- ``management``: the API, only the vhosts the user has permissions in, only its own
  connections and channels;
- ``policymaker``: management, plus policies in those vhosts;
- ``monitoring``: management, plus every vhost, connection and channel, node statistics
  (read only);
- ``administrator``: everything (users, vhosts, permissions, definitions).

A user without any of these tags cannot use the API (401, as RabbitMQ 3.10). Handlers are
declared with ``@endpoint(level)``; they receive the aiohttp request, whose ``request["user"]``
is the authenticated ``UserRecord`` and ``request["ctx"]`` the ManagementContext."""
import base64
import binascii
import functools
import json

from aiohttp import web

REALM = 'Basic realm="RabbitMQ Management"'
LEVELS = ("management", "policymaker", "monitoring", "administrator")
# the tags that grant each level (administrator implies every other; monitoring and
# policymaker each imply management)
_GRANTED_BY = {
    "management": {"management", "policymaker", "monitoring", "administrator"},
    "policymaker": {"policymaker", "administrator"},
    "monitoring": {"monitoring", "administrator"},
    "administrator": {"administrator"},
}


CTX = web.AppKey("ctx", object)        # the app's ManagementContext


class NoCredentials(web.HTTPUnauthorized):
    """401 without a body (what RabbitMQ answers to a request without credentials)."""


def error(status: int, err: str, reason: str, headers=None) -> web.HTTPException:
    """An HTTP error with RabbitMQ's JSON body ``{"error": ..., "reason": ...}``."""
    cls = web.HTTPException
    exc = cls(headers=headers, text=json.dumps({"error": err, "reason": reason}),
              content_type="application/json")
    exc.set_status(status)
    return exc


def not_found(reason: str = "Not Found") -> web.HTTPException:
    return error(404, "Object Not Found", reason)


def bad_request(reason: str) -> web.HTTPException:
    return error(400, "bad_request", reason)


def unauthorised(reason: str) -> web.HTTPException:
    """401 "not_authorised": RabbitMQ 3.10 answers 401 also to a user who logged in but whose
    tags or permissions do not allow the request, without the Basic challenge (a browser
    must not ask for another password then)."""
    return error(401, "not_authorised", reason)


def _credentials(request):
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = raw.partition(":")
    return (user, password) if sep else None


async def authenticate(request):
    """The user the request authenticates as, or 401 with ``WWW-Authenticate`` (an empty
    body when no credentials were sent, as RabbitMQ)."""
    ctx = request.app[CTX]
    creds = _credentials(request)
    if creds is None:
        raise NoCredentials(headers={"WWW-Authenticate": REALM})
    name, password = creds
    record = ctx.access.user(name)
    if record is None or not record.check_password(password):
        raise error(401, "not_authorized", "Login failed", {"WWW-Authenticate": REALM})
    peer = request.remote
    if peer and not ctx.access.may_log_in_from(name, peer):
        raise error(401, "not_authorized", "User can only log in via localhost",
                    {"WWW-Authenticate": REALM})
    if not has_level(record, "management"):
        raise unauthorised("Not management user")
    return record


def has_level(user, level: str) -> bool:
    return bool(_GRANTED_BY[level].intersection(user.tags))


_REFUSED = {"management": "Not management user", "policymaker": "Not policymaker user",
            "monitoring": "Not monitor user", "administrator": "Not administrator user"}


def require(user, level: str) -> None:
    if not has_level(user, level):
        raise unauthorised(_REFUSED[level])


def sees_all(user) -> bool:
    """Monitoring and administrator users see every vhost, connection and channel."""
    return has_level(user, "monitoring")


def can_see_vhost(ctx, user, vhost: str) -> bool:
    """RabbitMQ: a management user sees a vhost it has permissions in; monitoring and
    administrator users see all of them."""
    return sees_all(user) or ctx.access.grant(user.name, vhost) is not None


def check_vhost(ctx, user, vhost: str) -> None:
    """404 for a vhost that does not exist, 401 for one the user may not see (monitoring and
    administrator users see every vhost; the resource checks of a change come after)."""
    if vhost not in ctx.broker.vhosts:
        raise not_found("Not Found")
    if not can_see_vhost(ctx, user, vhost):
        raise unauthorised("User not authorised to access virtual host")


def endpoint(level: str = "management"):
    """Authenticate, check the level, then run the handler (``request["user"]`` is set)."""
    if level not in LEVELS:
        raise ValueError(level)

    def wrap(handler):
        @functools.wraps(handler)
        async def run(request):
            request["ctx"] = request.app[CTX]
            user = await authenticate(request)
            require(user, level)
            request["user"] = user
            return await handler(request)
        return run
    return wrap
