"""The nodes (this one, and the others of its cluster: docs/clustering.md), health checks,
aliveness test and definitions."""
import os
import resource
import shutil
import time

from aiohttp import web

from ..admin import AdminError
from ..edge import resources
from .api_core import EXCHANGE_TYPES, RABBITMQ_VERSION, _churn  # noqa: F401
from .auth import bad_request, check_vhost, endpoint, error, not_found
from .body import after_change, durable, no_content, read_json
from .listing import json_response


def _fds() -> tuple[int, int]:
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = 0
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return used, soft if soft != resource.RLIM_INFINITY else 1048576


# RabbitMQ's Erlang-VM, Mnesia and message-store counters: kept in the shape (exporters and
# dashboards read them) with the value 0, amqpd has no such thing
_ZERO_COUNTERS = (
    "context_switches", "gc_bytes_reclaimed", "gc_num", "io_read_avg_time", "io_read_bytes",
    "io_read_count", "io_reopen_count", "io_seek_avg_time", "io_seek_count",
    "io_sync_avg_time", "io_sync_count", "io_write_avg_time", "io_write_bytes",
    "io_write_count", "mnesia_disk_tx_count", "mnesia_ram_tx_count", "msg_store_read_count",
    "msg_store_write_count", "queue_index_read_count", "queue_index_write_count")


def node_json(ctx) -> dict:
    server = ctx.server
    monitor = server.monitor
    alarms = server.alarms.active
    fd_used, fd_total = _fds()
    try:
        mem_used = resources.process_rss()
    except OSError:
        mem_used = 0
    data_dir = ctx.store.data_dir if ctx.store is not None else None
    disk_free = 0
    if data_dir is not None:
        try:
            disk_free = shutil.disk_usage(data_dir).free
        except OSError:
            disk_free = 0
    cfg = ctx.config
    zero = {"rate": 0.0}
    out = _churn(ctx.broker)
    for key in _ZERO_COUNTERS:
        out[key] = 0
        out[key + "_details"] = zero
    out.update({
        "name": ctx.node_name,
        "type": "disc",
        "running": True,
        "being_drained": False,
        "os_pid": str(os.getpid()),
        "fd_used": fd_used, "fd_used_details": zero, "fd_total": fd_total,
        "sockets_used": len(server.protocols), "sockets_used_details": zero,
        "sockets_total": fd_total,
        "mem_used": mem_used, "mem_used_details": zero,
        "mem_limit": monitor.memory_limit if monitor is not None else 0,
        "mem_alarm": "memory" in alarms,
        "mem_calculation_strategy": "rss",
        "disk_free": disk_free, "disk_free_details": zero,
        "disk_free_limit": monitor.disk_free_limit if monitor is not None else 0,
        "disk_free_alarm": "disk" in alarms,
        "proc_used": len(server.protocols), "proc_used_details": zero, "proc_total": 1048576,
        "run_queue": 0,
        "processors": os.cpu_count() or 1,
        "uptime": ctx.uptime_ms(),
        "rates_mode": "basic",
        "net_ticktime": 60,
        "partitions": [],
        "cluster_links": [],
        "exchange_types": EXCHANGE_TYPES,
        "auth_mechanisms": [{"name": m, "description": m, "enabled": True}
                            for m in cfg.auth_mechanisms],
        "applications": [{"name": "amqpd", "description": "amqpd AMQP 0-9-1 broker",
                          "version": RABBITMQ_VERSION}],
        "contexts": [{"description": "amqpd management", "path": "/",
                      "port": str(ctx.http_port or ""), "cowboy_opts": "[]"}],
        "enabled_plugins": ["rabbitmq_management"],
        "log_files": [],
        "db_dir": data_dir or "",
        "config_files": [],
        "ra_open_file_metrics": {"ra_log_segment_writer": 0, "ra_log_wal": 0},
    })
    return out


