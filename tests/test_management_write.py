"""Management API writes and operations against a real amqpd: what the API changes, real
AMQP clients (pika) see, and the other way round; RabbitMQ's status codes and error bodies."""
import base64

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
def connect(mbroker):
    conns = []

    def make(url=None):
        c = pika.BlockingConnection(pika.URLParameters(url or mbroker.url))
        conns.append(c)
        return c

    yield make
    for c in conns:
        if c.is_open:
            c.close()


# -- queues and exchanges -----------------------------------------------------------------------
def test_put_queue_201_then_204_then_400_inequivalent(api, connect):
    assert api.put("/api/queues/%2F/jobs", {"durable": True}).status == 201
    assert api.put("/api/queues/%2F/jobs", {"durable": True}).status == 204
    r = api.put("/api/queues/%2F/jobs", {"durable": False})
    assert r.status == 400
    assert r.json() == {"error": "bad_request", "reason": "inequivalent arg 'durable' for queue "
                        "'jobs' in vhost '/': received 'false' but current is 'true'"}
    ch = connect().channel()
    assert ch.queue_declare("jobs", passive=True).method.message_count == 0


def test_delete_queue(api, connect):
    ch = connect().channel()
    ch.queue_declare("gone")
    assert api.delete("/api/queues/%2F/gone").status == 204
    assert api.delete("/api/queues/%2F/gone").status == 404
    assert api.get("/api/queues/%2F/gone").status == 404


def test_bad_json_and_unknown_vhost(api):
    r = api.put("/api/queues/%2F/q", raw=b"{bad", headers={"Content-Type": "application/json"})
    assert (r.status, r.json()) == (400, {"error": "bad_request", "reason": "not_json"})
    assert api.put("/api/queues/nosuch/q", {}).status == 404


def test_method_not_allowed(api):
    assert api.request("PATCH", "/api/queues").status == 405


def test_exchanges_put_delete(api, connect):
    assert api.put("/api/exchanges/%2F/ev", {"type": "topic", "durable": True}).status == 201
    assert api.put("/api/exchanges/%2F/ev", {"type": "topic", "durable": True}).status == 204
    r = api.put("/api/exchanges/%2F/ev", {"type": "direct", "durable": True})
    assert r.status == 400 and "inequivalent arg 'type'" in r.json()["reason"]
    r = api.put("/api/exchanges/%2F/x2", {"type": "nosuchtype"})
    assert r.status == 400 and r.json()["reason"] == "unknown exchange type 'nosuchtype'"
    ch = connect().channel()
    ch.exchange_declare("ev", "topic", passive=True)
    assert api.delete("/api/exchanges/%2F/ev").status == 204
    assert api.delete("/api/exchanges/%2F/ev").status == 404


# -- bindings -----------------------------------------------------------------------------------
def test_binding_post_location_get_delete(api, connect):
    api.put("/api/queues/%2F/bq", {})
    r = api.post("/api/bindings/%2F/e/amq.topic/q/bq", {"routing_key": "a.b c", "arguments": {}})
    assert r.status == 201
    assert r.headers["Location"] == "bq/a.b%2Bc"
    r2 = api.post("/api/bindings/%2F/e/amq.topic/q/bq", {"routing_key": "k", "arguments": {"x": 1}})
    props = r2.headers["Location"].split("/", 1)[1]
    assert props.startswith("k~")
    listed = api.get("/api/bindings/%2F/e/amq.topic/q/bq").json()
    assert sorted(b["routing_key"] for b in listed) == ["a.b c", "k"]
    one = api.get(f"/api/bindings/%2F/e/amq.topic/q/bq/{props}")
    assert one.status == 200 and one.json()["arguments"] == {"x": 1}
    # the binding routes for a real publisher
    ch = connect().channel()
    ch.basic_publish("amq.topic", "a.b c", b"via binding")
    ch.connection.process_data_events(time_limit=0)
    assert api.get("/api/queues/%2F/bq").json()["messages"] == 1
    assert api.delete(f"/api/bindings/%2F/e/amq.topic/q/bq/{props}").status == 204
    assert api.get(f"/api/bindings/%2F/e/amq.topic/q/bq/{props}").status == 404
    qb = api.get("/api/queues/%2F/bq/bindings").json()
    assert [(b["source"], b["routing_key"]) for b in qb] == [("", "bq"), ("amq.topic", "a.b c")]
    assert api.post("/api/bindings/%2F/e/nosuch/q/bq", {}).status == 404


