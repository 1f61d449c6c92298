"""The core read endpoints: whoami, overview, vhosts, queues, exchanges (RabbitMQ 3.10's paths
and fields). Listings only show what the user may see (auth.can_see_vhost)."""
from aiohttp import web

from ..version import __version__
from . import model
from .auth import can_see_vhost, check_vhost, endpoint, has_level, not_found
from .listing import json_response, respond

RABBITMQ_VERSION = "3.10.8"     # the API amqpd answers like (tools compare versions)

EXCHANGE_TYPES = [
    {"name": "direct", "description": "AMQP direct exchange, as per the AMQP specification",
     "enabled": True},
    {"name": "fanout", "description": "AMQP fanout exchange, as per the AMQP specification",
     "enabled": True},
    {"name": "headers", "description": "AMQP headers exchange, as per the AMQP specification",
     "enabled": True},
    {"name": "topic", "description": "AMQP topic exchange, as per the AMQP specification",
     "enabled": True},
    {"name": "x-consistent-hash", "description": "Consistent Hashing Exchange",
     "enabled": True},
    {"name": "x-delayed-message", "description": "Delayed Message Exchange", "enabled": True},
    {"name": "x-message-deduplication", "description": "Message Deduplication Exchange",
     "enabled": True},
]


def visible_vhosts(ctx, user):
    return [v for v in ctx.broker.vhosts.values() if can_see_vhost(ctx, user, v.name)]


def _vhosts_of(request):
    """The vhosts a listing covers: the one in the path (checked), or all the user sees."""
    ctx = request["ctx"]
    user = request["user"]
    name = request.match_info.get("vhost")
    if name is None:
        return visible_vhosts(ctx, user)
    check_vhost(ctx, user, name)
    return [ctx.broker.vhosts[name]]


def user_queues(ctx, vhosts):
    for v in vhosts:
        yield from v.queues.values()


# -- whoami, overview ---------------------------------------------------------------------------
@endpoint("management")
async def whoami(request):
    user = request["user"]
    return json_response({"name": user.name, "tags": list(user.tags)})


def overview_json(ctx, user) -> dict:
    broker = ctx.broker
    vhosts = visible_vhosts(ctx, user)
    ready = unacked = queues = exchanges = consumers = 0
    for v in vhosts:
        for q in v.queues.values():
            queues += 1
            ready += q.message_count
            unacked += q.unacked
            consumers += len(q.consumers)
        exchanges += len(v.exchanges)
    conns = [c for c in ctx.connections()
             if has_level(user, "monitoring") or c.user == user.name]
    channels = sum(len(c.channels) for c in conns)
    zero = {"rate": 0.0}
    out = {
        "management_version": RABBITMQ_VERSION,
        "rates_mode": "basic",
        "sample_retention_policies": {"global": [600, 3600, 28800, 86400],
                                      "basic": [600, 3600], "detailed": [600]},
        "exchange_types": EXCHANGE_TYPES,
        "product_version": __version__,
        "product_name": "amqpd",
        "rabbitmq_version": RABBITMQ_VERSION,
        "cluster_name": _cluster_name(ctx),
        "erlang_version": "n/a",
        "erlang_full_version": "n/a (amqpd is written in Python)",
        "release_series_support_status": "supported",
        "disable_stats": False,
        "enable_queue_totals": False,
        "churn_rates": _churn(broker),
        "queue_totals": {"messages": ready + unacked, "messages_details": zero,
                         "messages_ready": ready, "messages_ready_details": zero,
                         "messages_unacknowledged": unacked,
                         "messages_unacknowledged_details": zero},
        "object_totals": {"channels": channels, "connections": len(conns),
                          "consumers": consumers, "exchanges": exchanges, "queues": queues},
        "statistics_db_event_queue": 0,
        "node": ctx.node_name,
        "listeners": listeners_json(ctx),
        "contexts": [{"node": ctx.node_name, "description": "amqpd management",
                      "path": "/", "port": str(getattr(ctx, "http_port", "") or ""),
                      "cowboy_opts": "[]", "ssl_opts": []}],
    }
    stats = getattr(broker, "stats", None)
    if stats is not None:
        try:
            ms = stats.message_stats(ctx.now())
        except Exception:
            ms = None
        if ms:
            out["message_stats"] = ms
    return out


