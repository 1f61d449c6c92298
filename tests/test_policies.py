"""Policies with a real broker and real clients (pika): a policy set while the broker runs
changes what an existing queue does (max-length trims it, message-ttl expires what comes
after), survives a restart, and comes in with a definitions file exported by RabbitMQ 3.10.8
(tests/fixtures/rabbitmq-3.10.8-policies.json: recorded from RabbitMQ's GET /api/definitions
after setting these policies on a scratch vhost)."""
import contextlib
import json
import os

import pika
import pytest

from amqpd import cli
from amqpd.broker.policy import PolicyError

from .brokerthread import BrokerThread

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                       "rabbitmq-3.10.8-policies.json")
PERSISTENT = pika.BasicProperties(delivery_mode=2)


@contextlib.contextmanager
def running(data_dir, **overrides):
    b = BrokerThread(data_dir=str(data_dir), **overrides).start()
    try:
        yield b
    finally:
        b.stop()
        b.cleanup()


@contextlib.contextmanager
def channel(b, vhost: str = "%2F"):
    conn = pika.BlockingConnection(pika.URLParameters(
        f"amqp://guest:guest@127.0.0.1:{b.port}/{vhost}"))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        yield ch
    finally:
        conn.close()


def set_policy(b, name: str, body: dict, vhost: str = "/", operator: bool = False) -> bool:
    """What PUT /api/policies does, on the broker's loop."""
    return b.call(b.broker.policies.set, vhost, name, body, operator)


def count(ch, queue: str) -> int:
    return ch.queue_declare(queue, passive=True).method.message_count


def drain(ch, queue: str) -> list:
    out = []
    while True:
        _method, _props, body = ch.basic_get(queue, auto_ack=True)
        if body is None:
            return out
        out.append(body)


def test_max_length_policy_trims_an_existing_queue_and_dead_letters(broker):
    with channel(broker) as ch:
        ch.exchange_declare("dlx", "fanout")
        ch.queue_declare("dead")
        ch.queue_bind("dead", "dlx")
        ch.queue_declare("jobs", arguments={"x-max-length": 100})
        for i in range(5):
            ch.basic_publish("", "jobs", str(i).encode())
        assert set_policy(broker, "cap", {"pattern": "^jobs$", "apply-to": "queues",
                                          "definition": {"max-length": 2,
                                                         "dead-letter-exchange": "dlx"}})
        assert count(ch, "jobs") == 2
        assert drain(ch, "dead") == [b"0", b"1", b"2"]
        for i in range(5, 8):
            ch.basic_publish("", "jobs", str(i).encode())
        assert drain(ch, "jobs") == [b"6", b"7"]
        # the declared arguments are unchanged: a re-declare with them is still equivalent
        ch.queue_declare("jobs", arguments={"x-max-length": 100})


def test_max_length_policy_trims_a_paged_durable_queue(make_broker):
    """A backlog beyond the RAM window (storage.queue_window) is trimmed through the pager."""
    b = make_broker(storage={"queue_window": {"messages": 4, "bytes": 1 << 20}})
    with channel(b) as ch:
        ch.queue_declare("backlog", durable=True)
        for i in range(20):
            ch.basic_publish("", "backlog", str(i).encode(), PERSISTENT)
        q = b.broker.vhosts["/"].queues["backlog"]
        assert b.call(lambda: q.pager is not None and q.pager.count > 0)
        set_policy(b, "cap", {"pattern": "^backlog$", "definition": {"max-length": 3}})
        assert drain(ch, "backlog") == [b"17", b"18", b"19"]


def test_message_ttl_policy_expires_new_messages_of_an_existing_queue(broker):
    with channel(broker) as ch:
        ch.queue_declare("events")
        ch.basic_publish("", "events", b"before")
        set_policy(broker, "ttl", {"pattern": "^events$", "definition": {"message-ttl": 50}})
        ch.basic_publish("", "events", b"after")
        q = broker.broker.vhosts["/"].queues["events"]
        broker.wait_for(lambda: q.message_count == 1, what="the new message to expire")
        assert drain(ch, "events") == [b"before"]


