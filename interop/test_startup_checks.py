"""An operator's first hour, through the real CLI: ``--check-config`` refuses what start-up or a
login would refuse and names the culprit; a start that fails does so before recovery, and
leaves nothing on disk; exit code 2 for what the configuration must change, 1 for what stops
a sound configuration from starting now."""
import base64
import fcntl
import json
import os
import socket
import subprocess
import sys
import time

import pika
import pytest

from tests.tls_certs import pki  # noqa: F401  (fixture)

from .process import ROOT


def amqpd(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "amqpd", "--http-port", "0", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def check(*args):
    return amqpd("--check-config", *args)


def write(path, text):
    path.write_text(text)
    return str(path)


def refused(r, *words):
    """Exit 2 and one error line naming every one of ``words``."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("amqpd: configuration error")]
    assert any(all(w in ln for w in words) for ln in lines), r.stderr
    assert "Traceback" not in r.stderr


def nothing_created(data_dir):
    return not os.path.lexists(data_dir)


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


# -- users, vhosts, permissions ------------------------------------------------------------
def test_check_config_refuses_permissions_for_unknown_users_and_vhosts(tmp_path):
    cfg = write(tmp_path / "c.yaml",
                "vhosts: [/, prod]\n"
                "users: [{name: alice, password: a}]\n"
                "permissions:\n"
                "  - {user: alice, vhost: prod}\n"
                "  - {user: alcie, vhost: /}\n"
                "  - {user: alice, vhost: prd}\n")
    r = check("-c", cfg, "--port", "0", "--data-dir", str(tmp_path / "data"))
    refused(r, "permissions[1]", "'alcie'", "does not exist")
    refused(r, "permissions[2]", "'prd'", "does not exist")
    assert "permissions[0]" not in r.stderr
    # users and vhosts a load_definitions file brings count as existing
    defs = write(tmp_path / "defs.json", json.dumps({
        "users": [{"name": "alcie", "password_hash": "", "tags": []}],
        "vhosts": [{"name": "prd"}]}))
    r = check("-c", cfg, "--port", "0", "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 2
    with open(cfg, "a") as f:
        f.write(f"load_definitions: {defs}\n")
    r = check("-c", cfg, "--port", "0", "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr
    assert nothing_created(tmp_path / "data")


def test_default_permission_for_guest_is_not_held_against_a_file_without_guest(tmp_path):
    cfg = write(tmp_path / "c.yaml", "users: [{name: alice, password: a}]\n")
    r = check("-c", cfg, "--port", "0", "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr


def test_start_up_accepts_dangling_permissions_but_logs_them(tmp_path, amqpd_process):
    cfg = write(tmp_path / "c.yaml", "permissions: [{user: guest}, {user: ghost}]\n")
    p = amqpd_process("-c", cfg)
    conn = pika.BlockingConnection(pika.URLParameters(p.url))
    conn.close()
    assert any("permissions[1]: user 'ghost' does not exist" in line and "WARNING" in line
               for line in p.log), p.log


def test_definitions_file_permission_for_unknown_user_is_refused(tmp_path):
    defs = write(tmp_path / "defs.json", json.dumps({
        "permissions": [{"user": "nobody-here", "vhost": "/", "configure": ".*",
                         "write": ".*", "read": ".*"}]}))
    cfg = write(tmp_path / "c.yaml", f"load_definitions: {defs}\n")
    r = check("-c", cfg, "--port", "0", "--data-dir", str(tmp_path / "data"))
    refused(r, str(defs), "permissions[0]", "'nobody-here'")


@pytest.mark.parametrize("bad,why", [
    ("not*base64!", "not base64"),
    (base64.b64encode(b"salt" + b"x" * 20).decode(), "decodes to 24 bytes"),
])
def test_unusable_password_hashes_are_refused(tmp_path, bad, why):
    data = str(tmp_path / "data")
    cfg = write(tmp_path / "c.yaml", f"users: [{{name: bob, password_hash: '{bad}'}}]\n")
    refused(check("-c", cfg, "--port", "0", "--data-dir", data),
            "users[0].password_hash", why)
    # in the configuration file this stops start-up too, before anything is created
    refused(amqpd("-c", cfg, "--port", "0", "--data-dir", data), "users[0].password_hash")
    assert nothing_created(data)
    # in a definitions file: check-config refuses, naming the file and the user
    defs = write(tmp_path / "defs.json", json.dumps({"users": [
        {"name": "carol", "password_hash": bad,
         "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}]}))
    cfg = write(tmp_path / "d.yaml", f"load_definitions: {defs}\n")
    refused(check("-c", cfg, "--port", "0", "--data-dir", data), defs, "'carol'", why)


def test_a_rabbitmq_hash_passes(tmp_path):
    # RabbitMQ's sha256 hash of "bob-pw" (docs and tests use it)
    cfg = write(tmp_path / "c.yaml", "users: [{name: bob, password_hash: "
                "EOd/N94UbGUUAFnJTyhdLezMoXvlHOYUE/aoRlvIQHJ6bPTj}]\n"
                "permissions: [{user: bob}]\n")
    r = check("-c", cfg, "--port", "0", "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr


def test_users_and_mechanisms_nobody_can_log_in_with(tmp_path, pki):
    data = str(tmp_path / "data")
    cfg = write(tmp_path / "a.yaml", "users: [{name: x509, password_hash: ''}]\n"
                                     "permissions: [{user: x509}]\n")
    refused(check("-c", cfg, "--port", "0", "--data-dir", data), "users[0] 'x509'",
            "never log in")
    cfg = write(tmp_path / "b.yaml", "auth_mechanisms: [EXTERNAL]\n")
    refused(check("-c", cfg, "--port", "0", "--data-dir", data), "auth_mechanisms",
            "nobody can log in")
    cfg = write(tmp_path / "c.yaml",
                f"listeners:\n  amqps: {{port: 0, certfile: {pki.server_cert}, "
                f"keyfile: {pki.server_key}}}\n"
                "auth_mechanisms: [PLAIN, EXTERNAL]\n")
    refused(check("-c", cfg, "--port", "0", "--data-dir", data), "auth_mechanisms",
            "verify_peer")
    cfg = write(tmp_path / "d.yaml", "users: []\n")
    refused(check("-c", cfg, "--port", "0", "--data-dir", data), "users", "nobody can log in")


def test_loopback_user_behind_a_listener_that_is_not_on_loopback(tmp_path):
    from tests.test_permissions import local_address
    addr = local_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address")
    data = str(tmp_path / "data")
    refused(check("--host", addr, "--port", "0", "--data-dir", data), "loopback_users",
            "'guest'", addr, "never log in")
    cfg = write(tmp_path / "c.yaml", "loopback_users: []\n")
    r = check("-c", cfg, "--host", addr, "--port", "0", "--data-dir", data)
    assert r.returncode == 0, r.stderr
    r = check("--host", "0.0.0.0", "--port", "0", "--data-dir", data)
    assert r.returncode == 0, r.stderr


# -- the data directory ---------------------------------------------------------------------
def _unwritable_dir(tmp_path):
    """A directory this process cannot create files in, or None (root writes everywhere,
    except where the kernel refuses: gVisor's /proc/self is such a place)."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    if not os.access(d, os.W_OK):
        return str(d)
    if not os.access("/proc/self", os.W_OK):
        return "/proc/self"
    return None


def test_data_dir_must_be_a_writable_directory_or_creatable(tmp_path):
    a_file = write(tmp_path / "file", "x")
    for data, words in [(a_file, ("storage.data_dir", a_file, "not a directory")),
                        (f"{a_file}/data", ("storage.data_dir", "cannot create",
                                            f"{a_file} is not a directory"))]:
        refused(check("--port", "0", "--data-dir", data), *words)
        refused(amqpd("--port", "0", "--data-dir", data), *words)
    ro = _unwritable_dir(tmp_path)
    if ro is None:
        pytest.skip("no unwritable directory for this user (root on a normal kernel)")
    refused(check("--port", "0", "--data-dir", f"{ro}/data"), "cannot create", "not writable")
    refused(amqpd("--port", "0", "--data-dir", f"{ro}/data"), "not writable")


def test_data_dir_of_another_format_or_with_broken_access_file(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "FORMAT").write_text("amqpd-store 0\n")
    refused(check("--port", "0", "--data-dir", str(old)), "storage.data_dir", "format")
    refused(amqpd("--port", "0", "--data-dir", str(old)), "format 'amqpd-store 0'")
    assert sorted(os.listdir(old)) == ["FORMAT"]          # no LOCK, no queues/
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "access.json").write_text("{not json")
    refused(check("--port", "0", "--data-dir", str(broken)), "access.json")


def test_check_config_passes_for_the_running_broker(tmp_path, amqpd_process):
    """A running broker holds the port and the data dir's lock: checking its configuration
    (before a restart, say) must not fail on either, nor disturb it."""
    p = amqpd_process()
    r = check("--port", str(p.port), "--data-dir", p.data_dir)
    assert r.returncode == 0, r.stderr
    assert f"127.0.0.1:{p.port} is already in use" in r.stdout    # said, as a note
    conn = pika.BlockingConnection(pika.URLParameters(p.url))
    conn.close()


# -- TLS: which file, and what is wrong with it ---------------------------------------------
@pytest.fixture
def tls_files(pki, tmp_path):
    other_cert, other_key = pki.client("someone-else")
    both = tmp_path / "both.pem"
    both.write_text(open(pki.server_cert).read() + open(pki.server_key).read())
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", pki.server_key, "-aes256", "-passout", "pass:x",
                    "-out", str(encrypted)], check=True, capture_output=True)
    (tmp_path / "a-dir").mkdir()
    return {"cert": pki.server_cert, "key": pki.server_key, "ca": pki.ca,
            "other_key": other_key, "both": str(both), "encrypted": str(encrypted),
            "missing": str(tmp_path / "missing.pem"), "dir": str(tmp_path / "a-dir"),
            "text": write(tmp_path / "notes.txt", "not a certificate\n")}


