"""What an operator reads in the log: channel and connection errors at warning with the reply
code, text and who the client is; non-AMQP traffic and TLS on the plain port named once per
connection; every client library's product and version when it connects; the ``logging:``
section (level, file, json) of the standalone broker. Real clients, real sockets."""
import asyncio
import importlib.metadata
import json
import logging
import re
import socket
import ssl
import subprocess
import sys
import time

import pika
import pytest

from .rawclient import PROTOCOL_HEADER, RawClient
from pamqp import commands as C


def messages(caplog, level=logging.WARNING, logger="amqpd") -> list:
    return [r.getMessage() for r in caplog.records
            if r.levelno == level and r.name.startswith(logger)]


def wait_for_log(caplog, pattern: str, timeout: float = 5.0, level=logging.WARNING) -> list:
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in messages(caplog, level) if re.search(pattern, m)]
        if found:
            return found
        assert time.monotonic() < deadline, f"no log line like {pattern!r}: " \
                                            f"{messages(caplog, level)}"
        time.sleep(0.02)


def local_port(conn: pika.BlockingConnection) -> int:
    return conn._impl._transport._sock.getsockname()[1]


# -- channel and connection errors ------------------------------------------------------------
def test_channel_error_is_a_warning_naming_code_text_and_client(broker, caplog):
    caplog.set_level(logging.INFO, logger="amqpd")
    params = pika.URLParameters(broker.url)
    params.client_properties = {"connection_name": "orders-worker"}
    conn = pika.BlockingConnection(params)
    try:
        port = local_port(conn)
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            ch.queue_declare("no-such-queue", passive=True)
        line, = wait_for_log(caplog, rf"127\.0\.0\.1:{port}\b.*channel 1:")
        assert re.fullmatch(
            rf"channel error on connection \(127\.0\.0\.1:{port}, user 'guest', vhost '/', "
            rf"client Pika Python Client Library {re.escape(pika.__version__)} \(Python "
            rf"[\d.]+, connection name 'orders-worker'\)\), channel 1: queue\.declare caused "
            rf"404 NOT_FOUND - no queue 'no-such-queue' in vhost '/'", line), line
    finally:
        conn.close()


def test_connection_error_is_a_warning_naming_code_text_and_client(broker, caplog):
    caplog.set_level(logging.INFO, logger="amqpd")
    with RawClient(broker.port) as c:
        c.handshake()
        port = c.sock.getsockname()[1]
        c.method(5, C.Basic.Qos(prefetch_count=1))       # channel 5 was never opened
        close = c.expect(C.Connection.Close)
        assert close.reply_code == 504
        c.method(0, C.Connection.CloseOk())
    line, = wait_for_log(caplog, rf"127\.0\.0\.1:{port}\b")
    assert line == (f"connection error on (127.0.0.1:{port}, user 'guest', vhost '/', client "
                    f"rawclient ?): basic.qos caused 504 CHANNEL_ERROR - expected "
                    f"'channel.open'; closing the connection")


def test_refused_vhost_is_a_warning_with_the_user(broker, caplog):
    caplog.set_level(logging.INFO, logger="amqpd")
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        pika.BlockingConnection(pika.URLParameters(
            f"amqp://guest:guest@127.0.0.1:{broker.port}/no-such-vhost"))
    line, = wait_for_log(caplog, r"connection\.open caused 530")
    assert "user 'guest'" in line and "client Pika Python Client Library" in line
    assert "NOT_ALLOWED - vhost no-such-vhost not found" in line


