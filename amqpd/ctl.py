"""``amqpctl``: rabbitmqctl's verbs and column arguments over the management HTTP API.

It speaks only HTTP (the API amqpd and RabbitMQ's management plugin both serve), with the
standard library's urllib, so the command starts in a few tens of milliseconds and needs
nothing installed beside Python. It imports nothing else of amqpd: it works against any broker
with that API, a remote one included.

Output follows rabbitmqctl 3.10.8: a banner line ("Listing queues for vhost / ..."), then a
tab-separated table with a header line; ``-q`` drops the banner, ``-s`` / ``--no-table-headers``
the header too; ``--formatter json`` prints rabbitmqctl's JSON layout (one object a line).
Exit codes are rabbitmqctl's for the same failure (docs/amqpctl.md has the table), so scripts
written against rabbitmqctl keep their ``case $?``.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_URL = "http://127.0.0.1:15672"

# sysexits.h, as rabbitmqctl uses them
EX_OK, EX_SOFTWARE_FAILURE = 0, 1
EX_USAGE, EX_DATAERR, EX_NOUSER, EX_UNAVAILABLE = 64, 65, 67, 69
EX_SOFTWARE, EX_TEMPFAIL, EX_NOPERM = 70, 75, 77


class CtlError(Exception):
    """A failure the user is told about on stderr, with the process's exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class UsageError(CtlError):
    def __init__(self, message: str):
        super().__init__(message, EX_USAGE)


class HTTPFailure(CtlError):
    """The API answered with an error status; the verb decides what that means."""

    def __init__(self, status: int, reason: str, method: str, url: str):
        if status in (404, 405):
            # what a verb does not turn into "no such queue" is a path this API lacks
            text = (f"{method} {url}: {status} {reason} (does this broker's management API "
                    f"have this endpoint?)")
        else:
            text = f"{method} {url}: {status} {reason}"
        super().__init__(text, EX_SOFTWARE)
        self.status = status
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# HTTP

class Client:
    """The management API at one base URL with one user's Basic credentials."""

    def __init__(self, url: str, username: str, password: str, timeout: float):
        self.url = url.rstrip("/")
        if self.url.endswith("/api"):        # the API's URL given instead of the base
            self.url = self.url[:-len("/api")]
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.auth = f"Basic {token}"
        self.username = username
        self.timeout = timeout

    def request(self, method: str, path: str, body=None, headers=None):
        """The decoded JSON of the answer (None when it has no body). Raises CtlError."""
        url = self.url + path
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", self.auth)
        # no Accept header: RabbitMQ answers 406 to "Accept: application/json" on DELETE of
        # a queue's contents (purge)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise self._refused(exc, method, url) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError):
                # it answers, slowly: not "unreachable" (rabbitmqctl: 75 for a timeout)
                raise CtlError(f"{method} {url}: no answer within {self.timeout:g} seconds "
                               f"(the broker may still complete it; --timeout N waits "
                               f"longer)", EX_TEMPFAIL) from None
            raise CtlError(f"unable to reach the management API at {self.url}: {reason}\n"
                           f"Is the broker running with its HTTP listener on, and is --node "
                           f"(or AMQPCTL_URL) right?", EX_UNAVAILABLE) from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise CtlError(f"{url} answered with something that is not JSON; is it a "
                           f"management API?", EX_SOFTWARE) from None

    def _refused(self, exc: urllib.error.HTTPError, method: str, url: str) -> CtlError:
        try:
            body = json.loads(exc.read() or b"{}")
            # RabbitMQ escapes its reasons for HTML ("&lt;&lt;" in a policy's 400)
            reason = html.unescape(str(body.get("reason") or body.get("error") or exc.reason))
        except (ValueError, AttributeError, OSError):
            reason = exc.reason
        # RabbitMQ answers 401 both for bad credentials ("Login failed") and for a user
        # whose tags do not allow the path ("Not administrator user", "Not management user")
        if exc.code == 401 and not str(reason).startswith("Not "):
            return CtlError(f"the broker at {self.url} refused the credentials of user "
                            f"'{self.username}' (401: {reason})", EX_NOPERM)
        if exc.code in (401, 403):
            return CtlError(f"user '{self.username}' may not do this on {self.url} "
                            f"({exc.code}: {reason})", EX_NOPERM)
        return HTTPFailure(exc.code, str(reason), method, url)

    def get(self, path):
        return self.request("GET", path)


def q(name: str) -> str:
    """One path segment: '/' becomes %2F, as the API wants for the default vhost."""
    return urllib.parse.quote(name, safe="")


# ---------------------------------------------------------------------------------------------
# Output

def erl(value) -> str:
    """A value inside an argument table, written as rabbitmqctl writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "[" + ",".join(f"{{{json.dumps(k)},{erl(v)}}}" for k, v in value.items()) + "]"
    if isinstance(value, list):
        return "[" + ",".join(erl(v) for v in value) + "]"
    if value is None:
        return ""
    return str(value)


def cell(value) -> str:
    """A table cell: booleans lower case, arguments as [{"k",v}], tags as [a,b]."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return erl(value)
    if isinstance(value, list):
        return "[" + ",".join(v if isinstance(v, str) else erl(v) for v in value) + "]"
    return str(value)


