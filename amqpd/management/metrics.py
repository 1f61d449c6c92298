"""What the broker reports to monitoring, under RabbitMQ's Prometheus names (rabbitmq_prometheus
3.10): one read of the node, turned into metric families that ``prometheus.py`` exposes over
HTTP and ``statsd.py`` pushes over UDP.

A read costs what the node holds, not what passed through it: the message counters are the
stats helper's node-wide totals (``broker.stats.totals()`` / ``churn()``, O(1) each), the
queue gauges are summed in one pass over the queues (a few additions per queue, no objects
made per queue), the process figures come from /proc. ``per_object`` adds one series per
queue (labels ``vhost`` and ``queue``) in place of the node-wide sums, as RabbitMQ's
``/metrics/per-object`` does.
"""
import hashlib
import os
import platform
import resource
import socket

from ..edge.resources import process_rss
from ..version import __version__

# The RabbitMQ release whose Prometheus names and labels these are (what dashboards expect in
# rabbitmq_build_info's rabbitmq_version).
RABBITMQ_COMPAT = "3.10.8"
PROTOCOL = {"protocol": "amqp091"}
# amqpd's queues are all classic queues as far as metrics go (x-queue-type quorum is accepted
# and behaves as a classic queue); RabbitMQ labels per-queue-type counters with this.
CLASSIC = {"protocol": "amqp091", "queue_type": "rabbit_classic_queue"}

# (key in broker.stats.totals(), metric name, labels, HELP text as RabbitMQ 3.10 words it)
GLOBAL_COUNTERS = (
    ("messages_received", "rabbitmq_global_messages_received_total", PROTOCOL,
     "Total number of messages received from publishers"),
    ("messages_received_confirm", "rabbitmq_global_messages_received_confirm_total", PROTOCOL,
     "Total number of messages received from publishers expecting confirmations"),
    ("messages_confirmed", "rabbitmq_global_messages_confirmed_total", PROTOCOL,
     "Total number of messages confirmed to publishers"),
    ("messages_routed", "rabbitmq_global_messages_routed_total", PROTOCOL,
     "Total number of messages routed to queues or streams"),
    ("messages_unroutable_dropped", "rabbitmq_global_messages_unroutable_dropped_total",
     PROTOCOL, "Total number of messages published as non-mandatory into an exchange and "
               "dropped as unroutable"),
    ("messages_unroutable_returned", "rabbitmq_global_messages_unroutable_returned_total",
     PROTOCOL, "Total number of messages published as mandatory into an exchange and "
               "returned to the publisher as unroutable"),
    ("messages_delivered", "rabbitmq_global_messages_delivered_total", CLASSIC,
     "Total number of messages delivered to consumers"),
    ("messages_delivered_consume_auto_ack",
     "rabbitmq_global_messages_delivered_consume_auto_ack_total", CLASSIC,
     "Total number of messages delivered to consumers using basic.consume with automatic "
     "acknowledgment"),
    ("messages_delivered_consume_manual_ack",
     "rabbitmq_global_messages_delivered_consume_manual_ack_total", CLASSIC,
     "Total number of messages delivered to consumers using basic.consume with manual "
     "acknowledgment"),
    ("messages_delivered_get_auto_ack", "rabbitmq_global_messages_delivered_get_auto_ack_total",
     CLASSIC, "Total number of messages delivered to consumers using basic.get with automatic "
              "acknowledgment"),
    ("messages_delivered_get_manual_ack",
     "rabbitmq_global_messages_delivered_get_manual_ack_total", CLASSIC,
     "Total number of messages delivered to consumers using basic.get with manual "
     "acknowledgment"),
    ("messages_get_empty", "rabbitmq_global_messages_get_empty_total", CLASSIC,
     "Total number of times basic.get operations fetched no message"),
    ("messages_redelivered", "rabbitmq_global_messages_redelivered_total", CLASSIC,
     "Total number of messages redelivered to consumers"),
    ("messages_acknowledged", "rabbitmq_global_messages_acknowledged_total", CLASSIC,
     "Total number of messages acknowledged by consumers"),
)