def test_policy_and_operator_policy_survive_a_restart(tmp_path):
    data = tmp_path / "data"
    with running(data) as b:
        with channel(b) as ch:
            ch.queue_declare("orders", durable=True)
        set_policy(b, "lim", {"pattern": "^ord", "definition": {"max-length": 3},
                              "priority": 1, "apply-to": "queues"})
        set_policy(b, "cap", {"pattern": ".*", "definition": {"max-length": 2}},
                   operator=True)
        set_policy(b, "gone", {"pattern": ".*", "definition": {"expires": 1000}})
        assert b.call(b.broker.policies.delete, "/", "gone")
    with running(data) as b:
        q = b.broker.vhosts["/"].queues["orders"]
        assert (q.policy_name, q.operator_policy_name) == ("lim", "cap")
        assert q.effective_policy_definition == {"max-length": 2}
        assert [p.name for p in b.broker.policies.list("/")] == ["lim"]
        with channel(b) as ch:
            for i in range(5):
                ch.basic_publish("", "orders", str(i).encode(), PERSISTENT)
            assert drain(ch, "orders") == [b"3", b"4"]
            ch.queue_declare("ord-new", durable=True)       # a new queue gets them too
        assert b.broker.vhosts["/"].queues["ord-new"].policy_name == "lim"


def test_a_policy_ttl_deadline_survives_a_restart(tmp_path):
    """A persistent message keeps the deadline the policy gave it at publish (on disk with
    it). One queued before the policy had none: it gets the policy's TTL from the recovery
    on (docs/policies.md; RabbitMQ would leave it without)."""
    data = tmp_path / "data"
    with running(data) as b:
        with channel(b) as ch:
            ch.queue_declare("timed", durable=True)
            ch.basic_publish("", "timed", b"before", PERSISTENT)
            set_policy(b, "ttl", {"pattern": "^timed$", "definition": {"message-ttl": 600000}})
            ch.basic_publish("", "timed", b"after", PERSISTENT)
    with running(data) as b:
        q = b.broker.vhosts["/"].queues["timed"]

        def deadlines():
            now = b.broker.clock()
            return [(e.message.body, None if e.expires is None else round(e.expires - now))
                    for e in q.ready]
        (first, from_recovery), (second, left) = b.call(deadlines)
        assert (first, second) == (b"before", b"after")
        assert 0 < left <= 600 and from_recovery == 600


def test_bad_policy_changes_nothing(broker):
    with pytest.raises(PolicyError) as info:
        set_policy(broker, "bad", {"pattern": "^q", "definition": {"max-length": -1}})
    assert str(info.value) == "-1 is not a valid maximum length"
    with pytest.raises(KeyError):
        set_policy(broker, "p", {"pattern": "^q", "definition": {"max-length": 1}}, vhost="nope")
    assert broker.call(broker.broker.policies.list) == []


def test_rabbitmq_export_with_policies_loads_and_exports_back(tmp_path, caplog):
    data = tmp_path / "data"
    with running(data, load_definitions=FIXTURE) as b:
        vhost = b.broker.vhosts["polscratch"]
        jobs, orders = vhost.queues["pol-jobs"], vhost.exchanges["pol-orders"]
        # pol-limits (priority 2) beats pol-ha; ha-mode is dropped with a warning
        assert (jobs.policy_name, jobs.operator_policy_name) == ("pol-limits", "op-cap")
        assert jobs.effective_policy_definition == {
            "dead-letter-exchange": "pol-alt", "expires": 86400000, "max-length": 10,
            "message-ttl": 60000, "overflow": "drop-head"}
        assert b.broker.policies.get("polscratch", "pol-ha").definition == {
            "queue-mode": "lazy"}
        assert "ha-mode not supported by amqpd" in caplog.text
        assert orders.policy_name == "pol-ae" and orders.alternate == "pol-alt"
        with channel(b, "polscratch") as ch:
            ch.basic_publish("pol-orders", "nobody.binds.this", b"to the alternate")
            ch.basic_publish("pol-orders", "jobs.1", b"job")
            assert drain(ch, "pol-unrouted") == [b"to the alternate"]
            for i in range(12):
                ch.basic_publish("", "pol-jobs", b"x")
            assert count(ch, "pol-jobs") == 10          # max-length 10 from the policy
            assert count(ch, "pol-unrouted") == 3        # the dropped head, dead-lettered
    out = tmp_path / "export.json"
    assert cli.main(["--data-dir", str(data), "definitions", "export", str(out)]) == 0
    doc = json.loads(out.read_text())
    fixture = json.loads(open(FIXTURE).read())
    ours = sorted(doc["policies"], key=lambda p: p["name"])
    theirs = sorted(fixture["policies"], key=lambda p: p["name"])
    theirs[1]["definition"] = {"queue-mode": "lazy"}        # pol-ha without ha-mode
    assert ours == theirs
    assert [p for p in doc["parameters"] if p["component"] == "operator_policy"] == [
        p for p in fixture["parameters"] if p["component"] == "operator_policy"]


