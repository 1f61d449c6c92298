"""The pytest plugin (amqpd_broker, amqpd_vhost, amqpd_url, --amqpd-url) and the pytest-rabbitmq
drop-in, run as a user runs them: a separate pytest process over test files written to a
temporary directory. Every example of docs/testing.md runs here, section by section."""
import importlib.metadata
import os
import pathlib
import re
import socket
import subprocess
import sys
import textwrap
import urllib.request

import pytest

from amqpd.testing import BrokerThread

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "testing.md"


def _plugin_args() -> list:
    """Installed, the entry point loads the plugin; from a checkout, -p does."""
    for ep in importlib.metadata.entry_points(group="pytest11"):
        if ep.value == "amqpd.pytest_plugin":
            return []
    return ["-p", "amqpd.pytest_plugin"]


def run_pytest(directory, *args, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_plugin_args(),
         *args], cwd=directory, env=env, capture_output=True, text=True, timeout=timeout)


def passed(result, count: int) -> None:
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and re.search(rf"\b{count} passed\b", summary) \
        and "failed" not in summary and "error" not in summary, \
        result.stdout[-4000:] + result.stderr[-4000:]


def write(directory: pathlib.Path, files: dict) -> None:
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))


# -- the documentation's examples ---------------------------------------------------------------
def doc_sections() -> dict:
    """{section title: {file name: text}} from the code blocks of docs/testing.md whose first
    line names their file (``# test_x.py``)."""
    sections: dict = {}
    title = None
    for block in re.split(r"^(## .*)$", DOC.read_text(), flags=re.M):
        if block.startswith("## "):
            title = block[3:].strip()
            continue
        for code in re.findall(r"```(?:python|ini)\n(.*?)```", block, flags=re.S):
            first = code.splitlines()[0]
            m = re.fullmatch(r"# (\S+\.(?:py|ini))", first)
            if m:
                sections.setdefault(title, {})[m.group(1)] = code
    return sections


SECTIONS = doc_sections()


def test_the_documentation_has_its_examples():
    assert set(SECTIONS) == {
        "pytest, synchronous clients", "pytest, asyncio clients", "Celery",
        "Switching from pytest-rabbitmq", "Embedding: `amqpd.serve()` and `BrokerThread`"}


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_documented_example_runs(section, tmp_path):
    files = SECTIONS[section]
    write(tmp_path, files)
    tests = sum(len(re.findall(r"^(?:async )?def test_", text, flags=re.M))
                for name, text in files.items() if name.startswith("test_"))
    if tests:
        passed(run_pytest(tmp_path), tests)
    scripts = [n for n in files if n.endswith(".py") and not n.startswith(("test_", "conftest"))]
    for script in scripts:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        result = subprocess.run([sys.executable, script], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr[-4000:]
    assert tests or scripts


# -- isolation ----------------------------------------------------------------------------------
ISOLATION = """
    import aio_pika
    import kombu
    import pika
    import pytest

    SEEN = []


    def publish_one(url):           # durable, as kombu's SimpleQueue declares it
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.queue_declare("shared-name", durable=True)
        ch.exchange_declare("events", "fanout")
        ch.basic_publish("", "shared-name", b"left behind")
        conn.close()


    @pytest.mark.parametrize("n", range(3))
    def test_pika_sees_an_empty_queue_of_the_same_name(amqpd_url, amqpd_vhost, n):
        SEEN.append(amqpd_vhost)
        conn = pika.BlockingConnection(pika.URLParameters(amqpd_url))
        ch = conn.channel()
        ch.queue_declare("shared-name", durable=True)
        assert ch.basic_get("shared-name", auto_ack=True) == (None, None, None)
        conn.close()
        publish_one(amqpd_url)


    def test_kombu_sees_an_empty_queue(amqpd_url):
        with kombu.Connection(amqpd_url) as conn:
            q = conn.SimpleQueue("shared-name")
            assert q.qsize() == 0
            q.close()
        publish_one(amqpd_url)


    @pytest.mark.asyncio
    async def test_aio_pika_sees_an_empty_queue(amqpd_url):
        async with await aio_pika.connect(amqpd_url) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue("shared-name", durable=True)
            assert q.declaration_result.message_count == 0
        publish_one(amqpd_url)


    def test_earlier_vhosts_are_gone(amqpd_broker, amqpd_vhost):
        assert len(set(SEEN)) == 3 and amqpd_vhost not in SEEN
        assert set(amqpd_broker.vhosts()) == {"/", amqpd_vhost}


    def test_a_connection_left_open_is_closed_with_its_vhost(amqpd_broker):
        vhost_url = amqpd_broker.add_vhost("left-open")
        conn = pika.BlockingConnection(pika.URLParameters(vhost_url))
        amqpd_broker.delete_vhost("left-open")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            conn.process_data_events(time_limit=10)
        assert closed.value.args == (320, "CONNECTION_FORCED - vhost 'left-open' is deleted")
"""


def test_each_test_gets_a_fresh_vhost_deleted_after_it(tmp_path):
    write(tmp_path, {"test_isolation.py": ISOLATION})
    passed(run_pytest(tmp_path), 7)


def test_against_an_external_broker_without_management_the_tests_share_its_vhost(tmp_path):
    write(tmp_path, {"test_external.py": """
        import pika

        def test_first(amqpd_url, amqpd_vhost, amqpd_broker):
            assert amqpd_vhost == "/" and amqpd_url == amqpd_broker.url
            conn = pika.BlockingConnection(pika.URLParameters(amqpd_url))
            conn.channel().queue_declare("from-the-suite")
            conn.close()
        """})
    with BrokerThread() as broker:
        url = f"amqp://guest:guest@127.0.0.1:{broker.port}/"
        passed(run_pytest(tmp_path, "--amqpd-url", url), 1)
        assert broker.call(lambda: list(broker.broker.node.broker.vhosts["/"].queues)) \
            == ["from-the-suite"]
        # the ini option does the same
        (tmp_path / "pytest.ini").write_text(f"[pytest]\namqpd_url = {url}\n")
        passed(run_pytest(tmp_path), 1)


def _rabbitmq_management() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            pass
        urllib.request.urlopen("http://127.0.0.1:15672/api/overview", timeout=2)
    except urllib.error.HTTPError:
        return True            # 401: it is there
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _rabbitmq_management(),
                    reason="no RabbitMQ with its management API on 127.0.0.1:5672/15672")