# The same totals under the names of RabbitMQ's aggregated channel and queue metrics, which the
# RabbitMQ-Overview Grafana dashboard (grafana.com 10991) reads. RabbitMQ sums them over the
# channels that are open (they fall when a channel closes); here they are node-wide totals
# that only grow, as a Prometheus counter should.
CHANNEL_COUNTERS = (
    ("messages_received", "rabbitmq_channel_messages_published_total",
     "Total number of messages published into an exchange on a channel"),
    ("messages_confirmed", "rabbitmq_channel_messages_confirmed_total",
     "Total number of messages published into an exchange and confirmed on the channel"),
    ("messages_unroutable_returned", "rabbitmq_channel_messages_unroutable_returned_total",
     "Total number of messages published as mandatory into an exchange and returned to the "
     "publisher as unroutable"),
    ("messages_unroutable_dropped", "rabbitmq_channel_messages_unroutable_dropped_total",
     "Total number of messages published as non-mandatory into an exchange and dropped as "
     "unroutable"),
    ("messages_delivered_get_manual_ack", "rabbitmq_channel_get_ack_total",
     "Total number of messages fetched with basic.get in manual acknowledgement mode"),
    ("messages_delivered_get_auto_ack", "rabbitmq_channel_get_total",
     "Total number of messages fetched with basic.get in automatic acknowledgement mode"),
    ("messages_delivered_consume_manual_ack", "rabbitmq_channel_messages_delivered_ack_total",
     "Total number of messages delivered to consumers in manual acknowledgement mode"),
    ("messages_delivered_consume_auto_ack", "rabbitmq_channel_messages_delivered_total",
     "Total number of messages delivered to consumers in automatic acknowledgement mode"),
    ("messages_redelivered", "rabbitmq_channel_messages_redelivered_total",
     "Total number of messages redelivered to consumers"),
    ("messages_acknowledged", "rabbitmq_channel_messages_acked_total",
     "Total number of messages acknowledged by consumers"),
    ("messages_get_empty", "rabbitmq_channel_get_empty_total",
     "Total number of times basic.get operations fetched no message"),
    ("messages_routed", "rabbitmq_queue_messages_published_total",
     "Total number of messages published to queues"),
)

# (key in broker.stats.churn(), metric name, HELP)
CHURN_COUNTERS = (
    ("connections_opened", "rabbitmq_connections_opened_total",
     "Total number of connections opened"),
    ("connections_closed", "rabbitmq_connections_closed_total",
     "Total number of connections closed or terminated"),
    ("channels_opened", "rabbitmq_channels_opened_total", "Total number of channels opened"),
    ("channels_closed", "rabbitmq_channels_closed_total", "Total number of channels closed"),
    ("queues_declared", "rabbitmq_queues_declared_total", "Total number of queues declared"),
    ("queues_created", "rabbitmq_queues_created_total", "Total number of queues created"),
    ("queues_deleted", "rabbitmq_queues_deleted_total", "Total number of queues deleted"),
)

# (field of the queue pass, metric name, HELP): node-wide sums, or one series per queue
QUEUE_GAUGES = (
    ("ready", "rabbitmq_queue_messages_ready", "Messages ready to be delivered to consumers"),
    ("unacked", "rabbitmq_queue_messages_unacked",
     "Messages delivered to consumers but not yet acknowledged"),
    ("messages", "rabbitmq_queue_messages",
     "Sum of ready and unacknowledged messages - total queue depth"),
    ("consumers", "rabbitmq_queue_consumers", "Consumers on a queue"),
)


class Family:
    """One metric: ``kind`` is gauge, counter or untyped (RabbitMQ's info and alarm metrics
    are untyped); ``samples`` is a list of (labels dict, value)."""
    __slots__ = ("name", "kind", "help", "samples")

    def __init__(self, name: str, kind: str, help: str, samples: list):
        self.name, self.kind, self.help, self.samples = name, kind, help, samples

    def __repr__(self):
        return f"Family({self.name}, {self.kind}, {self.samples!r})"


def node_name() -> str:
    return f"amqpd@{socket.gethostname()}"


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _read(obj, method: str) -> dict:
    """A stats reader that is absent (the stats helper not landed, a stub broker) reads as
    zeros."""
    fn = getattr(obj, method, None) if obj is not None else None
    if fn is None:
        return {}
    try:
        return fn() or {}
    except Exception:      # monitoring must never take the broker down
        return {}


