"""Definitions in RabbitMQ's JSON format: a file exported by RabbitMQ 3.10.8
(tests/fixtures/rabbitmq-3.10.8-definitions.json, made with ``rabbitmqctl export_definitions``)
imports unchanged at start-up and from the command line, survives restarts, and exports back."""
import contextlib
import json
import os

import pika
import pytest

from amqpd import cli
from tests.brokerthread import BrokerThread

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                       "rabbitmq-3.10.8-definitions.json")
I6 = "amqp://i6user:i6pass@127.0.0.1:{}/i6vh"


@contextlib.contextmanager
def running(data_dir, **overrides):
    b = BrokerThread(data_dir=str(data_dir), **overrides).start()
    try:
        yield b
    finally:
        b.stop()
        b.cleanup()


def connect(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def check_imported(b, transient: bool) -> None:
    """What the fixture defines is there and behaves."""
    access = b.broker.access
    assert {"/", "i6vh", "amqpdchk-probe"} <= set(access.vhosts)
    assert access.vhosts["i6vh"].limits() == {"max-connections": 20, "max-queues": 50}
    assert access.users["i6user"].limits() == {"max-connections": 5, "max-channels": 10}
    assert access.users["i6user"].tags == ("monitoring", "management")
    vhost = b.broker.vhosts["i6vh"]
    assert {"i6-orders", "i6-fan"} <= set(vhost.exchanges)
    assert vhost.exchanges["i6-fan"].arguments == {"alternate-exchange": "i6-orders"}
    assert vhost.queues["i6-q2"].arguments == {
        "x-dead-letter-exchange": "i6-fan", "x-max-length": 1000, "x-message-ttl": 60000,
        "x-queue-type": "classic"}
    assert ("i6-transient" in vhost.queues) == transient
    # i6user logs in with the password RabbitMQ hashed, and its permissions hold
    conn = connect(I6.format(b.port))
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.exchange_declare("x-denied", "direct")
    assert info.value.reply_text == ("ACCESS_REFUSED - access to exchange 'x-denied' in vhost "
                                     "'i6vh' refused for user 'i6user'")
    conn.close()
    # the bindings route: topic, and fanout -> topic (an exchange-to-exchange binding)
    conn = connect(f"amqp://guest:guest@127.0.0.1:{b.port}/i6vh")
    ch = conn.channel()
    ch.queue_purge("i6-q1")
    ch.queue_purge("i6-q2")
    ch.basic_publish("i6-orders", "order.eu.created", b"direct to topic")
    ch.basic_publish("i6-fan", "order.us.created", b"via fanout")
    got1 = [ch.basic_get("i6-q1", auto_ack=True)[2] for _ in range(2)]
    got2 = [ch.basic_get("i6-q2", auto_ack=True)[2] for _ in range(2)]
    assert got1 == got2 == [b"direct to topic", b"via fanout"]
    conn.close()


def test_rabbitmq_export_loads_at_start_up(tmp_path, caplog):
    with running(tmp_path / "data", load_definitions=FIXTURE) as b:
        check_imported(b, transient=True)
        # a password_hash of "" is a user without a password (EXTERNAL only)
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            connect(f"amqp://i6ext:@127.0.0.1:{b.port}/i6vh")
    # the headers exchange is internal, which RabbitMQ leaves out of its export; its binding
    # is in the file and is reported, not fatal
    assert "binding 'i6-hdr' -> queue 'i6-q2'" in caplog.text
    assert "no source exchange" in caplog.text


def test_imported_definitions_survive_a_restart(tmp_path):
    data = tmp_path / "data"
    with running(data, load_definitions=FIXTURE):
        pass
    assert json.load(open(data / "access.json"))["users"]
    with running(data) as b:                   # no load_definitions this time
        check_imported(b, transient=False)      # durable things only, as after any restart
        # imported vhost limits are enforced
        assert b.broker.access.vhost_connection_limit("i6vh") == 20


def test_loading_the_same_file_at_every_start_is_harmless(tmp_path):
    data = tmp_path / "data"
    for _ in range(2):
        with running(data, load_definitions=FIXTURE) as b:
            check_imported(b, transient=True)


def test_imported_entries_win_over_configured_ones(tmp_path):
    """guest is in the file with RabbitMQ's hash of 'guest'; the config says 'other-pw'."""
    with running(tmp_path / "data", load_definitions=FIXTURE,
                 users=[{"name": "guest", "password": "other-pw"},
                        {"name": "local", "password": "pw"}],
                 permissions=[{"user": "guest"}, {"user": "local"}]) as b:
        connect(f"amqp://guest:guest@127.0.0.1:{b.port}/").close()
        connect(f"amqp://local:pw@127.0.0.1:{b.port}/").close()    # config users still there


def test_command_line_import_then_start(tmp_path, capsys):
    data = tmp_path / "data"
    assert cli.main(["--data-dir", str(data), "definitions", "import", FIXTURE]) == 0
    assert "imported definitions" in capsys.readouterr().err
    with running(data) as b:
        check_imported(b, transient=False)     # imported offline: nothing transient survives
        # the data dir is locked while the broker runs: import says so
        assert cli.main(["--data-dir", str(data), "definitions", "import", FIXTURE]) == 1
        assert "in use by another amqpd" in capsys.readouterr().err


def test_export_while_running_and_round_trip(tmp_path, capsys):
    data = tmp_path / "data"
    out = tmp_path / "export.json"
    with running(data, load_definitions=FIXTURE) as b:
        conn = connect(b.url)
        ch = conn.channel()
        ch.exchange_declare("made-here", "headers", durable=True, internal=True)
        ch.queue_declare("made-here-q", durable=True, arguments={"x-max-priority": 3})
        ch.queue_bind("made-here-q", "made-here", "", arguments={"x-match": "all", "n": 1})
        ch.queue_bind("made-here-q", "amq.topic", "a.#")
        ch.queue_declare("transient-here")
        conn.close()
        assert cli.main(["--data-dir", str(data), "definitions", "export", str(out)]) == 0
    doc = json.load(open(out))
    fixture = json.load(open(FIXTURE))
    users = {u["name"]: u for u in doc["users"]}
    assert users["i6user"] == {**{u["name"]: u for u in fixture["users"]}["i6user"]}
    assert {"name": "i6vh", "limits": [["max-connections", 20], ["max-queues", 50]],
            "metadata": {"description": "", "tags": []}} in doc["vhosts"]
    assert {p["user"] + p["vhost"] for p in fixture["permissions"]} <= \
        {p["user"] + p["vhost"] for p in doc["permissions"]}
    queues = {(q["vhost"], q["name"]): q for q in doc["queues"]}
    assert queues[("/", "made-here-q")]["arguments"] == {"x-max-priority": 3}
    assert ("/", "transient-here") not in queues          # the data dir has durable ones only
    assert {"source": "made-here", "vhost": "/", "destination": "made-here-q",
            "destination_type": "queue", "routing_key": "",
            "arguments": {"x-match": "all", "n": 1}} in doc["bindings"]
    assert {"source": "amq.topic", "vhost": "/", "destination": "made-here-q",
            "destination_type": "queue", "routing_key": "a.#", "arguments": {}} in doc["bindings"]
    assert not any(x["name"].startswith("amq.") for x in doc["exchanges"])
    # round trip: import the export into a fresh data dir, export again: the same document
    fresh = tmp_path / "fresh"
    assert cli.main(["--data-dir", str(fresh), "definitions", "import", str(out)]) == 0
    again = tmp_path / "again.json"
    assert cli.main(["--data-dir", str(fresh), "definitions", "export", str(again)]) == 0
    second = json.load(open(again))
    for key in ("vhosts", "permissions", "queues", "exchanges", "bindings", "parameters"):
        assert sorted(map(json.dumps, second[key])) == sorted(map(json.dumps, doc[key])), key
    assert {u["name"]: u for u in second["users"]}["i6user"] == users["i6user"]


def test_bad_definitions_file_stops_start_up_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"users": {"not": "a list"}}')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"load_definitions: {bad}\nlisteners: {{amqp: {{port: 0}}}}\n")
    assert cli.main(["-c", str(cfg), "--data-dir", str(tmp_path / "d")]) == 2
    assert "users: expected a list" in capsys.readouterr().err
    assert cli.main(["--data-dir", str(tmp_path / "d"), "definitions", "import",
                     str(tmp_path / "missing.json")]) == 2


