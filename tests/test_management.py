"""The management HTTP API against a real amqpd, driven by real clients: pika makes the
objects, urllib reads them back as RabbitMQ tools do (docs/management.md)."""
import asyncio

import pika
import pytest

import amqpd
from amqpd import config as config_mod
from amqpd.edge.listeners import StartError

from .brokerthread import BrokerThread
from .mgmt_client import API
from .tls_certs import pki  # noqa: F401  (fixture)


@pytest.fixture
def mbroker(make_broker):
    return make_broker(http_port=0)


@pytest.fixture
def api(mbroker):
    return API(mbroker.management_url)


@pytest.fixture
def mch(mbroker):
    c = pika.BlockingConnection(pika.URLParameters(mbroker.url))
    yield c.channel()
    if c.is_open:
        c.close()


# -- the listener -------------------------------------------------------------------------------
def test_off_unless_asked_for_in_embedded_brokers(broker):
    assert broker.management_url is None
    assert broker.config.listeners.http is None


def test_on_by_default_in_the_configuration():
    cfg = config_mod.from_dict({})
    assert (cfg.listeners.http.host, cfg.listeners.http.port) == ("127.0.0.1", 15672)
    assert config_mod.from_dict({"listeners": {"http": None}}).listeners.http is None
    assert config_mod.override(cfg, http_port=0).listeners.http.port == 0


def test_a_busy_port_is_reported_like_the_amqp_one(mbroker):
    port = int(mbroker.management_url.rsplit(":", 1)[1])
    other = BrokerThread(http_port=port)
    try:
        with pytest.raises(StartError, match=rf"listeners.http: 127.0.0.1:{port} is already "
                                             r"in use"):
            other.start()
    finally:
        other.cleanup()
    # the first one still answers
    assert API(mbroker.management_url).get("/api/whoami").status == 200


async def test_embedded_serve_with_http_port():
    async with amqpd.serve(http_port=0) as broker:
        assert broker.management_url.startswith("http://127.0.0.1:")
        import aiohttp
        headers = {"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="}       # guest:guest
        async with aiohttp.ClientSession() as s:
            async with s.get(broker.management_url + "/api/overview", headers=headers) as r:
                assert r.status == 200
                body = await r.json()
        assert body["object_totals"]["queues"] == 0
        assert body["product_name"] == "amqpd"
    assert broker.management_url is None


async def test_embedded_default_is_off():
    async with amqpd.serve() as broker:
        assert broker.management_url is None
        await asyncio.sleep(0)


# -- auth ---------------------------------------------------------------------------------------
def test_no_credentials_401_with_the_challenge(api):
    r = api.as_user(None, None).get("/api/overview")
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="RabbitMQ Management"'


@pytest.mark.parametrize("xhr", [False, True])
def test_wrong_password_401_with_rabbitmq_body(api, xhr):
    headers = {"X-Requested-With": "XMLHttpRequest"} if xhr else {}
    r = api.as_user("guest", "nope").get("/api/overview", headers=headers)
    assert r.status == 401
    # RabbitMQ 3.10.8 sends the challenge to XHR requests too
    assert r.headers["WWW-Authenticate"] == 'Basic realm="RabbitMQ Management"'
    assert r.json() == {"error": "not_authorized", "reason": "Login failed"}


def test_whoami(api):
    r = api.get("/api/whoami")
    assert r.status == 200 and r.json() == {"name": "guest", "tags": ["administrator"]}


# -- reading ------------------------------------------------------------------------------------
def test_queues_all_per_vhost_and_one(api, mch):
    mch.queue_declare("work", durable=True, arguments={"x-max-length": 10})
    for i in range(3):
        mch.basic_publish("", "work", b"x" * 5)
    mch.basic_consume("work", lambda *a: None, auto_ack=False)
    mch.queue_declare("idle")
    mch.connection.process_data_events(time_limit=0)
    queues = api.get("/api/queues").json()
    assert [q["name"] for q in queues] == ["idle", "work"]
    # the trailing slash (Flower) and %2F inside a segment
    assert api.get("/api/queues/").json() == api.get("/api/queues/%2F").json()
    one = api.get("/api/queues/%2F/work")
    assert one.status == 200
    q = one.json()
    assert (q["name"], q["vhost"], q["durable"], q["arguments"]) == \
        ("work", "/", True, {"x-max-length": 10})
    assert q["consumers"] == 1
    assert q["messages"] == q["messages_ready"] + q["messages_unacknowledged"] == 3
    assert len(q["consumer_details"]) == 1
    assert "message_stats" not in q or q["message_stats"]       # never empty


def test_unknown_objects_are_404_json(api):
    for path in ("/api/queues/%2F/none", "/api/queues/novhost", "/api/queues/novhost/q",
                 "/api/exchanges/%2F/none", "/api/vhosts/none", "/api/nothing-here"):
        r = api.get(path)
        assert r.status == 404, path
        assert r.json() == {"error": "Object Not Found", "reason": "Not Found"}, path


