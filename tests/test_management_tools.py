"""The requests the tools operators already run send, replayed byte for byte against amqpd,
checking the fields each reads: KEDA's RabbitMQ scaler, the Prometheus exporter
(kbudde/rabbitmq_exporter), Celery's Flower, and RabbitMQ's own ``rabbitmqadmin`` (run for
real when it is installed: RabbitMQ's package or its management plugin's copy)."""
import glob
import json
import os
import shutil
import subprocess
import sys

import pika
import pytest

from .mgmt_client import API


@pytest.fixture
def mbroker(make_broker):
    return make_broker(http_port=0)


@pytest.fixture
def api(mbroker):
    return API(mbroker.management_url)


@pytest.fixture
def work(mbroker):
    """evaluate_trials with 4 messages (1 unacked), other queues beside it."""
    c = pika.BlockingConnection(pika.URLParameters(mbroker.url))
    ch = c.channel()
    for name in ("evaluate_trials", "evaluate_trials_old", "other"):
        ch.queue_declare(name)
    for i in range(4):
        ch.basic_publish("", "evaluate_trials", b"t%d" % i)
    ch.basic_qos(prefetch_count=1)
    ch.basic_consume("evaluate_trials", lambda *a: None)
    c.process_data_events(time_limit=0.2)
    mbroker.wait_for(lambda: mbroker.broker.vhosts["/"].queues["evaluate_trials"].unacked == 1)
    yield ch
    c.close()


def _numbers(q):
    """What KEDA's queueInfo reads (message_stats is optional: rates only)."""
    assert isinstance(q["messages"], int) and isinstance(q["messages_ready"], int)
    assert isinstance(q["messages_unacknowledged"], int) and isinstance(q["name"], str)
    rate = q.get("message_stats", {}).get("publish_details", {}).get("rate", 0.0)
    assert isinstance(rate, (int, float))
    return q["messages"], q["messages_ready"], q["messages_unacknowledged"]


# -- KEDA ---------------------------------------------------------------------------------------
def test_keda_one_queue(api, work):
    # fmt.Sprintf("%s/api/queues%s/%s", host, "/%2F", url.QueryEscape(queueName))
    r = api.get("/api/queues/%2F/evaluate_trials")
    assert r.status == 200
    assert _numbers(r.json()) == (4, 3, 1)


@pytest.mark.parametrize("vhost_path", ["", "/%2F"])
def test_keda_regex_paging(api, work, vhost_path):
    # "%s/api/queues%s?page=1&use_regex=true&pagination=false&name=%s&page_size=%d"
    r = api.get(f"/api/queues{vhost_path}?page=1&use_regex=true&pagination=false"
                f"&name=%5Eevaluate_trials%24&page_size=100")
    assert r.status == 200
    body = r.json()
    assert body["page_count"] == 1          # KEDA refuses more than one page
    assert [_numbers(q) for q in body["items"]] == [(4, 3, 1)]


def test_keda_unknown_queue_is_404(api):
    assert api.get("/api/queues/%2F/nope").status == 404


# -- Prometheus exporter ------------------------------------------------------------------------
BERT = {"Accept": "application/bert, application/json;q=0.1"}


def test_prometheus_exporter_requests(api, work):
    # apiRequest: GET /api/<endpoint>?sort= with Accept preferring BERT; JSON is what it
    # decodes when the Content-Type says so
    for endpoint in ("overview", "queues", "exchanges", "nodes", "connections"):
        r = api.get(f"/api/{endpoint}?sort=", headers=BERT)
        assert r.status == 200, endpoint
        assert r.headers["Content-Type"].startswith("application/json"), endpoint
    overview = api.get("/api/overview", headers=BERT).json()
    assert isinstance(overview["cluster_name"], str) and isinstance(overview["node"], str)
    for key in ("channels", "connections", "consumers", "exchanges", "queues"):
        assert isinstance(overview["object_totals"][key], int)
    for key in ("messages", "messages_ready", "messages_unacknowledged"):
        assert isinstance(overview["queue_totals"][key], int)
    queues = api.get("/api/queues?sort=", headers=BERT).json()
    q = {x["name"]: x for x in queues}["evaluate_trials"]
    for label in ("vhost", "name", "durable", "policy", "state", "node"):
        assert label in q
    for gauge in ("messages_ready", "messages_unacknowledged", "messages", "messages_ready_ram",
                  "messages_unacknowledged_ram", "messages_ram", "messages_persistent",
                  "message_bytes", "message_bytes_ready", "message_bytes_unacknowledged",
                  "message_bytes_ram", "message_bytes_persistent", "consumers",
                  "consumer_utilisation", "memory"):
        assert isinstance(q[gauge], (int, float)), gauge
    assert q["state"] == "running"
    exchanges = api.get("/api/exchanges?sort=", headers=BERT).json()
    assert all({"vhost", "name", "type"} <= set(x) for x in exchanges)
    node = api.get("/api/nodes?sort=", headers=BERT).json()[0]
    for key in ("fd_used", "fd_total", "sockets_used", "sockets_total", "mem_used",
                "mem_limit", "disk_free", "disk_free_limit", "proc_used", "proc_total",
                "uptime", "run_queue"):
        assert isinstance(node[key], (int, float)), key
    for key in ("mem_alarm", "disk_free_alarm", "running"):
        assert isinstance(node[key], bool), key
    assert node["partitions"] == []


