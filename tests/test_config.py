"""Configuration: the shipped file documents every key with its default, errors name the key's
path (exit code 2), --check-config validates without starting, logs say who connected."""
import logging
import os
import re

import pika
import pytest

from amqpd import cli, config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "conf", "amqpd.yaml")
DOC = os.path.join(ROOT, "docs", "configuration.md")


# -- documentation stays complete ---------------------------------------------------------------
def test_shipped_file_is_exactly_the_defaults():
    assert config.load(SHIPPED) == config.from_dict({})


def test_every_key_is_in_the_shipped_file_and_the_docs():
    shipped = open(SHIPPED).read()
    doc = open(DOC).read()
    for path in config.keys():
        leaf = path.split(".")[-1].replace("[]", "")
        assert re.search(rf"\b{re.escape(leaf)}:", shipped), f"{path} missing in conf/amqpd.yaml"
        assert f"`{path}`" in doc, f"{path} missing in docs/configuration.md"


# -- errors name the key ------------------------------------------------------------------------
@pytest.mark.parametrize("data,message", [
    ({"limits": {"hartbeat": 5}}, "limits.hartbeat: unknown key"),
    ({"listeners": {"amqps": {"certfile": "c.pem", "verify_peeer": True}}},
     "listeners.amqps.verify_peeer: unknown key"),
    ({"users": [{"name": "u", "password": "p", "tag": ["x"]}]}, "users[0].tag: unknown key"),
    ({"users": [{"password": "p"}]}, "users[0].name: required"),
    ({"limits": {"frame_max": "big"}}, "limits.frame_max: expected an integer, got str 'big'"),
    ({"limits": {"max_connections": True}}, "limits.max_connections: expected an integer"),
    ({"listeners": {"amqps": {"certfile": "c.pem", "verify_peer": "yes"}}},
     "listeners.amqps.verify_peer: expected true or false, got str 'yes'"),
    ({"vhosts": "/"}, "vhosts: expected a list"),
    ({"permissions": [{"user": "u", "read": "("}]},
     "permissions[0].read: invalid regular expression"),
    ({"resources": {"disk_free_limit": "lots"}}, "resources.disk_free_limit: expected a size"),
    ({"resources": {"memory_high_watermark": 1.5}},
     "resources.memory_high_watermark: expected a fraction between 0 and 1"),
    ({"auth_mechanisms": ["PLAIN", "CRAM-MD5"]}, "auth_mechanisms[1]: expected one of"),
    ({"listeners": {"amqp": None}}, "listeners: at least one of amqp and amqps"),
    ({"listeners": {"amqps": {"port": 5671}}}, "listeners.amqps.certfile: required"),
    ({"listeners": {"amqps": {"certfile": "c.pem", "verify_peer": True}}},
     "listeners.amqps.cafile: required"),
    ({"users": [{"name": "u", "password": "p"}, {"name": "u", "password": "q"}]},
     "users[1].name: user 'u' is listed twice"),
    ({"users": [{"name": "u"}]}, "users[0]: needs password or password_hash"),
    ({"users": [{"name": "u", "password_hash": "abc"}]}, "users[0].password_hash: not base64"),
    ({"users": [{"name": "u", "password_hash": "c2FsdA=="}]},
     "users[0].password_hash: decodes to 4 bytes"),
    ({"users": [{"name": "u", "password": "p", "max_publish_rate": -1}]},
     "users[0].max_publish_rate: expected 0 (no limit) or more"),
    ({"limits": {"max_queues_per_vhost": -1}}, "limits.max_queues_per_vhost: expected 0 or more"),
    ({"storage": {"fsync": "sometimes"}}, "storage.fsync: expected always, batch or never"),
])
def test_errors_name_the_key(data, message):
    with pytest.raises(config.ConfigError) as info:
        config.from_dict(data)
    assert message in str(info.value)


@pytest.mark.parametrize("text,value", [
    ("50MB", 50_000_000), ("2GiB", 2 * 1024 ** 3), ("512k", 512 * 1024), ("1.5GB", 1_500_000_000),
    ("100", 100), (4096, 4096), ("0", 0),
])
def test_sizes(text, value):
    cfg = config.from_dict({"resources": {"disk_free_limit": text}})
    assert cfg.resources.disk_free_limit == value