def test_command_line_import_of_policies_then_start(tmp_path):
    data = tmp_path / "data"
    assert cli.main(["--data-dir", str(data), "definitions", "import", FIXTURE]) == 0
    with running(data) as b:
        jobs = b.broker.vhosts["polscratch"].queues["pol-jobs"]
        assert (jobs.policy_name, jobs.operator_policy_name) == ("pol-limits", "op-cap")
        assert [p.name for p in b.broker.policies.list("polscratch")] == [
            "pol-ae", "pol-ha", "pol-limits"]


def test_deleted_vhost_takes_its_policies_across_a_restart(tmp_path):
    data = tmp_path / "data"
    with running(data) as b:
        b.call(b.broker.add_vhost, "tmp")
        set_policy(b, "p", {"pattern": ".", "definition": {"max-length": 1}}, vhost="tmp")
        b.call(b.broker.delete_vhost, "tmp")
        b.call(b.broker.add_vhost, "tmp")
    with running(data) as b:
        # the vhost is not kept (add_vhost is run-time only), so ask the journal itself
        assert [d for d in b.call(b.broker.store.journal.load) if d["op"] == "policy"] == []


# -- the HTTP API (amqpd/management/api_policies.py) --------------------------------------------
ALL = {"configure": ".*", "write": ".*", "read": ".*"}
USERS = [{"name": "guest", "password": "guest", "tags": ["administrator"]},
         {"name": "maker", "password": "pw", "tags": ["policymaker"]},
         {"name": "viewer", "password": "pw", "tags": ["management"]}]
GRANTS = [{"user": "guest", "vhost": "/", **ALL}, {"user": "maker", "vhost": "/", **ALL},
          {"user": "viewer", "vhost": "/", **ALL}, {"user": "guest", "vhost": "other", **ALL}]


@pytest.fixture
def hb(make_broker):
    return make_broker(http_port=0, vhosts=["/", "other"], users=USERS, permissions=GRANTS,
                       loopback_users=[])


@pytest.fixture
def api(hb):
    from .mgmt_client import API
    return API(hb.management_url)


LIMIT = {"pattern": "^jobs$", "apply-to": "queues", "priority": 1,
         "definition": {"max-length": 2}}


def test_http_policy_lifecycle_with_rabbitmq_shapes(api):
    r = api.put("/api/policies/%2F/limit", LIMIT)
    assert (r.status, r.body) == (201, b"")
    assert api.put("/api/policies/%2F/limit", LIMIT).status == 204
    one = {"vhost": "/", "name": "limit", "pattern": "^jobs$", "apply-to": "queues",
           "definition": {"max-length": 2}, "priority": 1}
    r = api.get("/api/policies/%2F/limit")
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
    assert r.json() == one
    assert api.get("/api/policies").json() == [one]
    assert api.get("/api/policies/%2F/").json() == [one]          # a trailing slash is none
    assert api.get("/api/policies/other").json() == []
    assert api.get("/api/operator-policies").json() == []
    r = api.delete("/api/policies/%2F/limit")
    assert (r.status, r.body) == (204, b"")
    for r in (api.delete("/api/policies/%2F/limit"), api.get("/api/policies/%2F/limit"),
              api.get("/api/policies/nope")):
        assert (r.status, r.json()) == (404, {"error": "Object Not Found", "reason": "Not Found"})
    r = api.put("/api/policies/nope/x", LIMIT)
    assert (r.status, r.json()) == (404, {"error": "not_found", "reason": "vhost_not_found"})


@pytest.mark.parametrize("path, body, reason", [
    ("/api/policies/%2F/b", {"pattern": "^q", "definition": {"max-length": "x"}},
     "Validation failed\n\n&lt;&lt;\"x\"&gt;&gt; is not a valid maximum length\n"),
    ("/api/policies/%2F/b", {"pattern": "^q", "definition": {"foo": 1}},
     "Validation failed\n\n[{&lt;&lt;\"foo\"&gt;&gt;,1}] are not recognised policy settings\n"),
    ("/api/policies/%2F/b", {"pattern": "^q", "definition": {}},
     "Validation failed\n\nno policy provided\n"),
    ("/api/policies/%2F/b", {"pattern": "^q"}, "[{key_missing,definition}]"),
    ("/api/policies/%2F/b", [1], "not_json"),
    ("/api/operator-policies/%2F/b", {"pattern": "^q", "definition": {"overflow": "drop-head"}},
     "Validation failed\n\n[{<<\"overflow\">>,<<\"drop-head\">>}] are not recognised policy "
     "settings\n"),
])
def test_http_refusals_read_as_rabbitmq(api, path, body, reason):
    r = api.put(path, body)
    assert (r.status, r.json()) == (400, {"error": "bad_request", "reason": reason})
    assert api.get("/api/policies").json() == []


