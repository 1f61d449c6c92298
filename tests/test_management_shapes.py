"""amqpd's management API answers with the shapes RabbitMQ 3.10.8 gives: the field names and
JSON types recorded from a real RabbitMQ (tests/fixtures/management/*.json, made by
record.py there) for the same objects, built here with pika. Fields that are Erlang internals
amqpd has no counterpart for are listed in ERLANG_ONLY (docs/supported.md names them)."""
import json
import os

import pika
import pytest

from .mgmt_client import API

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "management")
VHOST = "amqpd-record"

# present in RabbitMQ's answers, absent from amqpd's on purpose (the Erlang VM's internals,
# clustering, or statistics that arrive with the stats module: message_stats is checked
# separately, and never required)
ERLANG_ONLY = {
    "backing_queue_status", "garbage_collection", "reductions", "reductions_details",
    "idle_since", "message_stats", "metrics_gc_queue_length", "io_file_handle_open_attempt_avg_time",
    "sample_retention_policies",
}


def load(name):
    with open(os.path.join(FIXTURES, f"{name}.json")) as f:
        return json.load(f)


def kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def differences(expected, actual, path="", skip=ERLANG_ONLY) -> list:
    """Where ``actual`` lacks a field of ``expected`` or has another JSON type there."""
    out = []
    ek, ak = kind(expected), kind(actual)
    if ek == "null":
        return out
    if ek != ak:
        # RabbitMQ writes an empty proplist as [] where a filled one is an object
        if {ek, ak} == {"list", "object"} and not expected:
            return out
        return [f"{path or '.'}: RabbitMQ has {ek}, amqpd {ak}"]
    if ek == "object":
        for key, value in expected.items():
            if key in skip:
                continue
            if key not in actual:
                out.append(f"{path}.{key}: missing")
            else:
                out += differences(value, actual[key], f"{path}.{key}", skip)
    elif ek == "list" and expected and actual:
        named = all(isinstance(x, dict) and "name" in x for x in expected + actual)
        mine = {x["name"]: x for x in actual} if named else {}
        if named and any(x["name"] in mine for x in expected):
            for x in expected:
                if x["name"] in mine:
                    out += differences(x, mine[x["name"]], f"{path}[{x['name']}]", skip)
        else:       # named after a node or a socket: differ between the two brokers
            out += differences(expected[0], actual[0], f"{path}[0]", skip)
    return out


@pytest.fixture
def recorded_setup(make_broker):
    """The objects record.py makes on RabbitMQ, made on amqpd."""
    b = make_broker(http_port=0)
    api = API(b.management_url)
    assert api.put(f"/api/vhosts/{VHOST}", {}).status == 201
    params = pika.URLParameters(b.url.rstrip("/") + "/" + VHOST)
    params.client_properties = {"connection_name": "amqpd-record"}
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.exchange_declare("events", "topic", durable=True)
    ch.queue_declare("work", durable=True, arguments={"x-max-length": 100})
    ch.queue_bind("work", "events", "work.#")
    for i in range(3):
        ch.basic_publish("events", "work.item", b"item %d" % i)
    ch.queue_declare("idle")
    ch2 = conn.channel()
    ch2.basic_qos(prefetch_count=5)
    ch2.basic_consume("idle", lambda *a: None)
    conn.process_data_events(time_limit=0)
    b.wait_for(lambda: b.broker.vhosts[VHOST].queues["work"].message_count == 3)
    yield api
    conn.close()


NAMES = sorted(f[:-5] for f in os.listdir(FIXTURES) if f.endswith(".json"))


@pytest.mark.parametrize("name", NAMES)
def test_same_shape_as_rabbitmq(recorded_setup, name):
    api = recorded_setup
    rec = load(name)
    r = api.get(rec["path"])
    assert r.status == rec["status"], (rec["path"], r.body[:300])
    body = r.json() if r.body else None
    skip = ERLANG_ONLY | {"cluster_state"}       # keyed by node name: checked below
    problems = differences(rec["body"], body, skip=skip)
    if name == "vhosts":
        assert all(list(v["cluster_state"].values()) == ["running"] for v in body)
    assert not problems, f"{rec['path']}:\n" + "\n".join(problems)