class Output:
    def __init__(self, args):
        self.json = args.formatter == "json"
        self.quiet = args.quiet or args.silent
        self.headers = not (args.silent or args.no_table_headers)
        self.out = sys.stdout

    def banner(self, text: str):
        # rabbitmqctl prints its "Listing ... ..." banners on stdout, not with JSON output
        if not self.quiet and not self.json:
            print(text, file=self.out)

    def table(self, columns: list[str], rows: list[list]):
        if self.json:
            # rabbitmqctl's layout: one object a line, commas leading
            w = self.out.write
            w("[\n")
            for i, row in enumerate(rows):
                obj = json.dumps(dict(zip(columns, row)), separators=(",", ":"),
                                 ensure_ascii=False)
                w(("," if i else "") + obj + "\n")
            w("]\n")
            return
        if self.headers and rows:
            print("\t".join(columns), file=self.out)
        for row in rows:
            print("\t".join(cell(v) for v in row), file=self.out)

    def document(self, value):
        print(json.dumps(value, indent=2, ensure_ascii=False), file=self.out)


# ---------------------------------------------------------------------------------------------
# Listings: which API path, which columns by default, and how a column is read from a row

def reads(*fields):
    """Mark a column reader with the API fields it needs (asked for with ``columns=``, so a
    listing of 10,000 queues moves and parses a few hundred KB, not ~9 MB)."""
    def mark(fn):
        fn.fields = fields
        return fn
    return mark


def dig(*keys):
    @reads(".".join(keys))
    def read(row):
        for key in keys:
            if not isinstance(row, dict):
                return None
            row = row.get(key)
        return row
    return read


def const(value):
    return reads()(lambda row: value)


def default(field, value):
    return reads(field)(lambda row: row.get(field, value))


def or_empty(field):
    return reads(field)(lambda row: row.get(field) or "")


class Listing:
    def __init__(self, path, defaults, columns, special=None, banner="", vhost_scoped=True):
        self.path = path              # format string with {vhost}
        self.defaults = defaults
        self.columns = columns        # every column rabbitmqctl accepts
        self.special = special or {}  # column -> reader where the API's field differs
        self.banner = banner
        self.vhost_scoped = vhost_scoped

    def reader(self, column):
        return self.special.get(column) or dig(column)


LISTINGS = {
    "list_queues": Listing(
        "/api/queues/{vhost}", ["name", "messages"],
        ["arguments", "auto_delete", "consumer_capacity", "consumer_utilisation", "consumers",
         "disk_reads", "disk_writes", "durable", "exclusive", "exclusive_consumer_pid",
         "exclusive_consumer_tag", "head_message_timestamp", "leader", "members", "memory",
         "message_bytes", "message_bytes_persistent", "message_bytes_ram",
         "message_bytes_ready", "message_bytes_unacknowledged", "messages",
         "messages_persistent", "messages_ram", "messages_ready", "messages_ready_ram",
         "messages_unacknowledged", "messages_unacknowledged_ram", "name", "online",
         "owner_pid", "pid", "policy", "slave_pids", "state", "synchronised_slave_pids",
         "type", "vhost", "effective_policy_definition", "operator_policy"],
        {"policy": or_empty("policy"),
         "consumer_capacity": reads("consumer_capacity", "consumer_utilisation")(
             lambda r: r.get("consumer_capacity", r.get("consumer_utilisation"))),
         # rabbitmqctl 3.10.8: a quorum queue's leader node, its members and the members
         # that are running ([n1,n2]); empty for a classic queue
         "leader": or_empty("leader"),
         "members": or_empty("members"),
         "online": or_empty("online"),
         "type": default("type", "classic"),
         "exclusive_consumer_tag": dig("exclusive_consumer_tag"),
         "owner_pid": dig("owner_pid_details", "name")},
        "Listing queues for vhost {vhost} ..."),
    "list_exchanges": Listing(
        "/api/exchanges/{vhost}", ["name", "type"],
        ["arguments", "auto_delete", "durable", "internal", "name", "policy", "type", "vhost"],
        {"policy": or_empty("policy")},
        "Listing exchanges for vhost {vhost} ..."),
    "list_bindings": Listing(
        "/api/bindings/{vhost}",
        ["source_name", "source_kind", "destination_name", "destination_kind", "routing_key",
         "arguments"],
        ["arguments", "destination_kind", "destination_name", "routing_key", "source_kind",
         "source_name", "vhost", "properties_key"],
        {"source_name": dig("source"), "source_kind": const("exchange"),
         "destination_name": dig("destination"), "destination_kind": dig("destination_type")},
        "Listing bindings for vhost {vhost}..."),
    "list_connections": Listing(
        "/api/connections", ["user", "peer_host", "peer_port", "state"],
        ["auth_mechanism", "channel_max", "channels", "client_properties", "connected_at",
         "frame_max", "host", "name", "peer_cert_issuer", "peer_cert_subject",
         "peer_cert_validity", "peer_host", "peer_port", "pid", "port", "protocol", "recv_cnt",
         "recv_oct", "send_cnt", "send_oct", "send_pend", "ssl", "ssl_cipher", "ssl_hash",
         "ssl_key_exchange", "ssl_protocol", "state", "timeout", "user", "vhost",
         "user_provided_name"],
        # the HTTP API has no Erlang pids: a connection is named by its name, which is also
        # what close_connection takes
        {"pid": dig("name")},
        "Listing connections ...", vhost_scoped=False),
    "list_channels": Listing(
        "/api/channels", ["pid", "user", "consumer_count", "messages_unacknowledged"],
        ["acks_uncommitted", "confirm", "connection", "consumer_count", "global_prefetch_count",
         "messages_unacknowledged", "messages_uncommitted", "messages_unconfirmed", "name",
         "number", "pid", "prefetch_count", "transactional", "user", "vhost", "state"],
        {"pid": dig("name"), "connection": dig("connection_details", "name")},
        "Listing channels ...", vhost_scoped=False),
    "list_consumers": Listing(
        "/api/consumers/{vhost}",
        ["queue_name", "channel_pid", "consumer_tag", "ack_required", "prefetch_count",
         "active", "arguments"],
        ["ack_required", "active", "activity_status", "arguments", "channel_pid",
         "consumer_tag", "prefetch_count", "queue_name", "exclusive"],
        {"queue_name": dig("queue", "name"), "channel_pid": dig("channel_details", "name"),
         "active": default("active", True), "activity_status": default("activity_status", "up")},
        "Listing consumers in vhost {vhost} ..."),
    "list_permissions": Listing(
        "/api/vhosts/{vhost}/permissions", ["user", "configure", "write", "read"],
        ["user", "configure", "write", "read"], {},
        'Listing permissions for vhost "{vhost}" ...'),
    "list_policies": Listing(
        "/api/policies/{vhost}", ["vhost", "name", "pattern", "apply-to", "definition", "priority"],
        ["vhost", "name", "pattern", "apply-to", "definition", "priority"],
        {"definition": reads("definition")(
            lambda r: json.dumps(r.get("definition", {}), separators=(",", ":")))},
        'Listing policies for vhost "{vhost}" ...'),
    "list_users": Listing(
        "/api/users", ["user", "tags"], ["user", "tags"],
        {"user": dig("name"),
         # 3.10 gives a list; older APIs (and some brokers) a comma-separated string
         "tags": reads("tags")(lambda r: r.get("tags") if isinstance(r.get("tags"), list)
                               else [t for t in str(r.get("tags") or "").split(",") if t])},
        "Listing users ...", vhost_scoped=False),
    "list_vhosts": Listing(
        "/api/vhosts", ["name"], ["name", "tracing", "description", "tags"], {},
        "Listing vhosts ...", vhost_scoped=False),
}