def test_http_not_json_body(api):
    r = api.put("/api/policies/%2F/b", raw=b"notjson", headers={"Content-Type": "application/json"})
    assert (r.status, r.json()) == (400, {"error": "bad_request", "reason": "not_json"})


def test_http_policy_applies_to_a_live_queue(hb, api):
    with channel(hb) as ch:
        ch.queue_declare("jobs")
        for i in range(5):
            ch.basic_publish("", "jobs", str(i).encode())
        assert api.put("/api/policies/%2F/limit", LIMIT).status == 201
        assert api.put("/api/operator-policies/%2F/cap",
                       {"pattern": ".*", "definition": {"max-length": 1}}).status == 201
        q = api.get("/api/queues/%2F/jobs").json()
        assert (q["policy"], q["operator_policy"]) == ("limit", "cap")
        assert q["effective_policy_definition"] == {"max-length": 1}
        assert drain(ch, "jobs") == [b"4"]
        assert api.delete("/api/operator-policies/%2F/cap").status == 204
        for i in range(5):
            ch.basic_publish("", "jobs", str(i).encode())
        assert count(ch, "jobs") == 2


def test_http_who_may_do_what(api):
    maker, viewer = api.as_user("maker", "pw"), api.as_user("viewer", "pw")
    denied = {"error": "not_authorised", "reason": "User not authorised to access object"}
    r = viewer.put("/api/policies/%2F/p", LIMIT)
    assert (r.status, r.json()) == (401, denied)
    assert maker.put("/api/policies/%2F/p", LIMIT).status == 201
    assert maker.get("/api/policies/%2F/p").status == 200
    assert viewer.get("/api/policies/%2F/p").status == 401
    assert [p["name"] for p in viewer.get("/api/policies").json()] == ["p"]
    r = maker.put("/api/policies/other/p", LIMIT)            # no permissions in "other"
    assert (r.status, r.json()) == (401, denied)
    r = maker.get("/api/policies/other")
    assert (r.status, r.json()) == (401, {"error": "not_authorised",
                                          "reason": "User not authorised to access virtual host"})
    r = maker.put("/api/operator-policies/%2F/o", {"pattern": ".", "definition": {"expires": 9}})
    assert (r.status, r.json()) == (401, {"error": "not_authorised",
                                          "reason": "Not administrator user"})
    assert api.put("/api/operator-policies/%2F/o",
                   {"pattern": ".", "definition": {"expires": 9000}}).status == 201
    assert [p["name"] for p in maker.get("/api/operator-policies").json()] == ["o"]
    assert maker.delete("/api/policies/%2F/p").status == 204


def test_http_definitions_carry_policies(api):
    """POST /api/definitions with RabbitMQ's export sets its policies (operator ones too);
    GET /api/definitions gives them back in RabbitMQ's places."""
    fixture = json.loads(open(FIXTURE).read())
    assert api.post("/api/definitions", fixture).status in (200, 201, 204)
    names = [p["name"] for p in api.get("/api/policies/polscratch").json()]
    assert names == ["pol-ae", "pol-ha", "pol-limits"]
    assert [p["name"] for p in api.get("/api/operator-policies/polscratch").json()] == ["op-cap"]
    doc = api.get("/api/definitions").json()
    assert {p["name"] for p in doc["policies"]} == {"pol-ae", "pol-ha", "pol-limits"}
    assert [p["name"] for p in doc["parameters"] if p["component"] == "operator_policy"] == [
        "op-cap"]


def test_http_vhost_definitions_carry_policies_both_ways(api):
    """GET /api/definitions/{vhost} gives the vhost's policies; POST of that document into
    another vhost sets them there (RabbitMQ's per-vhost export and import)."""
    assert api.put("/api/policies/%2F/limit", LIMIT).status == 201
    doc = api.get("/api/definitions/%2F").json()
    assert [p["name"] for p in doc["policies"]] == ["limit"]
    assert api.post("/api/definitions/other", doc).status in (200, 201, 204)
    [copied] = api.get("/api/policies/other").json()
    assert (copied["name"], copied["vhost"], copied["definition"]) == (
        "limit", "other", {"max-length": 2})