def other_node_json(ctx, name: str, running: bool, record: dict) -> dict:
    """Another node of the cluster, from its etcd record: what the record says (pid, uptime,
    processors); the figures only that node measures (memory, descriptors, sockets) are 0.
    A node that is not running has only its name, type and ``running``, as in RabbitMQ."""
    out = {"name": name, "type": "disc", "running": running, "being_drained": False}
    if not running:
        return out
    zero = {"rate": 0.0}
    for key in _ZERO_COUNTERS:
        out[key] = 0
        out[key + "_details"] = zero
    started = record.get("started_at") or 0
    out.update({
        "os_pid": str(record.get("pid", "")),
        "uptime": max(0, int(time.time() * 1000) - started) if started else 0,
        "processors": record.get("processors", 1),
        "fd_used": 0, "fd_total": 0, "sockets_used": 0, "sockets_total": 0,
        "mem_used": 0, "mem_limit": 0, "mem_alarm": False, "mem_calculation_strategy": "rss",
        "disk_free": 0, "disk_free_limit": 0, "disk_free_alarm": False,
        "proc_used": 0, "proc_total": 1048576, "run_queue": 0,
        "rates_mode": "basic", "net_ticktime": 60, "partitions": [], "cluster_links": [],
        "exchange_types": EXCHANGE_TYPES,
        "applications": [{"name": "amqpd", "description": "amqpd AMQP 0-9-1 broker",
                          "version": RABBITMQ_VERSION}],
        "enabled_plugins": ["rabbitmq_management"],
        "db_dir": record.get("data_dir") or "",
    })
    return out


def cluster_nodes(ctx) -> list[dict]:
    """Every node: this one measured here, the others of the cluster from etcd."""
    cluster = getattr(ctx, "cluster", None)
    if cluster is None:
        return [node_json(ctx)]
    out = []
    for name, running, record in cluster.nodes():
        if name == ctx.node_name:
            continue
        out.append(other_node_json(ctx, name, running, record))
    me = node_json(ctx)
    me["cluster_links"] = cluster.cluster_links()
    out.append(me)
    out.sort(key=lambda n: n["name"])
    return out


@endpoint("monitoring")
async def nodes(request):
    return json_response(cluster_nodes(request["ctx"]))


@endpoint("monitoring")
async def node(request):
    ctx = request["ctx"]
    if request.match_info["name"] == ctx.node_name and getattr(ctx, "cluster", None) is None:
        return json_response(node_json(ctx))
    for item in cluster_nodes(ctx):
        if item["name"] == request.match_info["name"]:
            return json_response(item)
    raise not_found()


@endpoint("administrator")
async def forget_node(request):
    """DELETE /api/nodes/{name} (amqpd's; RabbitMQ has ``rabbitmqctl forget_cluster_node``
    only): a node that is not running leaves the cluster's member list, once each quorum
    queue it was a member of has a replacement in sync (cluster/queue_members.py)."""
    ctx = request["ctx"]
    cluster = getattr(ctx, "cluster", None)
    name = request.match_info["name"]
    if cluster is None:
        raise bad_request("this node is not in a cluster")
    from ..cluster.etcd import EtcdError, EtcdUnavailable
    try:
        outcome, moves = await cluster.forget(name)
    except (EtcdError, EtcdUnavailable) as exc:
        raise error(503, "service_unavailable", f"etcd: {exc}") from None
    if outcome == "unknown":
        raise not_found()
    if outcome == "running":
        raise bad_request(f"node {name} is running: stop it before it is forgotten")
    if outcome == "replicas":
        failed = "; ".join(m["result"] for m in moves if not m["ok"])
        raise bad_request(f"node {name} is still a member of quorum queues whose replicas "
                          f"could not be moved: {failed}")
    return no_content()


@endpoint("monitoring")
async def cluster_name(request):
    """The cluster's name (``cluster.name``); a single node's is its node name."""
    ctx = request["ctx"]
    cluster = getattr(ctx, "cluster", None)
    return json_response({"name": cluster.name if cluster is not None else ctx.node_name})