# vhost-scoped listings whose vhost does not exist: rabbitmqctl says so for these two (65)
# and prints an empty list for the others; amqpctl says so for all (a typo'd -p should not
# look like an empty vhost)


def vhost_missing(client, vhost):
    """Raise 'does not exist' (65) if the vhost is absent; return if it is there (then a
    404 was for something else, such as a path this API lacks)."""
    try:
        client.get(f"/api/vhosts/{q(vhost)}")
    except HTTPFailure as exc:
        if exc.status == 404:
            raise CtlError(f"Virtual host '{vhost}' does not exist", EX_DATAERR) from None
        raise


def do_list(verb, client, args, out):
    listing = LISTINGS[verb]
    columns = args.args or listing.defaults
    unknown = [c for c in columns if c not in listing.columns]
    if unknown:
        raise UsageError(f"Info key(s) {','.join(unknown)} are not supported\n"
                         f"{verb} columns: {', '.join(sorted(listing.columns))}")
    vhost = args.vhost
    out.banner(listing.banner.format(vhost=vhost))
    readers = [listing.reader(c) for c in columns]
    fields = sorted({f for read in readers for f in read.fields})
    # a broker that does not honour columns= sends whole rows: the readers still work
    query = "?columns=" + urllib.parse.quote(",".join(fields), safe=",") if fields else ""
    try:
        rows = client.get(listing.path.format(vhost=q(vhost)) + query)
    except HTTPFailure as exc:
        if exc.status == 404 and listing.vhost_scoped:
            vhost_missing(client, vhost)
        raise
    if isinstance(rows, dict) and "items" in rows:     # a paged answer
        rows = rows["items"]
    out.table(columns, [[read(row) for read in readers] for row in rows or []])
    return EX_OK


# ---------------------------------------------------------------------------------------------
# The other verbs. Each takes (client, args, out) and returns the exit code; a not-found is
# answered with the code rabbitmqctl 3.10.8 gives for the same verb (recorded on a live node).

def not_found(exc: HTTPFailure, message: str, code: int):
    if exc.status == 404:
        return CtlError(message, code)
    return exc


def bad_request(exc: HTTPFailure):
    if exc.status == 400:
        return CtlError(exc.reason, EX_DATAERR)
    return exc


