"""Changing queues, exchanges and bindings, and the message operations (get, purge,
publish), as RabbitMQ 3.10's management API: the same paths, bodies and status codes (201
created, 204 done or already there, 400 with the AMQP error's text, 404 unknown). Operations
are checked against the user's permissions in the vhost, as RabbitMQ checks them through the
user's own direct connection."""
import base64
import struct
import urllib.parse

from aiohttp import web

from .. import errors
from ..broker.message import Message
from ..broker.publish import UNROUTABLE
from ..wire import properties as wire_props
from . import model
from .api_core import find_exchange, find_queue, _vhosts_of
from .auth import bad_request, check_vhost, endpoint, error, not_found
from .body import (after_change, amqp_error, created_or_not, durable, no_content, read_json)
from .listing import json_response, respond


def _flag(body: dict, key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if isinstance(value, str):          # rabbitmqadmin sends "true"/"false"
        return value.lower() == "true"
    return bool(value)


def _args(body: dict) -> dict:
    args = body.get("arguments") or {}
    if not isinstance(args, dict):
        raise bad_request("arguments must be an object")
    return {str(k): v for k, v in args.items()}


def authorize(request, vhost: str, permission: str, kind: str, name: str) -> None:
    """The user's configure/write/read pattern in the vhost must match the resource."""
    ctx, user = request["ctx"], request["user"]
    grant = ctx.access.grant(user.name, vhost)
    if grant is None or not grant.allows(permission, name):
        raise error(401, "not_authorised",
                    f"access to {kind} '{name}' in vhost '{vhost}' refused for user "
                    f"'{user.name}'")


def _vhost(request):
    ctx = request["ctx"]
    name = request.match_info["vhost"]
    check_vhost(ctx, request["user"], name)
    return ctx.broker.vhosts[name]


# -- queues -------------------------------------------------------------------------------------
@endpoint("management")
async def put_queue(request):
    ctx = request["ctx"]
    vhost = _vhost(request)
    name = request.match_info["name"]
    body = await read_json(request)
    authorize(request, vhost.name, "configure", "queue", name)
    created = name not in vhost.queues
    try:
        vhost.declare_queue(name, None, False, _flag(body, "durable"), False,
                            _flag(body, "auto_delete"), _args(body))
    except errors.AMQPError as exc:
        raise amqp_error(exc) from None
    await durable(ctx)
    return created_or_not(created)


@endpoint("management")
async def delete_queue(request):
    ctx = request["ctx"]
    q = find_queue(request)
    authorize(request, q.vhost.name, "configure", "queue", q.name)
    query = request.query
    if query.get("if-empty") == "true" and q.message_count + q.unacked:
        raise bad_request(f"queue '{q.name}' in vhost '{q.vhost.name}' not empty")
    if query.get("if-unused") == "true" and q.consumers:
        raise bad_request(f"queue '{q.name}' in vhost '{q.vhost.name}' in use")
    q.vhost.delete_queue(q)
    after_change(ctx)
    await durable(ctx)
    return no_content()


@endpoint("management")
async def purge_queue(request):
    ctx = request["ctx"]
    q = find_queue(request)
    authorize(request, q.vhost.name, "read", "queue", q.name)
    q.purge()
    after_change(ctx)
    return no_content()


ACKMODES = ("ack_requeue_true", "ack_requeue_false", "reject_requeue_true",
            "reject_requeue_false")


def _payload(body: bytes, encoding: str, truncate):
    if truncate is not None:
        body = body[:truncate]
    if encoding == "auto":
        try:
            return body.decode("utf-8"), "string"
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode(), "base64"


def properties_json(header: bytes):
    """A message's properties as RabbitMQ shows them: absent ones left out, ``[]`` when there
    are none (RabbitMQ's empty list)."""
    props = wire_props.decode(header)
    out = {}
    for name in props.__slots__:
        value = getattr(props, name)
        if value is None:
            continue
        out[name] = model.value_out(value)
    return out or []


@endpoint("management")
async def get_messages(request):
    ctx = request["ctx"]
    body = await read_json(request)
    missing = [k for k in ("ackmode", "encoding") if k not in body]
    if "count" not in body:
        missing.insert(0, "count")
    if missing:
        raise bad_request("[" + ",".join(f"{{key_missing,{k}}}" for k in missing) + "]")
    q = find_queue(request)
    authorize(request, q.vhost.name, "read", "queue", q.name)
    ackmode, encoding = body["ackmode"], body["encoding"]
    if ackmode not in ACKMODES:
        raise bad_request(f"invalid ackmode {ackmode!r}: one of {', '.join(ACKMODES)}")
    if encoding not in ("auto", "base64"):
        raise bad_request("encoding must be auto or base64")
    try:
        count = int(body["count"])
        truncate = body.get("truncate")
        truncate = int(truncate) if truncate not in (None, "") else None
    except (TypeError, ValueError):
        raise bad_request("count and truncate must be numbers") from None
    taken, out = [], []
    for _ in range(max(0, count)):
        entry = q.take()
        if entry is None:
            break
        taken.append(entry)
        msg = entry.message
        payload, how = _payload(msg.body, encoding, truncate)
        out.append({"payload_bytes": len(msg.body), "redelivered": entry.redelivered,
                    "exchange": msg.exchange, "routing_key": msg.routing_key,
                    "message_count": q.message_count,
                    "properties": properties_json(msg.header),
                    "payload": payload, "payload_encoding": how})
    for entry in taken:
        if ackmode == "ack_requeue_false":
            q.settle(entry)
        elif ackmode == "reject_requeue_false":
            q.reject(entry)
        else:
            q.requeue(entry)
    after_change(ctx)
    return json_response(out)


# -- exchanges ----------------------------------------------------------------------------------
@endpoint("management")
async def put_exchange(request):
    ctx = request["ctx"]
    vhost = _vhost(request)
    name = request.match_info["name"]
    body = await read_json(request)
    authorize(request, vhost.name, "configure", "exchange", name)
    if name == "amq.default" or name == "" or (name.startswith("amq.")
                                                and name not in vhost.exchanges):
        raise error(401, "not_authorised",
                    f"access to exchange '{name}' in vhost '{vhost.name}' refused for user "
                    f"'{request['user'].name}'")
    created = name not in vhost.exchanges
    try:
        vhost.declare_exchange(name, str(body.get("type", "direct")), False,
                               _flag(body, "durable"), _flag(body, "auto_delete"),
                               _flag(body, "internal"), _args(body))
    except errors.AMQPError as exc:
        raise amqp_error(exc) from None
    await durable(ctx)
    return created_or_not(created)


@endpoint("management")
async def delete_exchange(request):
    ctx = request["ctx"]
    ex = find_exchange(request)
    authorize(request, ex.vhost.name, "configure", "exchange", ex.name)
    try:
        ex.vhost.delete_exchange(ex.name, request.query.get("if-unused") == "true")
    except errors.AMQPError as exc:
        raise amqp_error(exc) from None
    await durable(ctx)
    return no_content()


def _header(body_size: int, props: dict) -> bytes:
    """A content header for a message published through the API."""
    base = struct.pack(">HHQH", 60, 0, body_size, 0)
    if not props:
        return base
    changes = {}
    for name in wire_props.Properties.__slots__:
        if name in props and props[name] is not None:
            value = props[name]
            if name in ("delivery_mode", "priority"):
                value = int(value)
            elif name == "timestamp":
                import datetime
                value = datetime.datetime.fromtimestamp(int(value), datetime.timezone.utc)
            elif name == "headers":
                if not isinstance(value, dict):
                    raise bad_request("headers must be an object")
            else:
                value = str(value)
            changes[name] = value
    unknown = set(props) - set(wire_props.Properties.__slots__)
    if unknown:
        raise bad_request(f"unknown properties: {', '.join(sorted(unknown))}")
    return wire_props.rewrite(base, **changes)


def _shortstr(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise bad_request("routing key longer than 255 bytes")
    return bytes((len(raw),)) + raw


@endpoint("management")
async def publish(request):
    ctx = request["ctx"]
    body = await read_json(request)
    missing = [k for k in ("payload", "payload_encoding") if k not in body]
    if "routing_key" not in body:
        missing.insert(0, "routing_key")
    if "properties" not in body:
        missing.insert(0, "properties")
    if missing:
        raise bad_request("[" + ",".join(f"{{key_missing,{k}}}" for k in missing) + "]")
    vhost = _vhost(request)
    name = request.match_info["name"]
    xname = "" if name == "amq.default" else name
    ex = vhost.exchanges.get(xname)
    if ex is None:
        raise bad_request(f"404 NOT_FOUND - no exchange '{name}' in vhost '{vhost.name}'")
    authorize(request, vhost.name, "write", "exchange", xname)
    if body["payload_encoding"] == "base64":
        try:
            payload = base64.b64decode(str(body["payload"]), validate=True)
        except ValueError:
            raise bad_request("payload is not base64") from None
    elif body["payload_encoding"] == "string":
        payload = str(body["payload"]).encode()
    else:
        raise bad_request("payload_encoding must be string or base64")
    props = body["properties"] if isinstance(body["properties"], dict) else {}
    key = str(body["routing_key"])
    try:
        header = _header(len(payload), props)
        msg = Message(xname, key, _shortstr(xname) + _shortstr(key), header, payload)
        result = vhost.publish(ex, msg)
    except errors.AMQPError as exc:
        raise amqp_error(exc) from None
    after_change(ctx)
    return json_response({"routed": result is not UNROUTABLE})


# -- bindings -----------------------------------------------------------------------------------
def _bindings_of(vhost, source=None, dest=None, dest_type=None):
    """Every binding of a vhost (RabbitMQ lists the default exchange's implicit ones too)."""
    from ..broker.queue import Queue
    out = []
    if source is None or source is vhost.default:
        if dest_type in (None, "queue"):
            queues = [dest] if dest is not None else sorted(vhost.queues.values(),
                                                            key=lambda q: q.name)
            if source is None or source is vhost.default:
                for q in queues:
                    if isinstance(q, Queue):
                        out.append(model.binding_json(vhost.name, "", q.name, "queue",
                                                      q.name, {}))
    sources = [source] if source is not None else sorted(vhost.exchanges.values(),
                                                         key=lambda e: e.name)
    for ex in sources:
        if ex is vhost.default:
            continue
        rows = []
        for (d, key, _frozen), args in ex.bindings.items():
            kind = "queue" if isinstance(d, Queue) else "exchange"
            if dest is not None and d is not dest:
                continue
            if dest_type is not None and kind != dest_type:
                continue
            rows.append(model.binding_json(vhost.name, ex.name, d.name, kind, key, args))
        rows.sort(key=lambda b: (b["destination"], b["routing_key"]))
        out.extend(rows)
    return out


@endpoint("management")
async def bindings(request):
    items = []
    for v in sorted(_vhosts_of(request), key=lambda v: v.name):
        items.extend(_bindings_of(v))
    return respond(request, items)


def _ends(request):
    """The source exchange and destination of /bindings/{vhost}/e/{source}/{q|e}/{dest}."""
    vhost = _vhost(request)
    sname = request.match_info["source"]
    sname = "" if sname == "amq.default" else sname
    source = vhost.exchanges.get(sname)
    kind = "queue" if request.match_info["kind"] == "q" else "exchange"
    dname = request.match_info["dest"]
    dest = (vhost.queues if kind == "queue" else vhost.exchanges).get(dname)
    return vhost, source, sname, dest, kind, dname


@endpoint("management")
async def bindings_between(request):
    vhost, source, sname, dest, kind, dname = _ends(request)
    if source is None or dest is None:
        raise not_found()
    return json_response(_bindings_of(vhost, source, dest, kind))


@endpoint("management")
async def post_binding(request):
    ctx = request["ctx"]
    vhost, source, sname, dest, kind, dname = _ends(request)
    body = await read_json(request)
    if source is None:
        raise error(404, "not_found", f"no exchange '{sname}' in vhost '{vhost.name}'")
    if dest is None:
        raise error(404, "not_found", f"no {kind} '{dname}' in vhost '{vhost.name}'")
    authorize(request, vhost.name, "write", kind, dname)
    authorize(request, vhost.name, "read", "exchange", sname)
    key = str(body.get("routing_key", ""))
    args = _args(body)
    try:
        vhost.bind(source, dest, key, args)
    except errors.AMQPError as exc:
        raise amqp_error(exc) from None
    after_change(ctx)
    await durable(ctx)
    props = model.properties_key(key, args)
    location = f"{urllib.parse.quote(dname, safe='')}/{urllib.parse.quote(props, safe='')}"
    return web.Response(status=201, headers={"Location": location})


def _find_binding(request):
    vhost, source, sname, dest, kind, dname = _ends(request)
    if source is None or dest is None:
        raise not_found()
    props = request.match_info["props"]
    for b in _bindings_of(vhost, source, dest, kind):
        if b["properties_key"] == props or (not b["arguments"] and b["routing_key"] == props):
            return vhost, source, dest, kind, b
    raise not_found()


@endpoint("management")
async def get_binding(request):
    return json_response(_find_binding(request)[4])


@endpoint("management")
async def delete_binding(request):
    ctx = request["ctx"]
    vhost, source, dest, kind, b = _find_binding(request)
    authorize(request, vhost.name, "write", kind, dest.name)
    authorize(request, vhost.name, "read", "exchange", source.name)
    for (d, key, _frozen), args in list(source.bindings.items()):
        if d is dest and key == b["routing_key"] and model.args_out(args) == b["arguments"]:
            try:
                vhost.unbind(source, dest, key, args)
            except errors.AMQPError as exc:
                raise amqp_error(exc) from None
            break
    await durable(ctx)
    return no_content()


@endpoint("management")
async def queue_bindings(request):
    q = find_queue(request)
    return json_response(_bindings_of(q.vhost, dest=q, dest_type="queue"))


@endpoint("management")
async def exchange_bindings_source(request):
    ex = find_exchange(request)
    if ex is ex.vhost.default:
        return json_response(_bindings_of(ex.vhost, source=ex))
    return json_response(_bindings_of(ex.vhost, source=ex))


@endpoint("management")
async def exchange_bindings_destination(request):
    ex = find_exchange(request)
    vhost = ex.vhost
    rows = []
    for source in sorted(vhost.exchanges.values(), key=lambda e: e.name):
        if source is vhost.default:
            continue
        rows.extend(_bindings_of(vhost, source, ex, "exchange"))
    return json_response(rows)


def routes(ctx):
    B = "/api/bindings/{vhost}/e/{source}/{kind:[qe]}/{dest}"
    return [
        web.put("/api/queues/{vhost}/{name}", put_queue),
        web.delete("/api/queues/{vhost}/{name}", delete_queue),
        web.delete("/api/queues/{vhost}/{name}/contents", purge_queue),
        web.post("/api/queues/{vhost}/{name}/get", get_messages),
        web.get("/api/queues/{vhost}/{name}/bindings", queue_bindings),
        web.put("/api/exchanges/{vhost}/{name}", put_exchange),
        web.delete("/api/exchanges/{vhost}/{name}", delete_exchange),
        web.post("/api/exchanges/{vhost}/{name}/publish", publish),
        web.get("/api/exchanges/{vhost}/{name}/bindings/source", exchange_bindings_source),
        web.get("/api/exchanges/{vhost}/{name}/bindings/destination",
                exchange_bindings_destination),
        web.get("/api/bindings", bindings),
        web.get("/api/bindings/{vhost}", bindings),
        web.get(B, bindings_between),
        web.post(B, post_binding),
        web.get(B + "/{props}", get_binding),
        web.delete(B + "/{props}", delete_binding),
    ]
