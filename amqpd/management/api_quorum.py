"""Quorum queues' replicas changed at run time (RabbitMQ 3.13's endpoints; in 3.10 only
``rabbitmq-queues`` does it): add or remove one member of one queue, grow every queue onto a
node, shrink a node out of every queue. The work is cluster/queue_members.py's.

RabbitMQ answers grow and shrink without a body; ``?results=true`` (amqpd's) answers 200 with
one ``{"vhost", "name", "size", "ok", "result"}`` per queue, which amqpctl prints."""
from aiohttp import web

from .auth import bad_request, check_vhost, endpoint, error, not_found
from .body import read_json
from .listing import json_response


def _members(ctx, queue: tuple | None = None):
    cluster = getattr(ctx, "cluster", None)
    if cluster is None:
        if queue is not None and queue[1] not in ctx.broker.vhosts[queue[0]].queues:
            raise not_found()                 # (a missing queue first, as RabbitMQ)
        raise bad_request("this node is not in a cluster: a quorum queue has one replica")
    return cluster.queue_members


async def _run(call):
    from ..cluster.queue_members import MemberError
    try:
        return await call
    except MemberError as exc:
        if exc.status == 404:
            raise not_found(exc.reason) from None
        if exc.status == 503:
            raise error(503, "service_unavailable", exc.reason) from None
        raise bad_request(exc.reason) from None


async def _node_of(request) -> str:
    body = await read_json(request)
    node = body.get("node")
    if not isinstance(node, str) or not node:
        raise bad_request("node is required")
    return node


def _queue(request) -> tuple[str, str]:
    ctx = request["ctx"]
    vhost = request.match_info["vhost"]
    check_vhost(ctx, request["user"], vhost)
    return vhost, request.match_info["name"]


@endpoint("administrator")
async def add_member(request):
    """POST /api/queues/quorum/{vhost}/{name}/replicas/add {"node": ...}: 204."""
    return await _change_member(request, "add", 204)


@endpoint("administrator")
async def delete_member(request):
    """DELETE /api/queues/quorum/{vhost}/{name}/replicas/delete {"node": ...}: 202."""
    return await _change_member(request, "delete", 202)


async def _change_member(request, op: str, status: int) -> web.Response:
    vhost, name = _queue(request)
    members = _members(request["ctx"], (vhost, name))
    node = await _node_of(request)
    await _run(getattr(members, op)(vhost, name, node))
    return web.Response(status=status)


def _results(request, results, status: int) -> web.Response:
    if request.query.get("results") in ("true", "1"):
        return json_response(results)
    return web.Response(status=status)


@endpoint("administrator")
async def grow(request):
    """POST /api/queues/quorum/replicas/on/{node}/grow {"strategy": "all" | "even",
    "vhost_pattern", "queue_pattern"}: 204."""
    members = _members(request["ctx"])
    body = await read_json(request)
    strategy = body.get("strategy", "all")
    vhost_pattern = body.get("vhost_pattern") or ".*"
    queue_pattern = body.get("queue_pattern") or ".*"
    if not all(isinstance(v, str) for v in (strategy, vhost_pattern, queue_pattern)):
        raise bad_request("strategy, vhost_pattern and queue_pattern must be strings")
    results = await _run(members.grow(request.match_info["node"], strategy, vhost_pattern,
                                      queue_pattern))
    return _results(request, results, 204)


@endpoint("administrator")
async def shrink(request):
    """DELETE /api/queues/quorum/replicas/on/{node}/shrink: 202."""
    members = _members(request["ctx"])
    results = await _run(members.shrink(request.match_info["node"]))
    return _results(request, results, 202)


def routes(ctx):
    return [
        web.post("/api/queues/quorum/replicas/on/{node}/grow", grow),
        web.delete("/api/queues/quorum/replicas/on/{node}/shrink", shrink),
        web.post("/api/queues/quorum/{vhost}/{name}/replicas/add", add_member),
        web.delete("/api/queues/quorum/{vhost}/{name}/replicas/delete", delete_member),
    ]