def do_status(client, args, out):
    out.banner(f"Status of node at {client.url} ...")
    overview = client.get("/api/overview")
    node_name = overview.get("node")
    node = {}
    try:
        node = client.get(f"/api/nodes/{q(node_name)}") if node_name else {}
    except HTTPFailure:
        pass      # a broker without /api/nodes still has a status
    if out.json:
        out.document({"overview": overview, "node": node})
        return EX_OK
    product = overview.get("product_name") or "RabbitMQ"
    version = overview.get("product_version") or overview.get("rabbitmq_version")
    totals = overview.get("object_totals", {})
    queued = overview.get("queue_totals", {})
    lines = ["Runtime", "",
             f"Node name: {node_name}",
             f"{product} version: {version}",
             f"Management API version: {overview.get('management_version', '')}"]
    if node:
        lines += [f"OS PID: {node.get('os_pid', '')}",
                  f"Uptime (seconds): {int(node.get('uptime', 0)) // 1000}",
                  f"Running: {cell(node.get('running', True))}"]
    alarms = [name for name, key in (("memory", "mem_alarm"), ("disk", "disk_free_alarm"))
              if node.get(key)]
    lines += ["", "Alarms", ""] + ([f"{a} alarm" for a in alarms] or ["(none)"])
    if node:
        lines += ["", "Memory", "",
                  f"Total memory used: {fmt_gb(node.get('mem_used'))}",
                  f"Memory high watermark: {fmt_gb(node.get('mem_limit'))}",
                  "", "Free Disk Space", "",
                  f"Low free disk space watermark: {fmt_gb(node.get('disk_free_limit'))}",
                  f"Free disk space: {fmt_gb(node.get('disk_free'))}",
                  "", "File Descriptors", "",
                  f"Total: {node.get('fd_used', '')}, limit: {node.get('fd_total', '')}"]
    lines += ["", "Listeners", ""]
    # a cluster's overview lists every node's listeners; status is this node's, as
    # rabbitmqctl's: ordered by the port's digits, with what each is for
    mine = [listener_doc(lst, node_name) for lst in overview.get("listeners", [])
            if lst.get("node", node_name) == node_name]
    for lst in sorted(mine, key=lambda x: str(x["port"])):
        lines.append(f"Interface: {lst['interface']}, port: {lst['port']}, "
                     f"protocol: {lst['protocol']}, purpose: {lst['purpose']}")
    lines += ["", "Totals", "",
              f"Connection count: {totals.get('connections', 0)}",
              f"Queue count: {totals.get('queues', 0)}",
              f"Virtual host count: {len(client.get('/api/vhosts') or [])}",
              f"Messages: {queued.get('messages', 0)} "
              f"(ready {queued.get('messages_ready', 0)}, "
              f"unacknowledged {queued.get('messages_unacknowledged', 0)})"]
    print("\n".join(lines), file=out.out)
    return EX_OK


# rabbitmqctl's names for what a listener is for (its Listeners module)
PURPOSES = {"amqp": "AMQP 0-9-1 and AMQP 1.0", "amqp/ssl": "AMQP 0-9-1 and AMQP 1.0 over TLS",
            "http": "HTTP API", "https": "HTTP API over TLS (HTTPS)",
            "http/prometheus": "Prometheus exporter API over HTTP",
            "https/prometheus": "Prometheus exporter API over TLS (HTTPS)",
            "clustering": "inter-node and CLI tool communication"}


def listener_doc(lst: dict, node: str) -> dict:
    """One overview listener as rabbitmqctl shows it (an IPv6 interface in brackets)."""
    interface = str(lst.get("ip_address", ""))
    return {"interface": f"[{interface}]" if ":" in interface else interface,
            "node": node, "port": lst.get("port"), "protocol": lst.get("protocol"),
            "purpose": PURPOSES.get(lst.get("protocol"), lst.get("protocol"))}


def get_optional(client, path, missing):
    """An endpoint some brokers lack (404): ``missing`` then."""
    try:
        return client.get(path)
    except HTTPFailure as exc:
        if exc.status == 404:
            return missing
        raise


def cluster_status(client) -> tuple[str, dict]:
    """(this node's name, rabbitmqctl's cluster_status document) from /api/overview,
    /api/nodes, /api/cluster-name and /api/feature-flags."""
    overview = client.get("/api/overview") or {}
    local = overview.get("node") or ""
    nodes = client.get("/api/nodes") or []
    name = (get_optional(client, "/api/cluster-name", {}) or {}).get("name")
    running = sorted(n["name"] for n in nodes if n.get("running", True))
    product = overview.get("product_name") or "RabbitMQ"
    version = overview.get("product_version") or overview.get("rabbitmq_version") or ""
    listeners = {}
    for lst in overview.get("listeners", []):
        node = lst.get("node", local)
        if node in running:
            listeners.setdefault(node, []).append(listener_doc(lst, node))
    alarms = [{"node": n["name"], "resource": resource, "type": "resource_limit"}
              for n in sorted(nodes, key=lambda n: n["name"]) if n.get("running", True)
              for resource, key in (("memory", "mem_alarm"), ("disk", "disk_free_alarm"))
              if n.get(key)]
    flags = get_optional(client, "/api/feature-flags", []) or []
    return local, {
        "alarms": alarms,
        "cluster_name": name or overview.get("cluster_name") or local,
        "disk_nodes": sorted(n["name"] for n in nodes),
        "feature_flags": flags,
        "listeners": listeners,
        "maintenance_status": {n["name"]: ("marked for maintenance" if n.get("being_drained")
                                           else "not under maintenance")
                               for n in nodes if n["name"] in running},
        "partitions": {n["name"]: n["partitions"] for n in nodes if n.get("partitions")},
        "ram_nodes": [],
        "running_nodes": running,
        "versions": {n: {"erlang_version": overview.get("erlang_version", ""),
                         "rabbitmq_name": product, "rabbitmq_version": version}
                     for n in running},
    }


def do_forget_cluster_node(client, args, out):
    (name,) = args.args
    out.banner(f"Removing node {name} from the cluster")
    try:
        client.request("DELETE", f"/api/nodes/{q(name)}")
    except HTTPFailure as exc:
        if exc.status == 404:
            raise CtlError("The node selected is not in the cluster.", EX_UNAVAILABLE) from None
        if exc.status == 400:
            raise CtlError(exc.reason, EX_UNAVAILABLE) from None
        raise
    return EX_OK


