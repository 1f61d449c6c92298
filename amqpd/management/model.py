"""Domain objects as RabbitMQ 3.10's management API shows them (its JSON field names).

Statistics come from the objects' ``.stats`` (broker/stats.py) when they have one; a reader
never depends on them: ``message_stats`` is left out when nothing happened yet, as RabbitMQ
does. Policies are read with getattr defaults (``policy_name`` and friends), so this works with
or without the policies module. Listing 10,000 queues must stay well under 200 ms: one dict
per queue, no per-queue work beyond reading counters."""
import base64

from ..definitions import value_out   # field-table values as JSON, as definitions export them

_ZERO_RATE = {"rate": 0.0}


def args_out(args: dict) -> dict:
    if not args:
        return {}
    return {str(k): value_out(v) for k, v in args.items()}


def _message_stats(obj, now):
    stats = getattr(obj, "stats", None)
    if stats is None:
        return None
    try:
        ms = stats.message_stats(now)
    except Exception:           # a reader never breaks on statistics
        return None
    return ms or None


# -- queues -------------------------------------------------------------------------------------
# what every queue shows the same (one copy per queue, made in C: dict.copy)
_QUEUE_CONST = {
    "head_message_timestamp": None, "memory": 0, "message_bytes_paged_out": 0,
    "message_bytes_persistent": 0, "message_bytes_unacknowledged": 0,
    "messages_details": _ZERO_RATE, "messages_paged_out": 0, "messages_persistent": 0,
    "messages_ready_details": _ZERO_RATE, "messages_unacknowledged_details": _ZERO_RATE,
    "recoverable_slaves": None, "single_active_consumer_tag": None, "state": "running",
    "type": "classic", "exclusive_consumer_tag": None, "consumer_capacity": 0,
    "consumer_utilisation": 0, "effective_policy_definition": {}, "operator_policy": None,
    "policy": None, "arguments": {},
}


def placement_view(ctx):
    """What a cluster node shows of each shared queue's placement: (the placement records by
    (vhost, name), the names of the running nodes), or None on a single node. Read once per
    listing: the records are the node's own copy (followed from etcd), nothing is asked."""
    cluster = getattr(ctx, "cluster", None)
    if cluster is None:
        return None
    placements = getattr(cluster, "placements", None)
    if placements is None:
        return None
    try:
        running = {name for name, up, _record in cluster.nodes() if up}
    except Exception:           # a reader never breaks on the membership view
        running = set()
    return placements.records, running


def _placement_fields(out: dict, view, vhost: str, name: str) -> None:
    """A shared queue of a cluster as RabbitMQ 3.10 shows it: ``type``, ``node`` (its leader)
    and, for a quorum queue, ``leader``, ``members`` and ``online`` (the members whose node
    is running). A queue without a placement record (exclusive, transient) stays as it is."""
    rec = view[0].get((vhost, name))
    if not isinstance(rec, dict):
        return
    kind = rec.get("type") or "classic"
    out["type"] = kind
    leader = rec.get("leader")
    if leader:
        out["node"] = leader
    if kind == "quorum":
        members = [m for m in rec.get("members") or () if isinstance(m, str)]
        out["leader"] = leader or ""
        out["members"] = members
        out["online"] = [m for m in members if m in view[1]]


