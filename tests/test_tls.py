"""The AMQPS listener: TLS with pika and aio-pika, client-certificate verification, and SASL
EXTERNAL taking the user from the certificate's CN. Certificates come from a throwaway CA made
at test time (tests/tls_certs.py)."""
import socket
import ssl

import aio_pika
import pika
import pytest
from pamqp import commands as C

from amqpd import cli
from tests.rawclient import PROTOCOL_HEADER, Closed, RawClient
from tests.tls_certs import pki  # noqa: F401  (fixture)

LOGIN_REFUSED = ("ACCESS_REFUSED - Login was refused using authentication mechanism {}. For "
                 "details see the broker logfile.")


def tls_broker(make_broker, pki, verify_peer=False, fail_if_no_peer_cert=False, **overrides):
    amqps = {"port": 0, "certfile": pki.server_cert, "keyfile": pki.server_key,
             "cafile": pki.ca, "verify_peer": verify_peer,
             "fail_if_no_peer_cert": fail_if_no_peer_cert}
    overrides.setdefault("users", [{"name": "guest", "password": "guest"},
                                   {"name": "alice", "password_hash": ""}])
    overrides.setdefault("permissions", [{"user": "guest"}, {"user": "alice"}])
    return make_broker(listeners={"amqps": amqps}, **overrides)


def client_context(pki, cn=None, untrusted=False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca)
    if cn is not None:
        ctx.load_cert_chain(*(pki.untrusted_client(cn) if untrusted else pki.client(cn)))
    return ctx


def pika_params(b, pki, cn=None, external=False, untrusted=False):
    creds = (pika.credentials.ExternalCredentials() if external
             else pika.PlainCredentials("guest", "guest"))
    return pika.ConnectionParameters(
        "localhost", b.server.tls_port, credentials=creds, connection_attempts=1,
        ssl_options=pika.SSLOptions(client_context(pki, cn, untrusted), "localhost"))


def raw_tls(b, pki, cn=None) -> RawClient:
    c = RawClient(b.server.tls_port, timeout=3)
    c.sock = client_context(pki, cn).wrap_socket(c.sock, server_hostname="localhost")
    return c


def start_mechanisms(c: RawClient) -> list:
    c.send(PROTOCOL_HEADER)
    start = c.expect(C.Connection.Start)
    mechs = start.mechanisms
    return (mechs.decode() if isinstance(mechs, bytes) else mechs).split()


def test_pika_over_tls_publishes_and_gets(make_broker, pki):
    b = tls_broker(make_broker, pki)
    conn = pika.BlockingConnection(pika_params(b, pki))
    ch = conn.channel()
    ch.queue_declare("tls-q")
    ch.basic_publish("", "tls-q", b"over tls" * 1000)
    _m, _p, body = ch.basic_get("tls-q", auto_ack=True)
    assert body == b"over tls" * 1000
    conn.close()


async def test_aio_pika_over_tls(make_broker, pki):
    b = tls_broker(make_broker, pki)
    conn = await aio_pika.connect(host="localhost", port=b.server.tls_port, login="guest",
                                  password="guest", ssl=True, ssl_context=client_context(pki))
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue("", exclusive=True)
        await ch.default_exchange.publish(aio_pika.Message(b"aio tls"), routing_key=q.name)
        msg = await q.get(timeout=5)
        assert msg.body == b"aio tls"
        await msg.ack()


def test_plain_and_tls_listeners_side_by_side(make_broker, pki):
    b = tls_broker(make_broker, pki)
    plain = pika.BlockingConnection(pika.URLParameters(b.url))
    tls = pika.BlockingConnection(pika_params(b, pki))
    plain.channel().queue_declare("both")
    plain.channel().basic_publish("", "both", b"from plain")
    assert tls.channel().basic_get("both", auto_ack=True)[2] == b"from plain"
    plain.close()
    tls.close()


def test_plain_amqp_on_the_tls_port_gets_nowhere(make_broker, pki):
    b = tls_broker(make_broker, pki)
    with RawClient(b.server.tls_port, timeout=2) as c:
        c.send(PROTOCOL_HEADER)
        with pytest.raises((Closed, ConnectionResetError, TimeoutError, socket.timeout)):
            c.expect(C.Connection.Start)