@pytest.mark.parametrize("files,key,words", [
    (("missing", "key", None), "certfile", ("missing.pem", "does not exist")),
    (("cert", "missing", None), "keyfile", ("missing.pem", "does not exist")),
    (("dir", "key", None), "certfile", ("a-dir", "is a directory")),
    (("text", "key", None), "certfile", ("notes.txt", "no PEM certificate")),
    (("key", "key", None), "certfile", ("server.key", "no PEM certificate")),
    (("cert", "text", None), "keyfile", ("notes.txt", "no PEM private key")),
    (("cert", None, None), "certfile", ("server.pem", "no PEM private key", "keyfile")),
    (("cert", "other_key", None), "keyfile", ("client-someone-else.key", "does not belong",
                                              "server.pem")),
    (("cert", "encrypted", None), "keyfile", ("encrypted.key", "encrypted")),
    (("cert", "key", "text"), "cafile", ("notes.txt", "no PEM certificate")),
    (("cert", "key", "missing"), "cafile", ("missing.pem", "does not exist")),
])
def test_tls_errors_name_the_file_and_what_is_wrong(tmp_path, tls_files, files, key, words):
    cert, keyfile, ca = (tls_files[f] if f else None for f in files)
    amqps = f"port: 0, certfile: {cert}"
    if keyfile:
        amqps += f", keyfile: {keyfile}"
    if ca:
        amqps += f", cafile: {ca}"
    cfg = write(tmp_path / "c.yaml", f"listeners:\n  amqps: {{{amqps}}}\n")
    data = str(tmp_path / "data")
    refused(check("-c", cfg, "--port", "0", "--data-dir", data),
            f"listeners.amqps.{key}", *words)
    started = time.monotonic()
    refused(amqpd("-c", cfg, "--port", "0", "--data-dir", data), f"listeners.amqps.{key}",
            *words)
    assert time.monotonic() - started < 15       # no terminal prompt for the key's password
    assert nothing_created(data)