def queue_json(ctx, q, now=None, node=None, view=None) -> dict:
    """One queue as listed. ``view``: placement_view(ctx), computed once by a listing (a
    single queue's answer computes its own)."""
    ready = q.message_count
    unacked = q.unacked
    total = ready + unacked
    nbytes = q.ready_bytes
    out = _QUEUE_CONST.copy()
    out["auto_delete"] = q.auto_delete
    out["durable"] = q.durable
    out["exclusive"] = q.exclusive_owner is not None
    out["message_bytes"] = out["message_bytes_ram"] = out["message_bytes_ready"] = nbytes
    out["messages"] = out["messages_ram"] = total
    out["messages_ready"] = out["messages_ready_ram"] = ready
    out["messages_unacknowledged"] = out["messages_unacknowledged_ram"] = unacked
    out["name"] = q.name
    out["node"] = node or ctx.node_name
    out["vhost"] = q.vhost.name
    if view is not None:
        _placement_fields(out, view, out["vhost"], q.name)
    if q.arguments:
        out["arguments"] = args_out(q.arguments)
    consumers = q.consumers
    out["consumers"] = n = len(consumers)
    if n:
        out["consumer_capacity"] = out["consumer_utilisation"] = 1.0
        if consumers[0].exclusive:
            out["exclusive_consumer_tag"] = consumers[0].tag
    policy = getattr(q, "policy_name", None)
    if policy is not None:
        out["policy"] = policy
    policy = getattr(q, "operator_policy_name", None)
    if policy is not None:
        out["operator_policy"] = policy
    effective = getattr(q, "effective_policy_definition", None)
    if effective:
        out["effective_policy_definition"] = effective
    stats = getattr(q, "stats", None)
    if stats is not None:
        try:
            ms = stats.message_stats(now if now is not None else ctx.now())
        except Exception:       # a reader never breaks on statistics
            ms = None
        if ms:
            out["message_stats"] = ms
    return out


def queue_detail_json(ctx, q) -> dict:
    """One queue (GET /api/queues/{vhost}/{name}): the listing's fields plus its consumers
    and bindings in and out."""
    out = queue_json(ctx, q, view=placement_view(ctx))
    out["consumer_details"] = [consumer_json(ctx, c) for c in q.consumers]
    out["deliveries"] = []
    out["incoming"] = []
    return out


# -- exchanges ----------------------------------------------------------------------------------
def exchange_json(ctx, ex, now=None) -> dict:
    out = {
        "arguments": args_out(ex.arguments),
        "auto_delete": ex.auto_delete,
        "durable": ex.durable,
        "internal": ex.internal,
        "name": ex.name,
        "type": ex.kind,
        "user_who_performed_action": "",
        "vhost": ex.vhost.name,
    }
    policy = getattr(ex, "policy_name", None)
    if policy is not None:
        out["policy"] = policy
    ms = _message_stats(ex, now if now is not None else ctx.now())
    if ms:
        out["message_stats"] = ms
    return out


# -- bindings -----------------------------------------------------------------------------------
def properties_key(key: str, args: dict) -> str:
    """RabbitMQ's binding "properties_key": the routing key form-encoded (``~`` for an empty
    one without arguments), then ``~`` and a short hash of the arguments when there are any
    (RabbitMQ hashes the Erlang term; amqpd its JSON: the same shape, its own values)."""
    import hashlib
    import json
    import urllib.parse
    quoted = urllib.parse.quote_plus(key, safe="")
    if not args:
        return quoted or "~"
    digest = hashlib.sha1(json.dumps(args_out(args), sort_keys=True).encode()).digest()[:4]
    return quoted + "~" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def binding_json(vhost: str, source: str, dest, dest_type: str, key: str, args) -> dict:
    return {"source": source, "vhost": vhost, "destination": dest,
            "destination_type": dest_type, "routing_key": key,
            "arguments": args_out(args), "properties_key": properties_key(key, args)}


# -- connections, channels, consumers -----------------------------------------------------------
def consumer_json(ctx, c) -> dict:
    ch = c.channel
    return {
        "arguments": args_out(c.arguments),
        "ack_required": not c.no_ack,
        "active": True,
        "activity_status": "up",
        "channel_details": channel_ref(ch),
        "consumer_tag": c.tag,
        "exclusive": c.exclusive,
        "prefetch_count": c.prefetch,
        "queue": {"name": c.queue.name, "vhost": c.queue.vhost.name},
    }


def channel_ref(ch) -> dict:
    conn = ch.conn
    name = name_of(conn)
    peer_host, peer_port = _peer(conn)
    return {"connection_name": name, "name": f"{name} ({ch.number})", "node": "",
            "number": ch.number, "peer_host": peer_host, "peer_port": peer_port,
            "user": conn.user or ""}


def _peer(conn):
    """(host, port) of the client; ``conn.peer`` is "host:port"."""
    host, sep, port = str(conn.peer).rpartition(":")
    if sep and port.isdigit():
        return conn.peer_ip or host.strip("[]"), int(port)
    return conn.peer_ip or "", 0