def test_exchanges(api, mch):
    mch.exchange_declare("events", "topic", durable=True)
    names = [(e["name"], e["type"]) for e in api.get("/api/exchanges/%2F").json()]
    assert ("events", "topic") in names and ("", "direct") in names
    assert ("amq.headers", "headers") in names
    e = api.get("/api/exchanges/%2F/events").json()
    assert (e["durable"], e["auto_delete"], e["internal"], e["vhost"]) == (True, False, False, "/")
    assert api.get("/api/exchanges/%2F/amq.default").json()["name"] == ""


def test_overview_and_vhosts(api, mch):
    mch.queue_declare("a")
    mch.basic_publish("", "a", b"1")
    mch.connection.process_data_events(time_limit=0)
    o = api.get("/api/overview").json()
    assert o["object_totals"]["queues"] == 1
    assert o["object_totals"]["connections"] == 1
    assert o["queue_totals"]["messages"] == 1
    assert o["rabbitmq_version"] == "3.10.8"
    assert any(x["protocol"] == "amqp" for x in o["listeners"])
    v = api.get("/api/vhosts").json()
    assert [x["name"] for x in v] == ["/"] and v[0]["messages"] == 1
    assert api.get("/api/vhosts/%2F").json()["name"] == "/"


def test_keda_paging_request(api, mch):
    for name in ("orders-1", "orders-2", "other"):
        mch.queue_declare(name)
    r = api.get("/api/queues/%2F?page=1&use_regex=true&pagination=false&name=%5Eorders-"
                "&page_size=100")
    assert r.status == 200
    body = r.json()
    assert body["page_count"] == 1 and body["filtered_count"] == 2
    assert [q["name"] for q in body["items"]] == ["orders-1", "orders-2"]
    assert body["total_count"] == 3


def test_paging_errors_as_rabbitmq(api):
    assert api.get("/api/queues?page=x").json() == {
        "error": "bad_request", "reason": "Pagination parameters are invalid"}
    r = api.get("/api/queues?page=1&page_size=1000")
    assert r.status == 400 and r.json()["error"] == "invalid_pagination_parameters"


def test_columns(api, mch):
    mch.queue_declare("c1")
    assert api.get("/api/queues?columns=name,messages").json() == [{"messages": 0, "name": "c1"}]


def test_https_with_the_amqps_keys(make_broker, pki):  # noqa: F811
    import json
    import ssl
    import urllib.request
    b = make_broker(http_port=0)
    b2 = make_broker(listeners={"http": {"host": "127.0.0.1", "port": 0,
                                         "certfile": pki.server_cert,
                                         "keyfile": pki.server_key}})
    assert b2.management_url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=pki.ca)
    req = urllib.request.Request(b2.management_url + "/api/whoami",
                                 headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})
    with urllib.request.urlopen(req, context=context, timeout=30) as r:
        assert json.loads(r.read())["name"] == "guest"
    assert b.management_url.startswith("http://")


def test_https_bad_certfile_is_a_config_error(tmp_path):
    missing = str(tmp_path / "none.pem")
    b = BrokerThread(listeners={"http": {"host": "127.0.0.1", "port": 0,
                                         "certfile": missing}})
    try:
        with pytest.raises(config_mod.ConfigError, match=r"listeners.http.certfile: .* does "
                                                         r"not exist"):
            b.start()
    finally:
        b.cleanup()


def test_a_user_without_a_management_tag_is_refused(api):
    api.put("/api/users/plain", {"password": "pw", "tags": ""})
    r = api.as_user("plain", "pw").get("/api/overview")
    assert r.status == 401
    assert r.json() == {"error": "not_authorised", "reason": "Not management user"}
    # logged in, but not allowed: RabbitMQ 3.10.8 sends no challenge here
    assert "WWW-Authenticate" not in r.headers


def test_a_management_user_sees_only_its_vhosts(api, mch):
    api.put("/api/vhosts/hidden", {})
    api.put("/api/queues/hidden/secret", {})
    api.put("/api/users/mu", {"password": "pw", "tags": "management"})
    api.put("/api/permissions/%2F/mu", {"configure": ".*", "write": ".*", "read": ".*"})
    mch.queue_declare("visible")
    mu = api.as_user("mu", "pw")
    assert [v["name"] for v in mu.get("/api/vhosts").json()] == ["/"]
    assert [q["name"] for q in mu.get("/api/queues").json()] == ["visible"]
    r = mu.get("/api/queues/hidden")
    assert (r.status, r.json()["reason"]) == (401, "User not authorised to access virtual host")
    assert mu.get("/api/nodes").json() == {"error": "not_authorised",
                                           "reason": "Not monitor user"}
    assert mu.get("/api/overview").json()["object_totals"]["queues"] == 1
