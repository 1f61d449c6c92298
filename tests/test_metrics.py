"""Prometheus metrics (GET /metrics, /metrics/per-object) under RabbitMQ 3.10.8's names, types,
HELP texts and labels, read by prometheus_client's own parser; and the StatsD/DogStatsD push,
received by a UDP socket the test opens. Real broker, real pika clients, real HTTP."""
import asyncio
import logging
import socket
import subprocess
import sys
import time
import urllib.request

import asyncio_dgram
import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

import amqpd
import amqpd.testing
from amqpd.edge.listeners import StartError

from .brokerthread import BrokerThread

# What RabbitMQ 3.10.8's /metrics says for these (recorded from the RabbitMQ on this machine):
# name of the sample -> (TYPE, HELP)
RABBITMQ = {
    "rabbitmq_identity_info": ("untyped", "RabbitMQ node & cluster identity info"),
    "rabbitmq_build_info": ("untyped", "RabbitMQ & Erlang/OTP version info"),
    "rabbitmq_queue_messages_ready": ("gauge", "Messages ready to be delivered to consumers"),
    "rabbitmq_queue_messages_unacked": (
        "gauge", "Messages delivered to consumers but not yet acknowledged"),
    "rabbitmq_queue_messages": (
        "gauge", "Sum of ready and unacknowledged messages - total queue depth"),
    "rabbitmq_queue_consumers": ("gauge", "Consumers on a queue"),
    "rabbitmq_queues": ("gauge", "Queues available"),
    "rabbitmq_connections": ("gauge", "Connections currently open"),
    "rabbitmq_channels": ("gauge", "Channels currently open"),
    "rabbitmq_consumers": ("gauge", "Consumers currently connected"),
    "rabbitmq_connections_opened_total": ("counter", "Total number of connections opened"),
    "rabbitmq_connections_closed_total": (
        "counter", "Total number of connections closed or terminated"),
    "rabbitmq_channels_opened_total": ("counter", "Total number of channels opened"),
    "rabbitmq_channels_closed_total": ("counter", "Total number of channels closed"),
    "rabbitmq_queues_declared_total": ("counter", "Total number of queues declared"),
    "rabbitmq_queues_created_total": ("counter", "Total number of queues created"),
    "rabbitmq_queues_deleted_total": ("counter", "Total number of queues deleted"),
    "rabbitmq_process_resident_memory_bytes": ("gauge", "Memory used in bytes"),
    "rabbitmq_resident_memory_limit_bytes": ("gauge", "Memory high watermark in bytes"),
    "rabbitmq_disk_space_available_bytes": ("gauge", "Disk space available in bytes"),
    "rabbitmq_disk_space_available_limit_bytes": (
        "gauge", "Free disk space low watermark in bytes"),
    "rabbitmq_alarms_memory_used_watermark": (
        "untyped", "is 1 if VM memory watermark alarm is in effect"),
    "rabbitmq_alarms_free_disk_space_watermark": (
        "untyped", "is 1 if free disk space watermark alarm is in effect"),
    "rabbitmq_alarms_file_descriptor_limit": (
        "untyped", "is 1 if file descriptor limit alarm is in effect"),
    "rabbitmq_process_open_fds": ("gauge", "Open file descriptors"),
    "rabbitmq_process_max_fds": ("gauge", "Open file descriptors limit"),
    "rabbitmq_process_open_tcp_sockets": ("gauge", "Open TCP sockets"),
    "rabbitmq_process_max_tcp_sockets": ("gauge", "Open TCP sockets limit"),
    "rabbitmq_global_messages_received_total": (
        "counter", "Total number of messages received from publishers"),
    "rabbitmq_global_messages_received_confirm_total": (
        "counter", "Total number of messages received from publishers expecting confirmations"),
    "rabbitmq_global_messages_confirmed_total": (
        "counter", "Total number of messages confirmed to publishers"),
    "rabbitmq_global_messages_routed_total": (
        "counter", "Total number of messages routed to queues or streams"),
    "rabbitmq_global_messages_unroutable_dropped_total": (
        "counter", "Total number of messages published as non-mandatory into an exchange and "
                   "dropped as unroutable"),
    "rabbitmq_global_messages_unroutable_returned_total": (
        "counter", "Total number of messages published as mandatory into an exchange and "
                   "returned to the publisher as unroutable"),
    "rabbitmq_global_messages_delivered_total": (
        "counter", "Total number of messages delivered to consumers"),
    "rabbitmq_global_messages_delivered_consume_auto_ack_total": (
        "counter", "Total number of messages delivered to consumers using basic.consume with "
                   "automatic acknowledgment"),
    "rabbitmq_global_messages_delivered_consume_manual_ack_total": (
        "counter", "Total number of messages delivered to consumers using basic.consume with "
                   "manual acknowledgment"),
    "rabbitmq_global_messages_delivered_get_auto_ack_total": (
        "counter", "Total number of messages delivered to consumers using basic.get with "
                   "automatic acknowledgment"),
    "rabbitmq_global_messages_delivered_get_manual_ack_total": (
        "counter", "Total number of messages delivered to consumers using basic.get with manual "
                   "acknowledgment"),
    "rabbitmq_global_messages_get_empty_total": (
        "counter", "Total number of times basic.get operations fetched no message"),
    "rabbitmq_global_messages_redelivered_total": (
        "counter", "Total number of messages redelivered to consumers"),
    "rabbitmq_global_messages_acknowledged_total": (
        "counter", "Total number of messages acknowledged by consumers"),
    "rabbitmq_global_consumers": ("gauge", "Current number of consumers"),
    # the aggregated channel metrics the RabbitMQ-Overview Grafana dashboard reads
    "rabbitmq_channel_consumers": ("gauge", "Consumers on a channel"),
    "rabbitmq_channel_messages_unacked": ("gauge", "Delivered but not yet acknowledged messages"),
    "rabbitmq_channel_messages_unconfirmed": ("gauge", "Published but not yet confirmed messages"),
    "rabbitmq_channel_messages_published_total": (
        "counter", "Total number of messages published into an exchange on a channel"),
    "rabbitmq_channel_messages_confirmed_total": (
        "counter", "Total number of messages published into an exchange and confirmed on the "
                   "channel"),
    "rabbitmq_channel_messages_unroutable_returned_total": (
        "counter", "Total number of messages published as mandatory into an exchange and "
                   "returned to the publisher as unroutable"),
    "rabbitmq_channel_messages_unroutable_dropped_total": (
        "counter", "Total number of messages published as non-mandatory into an exchange and "
                   "dropped as unroutable"),
    "rabbitmq_channel_get_ack_total": (
        "counter", "Total number of messages fetched with basic.get in manual acknowledgement "
                   "mode"),
    "rabbitmq_channel_get_total": (
        "counter", "Total number of messages fetched with basic.get in automatic "
                   "acknowledgement mode"),
    "rabbitmq_channel_messages_delivered_ack_total": (
        "counter", "Total number of messages delivered to consumers in manual acknowledgement "
                   "mode"),
    "rabbitmq_channel_messages_delivered_total": (
        "counter", "Total number of messages delivered to consumers in automatic "
                   "acknowledgement mode"),
    "rabbitmq_channel_messages_redelivered_total": (
        "counter", "Total number of messages redelivered to consumers"),
    "rabbitmq_channel_messages_acked_total": (
        "counter", "Total number of messages acknowledged by consumers"),
    "rabbitmq_channel_get_empty_total": (
        "counter", "Total number of times basic.get operations fetched no message"),
    "rabbitmq_queue_messages_published_total": (
        "counter", "Total number of messages published to queues"),
    "rabbitmq_global_publishers": ("gauge", "Current number of publishers"),
}