def test_definitions_directory_and_plain_passwords(tmp_path):
    d = tmp_path / "defs"
    d.mkdir()
    (d / "1-users.json").write_text(json.dumps({
        "users": [{"name": "carol", "password": "carol-pw", "tags": "a,b"}],
        "vhosts": [{"name": "cv"}]}))
    (d / "2-perms.json").write_text(json.dumps({
        "permissions": [{"user": "carol", "vhost": "cv", "configure": ".*", "write": ".*",
                         "read": ".*"}],
        "queues": [{"name": "cq", "vhost": "cv", "durable": True, "auto_delete": False,
                    "arguments": {}}],
        "policies": [{"vhost": "cv", "name": "p", "pattern": ".*", "definition": {}}]}))
    with running(tmp_path / "data", load_definitions=str(d)) as b:
        conn = connect(f"amqp://carol:carol-pw@127.0.0.1:{b.port}/cv")
        conn.channel().queue_declare("cq", passive=True)
        conn.close()
        assert b.broker.access.users["carol"].tags == ("a", "b")
    stored = json.load(open(tmp_path / "data" / "access.json"))
    assert "carol-pw" not in json.dumps(stored)            # hashed before it is stored


def test_imported_vhost_queue_limit(tmp_path):
    defs = tmp_path / "d.json"
    defs.write_text(json.dumps({"vhosts": [{"name": "small", "limits": [["max-queues", 1]]}],
                                "permissions": [{"user": "guest", "vhost": "small",
                                                 "configure": ".*", "write": ".*",
                                                 "read": ".*"}]}))
    with running(tmp_path / "data", load_definitions=str(defs)) as b:
        conn = connect(b.url + "small")
        try:
            ch = conn.channel()
            ch.queue_declare("one")
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                ch.queue_declare("two")
            assert info.value.reply_code == 406
        finally:
            if conn.is_open:
                conn.close()


def test_imported_vhost_connection_limit(tmp_path):
    defs = tmp_path / "d.json"
    defs.write_text(json.dumps({"vhosts": [{"name": "tiny"}],
                                "parameters": [{"component": "vhost-limits", "name": "limits",
                                                "vhost": "tiny",
                                                "value": {"max-connections": 1}}],
                                "permissions": [{"user": "guest", "vhost": "tiny",
                                                 "configure": ".*", "write": ".*",
                                                 "read": ".*"}]}))
    with running(tmp_path / "data", load_definitions=str(defs)) as b:
        first = connect(b.url + "tiny")
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            connect(b.url + "tiny")
        connect(b.url).close()              # "/" has no limit
        first.close()