def do_cluster_status(client, args, out):
    local, doc = cluster_status(client)
    if out.json:
        print(json.dumps(doc, separators=(",", ":"), ensure_ascii=False), file=out.out)
        return EX_OK
    out.banner(f"Cluster status of node {local} ...")
    resource_text = {"memory": "Memory alarm", "disk": "Free disk space alarm"}

    def section(title, lines):
        return ["", title, ""] + (lines or ["(none)"])

    lines = ["Basics", "", f"Cluster name: {doc['cluster_name']}"]
    lines += section("Disk Nodes", doc["disk_nodes"])
    lines += section("Running Nodes", doc["running_nodes"])
    lines += section("Versions", [f"{n}: {v['rabbitmq_name']} {v['rabbitmq_version']} on "
                                  f"Erlang {v['erlang_version']}"
                                  for n, v in doc["versions"].items()])
    lines += section("Maintenance status", [f"Node: {n}, status: {s}"
                                            for n, s in doc["maintenance_status"].items()])
    lines += section("Alarms", [f"{resource_text.get(a['resource'], a['resource'])} on node "
                                f"{a['node']}" for a in doc["alarms"]])
    lines += section("Network Partitions", [f"Node {n} cannot communicate with "
                                            f"{', '.join(peers)}"
                                            for n, peers in doc["partitions"].items()])
    lines += section("Listeners", [f"Node: {n}, interface: {lst['interface']}, port: "
                                   f"{lst['port']}, protocol: {lst['protocol']}, purpose: "
                                   f"{lst['purpose']}"
                                   for n, lsts in sorted(doc["listeners"].items())
                                   # rabbitmqctl's order: by the port's digits
                                   for lst in sorted(lsts, key=lambda x: str(x["port"]))])
    lines += section("Feature flags", [f"Flag: {f.get('name')}, state: {f.get('state')}"
                                       for f in doc["feature_flags"]])
    print("\n".join(lines), file=out.out)
    return EX_OK


def fmt_gb(n) -> str:
    return "" if n is None else f"{int(n) / 1e9:.4f} gb"


# ---------------------------------------------------------------------------------------------
# Quorum queue membership: rabbitmq-queues 3.10.8's add_member, delete_member, grow, shrink,
# over the endpoints RabbitMQ 3.13 added (amqpd serves them too)

# what an API says in a 404 that names nothing (RabbitMQ's, and amqpd's for a path it lacks)
GENERIC_404 = {"Not Found", "Object Not Found", "not_found"}


def member_refused(client, exc: HTTPFailure, vhost: str, name: str, node: str) -> CtlError:
    """A refused membership change of one queue as rabbitmq-queues reports it: 69 for a
    queue or node that is not there and for a change the cluster refuses (not a quorum
    queue, node not running, last member), 75 when the cluster's store did not answer."""
    if exc.status == 404:
        if exc.reason not in GENERIC_404:        # amqpd says which of the two is missing
            return CtlError(exc.reason, EX_UNAVAILABLE)
        try:
            client.get(f"/api/queues/{q(vhost)}/{q(name)}")
        except HTTPFailure as qexc:
            if qexc.status == 404:
                return CtlError(f"Queue '{name}' in vhost '{vhost}' not found", EX_UNAVAILABLE)
            raise
        if node not in {n.get("name") for n in get_optional(client, "/api/nodes", [])}:
            return CtlError(f"Node {node} is not in the cluster", EX_UNAVAILABLE)
        return exc                               # the queue and node are there: no endpoint
    return refused_change(exc)


def refused_change(exc: HTTPFailure) -> CtlError:
    if exc.status == 400:
        return CtlError(exc.reason, EX_UNAVAILABLE)
    if exc.status == 503:
        return CtlError(f"{exc.reason}: try again", EX_TEMPFAIL)
    return exc


def member_path(args) -> tuple[str, str, str]:
    name, node = args.args
    return name, node, f"/api/queues/quorum/{q(args.vhost)}/{q(name)}/replicas"


def do_add_member(client, args, out):
    return change_member(client, args, out, "POST", "/add", "Adding a replica for queue "
                         "{name} on node {node}...")


def do_delete_member(client, args, out):
    return change_member(client, args, out, "DELETE", "/delete", "Removing a replica of "
                         "queue {name} on node {node}...")


def change_member(client, args, out, method: str, tail: str, banner: str):
    name, node, path = member_path(args)
    out.banner(banner.format(name=name, node=node))
    try:
        client.request(method, path + tail, {"node": node})
    except HTTPFailure as exc:
        raise member_refused(client, exc, args.vhost, name, node) from None
    return EX_OK


def change_results(out, rows, errors_only: bool):
    """grow's and shrink's table: one row per queue (vhost, name, size, result), as
    rabbitmq-queues prints it; an empty one is an empty line (``[]`` in JSON)."""
    if rows is None:           # a broker that gives no per-queue results (RabbitMQ: 204/202)
        return
    table = []
    for row in rows:
        ok = row.get("ok", row.get("result") == "ok")
        if errors_only and ok:
            continue
        table.append([row.get("vhost"), row.get("name"), row.get("size"),
                      "ok" if ok else f"error: {row.get('result')}"])
    if not table:
        print("[]" if out.json else "", file=out.out)
        return
    out.table(["vhost", "name", "size", "result"], table)


def node_change(client, method, action, node, body=None):
    """grow's or shrink's request; the per-queue results (None when the broker gives none:
    ``?results=true`` asks amqpd for them, RabbitMQ ignores it)."""
    path = f"/api/queues/quorum/replicas/on/{q(node)}/{action}?results=true"
    try:
        return client.request(method, path, body)
    except HTTPFailure as exc:
        if exc.status == 404 and exc.reason in GENERIC_404:
            if node not in {n.get("name") for n in get_optional(client, "/api/nodes", [])}:
                raise CtlError(f"Node {node} is not in the cluster", EX_UNAVAILABLE) from None
            raise
        if exc.status == 404:
            raise CtlError(exc.reason, EX_UNAVAILABLE) from None
        raise refused_change(exc) from None