# -- Flower -------------------------------------------------------------------------------------
def test_flower_queue_requests(api, work):
    # flower.utils.broker.RabbitMQ.queues: GET {broker_api}queues/{vhost} (the broker API URL
    # ends with "/api/"; the vhost is quoted, "/" as %2F), and /api/queues/ for all
    for path in ("/api/queues/", "/api/queues/%2F", "/api/queues/%2F/"):
        r = api.get(path)
        assert r.status == 200, path
        names = {q["name"]: q for q in r.json()}
        assert names["evaluate_trials"]["messages"] == 4


# -- rabbitmqadmin ------------------------------------------------------------------------------
def find_rabbitmqadmin():
    found = glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/rabbitmq_management-*/"
                      "priv/www/cli/rabbitmqadmin")
    if found:
        return found[0]
    return shutil.which("rabbitmqadmin")


def test_rabbitmqadmin_lists_declares_publishes_gets(mbroker):
    tool = find_rabbitmqadmin()
    if tool is None:
        pytest.skip("rabbitmqadmin is not installed (RabbitMQ's package or management plugin)")
    port = mbroker.management_url.rsplit(":", 1)[1]

    def admin(*args):
        r = subprocess.run([sys.executable, tool, "-H", "127.0.0.1", "-P", port, "-u", "guest",
                            "-p", "guest", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    assert "queue declared" in admin("declare", "queue", "name=adminq", "durable=false")
    assert "Message published" in admin("publish", "routing_key=adminq",
                                        "payload=hello from rabbitmqadmin")
    listed = json.loads(admin("-f", "raw_json", "list", "queues", "name", "messages"))
    assert listed == [{"messages": 1, "name": "adminq"}]
    got = json.loads(admin("-f", "raw_json", "get", "queue=adminq",
                           "ackmode=ack_requeue_false"))
    assert got[0]["payload"] == "hello from rabbitmqadmin"
    assert json.loads(admin("-f", "raw_json", "list", "queues", "name", "messages")) == \
        [{"messages": 0, "name": "adminq"}]
    assert "rabbitmq_version" in admin("show", "overview")
    assert "exchange declared" in admin("declare", "exchange", "name=ax", "type=fanout")
    assert "binding declared" in admin("declare", "binding", "source=ax",
                                       "destination=adminq")
    assert "queue deleted" in admin("delete", "queue", "name=adminq")
    assert os.path.basename(tool) == "rabbitmqadmin"


def test_flower_broker_tab_shows_the_queue(mbroker):
    """Flower itself (when installed) pointed at amqpd's API: its broker page lists the
    default queue with its counts."""
    pytest.importorskip("flower")
    import re
    import socket
    import time
    import urllib.request
    c = pika.BlockingConnection(pika.URLParameters(mbroker.url))
    ch = c.channel()
    ch.queue_declare("celery", durable=True)
    for _ in range(7):
        ch.basic_publish("", "celery", b"x")
    c.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = mbroker.management_url.replace("http://", "http://guest:guest@") + "/api/"
    flower = subprocess.Popen([sys.executable, "-m", "celery", "--broker", mbroker.url, "flower",
                               f"--port={port}", "--address=127.0.0.1", f"--broker-api={api}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        html = None
        while html is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/broker", timeout=30) as r:
                    html = r.read().decode()
            except OSError:
                assert time.monotonic() < deadline, "Flower did not answer"
                time.sleep(0.2)       # Flower is still starting: nothing to wait on but its port
        cells = [re.sub(r"<[^>]+>|\s+", " ", row).split() for row in
                 re.findall(r"<tr.*?</tr>", html, re.S)]
        assert ["celery", "7", "0", "7", "0"] in [row[:5] for row in cells], cells
    finally:
        flower.terminate()
        flower.wait(10)