# -- messages -----------------------------------------------------------------------------------
def test_publish_get_purge(api, connect):
    api.put("/api/queues/%2F/m", {})
    r = api.post("/api/exchanges/%2F/amq.default/publish",
                 {"properties": {"delivery_mode": 2, "headers": {"h": 1},
                                 "content_type": "text/plain"},
                  "routing_key": "m", "payload": "hello", "payload_encoding": "string"})
    assert (r.status, r.json()) == (200, {"routed": True})
    r = api.post("/api/exchanges/%2F/amq.default/publish",
                 {"properties": {}, "routing_key": "nowhere", "payload": "aGk=",
                  "payload_encoding": "base64"})
    assert r.json() == {"routed": False}
    got = api.post("/api/queues/%2F/m/get", {"count": 5, "ackmode": "ack_requeue_true",
                                            "encoding": "auto"}).json()
    assert len(got) == 1
    msg = got[0]
    assert (msg["payload"], msg["payload_encoding"], msg["routing_key"], msg["exchange"]) == \
        ("hello", "string", "m", "")
    assert msg["properties"] == {"content_type": "text/plain", "headers": {"h": 1},
                                 "delivery_mode": 2}
    # requeued: a real consumer still gets it, marked redelivered
    ch = connect().channel()
    method, props, body = ch.basic_get("m", auto_ack=True)
    assert body == b"hello" and method.redelivered and props.headers == {"h": 1}
    api.post("/api/exchanges/%2F/amq.default/publish",
             {"properties": {}, "routing_key": "m", "payload": "\xff",
              "payload_encoding": "string"})
    got = api.post("/api/queues/%2F/m/get", {"count": 1, "ackmode": "ack_requeue_false",
                                            "encoding": "base64"}).json()
    assert base64.b64decode(got[0]["payload"]) == "\xff".encode()
    assert got[0]["properties"] == []                 # RabbitMQ's empty proplist
    assert api.get("/api/queues/%2F/m").json()["messages"] == 0
    for i in range(3):
        ch.basic_publish("", "m", b"%d" % i)
    ch.connection.process_data_events(time_limit=0)
    assert api.delete("/api/queues/%2F/m/contents").status == 204
    assert ch.queue_declare("m", passive=True).method.message_count == 0


def test_get_needs_ackmode_and_encoding(api):
    api.put("/api/queues/%2F/g", {})
    r = api.post("/api/queues/%2F/g/get", {"count": 2})
    assert r.status == 400
    assert r.json()["reason"] == "[{key_missing,ackmode},{key_missing,encoding}]"


# -- users, permissions, vhosts -----------------------------------------------------------------
def test_users_put_login_tags_delete(api, mbroker, connect):
    assert api.put("/api/users/alice", {"password": "s3cret", "tags": "management"}).status == 201
    assert api.put("/api/permissions/%2F/alice",
                   {"configure": ".*", "write": ".*", "read": ".*"}).status == 201
    alice = api.as_user("alice", "s3cret")
    assert alice.get("/api/whoami").json() == {"name": "alice", "tags": ["management"]}
    # a management user may not manage users (RabbitMQ: 401 not_authorised)
    r = alice.get("/api/users")
    assert (r.status, r.json()) == (401, {"error": "not_authorised",
                                          "reason": "Not administrator user"})
    url = mbroker.url.replace("guest:guest", "alice:s3cret")
    c = connect(url)
    assert c.is_open
    c.close()
    # tags only: the password stays
    assert api.put("/api/users/alice", {"tags": "monitoring"}).status == 204
    assert alice.get("/api/whoami").json()["tags"] == ["monitoring"]
    u = api.get("/api/users/alice").json()
    assert set(u) >= {"name", "password_hash", "hashing_algorithm", "tags", "limits"}
    # a password_hash from the API itself logs in elsewhere
    assert api.put("/api/users/bob", {"password_hash": u["password_hash"],
                                      "tags": ["management"]}).status == 201
    assert api.as_user("bob", "s3cret").get("/api/whoami").status == 200
    r = api.put("/api/users/carol", {"password_hash": "bad", "tags": ""})
    assert r.status == 400 and r.json()["reason"] == ["not_base64", "bad"]
    assert api.delete("/api/users/alice").status == 204
    assert api.delete("/api/users/alice").status == 404
    assert alice.get("/api/whoami").status == 401