def fetch(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.headers["Content-Type"], r.read().decode()


def parse(text: str) -> dict:
    """sample name -> (TYPE, HELP, [(labels, value)]) as prometheus_client's parser reads it."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            entry = out.setdefault(s.name, (fam.type, fam.documentation, []))
            entry[2].append((s.labels, s.value))
    return out


def value(metrics: dict, name: str, **labels) -> float:
    matches = [v for lab, v in metrics[name][2] if all(lab.get(k) == x for k, x in labels.items())]
    assert len(matches) == 1, (name, labels, metrics[name])
    return matches[0]


@pytest.fixture
def prom(make_broker):
    return make_broker(prometheus_port=0)


def test_names_types_help_and_labels_are_rabbitmqs(prom):
    content_type, text = fetch(prom.metrics_url)
    assert content_type.startswith("text/plain; version=0.0.4")
    metrics = parse(text)
    for name, (kind, help_text) in RABBITMQ.items():
        assert name in metrics, f"{name} missing"
        assert metrics[name][:2] == (kind if kind != "untyped" else "unknown", help_text), name
    for name in RABBITMQ:
        if name.startswith("rabbitmq_global_"):
            for labels, _ in metrics[name][2]:
                assert labels["protocol"] == "amqp091", name
    (identity, one), = metrics["rabbitmq_identity_info"][2]
    assert one == 1 and identity["rabbitmq_node"].startswith("amqpd@")
    assert set(identity) == {"rabbitmq_node", "rabbitmq_cluster", "rabbitmq_cluster_permanent_id"}
    (build, _), = metrics["rabbitmq_build_info"][2]
    assert build["rabbitmq_version"] == "3.10.8" and build["amqpd_version"] == amqpd.__version__
    assert value(metrics, "rabbitmq_resident_memory_limit_bytes") > 0
    assert value(metrics, "rabbitmq_process_resident_memory_bytes") > 1e6
    assert value(metrics, "rabbitmq_process_max_fds") >= value(metrics, "rabbitmq_process_open_fds") > 3
    # the data dir's file system: the free-space limit is the configured one
    assert value(metrics, "rabbitmq_disk_space_available_limit_bytes") == 50_000_000
    assert value(metrics, "rabbitmq_disk_space_available_bytes") > 0
    assert value(metrics, "rabbitmq_alarms_memory_used_watermark") == 0
    # one series per metric on /metrics: no per-queue labels
    assert all(lab == {} for lab, _ in metrics["rabbitmq_queue_messages_ready"][2])


def test_queue_connection_and_channel_gauges_follow_the_broker(prom):
    conn = pika.BlockingConnection(pika.URLParameters(prom.url))
    try:
        ch = conn.channel()
        conn.channel()
        ch.queue_declare("depth-a")
        ch.queue_declare("depth b\"odd\"")
        for _ in range(5):
            ch.basic_publish("", "depth-a", b"m")
        ch.basic_publish("", "depth b\"odd\"", b"m")
        ch.basic_qos(prefetch_count=2)
        ch.basic_consume("depth-a", lambda *a: None)
        prom.wait_for(lambda: prom.broker.vhosts["/"].queues["depth-a"].unacked == 2,
                      what="two deliveries")
        metrics = parse(fetch(prom.metrics_url)[1])
        assert value(metrics, "rabbitmq_queues") == 2
        assert value(metrics, "rabbitmq_queue_messages_ready") == 4      # 3 + 1
        assert value(metrics, "rabbitmq_queue_messages_unacked") == 2
        assert value(metrics, "rabbitmq_queue_messages") == 6
        assert value(metrics, "rabbitmq_consumers") == 1
        assert value(metrics, "rabbitmq_queue_consumers") == 1
        assert value(metrics, "rabbitmq_global_consumers", protocol="amqp091") == 1
        assert value(metrics, "rabbitmq_connections") == 1
        assert value(metrics, "rabbitmq_channels") == 2
        assert value(metrics, "rabbitmq_channel_consumers") == 1
        assert value(metrics, "rabbitmq_channel_messages_unacked") == 2

        per_object = parse(fetch(prom.metrics_url + "/per-object")[1])
        a = {"vhost": "/", "queue": "depth-a"}
        b = {"vhost": "/", "queue": "depth b\"odd\""}
        assert value(per_object, "rabbitmq_queue_messages_ready", **a) == 3
        assert value(per_object, "rabbitmq_queue_messages_unacked", **a) == 2
        assert value(per_object, "rabbitmq_queue_messages", **a) == 5
        assert value(per_object, "rabbitmq_queue_consumers", **a) == 1
        assert value(per_object, "rabbitmq_queue_messages_ready", **b) == 1
        assert value(per_object, "rabbitmq_queue_consumers", **b) == 0
        assert len(per_object["rabbitmq_queue_messages"][2]) == 2
        # the node-wide metrics are there too
        assert value(per_object, "rabbitmq_queues") == 2
    finally:
        conn.close()
    prom.wait_for(lambda: not prom.server.protocols, what="the connection to close")
    metrics = parse(fetch(prom.metrics_url)[1])
    assert value(metrics, "rabbitmq_connections") == 0
    assert value(metrics, "rabbitmq_queue_messages_unacked") == 0
    assert value(metrics, "rabbitmq_queue_messages_ready") == 6        # requeued


def test_message_counters_are_the_stats_totals(prom):
    """The counters are broker.stats' (the stats read model); a broker without it reads 0."""
    conn = pika.BlockingConnection(pika.URLParameters(prom.url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("counted")
        for _ in range(4):
            ch.basic_publish("", "counted", b"m")
        ch.basic_get("counted", auto_ack=True)
    finally:
        conn.close()
    prom.wait_for(lambda: not prom.server.protocols, what="the connection to close")
    metrics = parse(fetch(prom.metrics_url)[1])
    stats = getattr(prom.broker, "stats", None)
    totals = stats.totals() if stats is not None and hasattr(stats, "totals") else {}
    churn = stats.churn() if stats is not None and hasattr(stats, "churn") else {}
    p = {"protocol": "amqp091"}
    assert value(metrics, "rabbitmq_global_messages_received_total", **p) == \
        totals.get("messages_received", 0)
    assert value(metrics, "rabbitmq_global_messages_confirmed_total", **p) == \
        totals.get("messages_confirmed", 0)
    assert value(metrics, "rabbitmq_global_messages_delivered_get_auto_ack_total", **p,
                 queue_type="rabbit_classic_queue") == \
        totals.get("messages_delivered_get_auto_ack", 0)
    assert value(metrics, "rabbitmq_connections_opened_total") == \
        churn.get("connections_opened", 0)
    if totals:       # the stats read model is in: the counts are the real ones
        assert value(metrics, "rabbitmq_global_messages_received_total", **p) == 4
        assert value(metrics, "rabbitmq_connections_opened_total") == 1


def test_metrics_are_off_unless_asked_for(make_broker):
    b = make_broker()
    assert b.metrics_url is None and b.node.prometheus is None


def test_busy_prometheus_port_stops_start_up_with_the_key():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        b = BrokerThread(prometheus_port=busy.getsockname()[1])
        with pytest.raises(StartError, match=r"listeners\.prometheus: 127\.0\.0\.1:\d+ is "
                                             r"already in use"):
            b.start()
        b.cleanup()
    finally:
        busy.close()


async def test_embedded_broker_serves_metrics_when_given_a_port():
    async with amqpd.serve(prometheus_port=0) as broker:
        assert broker.metrics_url.startswith("http://127.0.0.1:")
        text = await asyncio.to_thread(lambda: fetch(broker.metrics_url)[1])
        assert "rabbitmq_queues 0.0" in text
    async with amqpd.serve() as broker:
        assert broker.metrics_url is None


def test_amqpd_testing_broker_thread_takes_prometheus_port():
    with amqpd.testing.BrokerThread(prometheus_port=0) as broker:
        metrics = parse(fetch(broker.metrics_url)[1])
        assert value(metrics, "rabbitmq_connections") == 0


def test_cli_prometheus_port_flag(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "amqpd", "--port", "0", "--http-port", "0",
         "--prometheus-port", "0", "--data-dir", str(tmp_path / "data")],
        stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 20
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "Prometheus metrics on " in line:
                url = line.rsplit(" ", 1)[1].strip()
        assert url and url.endswith("/metrics")
        metrics = parse(fetch(url)[1])
        assert value(metrics, "rabbitmq_queues") == 0
    finally:
        proc.terminate()
        proc.wait(10)


# -- StatsD / DogStatsD ---------------------------------------------------------------------------
async def _receive(server, predicate, timeout=10.0) -> list:
    """Datagrams' lines until one of them satisfies ``predicate``."""
    lines = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise AssertionError(f"no matching StatsD line; got {lines[-20:]}")
        data, _ = await asyncio.wait_for(server.recv(), left)
        new = data.decode().split("\n")
        lines.extend(new)
        if any(predicate(x) for x in new):
            return lines


async def test_statsd_push_carries_gauges_and_counters():
    server = await asyncio_dgram.bind(("127.0.0.1", 0))
    port = server.sockname[1]
    config = {"metrics": {"statsd": {"host": "127.0.0.1", "port": port, "prefix": "amqpd",
                                     "interval": 0.05}}}
    try:
        async with amqpd.serve(config=config) as broker:
            import aio_pika
            connection = await aio_pika.connect(broker.url)
            async with connection:
                channel = await connection.channel()
                await channel.declare_queue("statsd-q")
                for _ in range(3):
                    await channel.default_exchange.publish(aio_pika.Message(b"x"), "statsd-q")
                lines = await _receive(server,
                                       lambda x: x == "amqpd.queue_messages_ready:3|g")
        assert "amqpd.queues:1|g" in lines
        assert any(x.startswith("amqpd.connections:") and x.endswith("|g") for x in lines)
        assert all("|#" not in x for x in lines)           # plain StatsD: no tags
        assert not any(x.startswith("amqpd.identity_info") for x in lines)
        counters = [x for x in lines if x.endswith("|c")]
        assert all(int(x.split(":")[1].split("|")[0]) > 0 for x in counters)   # increases only
    finally:
        server.close()


async def test_dogstatsd_sends_labels_as_tags():
    server = await asyncio_dgram.bind(("127.0.0.1", 0))
    config = {"metrics": {"statsd": {"host": "127.0.0.1", "port": server.sockname[1],
                                     "prefix": "rmq", "interval": 0.05, "dogstatsd": True}}}
    try:
        async with amqpd.serve(config=config):
            lines = await _receive(server, lambda x: x.startswith("rmq.identity_info:1|g|#"))
        assert "rmq.global_consumers:0|g|#protocol:amqp091" in lines
        identity = next(x for x in lines if x.startswith("rmq.identity_info"))
        assert "rabbitmq_node:amqpd@" in identity
    finally:
        server.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "no-such-host.invalid"])
async def test_a_dead_or_unresolvable_collector_never_stops_the_broker(host, caplog):
    """Nothing listens on the port (ICMP port unreachable comes back as ECONNREFUSED on the
    next send), or the name does not resolve: the broker carries on, one warning is logged."""
    caplog.set_level(logging.INFO, logger="amqpd")
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    config = {"metrics": {"statsd": {"host": host, "port": port, "interval": 0.02}}}
    async with amqpd.serve(config=config) as broker:
        import aio_pika
        pusher = broker.node.statsd
        for _ in range(3):      # several pushes fail while clients are served
            connection = await aio_pika.connect(broker.url)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue("", exclusive=True)
                await channel.default_exchange.publish(aio_pika.Message(b"ping"), queue.name)
                message = await queue.get(timeout=5)
                assert message.body == b"ping"
                await message.ack()
        assert pusher.task is not None and not pusher.task.done()
        deadline = asyncio.get_running_loop().time() + 10
        while not pusher.failing:
            assert asyncio.get_running_loop().time() < deadline, "no push failed"
            await asyncio.sleep(0.02)
    warnings = [r for r in caplog.records
                if r.name == "amqpd.statsd" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot send metrics" in warnings[0].getMessage()


def test_statsd_lines_carry_counter_increases_and_fit_one_mtu():
    from amqpd.management.metrics import Family
    from amqpd.management.statsd import MAX_DATAGRAM, StatsDLines, datagrams
    fmt = StatsDLines("p", dogstatsd=False)
    received = [Family("rabbitmq_global_messages_received_total", "counter", "",
                       [({"protocol": "amqp091"}, 7)]),
                Family("rabbitmq_queues", "gauge", "", [({}, 3)])]
    assert fmt.lines(received) == ["p.global_messages_received:7|c", "p.queues:3|g"]
    received[0].samples = [({"protocol": "amqp091"}, 7)]
    assert fmt.lines(received) == ["p.queues:3|g"]            # no increase: nothing sent
    received[0].samples = [({"protocol": "amqp091"}, 10)]
    assert fmt.lines(received)[0] == "p.global_messages_received:3|c"
    lines = [f"p.metric_number_{i}:{i}|g" for i in range(500)]
    packets = datagrams(lines)
    assert len(packets) > 1 and all(len(x) <= MAX_DATAGRAM for x in packets)
    assert b"\n".join(packets).decode().split("\n") == lines
