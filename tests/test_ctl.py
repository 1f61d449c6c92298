"""amqpctl against a real amqpd with its management API on: the real command in a subprocess
(``python -m amqpd.ctl``, as the console script runs it), real pika clients making the state it
lists, and every error path a script would branch on (exit codes as rabbitmqctl's)."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pika
import pytest

from amqpd.ctl import VERBS

from .brokerthread import BrokerThread

ROOT = pathlib.Path(__file__).resolve().parents[1]


def ctl(broker_or_url, *args, input=None, env=None, user=None):
    """Run ``python -m amqpd.ctl --node URL ARGS``; the CompletedProcess (text)."""
    url = getattr(broker_or_url, "management_url", broker_or_url)
    full_env = dict(os.environ, PYTHONPATH=str(ROOT))
    full_env.pop("AMQPCTL_URL", None)
    full_env.update(env or {})
    node = ["--node", url] if url else []
    creds = ["-u", user[0], "--password", user[1]] if user else []
    return subprocess.run([sys.executable, "-m", "amqpd.ctl", *node, *creds, *args],
                          input=input, capture_output=True, text=True, timeout=60,
                          env=full_env)


def ok(result):
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def table(stdout: str) -> list[list[str]]:
    """The tab-separated rows after the banner (the first line)."""
    return [line.split("\t") for line in stdout.splitlines()[1:]]


def has_endpoint(broker, method: str, path: str) -> bool:
    """Whether amqpd's API has this route yet: asked without credentials, a route answers
    401 (authentication comes first), a path with no route 404 and a method it lacks 405."""
    req = urllib.request.Request(broker.management_url + path, method=method)
    try:
        urllib.request.urlopen(req, timeout=5).close()
        return True
    except urllib.error.HTTPError as exc:
        return exc.code == 401


def need(broker, method, path):
    if not has_endpoint(broker, method, path):
        pytest.skip(f"amqpd's API has no {method} {path} yet (LEAD: this test runs once "
                    f"that endpoint lands; amqpctl uses RabbitMQ's path)")


@pytest.fixture
def mgmt(make_broker):
    return make_broker(http_port=0)


@pytest.fixture
def client(mgmt):
    conns = []

    def connect(vhost="/", **params):
        creds = pika.PlainCredentials(params.pop("username", "guest"),
                                      params.pop("password", "guest"))
        c = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", mgmt.port, vhost, creds, **params))
        conns.append(c)
        return c

    yield connect
    for c in conns:
        if c.is_open:
            c.close()


def declare(client, vhost="/"):
    c = client(vhost)
    ch = c.channel()
    ch.queue_declare("q1", durable=True)
    ch.queue_declare("q2", arguments={"x-max-length": 10})
    ch.exchange_declare("ex1", "topic")
    ch.queue_bind("q1", "ex1", "a.#")
    for _ in range(3):
        ch.basic_publish("", "q1", b"hi")
    ch.confirm_delivery()
    ch.basic_publish("", "q1", b"hi")     # confirmed: all four are in q1
    return ch


# ---------------------------------------------------------------------------------------------
# listings

def test_list_queues_prints_rabbitmqctls_table_with_the_columns_asked_for(mgmt, client):
    declare(client)
    out = ok(ctl(mgmt, "list_queues"))
    assert out.splitlines()[0] == "Listing queues for vhost / ..."
    assert out.splitlines()[1] == "name\tmessages"
    assert sorted(table(out)[1:]) == [["q1", "4"], ["q2", "0"]]
    out = ok(ctl(mgmt, "list_queues", "name", "durable", "arguments", "messages_ready",
                 "consumers", "auto_delete"))
    assert table(out)[0] == ["name", "durable", "arguments", "messages_ready", "consumers",
                             "auto_delete"]
    assert sorted(table(out)[1:]) == [["q1", "true", "[]", "4", "0", "false"],
                                      ["q2", "false", '[{"x-max-length",10}]', "0", "0",
                                       "false"]]


def test_json_formatter_prints_one_object_a_line_with_the_apis_values(mgmt, client):
    declare(client)
    out = ok(ctl(mgmt, "list_queues", "--formatter", "json", "name", "messages",
                 "arguments"))
    lines = out.splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and lines[2].startswith(",{")
    rows = sorted(json.loads(out), key=lambda r: r["name"])
    assert rows == [{"name": "q1", "messages": 4, "arguments": {}},
                    {"name": "q2", "messages": 0, "arguments": {"x-max-length": 10}}]
    # no rows: rabbitmqctl's empty list
    assert ok(ctl(mgmt, "list_consumers", "--formatter", "json")) == "[\n]\n"


def test_quiet_drops_the_banner_and_silent_the_header_too(mgmt, client):
    declare(client)
    quiet = ok(ctl(mgmt, "-q", "list_queues", "name")).splitlines()
    assert quiet[0] == "name" and sorted(quiet[1:]) == ["q1", "q2"]
    silent = ok(ctl(mgmt, "list_queues", "-s", "name")).splitlines()
    assert sorted(silent) == ["q1", "q2"]
    assert sorted(ok(ctl(mgmt, "list_queues", "--no-table-headers", "-q", "name"))
                  .splitlines()) == ["q1", "q2"]


def test_vhost_option_and_env_url(mgmt, client):
    need(mgmt, "PUT", "/api/vhosts/ctl-vh")
    need(mgmt, "PUT", "/api/permissions/ctl-vh/guest")
    assert ok(ctl(mgmt, "add_vhost", "ctl-vh")).splitlines() == ['Adding vhost "ctl-vh" ...']
    ok(ctl(mgmt, "set_permissions", "-p", "ctl-vh", "guest", ".*", ".*", ".*"))
    declare(client, "ctl-vh")
    # --node left out: AMQPCTL_URL names the broker
    out = ok(ctl(None, "list_queues", "--vhost", "ctl-vh", "-s", "name",
                 env={"AMQPCTL_URL": mgmt.management_url}))
    assert sorted(out.splitlines()) == ["q1", "q2"]
    assert ok(ctl(mgmt, "list_queues", "-s")) == ""          # nothing in "/"


def test_list_exchanges_and_bindings(mgmt, client):
    declare(client)
    rows = table(ok(ctl(mgmt, "list_exchanges")))
    assert rows[0] == ["name", "type"]
    assert ["ex1", "topic"] in rows and ["amq.direct", "direct"] in rows and ["", "direct"] in rows
    need(mgmt, "GET", "/api/bindings/%2F")
    out = ok(ctl(mgmt, "list_bindings"))
    assert out.splitlines()[0] == "Listing bindings for vhost /..."
    rows = table(out)
    assert rows[0] == ["source_name", "source_kind", "destination_name", "destination_kind",
                       "routing_key", "arguments"]
    assert ["ex1", "exchange", "q1", "queue", "a.#", "[]"] in rows
    assert ["", "exchange", "q2", "queue", "q2", "[]"] in rows


def test_connections_channels_consumers_and_close_connection(mgmt, client):
    for path in ("/api/connections", "/api/channels", "/api/consumers/%2F"):
        need(mgmt, "GET", path)
    c = client(client_properties={"connection_name": "ctl-test"})
    ch = c.channel()
    ch.queue_declare("work")
    ch.basic_qos(prefetch_count=7)
    ch.basic_consume("work", lambda *a: None, consumer_tag="ctag-1")

    rows = table(ok(ctl(mgmt, "list_connections", "name", "user", "vhost", "state",
                        "user_provided_name")))
    assert len(rows) == 2 and rows[1][1:] == ["guest", "/", "running", "ctl-test"]
    name = rows[1][0]
    rows = table(ok(ctl(mgmt, "list_channels", "connection", "number", "consumer_count",
                        "prefetch_count", "user")))
    assert rows[1:] == [[name, "1", "1", "7", "guest"]]
    rows = table(ok(ctl(mgmt, "list_consumers")))
    assert rows[0] == ["queue_name", "channel_pid", "consumer_tag", "ack_required",
                       "prefetch_count", "active", "arguments"]
    assert rows[1][0] == "work" and rows[1][2:4] == ["ctag-1", "true"]

    need(mgmt, "DELETE", "/api/connections/nosuch")
    out = ok(ctl(mgmt, "close_connection", name, "ctl says bye"))
    assert out == f"Closing connection {name}, reason: ctl says bye...\n"
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        c.process_data_events(time_limit=5)
    assert info.value.reply_code == 320 and "ctl says bye" in info.value.reply_text


# ---------------------------------------------------------------------------------------------
# changes

def test_purge_and_delete_queue(mgmt, client):
    need(mgmt, "DELETE", "/api/queues/%2F/nosuch/contents")
    ch = declare(client)
    out = ok(ctl(mgmt, "purge_queue", "q1"))
    assert out == "Purging queue 'q1' in vhost '/' ...\n"
    assert ch.queue_declare("q1", passive=True).method.message_count == 0
    ch.basic_publish("", "q2", b"x")
    ch.basic_publish("", "q2", b"y")
    assert ok(ctl(mgmt, "delete_queue", "q2")).splitlines() == [
        "Deleting queue 'q2' on vhost '/' ...",
        "Queue was successfully deleted with 2 ready messages"]
    assert sorted(ok(ctl(mgmt, "list_queues", "-s", "name")).split()) == ["q1"]


def test_delete_queue_if_empty_refuses_a_queue_with_messages(mgmt, client):
    need(mgmt, "DELETE", "/api/queues/%2F/q1")
    declare(client)
    result = ctl(mgmt, "delete_queue", "q1", "--if-empty")
    assert result.returncode == 64, result          # rabbitmqctl's code for "not empty"
    assert result.stdout == "Deleting queue 'q1' on vhost '/' if queue is empty ...\n"
    assert "q1" in result.stderr and "not deleted" in result.stderr
    assert ok(ctl(mgmt, "list_queues", "-s", "name")).split().count("q1") == 1


def test_users_vhosts_and_permissions(mgmt, client):
    need(mgmt, "GET", "/api/users")
    need(mgmt, "PUT", "/api/vhosts/ctl-vh")
    ok(ctl(mgmt, "add_vhost", "ctl-vh"))
    assert ok(ctl(mgmt, "add_user", "ctl-user", "pw1")) == 'Adding user "ctl-user" ...\n'
    ok(ctl(mgmt, "set_user_tags", "ctl-user", "monitoring", "management"))
    ok(ctl(mgmt, "set_permissions", "-p", "ctl-vh", "ctl-user", "^c", "^w", "^r"))
    rows = table(ok(ctl(mgmt, "list_users")))
    assert ["ctl-user", "[monitoring,management]"] in rows
    rows = table(ok(ctl(mgmt, "list_permissions", "-p", "ctl-vh")))
    # guest made the vhost through the API, so it got full permissions there (as RabbitMQ)
    assert rows[0] == ["user", "configure", "write", "read"]
    assert ["ctl-user", "^c", "^w", "^r"] in rows
    assert "ctl-vh" in ok(ctl(mgmt, "list_vhosts", "-s")).split()

    # the tags change kept the password; change_password keeps the tags
    client("ctl-vh", username="ctl-user", password="pw1")
    ok(ctl(mgmt, "change_password", "ctl-user", "pw2"))
    client("ctl-vh", username="ctl-user", password="pw2")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        client("ctl-vh", username="ctl-user", password="pw1")
    assert ["ctl-user", "[monitoring,management]"] in table(ok(ctl(mgmt, "list_users")))

    # a password on stdin, as rabbitmqctl reads it when it is not an argument
    ok(ctl(mgmt, "add_user", "ctl-user2", input="from-stdin\n"))
    ok(ctl(mgmt, "set_permissions", "-p", "ctl-vh", "ctl-user2", ".*", ".*", ".*"))
    client("ctl-vh", username="ctl-user2", password="from-stdin")
    for c in (ctl(mgmt, "delete_user", "ctl-user"), ctl(mgmt, "delete_user", "ctl-user2")):
        ok(c)


def test_user_errors_have_rabbitmqctls_codes(mgmt):
    need(mgmt, "GET", "/api/users")
    assert ctl(mgmt, "add_user", "guest", "x").returncode == 70           # exists
    result = ctl(mgmt, "add_user", "nopw", input="")
    assert result.returncode == 65 and "Password is not provided" in result.stderr
    for verb in (["delete_user", "nosuch"], ["change_password", "nosuch", "pw"],
                 ["set_user_tags", "nosuch", "management"],
                 ["set_permissions", "nosuch", ".*", ".*", ".*"]):
        result = ctl(mgmt, *verb)
        assert result.returncode == 67, (verb, result)
        assert 'User "nosuch" does not exist' in result.stderr
    result = ctl(mgmt, "set_permissions", "-p", "no-vh", "guest", ".*", ".*", ".*")
    assert result.returncode == 69 and "no-vh does not exist" in result.stderr


def test_a_user_without_the_administrator_tag_is_refused_with_77(mgmt):
    need(mgmt, "GET", "/api/users")
    ok(ctl(mgmt, "add_user", "ctl-mgmt", "pw"))
    ok(ctl(mgmt, "set_user_tags", "ctl-mgmt", "management"))
    result = ctl(mgmt, "add_vhost", "ctl-x", user=("ctl-mgmt", "pw"))
    assert result.returncode == 77, result
    assert "ctl-mgmt" in result.stderr and "may not" in result.stderr


def test_policies(mgmt):
    need(mgmt, "GET", "/api/policies/%2F")
    out = ok(ctl(mgmt, "set_policy", "--priority", "3", "--apply-to", "queues", "lim", "^q",
                 '{"max-length":5}'))
    assert out.startswith('Setting policy "lim" for pattern "^q" to "{"max-length":5}" '
                          'with priority "3" for vhost "/" ...')
    rows = table(ok(ctl(mgmt, "list_policies")))
    assert rows == [["vhost", "name", "pattern", "apply-to", "definition", "priority"],
                    ["/", "lim", "^q", "queues", '{"max-length":5}', "3"]]
    bad = ctl(mgmt, "set_policy", "p2", "^x", "not json")
    assert bad.returncode == 65 and "JSON" in bad.stderr
    ok(ctl(mgmt, "clear_policy", "lim"))
    assert table(ok(ctl(mgmt, "list_policies"))) == []
    gone = ctl(mgmt, "clear_policy", "lim")
    assert gone.returncode == 69 and "lim" in gone.stderr


def test_definitions_export_and_import(mgmt, client, tmp_path):
    need(mgmt, "GET", "/api/definitions")
    declare(client)
    path = tmp_path / "defs.json"
    out = ok(ctl(mgmt, "export_definitions", str(path)))
    assert out == f'Exporting definitions in JSON to a file at "{path}" ...\n'
    defs = json.loads(path.read_text())
    assert {q["name"] for q in defs["queues"]} >= {"q1"}
    again = json.loads(ok(ctl(mgmt, "export_definitions", "-")))
    assert again["queues"] == defs["queues"] and again["vhosts"] == defs["vhosts"]

    ok(ctl(mgmt, "delete_queue", "q1"))
    ok(ctl(mgmt, "import_definitions", str(path)))
    assert "q1" in ok(ctl(mgmt, "list_queues", "-s", "name")).split()
    # from stdin, and a file that is not JSON
    ok(ctl(mgmt, "import_definitions", input=json.dumps(
        {"vhosts": [{"name": "ctl-imported"}]})))
    assert "ctl-imported" in ok(ctl(mgmt, "list_vhosts", "-s")).split()
    bad = ctl(mgmt, "import_definitions", input="{nope")
    assert bad.returncode == 65 and "not JSON" in bad.stderr


def test_status_and_await_startup(mgmt):
    out = ok(ctl(mgmt, "status"))
    assert "Node name: amqpd@" in out and f"port: {mgmt.port}, protocol: amqp" in out
    assert "Queue count: 0" in out
    status = json.loads(ok(ctl(mgmt, "status", "--formatter", "json")))
    assert status["overview"]["node"].startswith("amqpd@")
    assert ok(ctl(mgmt, "await_startup", "--timeout", "10")) == ""


# ---------------------------------------------------------------------------------------------
# errors

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stopped_broker_is_unavailable_69_and_await_startup_times_out_75():
    b = BrokerThread(http_port=0).start()
    url = b.management_url
    ok(ctl(url, "list_vhosts"))
    b.stop()
    b.cleanup()
    result = ctl(url, "list_queues")
    assert result.returncode == 69, result
    assert url in result.stderr and "refused" in result.stderr.lower()
    result = ctl(url, "await_startup", "--timeout", "1")
    assert result.returncode == 75, result
    assert url in result.stderr and "1 seconds" in result.stderr


def test_await_startup_waits_for_a_broker_that_starts_later(tmp_path):
    port = free_port()
    waiter = subprocess.Popen(
        [sys.executable, "-m", "amqpd.ctl", "--node", f"http://127.0.0.1:{port}",
         "await_startup", "--timeout", "60"],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    b = None
    try:
        # the waiter is polling a port nobody listens on; then the broker comes up there
        with pytest.raises(subprocess.TimeoutExpired):
            waiter.wait(timeout=0.5)
        b = BrokerThread(http_port=port).start()
        assert waiter.wait(timeout=60) == 0, waiter.stderr.read()
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
        waiter.stdout.close()
        waiter.stderr.close()
        if b:
            b.stop()
            b.cleanup()


def test_wrong_credentials_are_77(mgmt):
    result = ctl(mgmt, "list_queues", user=("guest", "wrong"))
    assert result.returncode == 77, result
    assert "credentials" in result.stderr and "guest" in result.stderr
    result = ctl(mgmt, "await_startup", "--timeout", "10", user=("nobody", "x"))
    assert result.returncode == 77, result


def test_an_unknown_queue_or_vhost_says_so(mgmt):
    result = ctl(mgmt, "list_queues", "-p", "no-vh")
    assert result.returncode == 65 and "Virtual host 'no-vh' does not exist" in result.stderr
    result = ctl(mgmt, "delete_queue", "nosuch")
    assert result.returncode == 64 and "Queue 'nosuch' in vhost '/' not found" in result.stderr
    need(mgmt, "DELETE", "/api/queues/%2F/nosuch/contents")
    result = ctl(mgmt, "purge_queue", "nosuch")
    assert result.returncode == 69 and "Queue 'nosuch'" in result.stderr
    need(mgmt, "DELETE", "/api/vhosts/no-vh")
    result = ctl(mgmt, "delete_vhost", "no-vh")
    assert result.returncode == 65 and "Virtual host 'no-vh' does not exist" in result.stderr


@pytest.mark.parametrize("argv, complaint", [
    (["bogus_verb"], "Command 'bogus_verb' not found"),
    (["list_queues", "name", "nosuchcol"], "Info key(s) nosuchcol are not supported"),
    (["add_vhost"], "not enough arguments"),
    (["purge_queue", "a", "b"], "too many arguments"),
    (["list_queues", "--formatter", "xml"], "invalid choice"),
    ([], ""),
])
def test_usage_errors_are_64_and_list_the_verbs(argv, complaint):
    # no broker needed: nothing is sent
    result = ctl(f"http://127.0.0.1:{free_port()}", *argv)
    assert result.returncode == 64, result
    assert complaint in result.stderr + result.stdout
    assert "list_queues" in result.stderr + result.stdout
    assert "await_startup" in result.stderr + result.stdout


def test_help_lists_every_verb_and_exits_0():
    out = ok(ctl(None, "--help"))
    for verb in VERBS:
        assert verb in out


def test_the_console_script_is_declared_for_ctl_main():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'amqpctl = "amqpd.ctl:main"' in text


# ---------------------------------------------------------------------------------------------
# quorum queue membership (rabbitmq-queues' verbs); the cluster's side is tested end to end in
# tests/cluster/test_ctl_members.py, here what needs no cluster: arguments, output, a queue
# that is not there

@pytest.mark.parametrize("argv, complaint", [
    (["add_member", "q1"], "not enough arguments"),
    (["add_member", "q1", "node1", "node2"], "too many arguments"),
    (["delete_member", "q1"], "not enough arguments"),
    (["grow", "node1"], "not enough arguments"),
    (["grow", "node1", "some"], "strategy 'some' is not recognised."),
    (["shrink"], "not enough arguments"),
    (["shrink", "node1", "node2"], "too many arguments"),
])
def test_membership_verbs_check_their_arguments_before_asking(argv, complaint):
    # rabbitmq-queues 3.10.8: 64, with the verb's usage; nothing is sent (no broker here)
    result = ctl(f"http://127.0.0.1:{free_port()}", *argv)
    assert result.returncode == 64, result
    assert complaint in result.stderr and f"usage: amqpctl {argv[0]} " in result.stderr
    assert result.stdout == ""


def results_output(capsys, rows, *options):
    """What grow/shrink print for these per-queue results (the API's answer), with the
    command line's output options."""
    from amqpd import ctl as ctlmod
    args = ctlmod.parser().parse_intermixed_args(["shrink", "n", *options])
    ctlmod.change_results(ctlmod.Output(args), rows, args.errors_only)
    return capsys.readouterr().out


RESULTS = [{"vhost": "/", "name": "q1", "size": 2, "ok": True, "result": "ok"},
           {"vhost": "shop", "name": "q2", "size": 1, "ok": False,
            "result": "node node3 is the last member of queue 'q2' in vhost 'shop'"}]


def test_grow_and_shrink_results_are_rabbitmq_queues_table(capsys):
    # rabbitmq-queues 3.10.8: a header, one tab-separated row per queue, "error: ..." results
    assert results_output(capsys, RESULTS) == (
        "vhost\tname\tsize\tresult\n"
        "/\tq1\t2\tok\n"
        "shop\tq2\t1\terror: node node3 is the last member of queue 'q2' in vhost 'shop'\n")
    assert results_output(capsys, RESULTS, "--errors-only").splitlines() == [
        "vhost\tname\tsize\tresult",
        "shop\tq2\t1\terror: node node3 is the last member of queue 'q2' in vhost 'shop'"]
    assert results_output(capsys, RESULTS, "-s").splitlines()[0] == "/\tq1\t2\tok"
    assert results_output(capsys, RESULTS, "-q").splitlines()[0] == "vhost\tname\tsize\tresult"
    # no queue to change: an empty line, whatever the options (as rabbitmq-queues)
    for options in ((), ("-q",), ("-s",)):
        assert results_output(capsys, [], *options) == "\n"
    assert results_output(capsys, RESULTS[:1], "--errors-only") == "\n"
    # a broker that answers without results (RabbitMQ's 204/202): nothing after the banner
    assert results_output(capsys, None) == ""


def test_grow_and_shrink_results_in_json(capsys):
    out = results_output(capsys, RESULTS, "--formatter", "json")
    assert out.splitlines()[0] == "[" and out.splitlines()[2].startswith(",{")
    assert json.loads(out) == [
        {"vhost": "/", "name": "q1", "size": 2, "result": "ok"},
        {"vhost": "shop", "name": "q2", "size": 1,
         "result": "error: node node3 is the last member of queue 'q2' in vhost 'shop'"}]
    assert results_output(capsys, [], "--formatter", "json") == "[]\n"


def test_membership_changes_on_a_single_node_are_refused_with_69(mgmt, client):
    # rabbitmq-queues: the banner on stdout, then the refusal with 69 (a single node has one
    # replica of a quorum queue: there is no member to add or remove)
    ch = client().channel()
    ch.queue_declare("qq", durable=True, arguments={"x-queue-type": "quorum"})
    for verb, banner in (("add_member", "Adding a replica for queue qq on node n2..."),
                         ("delete_member", "Removing a replica of queue qq on node n2...")):
        result = ctl(mgmt, verb, "qq", "n2")
        assert result.returncode == 69, result
        assert result.stdout == banner + "\n"
        assert result.stderr.startswith("Error: "), result.stderr
        quiet = ctl(mgmt, verb, "-q", "-p", "/", "qq", "n2")
        assert quiet.returncode == 69 and quiet.stdout == ""
    for verb in (["grow", "n2", "all"], ["shrink", "n2"]):
        result = ctl(mgmt, *verb)
        assert result.returncode == 69, result
        assert result.stdout.endswith("quorum queues on n2...\n")


def test_a_broker_that_does_not_answer_in_time_is_75_not_unreachable():
    # a listening socket that never answers: the request times out (rabbitmqctl's 75), and
    # the message says so instead of "unable to reach"
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        result = ctl(url, "--timeout", "0.5", "list_queues")
    assert result.returncode == 75, result
    assert "no answer within 0.5 seconds" in result.stderr and "unable" not in result.stderr