def test_permission_change_reaches_an_open_connection(api, mbroker, connect):
    api.put("/api/users/dave", {"password": "pw", "tags": ""})
    api.put("/api/permissions/%2F/dave", {"configure": ".*", "write": ".*", "read": ".*"})
    c = connect(mbroker.url.replace("guest:guest", "dave:pw"))
    ch = c.channel()
    ch.queue_declare("dq")
    assert api.put("/api/permissions/%2F/dave",
                   {"configure": "^$", "write": ".*", "read": ".*"}).status == 204
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare("dq2")
    assert info.value.reply_code == 403


def test_permissions_errors(api):
    r = api.put("/api/permissions/%2F/nosuchuser", {"configure": ".*", "write": ".*",
                                                    "read": ".*"})
    assert (r.status, r.json()) == (400, {"error": "bad_request",
                                          "reason": "vhost_or_user_not_found"})
    assert api.get("/api/permissions/%2F/nosuchuser").status == 404
    assert api.get("/api/permissions/%2F/guest").json() == {
        "user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}


def test_vhosts_put_delete(api, mbroker, connect):
    assert api.put("/api/vhosts/dev", {"description": "for dev"}).status == 201
    assert api.put("/api/vhosts/dev", {"description": "for dev"}).status == 204
    assert api.get("/api/vhosts/dev").json()["description"] == "for dev"
    # as RabbitMQ: its creator may use it at once
    assert api.get("/api/vhosts/dev/permissions").json() == [
        {"user": "guest", "vhost": "dev", "configure": ".*", "write": ".*", "read": ".*"}]
    c = connect(mbroker.url.rstrip("/") + "/dev")
    assert api.delete("/api/vhosts/dev").status == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        c.channel()
        c.process_data_events(time_limit=1)
    assert info.value.reply_code == 320
    assert api.delete("/api/vhosts/dev").status == 404


# -- connections, channels, consumers -----------------------------------------------------------
def test_connections_channels_consumers_and_close(api, mbroker, connect):
    params = pika.URLParameters(mbroker.url)
    params.client_properties = {"connection_name": "orders-worker"}
    c = pika.BlockingConnection(params)
    try:
        ch = c.channel()
        ch.queue_declare("cq")
        ch.basic_qos(prefetch_count=7)
        ch.basic_consume("cq", lambda *a: None)
        conns = api.get("/api/connections").json()
        assert len(conns) == 1
        conn = conns[0]
        assert conn["user_provided_name"] == "orders-worker"
        assert conn["client_properties"]["connection_name"] == "orders-worker"
        assert conn["vhost"] == "/" and conn["user"] == "guest" and conn["channels"] == 1
        assert " -> " in conn["name"] and conn["protocol"] == "AMQP 0-9-1"
        name = conn["name"]
        assert api.get("/api/connections/" + name.replace(" ", "%20").replace(">", "%3E")) \
            .status == 200
        channels = api.get("/api/channels").json()
        assert [x["consumer_count"] for x in channels] == [1]
        assert channels[0]["prefetch_count"] == 7
        cons = api.get("/api/consumers/%2F").json()
        assert [(x["queue"]["name"], x["prefetch_count"]) for x in cons] == [("cq", 7)]
        import urllib.parse
        r = api.delete("/api/connections/" + urllib.parse.quote(name, safe=""),
                       headers={"X-Reason": "maintenance"})
        assert r.status == 204
        # closed at once, no longer listed even before the client answers
        assert api.get("/api/connections").json() == []
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            c.process_data_events(time_limit=2)
        assert info.value.reply_code == 320
        assert info.value.reply_text == "CONNECTION_FORCED - maintenance"
    finally:
        if c.is_open:
            c.close()


def test_management_user_sees_only_own_connections(api, mbroker, connect):
    api.put("/api/users/erin", {"password": "pw", "tags": "management"})
    api.put("/api/permissions/%2F/erin", {"configure": ".*", "write": ".*", "read": ".*"})
    api.put("/api/users/mon", {"password": "pw", "tags": "monitoring"})
    connect()
    erin = api.as_user("erin", "pw")
    assert erin.get("/api/connections").json() == []
    assert len(api.as_user("mon", "pw").get("/api/connections").json()) == 1
    assert api.as_user("mon", "pw").get("/api/nodes").status == 200
    assert erin.get("/api/nodes").status == 401


# -- node, health, definitions ------------------------------------------------------------------
def test_nodes_health_aliveness(api, mbroker):
    nodes = api.get("/api/nodes").json()
    assert len(nodes) == 1
    n = nodes[0]
    for key in ("name", "running", "mem_used", "mem_limit", "mem_alarm", "disk_free",
                "disk_free_limit", "disk_free_alarm", "fd_used", "fd_total", "sockets_used",
                "sockets_total", "proc_used", "proc_total", "uptime", "partitions"):
        assert key in n, key
    assert api.get("/api/nodes/" + n["name"]).status == 200
    assert api.get("/api/aliveness-test/%2F").json() == {"status": "ok"}
    assert api.get("/api/health/checks/alarms").json() == {"status": "ok"}
    assert api.get("/api/health/checks/local-alarms").json() == {"status": "ok"}
    assert api.get("/api/health/checks/virtual-hosts").json() == {"status": "ok"}
    assert api.get(f"/api/health/checks/port-listener/{mbroker.port}").json() == \
        {"status": "ok", "port": mbroker.port}
    r = api.get("/api/health/checks/port-listener/1")
    assert r.status == 503 and r.json()["status"] == "failed"


def test_definitions_round_trip(api, make_broker):
    api.put("/api/vhosts/shop", {})
    api.put("/api/users/frank", {"password": "pw", "tags": "management"})
    api.put("/api/permissions/shop/frank", {"configure": ".*", "write": ".*", "read": ".*"})
    api.put("/api/exchanges/shop/orders", {"type": "topic", "durable": True})
    api.put("/api/queues/shop/paid", {"durable": True, "arguments": {"x-max-length": 5}})
    api.post("/api/bindings/shop/e/orders/q/paid", {"routing_key": "paid.#"})
    doc = api.get("/api/definitions").json()
    assert {"name": "paid", "vhost": "shop", "durable": True, "auto_delete": False,
            "arguments": {"x-max-length": 5}} in doc["queues"]
    other = API(make_broker(http_port=0).management_url)
    assert other.post("/api/definitions", doc).status == 204
    assert other.get("/api/queues/shop/paid").json()["arguments"] == {"x-max-length": 5}
    assert [b["routing_key"] for b in other.get("/api/bindings/shop/e/orders/q/paid").json()] \
        == ["paid.#"]
    assert other.as_user("frank", "pw").get("/api/whoami").status == 200
    assert other.post("/api/definitions", raw=b"nope",
                      headers={"Content-Type": "application/json"}).status == 400


def test_api_changes_survive_a_restart(make_broker, tmp_path):
    from .brokerthread import BrokerThread
    data = str(tmp_path / "data")
    b = BrokerThread(data_dir=data, http_port=0).start()
    api = API(b.management_url)
    api.put("/api/vhosts/kept", {})
    api.put("/api/users/gina", {"password": "pw", "tags": "administrator"})
    api.put("/api/permissions/kept/gina", {"configure": ".*", "write": ".*", "read": ".*"})
    api.put("/api/queues/kept/durable-q", {"durable": True})
    b.stop()
    b2 = make_broker(data_dir=data, http_port=0)
    gina = API(b2.management_url, "gina", "pw")
    assert gina.get("/api/whoami").status == 200
    assert gina.get("/api/queues/kept/durable-q").status == 200
    assert gina.get("/api/permissions/kept/gina").status == 200
    b.cleanup()