def connection_json(ctx, conn, now=None) -> dict:
    io = conn.io
    transport = getattr(io, "transport", None)
    sock = transport.get_extra_info("sockname") if transport is not None else None
    host, port = (sock[0], sock[1]) if isinstance(sock, tuple) else ("", 0)
    peer_host, peer_port = _peer(conn)
    tls = conn.tls
    cert = (tls or {}).get("peercert") or {}
    props = value_out(conn.client_properties or {})
    stats = getattr(conn, "stats", None)
    out = {
        "auth_mechanism": getattr(conn, "mechanism", None) or "PLAIN",
        "channel_max": conn.channel_max,
        "channels": len(conn.channels),
        "client_properties": props,
        "connected_at": ctx.connected_at(conn),
        "frame_max": conn.frame_max,
        "host": host,
        "name": name_of(conn),
        "node": ctx.node_name,
        "peer_cert_issuer": _dn(cert.get("issuer")) if tls else None,
        "peer_cert_subject": _dn(cert.get("subject")) if tls else None,
        "peer_cert_validity": cert.get("notAfter") if tls else None,
        "peer_host": peer_host,
        "peer_port": peer_port,
        "port": port,
        "protocol": "AMQP 0-9-1",
        "recv_cnt": 0, "recv_oct": 0, "recv_oct_details": {"rate": 0.0},
        "send_cnt": 0, "send_oct": 0, "send_oct_details": {"rate": 0.0},
        "send_pend": 0,
        "ssl": tls is not None,
        "ssl_cipher": None, "ssl_hash": None, "ssl_key_exchange": None, "ssl_protocol": None,
        "state": "blocked" if getattr(io, "blocked", False) else "running",
        "timeout": conn.heartbeat,
        "type": "network",
        "user": conn.user or "",
        "user_provided_name": props.get("connection_name") if isinstance(props, dict) else None,
        "user_who_performed_action": conn.user or "",
        "vhost": conn.vhost.name if conn.vhost is not None else "",
    }
    if stats is not None:
        try:
            out.update(stats.io())
            out.update(stats.io_details(now if now is not None else ctx.now()))
        except Exception:
            pass
    if tls is not None and transport is not None:
        cipher = transport.get_extra_info("cipher")
        if cipher:
            out["ssl_cipher"], out["ssl_protocol"] = cipher[0], cipher[1]
    return out


def _dn(rdns) -> str | None:
    if not rdns:
        return None
    return ",".join(f"{k}={v}" for rdn in rdns for k, v in rdn)


def name_of(conn) -> str:
    """RabbitMQ's connection name: "client_ip:port -> server_ip:port"."""
    io = conn.io
    transport = getattr(io, "transport", None)
    sock = transport.get_extra_info("sockname") if transport is not None else None
    here = f"{sock[0]}:{sock[1]}" if isinstance(sock, tuple) else "?"
    return f"{conn.peer} -> {here}"


def channel_json(ctx, ch, now=None) -> dict:
    conn = ch.conn
    name = name_of(conn)
    peer_host, peer_port = _peer(conn)
    out = {
        "acks_uncommitted": 0,
        "confirm": bool(ch.confirm),
        "connection_details": {"name": name, "peer_host": peer_host, "peer_port": peer_port},
        "consumer_count": len(ch.consumers),
        "global_prefetch_count": ch.global_prefetch,
        "messages_unacknowledged": len(ch.unacked),
        "messages_uncommitted": len(ch.tx) if ch.tx else 0,
        "messages_unconfirmed": max(0, ch.publish_seq - ch.confirmed) if ch.confirm else 0,
        "name": f"{name} ({ch.number})",
        "node": ctx.node_name,
        "number": ch.number,
        "pending_raft_commands": 0,
        "prefetch_count": ch.prefetch,
        "state": "running",
        "transactional": ch.tx is not None,
        "user": conn.user or "",
        "user_who_performed_action": conn.user or "",
        "vhost": conn.vhost.name if conn.vhost is not None else "",
    }
    ms = _message_stats(ch, now if now is not None else ctx.now())
    if ms:
        out["message_stats"] = ms
    return out