def _churn(broker) -> dict:
    stats = getattr(broker, "stats", None)
    churn = {}
    if stats is not None and hasattr(stats, "churn"):
        try:
            churn = stats.churn()
        except Exception:
            churn = {}
    names = {"channel_closed": "channels_closed", "channel_created": "channels_opened",
             "connection_closed": "connections_closed",
             "connection_created": "connections_opened",
             "queue_created": "queues_created", "queue_declared": "queues_declared",
             "queue_deleted": "queues_deleted"}
    out = {}
    for key, source in names.items():
        out[key] = int(churn.get(source, 0))
        out[key + "_details"] = {"rate": 0.0}
    return out


@endpoint("management")
async def overview(request):
    ctx = request["ctx"]
    return json_response(overview_json(ctx, request["user"]))


# -- vhosts -------------------------------------------------------------------------------------
def vhost_json(ctx, vhost) -> dict:
    record = ctx.access.vhosts.get(vhost.name) if ctx.access is not None else None
    description = record.description if record is not None else ""
    tags = list(record.tags) if record is not None else []
    ready = unacked = 0
    for q in vhost.queues.values():
        ready += q.message_count
        unacked += q.unacked
    zero = {"rate": 0.0}
    recv = send = 0
    for conn in ctx.access.by_vhost.get(vhost.name, ()) if ctx.access is not None else ():
        stats = getattr(conn, "stats", None)
        if stats is not None:
            try:
                io = stats.io()
                recv += io.get("recv_oct", 0)
                send += io.get("send_oct", 0)
            except Exception:
                pass
    return {"cluster_state": {ctx.node_name: "running"}, "default_queue_type": "undefined",
            "recv_oct": recv, "recv_oct_details": zero, "send_oct": send,
            "send_oct_details": zero,
            "description": description, "metadata": {"description": description, "tags": tags},
            "name": vhost.name, "tags": tags, "tracing": False,
            "messages": ready + unacked, "messages_details": zero,
            "messages_ready": ready, "messages_ready_details": zero,
            "messages_unacknowledged": unacked, "messages_unacknowledged_details": zero}


@endpoint("management")
async def vhosts(request):
    ctx = request["ctx"]
    items = [vhost_json(ctx, v) for v in visible_vhosts(ctx, request["user"])]
    items.sort(key=lambda i: i["name"])
    return respond(request, items)


@endpoint("management")
async def vhost(request):
    ctx = request["ctx"]
    name = request.match_info["vhost"]
    if name not in ctx.broker.vhosts or not can_see_vhost(ctx, request["user"], name):
        raise not_found()
    return json_response(vhost_json(ctx, ctx.broker.vhosts[name]))


# -- queues -------------------------------------------------------------------------------------
@endpoint("management")
async def queues(request):
    ctx = request["ctx"]
    now, node, view = ctx.now(), ctx.node_name, model.placement_view(ctx)
    items = [model.queue_json(ctx, q, now, node, view)
             for v in sorted(_vhosts_of(request), key=lambda v: v.name)
             for q in sorted(v.queues.values(), key=lambda q: q.name)]
    return respond(request, items)


def find_queue(request):
    ctx = request["ctx"]
    vname = request.match_info["vhost"]
    check_vhost(ctx, request["user"], vname)
    q = ctx.broker.vhosts[vname].queues.get(request.match_info["name"])
    if q is None or q.deleted:
        raise not_found()
    return q


@endpoint("management")
async def queue(request):
    ctx = request["ctx"]
    return json_response(model.queue_detail_json(ctx, find_queue(request)))