# -- health -------------------------------------------------------------------------------------
@endpoint("management")
async def aliveness(request):
    """RabbitMQ declares aliveness-test, publishes and gets a message through it: the same
    here, through the broker (no network client)."""
    ctx = request["ctx"]
    name = request.match_info["vhost"]
    check_vhost(ctx, request["user"], name)
    vhost = ctx.broker.vhosts[name]
    from ..broker.message import Message
    import struct
    q = vhost.declare_queue("aliveness-test", None, False, False, False, False, {})
    header = struct.pack(">HHQH", 60, 0, len(b"test_message"), 0)
    route = b"\x00\x0ealiveness-test"
    vhost.publish(vhost.default, Message("", "aliveness-test", route, header, b"test_message"))
    entry = q.take()
    ok = entry is not None and entry.message.body == b"test_message"
    if entry is not None:
        q.settle(entry)
    after_change(ctx)
    if not ok:
        return json_response({"status": "failed", "reason": "message not received"},
                             status=503)
    return json_response({"status": "ok"})


@endpoint("monitoring")
async def check_alarms(request):
    ctx = request["ctx"]
    alarms = sorted(ctx.server.alarms.active)
    if alarms:
        return json_response({"status": "failed", "reason": "resource alarm(s) in effect",
                              "alarms": [{"node": ctx.node_name, "resource": a}
                                         for a in alarms]}, status=503)
    return json_response({"status": "ok"})


@endpoint("monitoring")
async def check_port_listener(request):
    ctx = request["ctx"]
    try:
        port = int(request.match_info["port"])
    except ValueError:
        raise bad_request("port must be a number") from None
    ports = sorted(p for p in (ctx.server.port, ctx.server.tls_port, ctx.http_port)
                   if p is not None)
    if port in ports:
        return json_response({"status": "ok", "port": port})
    return json_response({"status": "failed", "reason": "No active listener",
                          "missing": port, "ports": ports}, status=503)


@endpoint("monitoring")
async def check_virtual_hosts(request):
    return json_response({"status": "ok"})


# -- definitions --------------------------------------------------------------------------------
@endpoint("administrator")
async def get_definitions(request):
    ctx = request["ctx"]
    doc = ctx.admin.export_definitions()
    doc["rabbit_version"] = RABBITMQ_VERSION
    doc["rabbitmq_version"] = RABBITMQ_VERSION
    vhost = request.match_info.get("vhost")
    if vhost is not None:
        if vhost not in ctx.broker.vhosts:
            raise not_found()
        doc = {"rabbit_version": RABBITMQ_VERSION, "rabbitmq_version": RABBITMQ_VERSION,
               **{key: [dict((k, v) for k, v in item.items() if k != "vhost")
                        for item in doc.get(key, ()) if item.get("vhost") == vhost]
                  for key in ("policies", "queues", "exchanges", "bindings")},
               "parameters": []}
    headers = {}
    if request.query.get("download"):
        headers["Content-Disposition"] = \
            f'attachment; filename="{request.query["download"]}"'
    return json_response(doc, headers=headers)


@endpoint("administrator")
async def post_definitions(request):
    ctx = request["ctx"]
    body = await read_json(request)
    if "file" in body and isinstance(body["file"], str):     # the UI's upload form
        import json
        try:
            body = json.loads(body["file"])
        except ValueError:
            raise bad_request("not_json") from None
    vhost = request.match_info.get("vhost")
    if vhost is not None and vhost not in ctx.broker.vhosts:
        raise not_found()
    try:
        ctx.admin.import_definitions(body, vhost)
    except (AdminError, ValueError) as exc:
        raise error(400, "bad_request", str(exc)) from None
    after_change(ctx)
    await durable(ctx)
    return no_content()


def routes(ctx):
    return [
        web.get("/api/nodes", nodes),
        web.get("/api/nodes/{name}", node),
        web.delete("/api/nodes/{name}", forget_node),
        web.get("/api/cluster-name", cluster_name),
        web.get("/api/aliveness-test/{vhost}", aliveness),
        web.get("/api/health/checks/alarms", check_alarms),
        web.get("/api/health/checks/local-alarms", check_alarms),
        web.get("/api/health/checks/port-listener/{port}", check_port_listener),
        web.get("/api/health/checks/virtual-hosts", check_virtual_hosts),
        web.get("/api/definitions", get_definitions),
        web.post("/api/definitions", post_definitions),
        web.get("/api/definitions/{vhost}", get_definitions),
        web.post("/api/definitions/{vhost}", post_definitions),
    ]