def do_grow(client, args, out):
    node, strategy = args.args
    if strategy not in ("all", "even"):
        raise UsageError(f"strategy '{strategy}' is not recognised.\n"
                         f"usage: amqpctl {VERBS['grow'][2]}")
    out.banner(f"Growing {strategy} quorum queues on {node}...")
    rows = node_change(client, "POST", "grow", node,
                       {"strategy": strategy, "vhost_pattern": args.vhost_pattern,
                        "queue_pattern": args.queue_pattern})
    change_results(out, rows, args.errors_only)
    return EX_OK


def do_shrink(client, args, out):
    (node,) = args.args
    out.banner(f"Shrinking quorum queues on {node}...")
    rows = node_change(client, "DELETE", "shrink", node)
    change_results(out, rows, args.errors_only)
    return EX_OK


def do_purge_queue(client, args, out):
    (name,) = args.args
    out.banner(f"Purging queue '{name}' in vhost '{args.vhost}' ...")
    try:
        client.request("DELETE", f"/api/queues/{q(args.vhost)}/{q(name)}/contents")
    except HTTPFailure as exc:
        raise not_found(exc, f"Queue '{name}' in vhost '{args.vhost}' not found",
                        EX_UNAVAILABLE) from None
    return EX_OK


def do_delete_queue(client, args, out):
    (name,) = args.args
    conditions = " and ".join(w for w, on in (("empty", args.if_empty), ("unused", args.if_unused))
                              if on)
    out.banner(f"Deleting queue '{name}' on vhost '{args.vhost}'"
               f"{' if queue is ' + conditions if conditions else ''} ...")
    path = f"/api/queues/{q(args.vhost)}/{q(name)}"
    missing = f"Queue '{name}' in vhost '{args.vhost}' not found"
    try:
        ready = (client.get(path) or {}).get("messages_ready", 0)
        flags = [k for k, on in (("if-empty", args.if_empty), ("if-unused", args.if_unused)) if on]
        query = ("?" + "&".join(f"{k}=true" for k in flags)) if flags else ""
        client.request("DELETE", path + query)
    except HTTPFailure as exc:
        if exc.status == 400:       # if-empty / if-unused refused: 64, as rabbitmqctl
            raise CtlError(f"Queue '{name}' not deleted: {exc.reason}", EX_USAGE) from None
        raise not_found(exc, missing, EX_USAGE) from None
    out.banner(f"Queue was successfully deleted with {ready} ready messages")
    return EX_OK


def do_close_connection(client, args, out):
    name, reason = args.args
    out.banner(f"Closing connection {name}, reason: {reason}...")
    try:
        client.request("DELETE", f"/api/connections/{q(name)}", headers={"X-Reason": reason})
    except HTTPFailure as exc:
        raise not_found(exc, f"Connection '{name}' not found (list_connections name shows "
                             f"the names)", EX_UNAVAILABLE) from None
    return EX_OK


def get_user(client, name):
    try:
        return client.get(f"/api/users/{q(name)}")
    except HTTPFailure as exc:
        raise not_found(exc, f'User "{name}" does not exist', EX_NOUSER) from None


def user_body(user: dict) -> dict:
    """What PUT /api/users/{name} needs to keep a user's password as it is."""
    body = {"password_hash": user.get("password_hash", "")}
    if user.get("hashing_algorithm"):
        body["hashing_algorithm"] = user["hashing_algorithm"]
    return body


def tags_text(tags) -> str:
    return ",".join(tags) if isinstance(tags, list) else str(tags or "")


def do_add_user(client, args, out):
    if not 1 <= len(args.args) <= 2:
        raise UsageError("add_user takes <username> [<password>]")
    name = args.args[0]
    out.banner(f'Adding user "{name}" ...')
    password = args.args[1] if len(args.args) == 2 else sys.stdin.readline().rstrip("\n")
    if not password:
        raise CtlError("Password is not provided via argument or stdin", EX_DATAERR)
    try:
        client.get(f"/api/users/{q(name)}")
    except HTTPFailure as exc:
        if exc.status != 404:
            raise
    else:
        raise CtlError(f'User "{name}" already exists', EX_SOFTWARE)
    try:
        client.request("PUT", f"/api/users/{q(name)}", {"password": password, "tags": ""})
    except HTTPFailure as exc:
        raise bad_request(exc) from None
    return EX_OK


def do_delete_user(client, args, out):
    (name,) = args.args
    out.banner(f'Deleting user "{name}" ...')
    try:
        client.request("DELETE", f"/api/users/{q(name)}")
    except HTTPFailure as exc:
        raise not_found(exc, f'User "{name}" does not exist', EX_NOUSER) from None
    return EX_OK


def do_change_password(client, args, out):
    name, password = args.args
    out.banner(f'Changing password for user "{name}" ...')
    user = get_user(client, name)
    client.request("PUT", f"/api/users/{q(name)}",
                   {"password": password, "tags": tags_text(user.get("tags"))})
    return EX_OK


def do_set_user_tags(client, args, out):
    if not args.args:
        raise UsageError("set_user_tags takes <username> [<tag> ...]")
    name, tags = args.args[0], args.args[1:]
    out.banner(f'Setting tags for user "{name}" to [{",".join(tags)}] ...')
    body = user_body(get_user(client, name))
    body["tags"] = ",".join(tags)
    client.request("PUT", f"/api/users/{q(name)}", body)
    return EX_OK