def test_fail_if_no_peer_cert_refuses_clients_without_a_certificate(make_broker, pki):
    b = tls_broker(make_broker, pki, verify_peer=True, fail_if_no_peer_cert=True)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika_params(b, pki))
    conn = pika.BlockingConnection(pika_params(b, pki, cn="guest"))
    assert conn.is_open
    conn.close()


def test_certificate_from_an_untrusted_ca_is_refused(make_broker, pki):
    b = tls_broker(make_broker, pki, verify_peer=True)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika_params(b, pki, cn="alice", untrusted=True))
    b.wait_for(lambda: not b.server.protocols, what="the refused socket to go")


def test_external_is_offered_only_on_tls_and_only_when_configured(make_broker, pki):
    b = tls_broker(make_broker, pki, verify_peer=True,
                   auth_mechanisms=["PLAIN", "AMQPLAIN", "EXTERNAL"])
    with raw_tls(b, pki, cn="alice") as c:
        assert start_mechanisms(c) == ["EXTERNAL", "AMQPLAIN", "PLAIN"]
    with RawClient(b.port) as c:
        assert start_mechanisms(c) == ["AMQPLAIN", "PLAIN"]
    default = tls_broker(make_broker, pki, verify_peer=True)
    with raw_tls(default, pki, cn="alice") as c:
        assert "EXTERNAL" not in start_mechanisms(c)


def test_external_logs_in_as_the_certificate_cn(make_broker, pki):
    b = tls_broker(make_broker, pki, verify_peer=True,
                   auth_mechanisms=["PLAIN", "AMQPLAIN", "EXTERNAL"])
    conn = pika.BlockingConnection(pika_params(b, pki, cn="alice", external=True))
    ch = conn.channel()
    ch.queue_declare("ext-q")
    # user_id must be the authenticated user: proves the broker took "alice" from the CN
    ch.basic_publish("", "ext-q", b"x", pika.BasicProperties(user_id="alice"))
    assert ch.basic_get("ext-q", auto_ack=True)[2] == b"x"
    assert b.call(lambda: [p.conn.user for p in b.server.protocols]) == ["alice"]
    conn.close()


def _external_refused(b, pki, cn):
    with raw_tls(b, pki, cn=cn) as c:
        start_mechanisms(c)
        c.method(0, C.Connection.StartOk(
            client_properties={"capabilities": {"authentication_failure_close": True}},
            mechanism="EXTERNAL", response=""))
        close = c.expect(C.Connection.Close)
        assert (close.reply_code, close.reply_text) == (403, LOGIN_REFUSED.format("EXTERNAL"))
        c.method(0, C.Connection.CloseOk())      # as RabbitMQ: close-ok drops the socket
        assert c.is_closed()


def test_external_refuses_unknown_users_and_missing_certificates(make_broker, pki, caplog):
    b = tls_broker(make_broker, pki, verify_peer=True,
                   auth_mechanisms=["PLAIN", "AMQPLAIN", "EXTERNAL"])
    _external_refused(b, pki, "mallory")            # a valid certificate, but no such user
    _external_refused(b, pki, None)                 # no client certificate at all
    logged = caplog.text
    assert "user 'mallory' does not exist" in logged
    assert "presented no TLS (x.509) certificate" in logged


def test_external_needs_verify_peer(make_broker, pki):
    """Without verification the CN proves nothing: RabbitMQ calls that unsafe and refuses."""
    b = tls_broker(make_broker, pki, verify_peer=False,
                   auth_mechanisms=["PLAIN", "AMQPLAIN", "EXTERNAL"])
    _external_refused(b, pki, "alice")


def test_check_config_loads_the_tls_files(tmp_path, capsys, pki):
    good = tmp_path / "good.yaml"
    good.write_text(f"listeners:\n  amqps: {{port: 0, certfile: {pki.server_cert}, "
                    f"keyfile: {pki.server_key}}}\n")
    assert cli.main(["--check-config", "-c", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"listeners:\n  amqps: {{port: 0, certfile: {tmp_path}/missing.pem}}\n")
    assert cli.main(["--check-config", "-c", str(bad)]) == 2
    assert "listeners.amqps" in capsys.readouterr().err
    nokey = tmp_path / "nocert.yaml"
    nokey.write_text("listeners:\n  amqps: {port: 0}\n")
    assert cli.main(["--check-config", "-c", str(nokey)]) == 2
    assert "listeners.amqps.certfile: required" in capsys.readouterr().err