# -- not AMQP ----------------------------------------------------------------------------------
def _send_and_wait_closed(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        got = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return got
            got += chunk


@pytest.mark.parametrize("data,pattern", [
    (b"GET /api/overview HTTP/1.1\r\nHost: localhost\r\n\r\n",
     r"HTTP request from 127\.0\.0\.1:\d+ on the AMQP port \('GET /api/overview HTTP/1\.1'\): "
     r"this port speaks AMQP 0-9-1"),
    (b"AMQP\x00\x01\x00\x00", r"the client asked for AMQP 1\.0; amqpd speaks AMQP 0-9-1 only"),
    (b"AMQP\x03\x01\x00\x00", r"the client asked for AMQP 1\.0 \(SASL\)"),
    (b"\x00\x01\x02\x03hello world!", r"non-AMQP data from 127\.0\.0\.1:\d+ on the AMQP port "
                                      r"\(first bytes b'\\x00\\x01\\x02\\x03hello world!'\)"),
])
def test_non_amqp_traffic_is_named_once(broker, caplog, data, pattern):
    caplog.set_level(logging.INFO, logger="amqpd")
    reply = _send_and_wait_closed(broker.port, data)
    assert reply == PROTOCOL_HEADER           # what RabbitMQ answers, then it closes
    found = wait_for_log(caplog, pattern)
    assert len(found) == 1 and found[0].endswith("Connection closed")
    assert len(messages(caplog)) == 1, messages(caplog)


def test_tls_client_on_the_plain_port_is_told_once(broker, caplog):
    caplog.set_level(logging.INFO, logger="amqpd")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            context.wrap_socket(raw).do_handshake()
    found = wait_for_log(caplog, r"TLS handshake from 127\.0\.0\.1:\d+ on the plain AMQP port: "
                                 r"the client is using TLS \(amqps://\); connect it to the "
                                 r"AMQPS listener")
    assert len(found) == 1 and len(messages(caplog)) == 1


# -- client product and version for every library -----------------------------------------------
def test_every_client_library_is_named_when_it_connects(broker, caplog):
    caplog.set_level(logging.INFO, logger="amqpd")
    import aio_pika
    import amqp
    import kombu

    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    conn.close()

    async def aio():
        connection = await aio_pika.connect(broker.url)
        await connection.close()
    asyncio.run(aio())

    c = amqp.Connection(f"127.0.0.1:{broker.port}", userid="guest", password="guest")
    c.connect()
    c.close()

    with kombu.Connection(broker.url) as k:
        k.connect()

    with RawClient(broker.port) as raw:             # no version in its client_properties
        raw.handshake()
        raw.method(0, C.Connection.Close(reply_code=200, reply_text="bye", class_id=0,
                                         method_id=0))
        raw.expect(C.Connection.CloseOk)
    broker.wait_for(lambda: not broker.server.protocols, what="the clients to leave")
    opened = messages(caplog, logging.INFO, "amqpd.connection")
    opened = [m for m in opened if " opened: " in m]
    expected = [("Pika Python Client Library", pika.__version__),
                ("aiormq", importlib.metadata.version("aiormq")),
                ("py-amqp", amqp.__version__),
                ("py-amqp", amqp.__version__),        # kombu speaks through py-amqp
                ("rawclient", "?")]
    assert len(opened) == len(expected), opened
    for line, (product, version) in zip(opened, expected):
        assert re.search(rf"client {re.escape(product)} {re.escape(version)}( |$)", line), line


# -- the logging: section of the standalone broker --------------------------------------------
def _run_cli(tmp_path, config_text: str, *args) -> subprocess.Popen:
    cfg = tmp_path / "amqpd.yaml"
    cfg.write_text(config_text)
    return subprocess.Popen(
        [sys.executable, "-m", "amqpd", "-c", str(cfg), "--port", "0", "--http-port", "0",
         "--prometheus-port", "0", "--data-dir", str(tmp_path / "data"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_line(path, pattern: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            if re.search(pattern, line):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no line like {pattern!r} in {path}: {text!r}")


def test_json_log_file(tmp_path):
    log_file = tmp_path / "amqpd.log"
    proc = _run_cli(tmp_path, f"logging: {{file: {log_file}, format: json, level: info}}\n")
    try:
        line = _wait_for_line(log_file, r"amqpd listening on amqp://")
        port = int(json.loads(line)["message"].rsplit(":", 1)[1])
        _send_and_wait_closed(port, b"GET / HTTP/1.0\r\n\r\n")
        line = _wait_for_line(log_file, r"HTTP request from")
        entry = json.loads(line)
        assert entry["level"] == "warning" and entry["logger"] == "amqpd.connection"
        assert entry["message"].startswith("HTTP request from 127.0.0.1:")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert err == ""           # everything went to the file
    assert all(json.loads(x) for x in log_file.read_text().splitlines())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _poke(port: int, timeout: float = 20) -> None:
    """Send HTTP to the AMQP port once the broker accepts (a warning it always logs)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _send_and_wait_closed(port, b"GET /poke HTTP/1.0\r\n\r\n")
            return
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "the broker never listened"
            time.sleep(0.05)


@pytest.mark.parametrize("text,info_shown", [
    ("log_level: warning\n", False),                          # the older key still works
    ("log_level: warning\nlogging: {level: info}\n", True),   # logging.level wins
])
def test_log_level_alias_and_logging_level(tmp_path, text, info_shown):
    port = _free_port()
    proc = _run_cli(tmp_path, text, "--port", str(port))
    try:
        _poke(port)
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=10)
    assert "HTTP request from" in err                 # warnings are shown either way
    assert ("amqpd listening on" in err) is info_shown, err


def test_unwritable_log_file_is_a_configuration_error(tmp_path):
    proc = _run_cli(tmp_path, f"logging: {{file: {tmp_path / 'no' / 'such' / 'dir.log'}}}\n")
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert "configuration error: logging.file: cannot open" in err


def test_embedded_broker_leaves_the_root_logger_alone():
    import amqpd
    root = logging.getLogger()
    before = (root.handlers[:], root.level)

    async def run():
        async with amqpd.serve(config={"logging": {"level": "debug", "format": "json"}}):
            return (root.handlers[:], root.level)
    assert asyncio.run(run()) == before


def test_check_config_checks_the_log_file_and_the_prometheus_port(tmp_path, capsys):
    from amqpd import cli
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"listeners: {{amqp: {{port: 0}}, prometheus: {{port: "
                       f"{busy.getsockname()[1]}}}}}\n"
                       f"logging: {{file: {tmp_path / 'missing-dir' / 'a.log'}}}\n"
                       f"storage: {{data_dir: null}}\n")
        assert cli.main(["--check-config", "-c", str(cfg)]) == 2
        out, err = capsys.readouterr()
        assert "listeners.prometheus: 127.0.0.1:" in out and "already in use" in out
        assert "logging.file: cannot open" in err
    finally:
        busy.close()