def do_add_vhost(client, args, out):
    (name,) = args.args
    out.banner(f'Adding vhost "{name}" ...')
    body = {}
    if args.description:
        body["description"] = args.description
    try:
        client.request("PUT", f"/api/vhosts/{q(name)}", body)
    except HTTPFailure as exc:
        raise bad_request(exc) from None
    return EX_OK


def do_delete_vhost(client, args, out):
    (name,) = args.args
    out.banner(f'Deleting vhost "{name}" ...')
    try:
        client.request("DELETE", f"/api/vhosts/{q(name)}")
    except HTTPFailure as exc:
        raise not_found(exc, f"Virtual host '{name}' does not exist", EX_DATAERR) from None
    return EX_OK


def do_set_permissions(client, args, out):
    user, configure, write, read = args.args
    out.banner(f'Setting permissions for user "{user}" in vhost "{args.vhost}" ...')
    try:
        client.request("PUT", f"/api/permissions/{q(args.vhost)}/{q(user)}",
                       {"configure": configure, "write": write, "read": read})
    except HTTPFailure as exc:
        # the API answers 400 vhost_or_user_not_found for either; ask which one
        if exc.status in (400, 404):
            try:
                client.get(f"/api/vhosts/{q(args.vhost)}")
            except HTTPFailure as vexc:
                if vexc.status == 404:
                    raise CtlError(f"Virtual host {args.vhost} does not exist",
                                   EX_UNAVAILABLE) from None
                raise
            get_user(client, user)
            raise bad_request(exc) from None
        raise
    return EX_OK


def do_set_policy(client, args, out):
    name, pattern, definition = args.args
    out.banner(f'Setting policy "{name}" for pattern "{pattern}" to "{definition}" with '
               f'priority "{args.priority}" for vhost "{args.vhost}" ...')
    try:
        parsed = json.loads(definition)
    except ValueError as exc:
        raise CtlError(f"JSON decoding error. Reason: {exc}", EX_DATAERR) from None
    if not isinstance(parsed, dict):
        raise CtlError("the policy definition must be a JSON object", EX_DATAERR)
    body = {"pattern": pattern, "definition": parsed, "priority": args.priority,
            "apply-to": args.apply_to}
    try:
        client.request("PUT", f"/api/policies/{q(args.vhost)}/{q(name)}", body)
    except HTTPFailure as exc:
        if exc.status == 404:
            raise CtlError(f"Virtual host '{args.vhost}' does not exist", EX_DATAERR) from None
        raise bad_request(exc) from None
    return EX_OK


def do_clear_policy(client, args, out):
    (name,) = args.args
    out.banner(f'Clearing policy "{name}" on vhost "{args.vhost}" ...')
    try:
        client.request("DELETE", f"/api/policies/{q(args.vhost)}/{q(name)}")
    except HTTPFailure as exc:
        raise not_found(exc, f"Policy '{name}' in vhost '{args.vhost}' does not exist",
                        EX_UNAVAILABLE) from None
    return EX_OK


def do_export_definitions(client, args, out):
    (path,) = args.args
    if path != "-":
        out.banner(f'Exporting definitions in JSON to a file at "{path}" ...')
    defs = client.get("/api/definitions")
    text = json.dumps(defs, indent=2, ensure_ascii=False) + "\n"
    if path == "-":
        sys.stdout.write(text)
        return EX_OK
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise CtlError(f"cannot write {path}: {exc.strerror}", EX_SOFTWARE_FAILURE) from None
    return EX_OK


def do_import_definitions(client, args, out):
    if len(args.args) > 1:
        raise UsageError("import_definitions takes [<file> | -]")
    path = args.args[0] if args.args else "-"
    if path == "-":
        out.banner("Importing definitions in JSON from standard input ...")
        text = sys.stdin.read()
    else:
        out.banner(f'Importing definitions in JSON from a file at "{path}" ...')
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise CtlError(f"cannot read {path}: {exc.strerror}", EX_DATAERR) from None
    try:
        defs = json.loads(text)
    except ValueError as exc:
        raise CtlError(f"{path if path != '-' else 'standard input'} is not JSON: {exc}",
                       EX_DATAERR) from None
    try:
        client.request("POST", "/api/definitions", defs)
    except HTTPFailure as exc:
        raise bad_request(exc) from None
    out.banner("Successfully imported definitions")
    return EX_OK


def do_await_startup(client, args, out):
    """Poll /api/overview until it answers; a refused connection is 'not yet', refused
    credentials are final (77), and the deadline is --timeout seconds (75)."""
    timeout = args.timeout if args.timeout is not None else 300.0
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            client.timeout = max(0.1, min(5.0, deadline - time.monotonic()))
            client.get("/api/overview")
            return EX_OK
        except CtlError as exc:
            if exc.code == EX_NOPERM:
                raise
        if time.monotonic() + delay > deadline:
            raise CtlError(f"the broker at {client.url} did not start within {timeout:g} "
                           f"seconds", EX_TEMPFAIL)
        time.sleep(delay)                # polling a process we do not own: no event to wait on
        delay = min(delay * 2, 1.0)