# -- exchanges ----------------------------------------------------------------------------------
@endpoint("management")
async def exchanges(request):
    ctx = request["ctx"]
    now = ctx.now()
    items = [model.exchange_json(ctx, ex, now)
             for v in sorted(_vhosts_of(request), key=lambda v: v.name)
             for ex in sorted(v.exchanges.values(), key=lambda e: e.name)]
    return respond(request, items)


def find_exchange(request):
    ctx = request["ctx"]
    vname = request.match_info["vhost"]
    check_vhost(ctx, request["user"], vname)
    name = request.match_info["name"]
    if name == "amq.default":
        name = ""
    ex = ctx.broker.vhosts[vname].exchanges.get(name)
    if ex is None:
        raise not_found()
    return ex


@endpoint("management")
async def exchange(request):
    ctx = request["ctx"]
    ex = find_exchange(request)
    out = model.exchange_json(ctx, ex)
    out["incoming"] = []
    out["outgoing"] = []
    return json_response(out)


def routes(ctx):
    return [
        web.get("/api/whoami", whoami),
        web.get("/api/overview", overview),
        web.get("/api/vhosts", vhosts),
        web.get("/api/vhosts/{vhost}", vhost),
        web.get("/api/queues", queues),
        web.get("/api/queues/{vhost}", queues),
        web.get("/api/queues/{vhost}/{name}", queue),
        web.get("/api/exchanges", exchanges),
        web.get("/api/exchanges/{vhost}", exchanges),
        web.get("/api/exchanges/{vhost}/{name}", exchange),
    ]


def _cluster_name(ctx) -> str:
    """The cluster's name (cluster.name) in a cluster, else this node's, as RabbitMQ shows a
    single node's."""
    cluster = getattr(ctx, "cluster", None)
    return cluster.name if cluster is not None else ctx.node_name


def local_listeners(ctx) -> list[dict]:
    """This node's client-facing listeners, from its configuration and bound ports."""
    cfg = ctx.config.listeners
    return [{"protocol": proto, "ip_address": lst.host, "port": port}
            for proto, lst, port in (("amqp", cfg.amqp, ctx.server.port),
                                     ("amqp/ssl", cfg.amqps, ctx.server.tls_port),
                                     ("http", cfg.http, getattr(ctx, "http_port", None)))
            if lst is not None and port is not None]


# RabbitMQ 3.10's socket_opts per protocol (what clients of the API may read)
_TCP_OPTS = {"backlog": 128, "nodelay": True, "linger": [True, 0], "exit_on_close": False}


def _socket_opts(lst: dict):
    protocol = lst.get("protocol")
    if protocol in ("amqp", "amqp/ssl"):
        return dict(_TCP_OPTS)
    if protocol == "clustering":
        return []
    opts = {"cowboy_opts": {"sendfile": False}, "port": lst.get("port")}
    if protocol not in ("http", "https"):
        opts["protocol"] = protocol
    return opts


def listeners_json(ctx) -> list[dict]:
    """Every running node's listeners, one entry per node and protocol, by node then
    protocol (as RabbitMQ's overview lists a cluster's). Each node's come from its cluster
    record (node.py's ``_listeners``), so every node lists the same; this node's own from its
    configuration while it has no running record (a single node, starting, or etcd lost)."""
    by_node = {}
    cluster = getattr(ctx, "cluster", None)
    if cluster is not None:
        by_node = {name: record.get("listeners") or [] for name, running, record
                   in cluster.nodes() if running}
    if not by_node.get(ctx.node_name):
        by_node[ctx.node_name] = local_listeners(ctx)
    return [{"node": node, "protocol": lst.get("protocol"),
             "ip_address": lst.get("ip_address"), "port": lst.get("port"),
             "socket_opts": _socket_opts(lst)}
            for node in sorted(by_node)
            for lst in sorted(by_node[node], key=lambda x: (str(x.get("protocol")),
                                                             x.get("port") or 0))]


def cluster_listeners(ctx) -> list[dict]:
    """The other running nodes' entries of ``listeners_json``."""
    return [lst for lst in listeners_json(ctx) if lst["node"] != ctx.node_name]