@pytest.mark.parametrize("text,value", [
    (0.4, 0.4), (1, 1.0), (0, 0.0), ("200MB", 200_000_000), (300_000_000, 300_000_000),
])
def test_memory_watermark_is_a_fraction_or_a_size(text, value):
    cfg = config.from_dict({"resources": {"memory_high_watermark": text}})
    assert cfg.resources.memory_high_watermark == value
    assert isinstance(cfg.resources.memory_high_watermark, float) == isinstance(value, float)


# -- the command line -----------------------------------------------------------------------------
def test_check_config(tmp_path, capsys):
    assert cli.main(["--check-config", "-c", SHIPPED]) == 0
    assert "configuration ok" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("resources:\n  memory_high_watermark: lots\n")
    assert cli.main(["--check-config", "-c", str(bad)]) == 2
    assert "resources.memory_high_watermark" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("limits: [\n")
    assert cli.main(["--check-config", "-c", str(broken)]) == 2
    assert "invalid YAML" in capsys.readouterr().err
    assert cli.main(["--check-config", "-c", str(tmp_path / "missing.yaml")]) == 2


def test_check_config_reads_load_definitions(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"load_definitions: {tmp_path}/defs.json\n")
    assert cli.main(["--check-config", "-c", str(cfg)]) == 2
    assert "load_definitions" in capsys.readouterr().err
    (tmp_path / "defs.json").write_text("{not json")
    assert cli.main(["--check-config", "-c", str(cfg)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    (tmp_path / "defs.json").write_text('{"users": []}')
    assert cli.main(["--check-config", "-c", str(cfg)]) == 0


def test_flags_override_the_file():
    cfg = config.override(config.from_dict({"listeners": {"amqp": {"port": 1}}}), port=0,
                          data_dir="/tmp/x", log_level="debug")
    assert (cfg.listeners.amqp.port, cfg.storage.data_dir, cfg.log_level) == (0, "/tmp/x",
                                                                              "debug")


# -- users from the configuration -------------------------------------------------------------------
def test_configured_users_and_password_hash(make_broker):
    b = make_broker(users=[{"name": "plain", "password": "pw-1"},
                           {"name": "hashed",
                            "password_hash": "EOd/N94UbGUUAFnJTyhdLezMoXvlHOYUE/aoRlvIQHJ6bPTj"}],
                    permissions=[{"user": "plain"}, {"user": "hashed"}])
    for user, pw in (("plain", "pw-1"), ("hashed", "bob-pw")):
        conn = pika.BlockingConnection(pika.URLParameters(
            f"amqp://{user}:{pw}@127.0.0.1:{b.port}/"))
        conn.close()
    # the configured list replaces the default guest user
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{b.port}/"))


# -- logs -----------------------------------------------------------------------------------------
def test_one_log_line_per_connection_opened_and_closed(make_broker, caplog):
    b = make_broker()
    caplog.set_level(logging.INFO, logger="amqpd")
    params = pika.URLParameters(b.url)
    params.client_properties = {"product": "log-test-client", "version": "9.9"}
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare("log-q")
    for _ in range(50):
        ch.basic_publish("", "log-q", b"x")
    ch.basic_get("log-q", auto_ack=True)
    port = conn._impl._transport._sock.getsockname()[1]
    conn.close()
    b.wait_for(lambda: not b.server.protocols, what="the connection to close")
    mine = [r.getMessage() for r in caplog.records if f":{port} " in r.getMessage()]
    assert len(mine) == 2, mine
    opened, closed = mine
    assert re.search(rf"connection 127\.0\.0\.1:{port} opened: user 'guest' vhost '/' client "
                     r"log-test-client 9\.9", opened), opened
    assert re.search(rf"connection 127\.0\.0\.1:{port} closed: user 'guest' vhost '/' client "
                     r"log-test-client 9\.9 \(closed by the client\)", closed), closed


@pytest.mark.parametrize("doc", ["README.md", "docs/security.md", "docs/configuration.md"])
def test_yaml_examples_in_the_docs_are_valid(doc):
    import yaml
    text = open(os.path.join(ROOT, doc)).read()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    for block in blocks:
        config.from_dict(yaml.safe_load(block))


def test_hash_password_makes_hashes_amqpd_and_rabbitmq_accept(capsys):
    from amqpd.access import passwords as auth
    assert cli.main(["hash-password", "s3cret"]) == 0
    digest = capsys.readouterr().out.strip()
    user = config.User("u", password_hash=digest)
    assert auth.check_password(user, "s3cret") and not auth.check_password(user, "other")