class MetricsSource:
    """Reads one node: its broker (queues, stats), the edge's server (connections, resource
    monitor, alarms) and its configuration."""

    def __init__(self, broker, server, config, node: str | None = None):
        self.broker = broker
        self.server = server
        self.config = config
        self.node = node or node_name()
        self.cluster_id = "amqpd-cluster-id-" + hashlib.sha256(
            self.node.encode()).hexdigest()[:22]

    # -- the parts ----------------------------------------------------------------------------
    def queues(self, per_object: bool):
        """One pass over the queues: (count, sums by field, per-queue rows or None)."""
        ready = unacked = consumers = count = 0
        rows = [] if per_object else None
        for vhost in list(self.broker.vhosts.values()):
            queues = vhost.queues
            count += len(queues)
            for q in queues.values():
                r = q.message_count
                u = q.unacked
                c = len(q.consumers)
                ready += r
                unacked += u
                consumers += c
                if rows is not None:
                    rows.append((vhost.name, q.name, r, u, r + u, c))
        return count, {"ready": ready, "unacked": unacked, "messages": ready + unacked,
                       "consumers": consumers}, rows

    def connections(self):
        """(connections, channels, publishers, unacked, unconfirmed) over the open AMQP
        connections."""
        conns = channels = publishers = unacked = unconfirmed = 0
        for p in list(getattr(self.server, "protocols", ())):
            conn = getattr(p, "conn", None)
            if conn is None or not conn.is_open:
                continue              # still in the handshake, refused, or closing
            conns += 1
            channels += len(conn.channels)
            for ch in conn.channels.values():
                unacked += len(ch.unacked)
                if ch.confirm:
                    unconfirmed += max(ch.publish_seq - ch.confirmed, 0)
                # the counters only (stats.values()), never message_stats(): that one moves
                # the rate samples the management API's readers compute rates from
                values = getattr(getattr(ch, "stats", None), "values", None)
                if values is not None:
                    try:
                        if values().get("publish"):
                            publishers += 1
                    except Exception:
                        pass
        return conns, channels, publishers, unacked, unconfirmed

    def resources(self) -> dict:
        monitor = getattr(self.server, "monitor", None)
        alarms = set(getattr(monitor, "alarms", ()) or ())
        data_dir = self.config.storage.data_dir
        free = getattr(monitor, "free", None)
        if free is None and data_dir is not None:
            try:
                st = os.statvfs(data_dir)
                free = st.f_bavail * st.f_frsize
            except OSError:
                free = None
        return {
            "rss": process_rss(),
            "memory_limit": getattr(monitor, "memory_limit", 0) or 0,
            "disk_free": free,
            "disk_limit": getattr(monitor, "disk_free_limit", 0) or 0,
            "memory_alarm": int("memory" in alarms),
            "disk_alarm": int("disk" in alarms),
            "fds": open_fds(),
            "max_fds": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        }

    # -- the whole read ------------------------------------------------------------------------
    def families(self, per_object: bool = False) -> list:
        """Every metric, in the order RabbitMQ's /metrics lists them."""
        stats = getattr(self.broker, "stats", None)
        totals = _read(stats, "totals")
        churn = _read(stats, "churn")
        n_queues, sums, rows = self.queues(per_object)
        conns, channels, publishers, ch_unacked, unconfirmed = self.connections()
        res = self.resources()
        out = [
            Family("rabbitmq_alarms_file_descriptor_limit", "untyped",
                   "is 1 if file descriptor limit alarm is in effect", [({}, 0)]),
            Family("rabbitmq_alarms_free_disk_space_watermark", "untyped",
                   "is 1 if free disk space watermark alarm is in effect",
                   [({}, res["disk_alarm"])]),
            Family("rabbitmq_alarms_memory_used_watermark", "untyped",
                   "is 1 if VM memory watermark alarm is in effect",
                   [({}, res["memory_alarm"])]),
        ]
        for key, name, help_text in CHURN_COUNTERS:
            out.append(Family(name, "counter", help_text, [({}, churn.get(key, 0))]))
        out += [
            Family("rabbitmq_process_open_fds", "gauge", "Open file descriptors",
                   [({}, res["fds"])]),
            Family("rabbitmq_process_open_tcp_sockets", "gauge", "Open TCP sockets",
                   [({}, len(getattr(self.server, "protocols", ())))]),
            Family("rabbitmq_process_resident_memory_bytes", "gauge", "Memory used in bytes",
                   [({}, res["rss"])]),
        ]
        if res["disk_free"] is not None:
            out.append(Family("rabbitmq_disk_space_available_bytes", "gauge",
                              "Disk space available in bytes", [({}, res["disk_free"])]))
        out += [
            Family("rabbitmq_process_max_fds", "gauge", "Open file descriptors limit",
                   [({}, res["max_fds"])]),
            Family("rabbitmq_process_max_tcp_sockets", "gauge", "Open TCP sockets limit",
                   [({}, self.config.limits.max_connections or res["max_fds"])]),
            Family("rabbitmq_resident_memory_limit_bytes", "gauge",
                   "Memory high watermark in bytes", [({}, res["memory_limit"])]),
            Family("rabbitmq_disk_space_available_limit_bytes", "gauge",
                   "Free disk space low watermark in bytes", [({}, res["disk_limit"])]),
        ]
        for column, (field, name, help_text) in enumerate(QUEUE_GAUGES):
            if rows is None:
                out.append(Family(name, "gauge", help_text, [({}, sums[field])]))
            else:
                out.append(QueueFamily(name, help_text, rows, column))
        out += [
            Family("rabbitmq_connections", "gauge", "Connections currently open",
                   [({}, conns)]),
            Family("rabbitmq_channels", "gauge", "Channels currently open", [({}, channels)]),
            Family("rabbitmq_consumers", "gauge", "Consumers currently connected",
                   [({}, sums["consumers"])]),
            Family("rabbitmq_queues", "gauge", "Queues available", [({}, n_queues)]),
            Family("rabbitmq_build_info", "untyped", "RabbitMQ & Erlang/OTP version info",
                   [({"rabbitmq_version": RABBITMQ_COMPAT,
                      "prometheus_plugin_version": __version__,
                      "prometheus_client_version": _prometheus_client_version(),
                      "erlang_version": f"python-{platform.python_version()}",
                      "amqpd_version": __version__}, 1)]),
            Family("rabbitmq_identity_info", "untyped",
                   "RabbitMQ node & cluster identity info",
                   [({"rabbitmq_node": self.node, "rabbitmq_cluster": self.node,
                      "rabbitmq_cluster_permanent_id": self.cluster_id}, 1)]),
            Family("rabbitmq_global_consumers", "gauge", "Current number of consumers",
                   [(PROTOCOL, sums["consumers"])]),
        ]
        for key, name, labels, help_text in GLOBAL_COUNTERS:
            out.append(Family(name, "counter", help_text, [(labels, totals.get(key, 0))]))
        out.append(Family("rabbitmq_global_publishers", "gauge",
                          "Current number of publishers", [(PROTOCOL, publishers)]))
        out += [
            Family("rabbitmq_channel_consumers", "gauge", "Consumers on a channel",
                   [({}, sums["consumers"])]),
            Family("rabbitmq_channel_messages_unacked", "gauge",
                   "Delivered but not yet acknowledged messages", [({}, ch_unacked)]),
            Family("rabbitmq_channel_messages_unconfirmed", "gauge",
                   "Published but not yet confirmed messages", [({}, unconfirmed)]),
        ]
        for key, name, help_text in CHANNEL_COUNTERS:
            out.append(Family(name, "counter", help_text, [({}, totals.get(key, 0))]))
        return out


class QueueFamily(Family):
    """A per-queue gauge of /metrics/per-object: ``rows`` (vhost, queue, ready, unacked,
    messages, consumers) are shared by the four queue families, ``column`` picks the value;
    the per-sample dicts are made only when ``samples`` is read (the exposition writes rows
    directly)."""
    __slots__ = ("rows", "column")

    def __init__(self, name: str, help: str, rows: list, column: int):
        super().__init__(name, "gauge", help, None)
        self.rows, self.column = rows, column

    @property
    def samples(self):
        i = self.column + 2
        return [({"vhost": row[0], "queue": row[1]}, row[i]) for row in self.rows]

    @samples.setter
    def samples(self, value):
        pass


_client_version = None


def _prometheus_client_version() -> str:
    global _client_version
    if _client_version is None:
        try:
            from importlib.metadata import version
            _client_version = version("prometheus_client")
        except Exception:
            _client_version = "unknown"
    return _client_version
