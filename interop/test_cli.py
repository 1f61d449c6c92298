"""The CLI as a user runs it: starts fast, logs its address, stops cleanly with 320."""
import signal
import subprocess
import sys

import pika
import pytest

from .process import ROOT


def test_starts_fast_and_logs_one_address_line(amqpd_process):
    p = amqpd_process()
    # "well under a second" from exec to listening, on a 2-core CI machine
    assert p.listening_after < 3.0, p.listening_after
    # one line for the AMQP address (the HTTP and Prometheus listeners log their own)
    assert sum("listening on amqp://" in line for line in p.log) == 1
    conn = pika.BlockingConnection(pika.URLParameters(p.url))
    assert conn.is_open
    conn.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_clients_with_320(amqpd_process, sig):
    p = amqpd_process()
    conn = pika.BlockingConnection(pika.URLParameters(p.url))
    conn.channel().queue_declare("q")
    conn.call_later(0.05, lambda: p.signal(sig))
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        conn.sleep(10)      # returns early only by raising the broker's close
    assert info.value.reply_code == 320
    assert "CONNECTION_FORCED" in info.value.reply_text
    assert p.wait(10) == 0


def test_flags_override_config_file(tmp_path, amqpd_process):
    cfg = tmp_path / "amqpd.yaml"
    cfg.write_text("listeners:\n  amqp: {host: 127.0.0.1, port: 1}\nlimits: {heartbeat: 7}\n")
    p = amqpd_process("--config", str(cfg))   # --port 0 from the fixture wins over port 1
    params = pika.URLParameters(p.url)
    conn = pika.BlockingConnection(params)
    assert conn._impl.params.heartbeat == 7    # the file's heartbeat was proposed
    conn.close()


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "amqpd", "--http-port", "0", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_bad_config_exits_2_with_key_path(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("limits:\n  hartbeat: 5\n")
    r = _run_cli("--config", str(cfg))
    assert r.returncode == 2
    assert "limits.hartbeat" in r.stderr


def test_check_config_validates_shipped_file():
    r = _run_cli("--check-config", "--config", "conf/amqpd.yaml")
    assert r.returncode == 0, r.stderr