def test_against_rabbitmq_with_its_management_api_each_test_gets_a_vhost(tmp_path):
    # an ExternalBroker lists no vhosts: that check is amqpd's alone; RabbitMQ's close text
    # races between "is deleted" and "is down"
    write(tmp_path, {"test_isolation.py": ISOLATION.replace(
        'assert set(amqpd_broker.vhosts()) == {"/", amqpd_vhost}', "pass").replace(
        "assert closed.value.args == (320, \"CONNECTION_FORCED - vhost 'left-open' is deleted\")",
        "assert closed.value.args[0] == 320")})
    passed(run_pytest(tmp_path, "--amqpd-url", "amqp://guest:guest@127.0.0.1:5672/",
                      "--amqpd-management-url", "http://127.0.0.1:15672"), 7)


# -- the pytest-rabbitmq drop-in ----------------------------------------------------------------
def test_pytest_rabbitmq_options_are_taken_or_accepted(tmp_path):
    with socket.socket() as s:           # a port that is free now, for --rabbitmq-port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write(tmp_path, {"conftest.py": """
        from amqpd.pytest_rabbitmq import factories

        rabbitmq_range_proc = factories.rabbitmq_proc(port=(20000, 20999), node="ignored")
        rabbitmq_range = factories.rabbitmq("rabbitmq_range_proc")
        """, "test_options.py": f"""
        import pytest

        def test_the_port_option(rabbitmq_proc, rabbitmq):
            assert (rabbitmq_proc.host, rabbitmq_proc.port) == ("127.0.0.1", {port})
            assert rabbitmq_proc.running()

        def test_a_range(rabbitmq_range_proc, rabbitmq_range):
            assert 20000 <= rabbitmq_range_proc.port <= 20999
            rabbitmq_range.channel().exchange_declare("cache-in")
            assert "cache-in" in rabbitmq_range_proc.list_exchanges()

        def test_the_exchange_was_cleared(rabbitmq_range_proc):
            assert [x for x in rabbitmq_range_proc.list_exchanges()
                    if not x.startswith("amq.")] == []

        def test_no_rabbitmqctl(rabbitmq_proc):
            with pytest.raises(NotImplementedError):
                rabbitmq_proc.rabbitctl_output("list_queues")
        """})
    result = run_pytest(tmp_path, "-p", "amqpd.pytest_rabbitmq", "--rabbitmq-port", str(port),
                        "--rabbitmq-ctl", "/nowhere/rabbitmqctl", "--rabbitmq-node", "x",
                        "--rabbitmq-server", "/nowhere/rabbitmq-server")
    passed(result, 4)


def test_the_rabbitmq_fixture_is_a_pika_connection_to_the_default_vhost(tmp_path):
    write(tmp_path, {"test_conn.py": """
        import pika

        def test_it(rabbitmq, rabbitmq_proc):
            assert isinstance(rabbitmq, pika.BlockingConnection)
            url = f"amqp://guest:guest@{rabbitmq_proc.host}:{rabbitmq_proc.port}/%2F"
            other = pika.BlockingConnection(pika.URLParameters(url))
            other.channel().queue_declare("seen-by-both")
            other.close()
            assert rabbitmq.channel().queue_declare("seen-by-both", passive=True)
        """})
    passed(run_pytest(tmp_path, "-p", "amqpd.pytest_rabbitmq"), 1)


def test_the_plugin_costs_nothing_to_suites_that_do_not_use_it(tmp_path):
    write(tmp_path, {"test_plain.py": """
        import sys, threading

        def test_nothing_started():
            assert not [t for t in threading.enumerate() if t.name == "amqpd"]
            assert "amqpd.node" not in sys.modules and "pika" not in sys.modules
        """})
    passed(run_pytest(tmp_path), 1)