def test_good_tls_files_and_both_in_one_file_pass(tmp_path, tls_files):
    for amqps in (f"certfile: {tls_files['cert']}, keyfile: {tls_files['key']}, "
                  f"cafile: {tls_files['ca']}, verify_peer: true",
                  f"certfile: {tls_files['both']}"):
        cfg = write(tmp_path / "c.yaml", f"listeners:\n  amqps: {{port: 0, {amqps}}}\n")
        r = check("-c", cfg, "--port", "0", "--data-dir", str(tmp_path / "data"))
        assert r.returncode == 0, r.stderr


# -- listeners: bound before recovery, named when wrong ----------------------------------------
@pytest.mark.parametrize("host,words", [
    ("no-such-host.invalid", ("'no-such-host.invalid'", "does not resolve")),
    ("203.0.113.77", ("'203.0.113.77'", "not an address of this machine")),  # TEST-NET-3
])
def test_a_bad_host_is_named(tmp_path, host, words):
    data = str(tmp_path / "data")
    refused(check("--host", host, "--port", "0", "--data-dir", data), "listeners.amqp.host",
            *words)
    refused(amqpd("--host", host, "--port", "0", "--data-dir", data), "listeners.amqp.host",
            *words)
    assert nothing_created(data)


def test_busy_port_fails_at_once_and_creates_nothing(tmp_path, busy_port):
    data = str(tmp_path / "data")
    r = amqpd("--port", str(busy_port), "--data-dir", data)
    assert r.returncode == 1, r.stderr
    assert f"cannot start: listeners.amqp: 127.0.0.1:{busy_port} is already in use" in r.stderr
    assert "Traceback" not in r.stderr
    assert nothing_created(data)


def test_the_port_is_bound_before_the_data_dir_is_taken(tmp_path, busy_port):
    """The data dir is locked by someone else and the port is busy: the port is what is
    reported, so it was tried first, before the store (and its recovery) was touched."""
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "LOCK", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        r = amqpd("--port", str(busy_port), "--data-dir", str(data))
        assert r.returncode == 1
        assert f"127.0.0.1:{busy_port} is already in use" in r.stderr, r.stderr
        assert "in use by another amqpd" not in r.stderr
        assert sorted(os.listdir(data)) == ["LOCK"]
        r = amqpd("--port", "0", "--data-dir", str(data))     # the lock alone: also exit 1
        assert r.returncode == 1
        assert "in use by another amqpd" in r.stderr, r.stderr


def test_failed_start_for_bad_definitions_creates_nothing(tmp_path):
    data = str(tmp_path / "data")
    cfg = write(tmp_path / "c.yaml", f"load_definitions: {write(tmp_path / 'd.json', '{x')}\n")
    refused(amqpd("-c", cfg, "--port", "0", "--data-dir", data), "load_definitions",
            "not valid JSON")
    assert nothing_created(data)


def test_definitions_import_into_an_unusable_data_dir_is_refused(tmp_path):
    a_file = write(tmp_path / "file", "x")
    defs = write(tmp_path / "d.json", "{}")
    r = amqpd("--data-dir", f"{a_file}/data", "definitions", "import", defs)
    assert r.returncode == 2, r.stderr
    assert f"cannot create {a_file}/data: {a_file} is not a directory" in r.stderr
    assert "Traceback" not in r.stderr