# verb -> (handler, number of positional arguments (None: the handler checks), synopsis)
VERBS = {
    "status": (do_status, 0, "status"),
    "cluster_status": (do_cluster_status, 0, "cluster_status"),
    "forget_cluster_node": (do_forget_cluster_node, 1, "forget_cluster_node <node>"),
    **{verb: (None, None, f"{verb}{' [-p <vhost>]' if spec.vhost_scoped else ''} [<column> ...]")
       for verb, spec in LISTINGS.items()},
    "add_member": (do_add_member, 2, "add_member [-p <vhost>] <queue> <node>"),
    "delete_member": (do_delete_member, 2, "delete_member [-p <vhost>] <queue> <node>"),
    "grow": (do_grow, 2, "grow <node> <all | even> [--vhost-pattern <pattern>] "
                         "[--queue-pattern <pattern>] [--errors-only]"),
    "shrink": (do_shrink, 1, "shrink <node> [--errors-only]"),
    "purge_queue": (do_purge_queue, 1, "purge_queue [-p <vhost>] <queue>"),
    "delete_queue": (do_delete_queue, 1,
                     "delete_queue [-p <vhost>] <queue> [--if-empty|-e] [--if-unused]"),
    "close_connection": (do_close_connection, 2, "close_connection <connection name> <reason>"),
    "add_user": (do_add_user, None, "add_user <username> [<password>] (else read from stdin)"),
    "delete_user": (do_delete_user, 1, "delete_user <username>"),
    "change_password": (do_change_password, 2, "change_password <username> <password>"),
    "set_user_tags": (do_set_user_tags, None, "set_user_tags <username> [<tag> ...]"),
    "add_vhost": (do_add_vhost, 1, "add_vhost <vhost> [--description <text>]"),
    "delete_vhost": (do_delete_vhost, 1, "delete_vhost <vhost>"),
    "set_permissions": (do_set_permissions, 4,
                        "set_permissions [-p <vhost>] <username> <conf> <write> <read>"),
    "set_policy": (do_set_policy, 3,
                   "set_policy [-p <vhost>] [--priority <n>] [--apply-to queues|exchanges|all] "
                   "<name> <pattern> <definition>"),
    "clear_policy": (do_clear_policy, 1, "clear_policy [-p <vhost>] <name>"),
    "export_definitions": (do_export_definitions, 1, "export_definitions <file | ->"),
    "import_definitions": (do_import_definitions, None, "import_definitions [<file> | -]"),
    "await_startup": (do_await_startup, 0, "await_startup [--timeout <seconds>]"),
}


UNTIMED = {"forget_cluster_node"}


def usage_text() -> str:
    lines = ["usage: amqpctl [--node URL] [-u USER] [--password PW] [-p VHOST] "
             "[--formatter table|json] [-q] [-s] <command> [<args>]", "", "commands:"]
    lines += [f"   {VERBS[verb][2]}" for verb in VERBS]
    lines += ["", f"--node defaults to $AMQPCTL_URL or {DEFAULT_URL}; credentials to "
                  "guest/guest. docs/amqpctl.md has every verb, column and exit code."]
    return "\n".join(lines)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parser() -> Parser:
    p = Parser(prog="amqpctl", add_help=False, usage=argparse.SUPPRESS)
    p.add_argument("-h", "--help", "-?", action="store_true")
    p.add_argument("--node", "-n", default=None)
    p.add_argument("--username", "-u", default="guest")
    p.add_argument("--password", default="guest")
    p.add_argument("--vhost", "-p", default="/")
    p.add_argument("--formatter", choices=["table", "json"], default="table")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--silent", "-s", action="store_true")
    p.add_argument("--no-table-headers", action="store_true")
    p.add_argument("--timeout", "-t", type=float, default=None)
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--apply-to", choices=["queues", "exchanges", "all"], default="all")
    p.add_argument("--if-empty", "-e", action="store_true")
    p.add_argument("--if-unused", action="store_true")
    p.add_argument("--description", default=None)
    p.add_argument("--vhost-pattern", default=".*")
    p.add_argument("--queue-pattern", default=".*")
    p.add_argument("--errors-only", action="store_true")
    p.add_argument("command", nargs="?")
    p.add_argument("args", nargs="*")
    return p


def run(argv) -> int:
    args = parser().parse_intermixed_args(argv)
    if args.help:
        print(usage_text())
        return EX_OK
    if not args.command:
        raise UsageError("no command given.")
    if args.command not in VERBS:
        raise UsageError(f"Command '{args.command}' not found.")
    handler, arity, synopsis = VERBS[args.command]
    if arity is not None and len(args.args) != arity:
        many = "not enough" if len(args.args) < arity else "too many"
        raise UsageError(f"{many} arguments.\nusage: amqpctl {synopsis}")
    url = args.node or os.environ.get("AMQPCTL_URL") or DEFAULT_URL
    if "://" not in url:
        url = "http://" + url
    # forget_cluster_node moves the node's quorum replicas first, waiting for each to catch
    # up: no deadline of ours unless one is given (rabbitmqctl's is infinite too)
    default = None if args.command in UNTIMED else 60.0
    timeout = args.timeout if args.timeout is not None else default
    client = Client(url, args.username, args.password, timeout)
    out = Output(args)
    if handler is None:
        return do_list(args.command, client, args, out)
    return handler(client, args, out)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(argv)
    except UsageError as exc:
        print(f"Error (argument validation): {exc}\n", file=sys.stderr)
        print(usage_text(), file=sys.stderr)
        return exc.code
    except CtlError as exc:
        sys.stdout.flush()
        print(f"Error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:       # `amqpctl list_queues | head`: the reader has had enough
        # stdout is gone: point it at /dev/null so the flush at exit does not complain
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_OK


if __name__ == "__main__":
    sys.exit(main())
