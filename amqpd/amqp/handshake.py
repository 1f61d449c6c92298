"""Opening a connection: protocol header, connection.start/start-ok with SASL (PLAIN,
AMQPLAIN, EXTERNAL), tune/tune-ok, open/open-ok, in RabbitMQ's order of checks."""
import logging
import platform

from pamqp import commands as C

from .. import errors
from ..version import __version__
from ..wire.framing import FRAME_MIN_SIZE, PROTOCOL_HEADER
from . import sasl
from .handlers import class_method
from .state import CLOSED, OPENING, RUNNING, SECURE, START, TUNE

log = logging.getLogger("amqpd.connection")

CAPABILITIES = {
    "publisher_confirms": True, "exchange_exchange_bindings": True, "basic.nack": True,
    "consumer_cancel_notify": True, "connection.blocked": True, "consumer_priorities": True,
    "authentication_failure_close": True, "per_consumer_qos": True, "direct_reply_to": True,
}
MECHANISM_ORDER = ("EXTERNAL", "AMQPLAIN", "PLAIN")   # as RabbitMQ lists them


HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ",
                b"CONNECT ")


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def client_label(props: dict) -> str:
    """``pika 1.3.2 (Python 3.11.7, connection name 'orders')`` from the client_properties
    every client library sends in start-ok (product, version or product_version, platform,
    connection_name; '?' for what a library leaves out)."""
    product = _text(props.get("product")) or "?"
    # py-amqp (and so kombu, Celery) names it product_version
    version = _text(props.get("version")) or _text(props.get("product_version")) or "?"
    extra = []
    platform = _text(props.get("platform"))
    if platform:
        extra.append(platform)
    name = _text(props.get("connection_name"))
    if name:
        extra.append(f"connection name '{name}'")
    return f"{product} {version}" + (f" ({', '.join(extra)})" if extra else "")


def not_amqp(data: bytes, peer: str, on_tls: bool) -> str:
    """One sentence for the log on what a client that did not send the AMQP 0-9-1 protocol
    header sent instead."""
    port = "AMQPS" if on_tls else "AMQP"
    if data[:1] == b"\x16" and data[1:2] == b"\x03":
        return (f"TLS handshake from {peer} on the plain AMQP port: the client is using TLS "
                f"(amqps://); connect it to the AMQPS listener (listeners.amqps, port 5671 "
                f"by default) or have it use amqp:// without TLS. Connection closed")
    if data.startswith(HTTP_METHODS):
        request = data.split(b"\r\n", 1)[0][:80].decode("latin-1")
        return (f"HTTP request from {peer} on the {port} port ({request!r}): this port "
                f"speaks AMQP 0-9-1; the management API and Prometheus metrics have ports of "
                f"their own (listeners.http, listeners.prometheus). Connection closed")
    if data[:4] == b"AMQP":
        version = ".".join(str(b) for b in data[4:8])
        what = {b"AMQP\x00\x01\x00\x00": "AMQP 1.0",
                b"AMQP\x03\x01\x00\x00": "AMQP 1.0 (SASL)",
                b"AMQP\x02\x01\x00\x00": "AMQP 1.0 (TLS)"}.get(bytes(data[:8]),
                                                                f"AMQP header {version}")
        return (f"unsupported protocol from {peer}: the client asked for {what}; amqpd "
                f"speaks AMQP 0-9-1 only (replied with the 0-9-1 header). Connection closed")
    return (f"non-AMQP data from {peer} on the {port} port (first bytes "
            f"{bytes(data[:16])!r}): not a client of this broker. Connection closed")


class Handshake:
    """Part of Connection (amqp/connection.py)."""

    user_record = None    # the logged-in user's access record

    def _protocol_header(self, data: bytes) -> bytes:
        buf = self.reader.buf + data
        if len(buf) < 8:
            self.reader.buf = buf
            return b""
        self.reader.buf = b""
        if buf[:8] not in (PROTOCOL_HEADER, b"AMQP\x01\x01\x00\x09"):
            # Answered as RabbitMQ answers it (our header, then close); the operator hears
            # what the client was, once for the connection.
            log.warning("%s", not_amqp(buf, self.peer, self.tls is not None))
            self.write(PROTOCOL_HEADER)
            self._shutdown()
            return b""
        self.state = START
        self.send_method(0, C.Connection.Start(
            version_major=0, version_minor=9, server_properties=self._server_properties(),
            mechanisms=" ".join(self.mechanisms()), locales="en_US"))
        return buf[8:]

    def mechanisms(self) -> list:
        """The configured SASL mechanisms; EXTERNAL only on TLS connections (as RabbitMQ's
        rabbitmq_auth_mechanism_ssl, which offers it even without a client certificate so the
        refusal can say why)."""
        configured = self.config.auth_mechanisms
        return [m for m in MECHANISM_ORDER
                if m in configured and (m != "EXTERNAL" or self.tls is not None)]

    @staticmethod
    def _server_properties() -> dict:
        return {"capabilities": dict(CAPABILITIES), "product": "amqpd", "version": __version__,
                "platform": f"Python {platform.python_version()}",
                "cluster_name": "amqpd@" + platform.node(),
                "copyright": "amqpd contributors", "information": "Licensed under MIT"}

    def _connection_method(self, method) -> None:
        expected = {START: C.Connection.StartOk, SECURE: C.Connection.SecureOk,
                    TUNE: C.Connection.TuneOk, OPENING: C.Connection.Open}.get(self.state)
        if isinstance(method, C.Connection.Close):
            self._client_closed(method)
            return
        if isinstance(method, C.Connection.CloseOk) and self.state != RUNNING:
            self._shutdown()
            return
        if expected is not None:
            if not isinstance(method, expected):
                raise errors.ChannelErrorConn(
                    f"expected '{expected.name.lower()}', got '{method.name.lower()}'",
                    *class_method(method))
            {START: self._start_ok, TUNE: self._tune_ok, OPENING: self._open,
             SECURE: self._start_ok}[self.state](method)
            return
        if isinstance(method, C.Connection.UpdateSecret):
            self.send_method(0, C.Connection.UpdateSecretOk())
            return
        raise errors.ChannelErrorConn("unexpected method in connection state running",
                                      *class_method(method))

    def _start_ok(self, m: C.Connection.StartOk) -> None:
        self.client_properties = m.client_properties or {}
        caps = self.client_properties.get("capabilities")
        self.capabilities = caps if isinstance(caps, dict) else {}
        mechanism = m.mechanism
        if mechanism not in self.mechanisms():
            raise errors.ConnectionAccessRefused(
                f"unsupported authentication mechanism '{mechanism}'", 10, 11)
        access = self.access
        if mechanism == "EXTERNAL":
            name, why = self._certificate_user()
            user = access.user(name) if name is not None else None
            if user is None:
                self._refuse_login(mechanism, why or f"user '{name}' does not exist", name)
                return
        else:
            creds = sasl.parse_response(mechanism, m.response)
            if creds is None:
                self._refuse_login(mechanism, "malformed response")
                return
            user = access.user(creds[0])
            if user is None or not user.check_password(creds[1]):
                self._refuse_login(mechanism, "invalid credentials", creds[0])
                return
        if not access.may_log_in_from(user.name, self.peer_ip):
            self._refuse_login(mechanism, f"user '{user.name}' can only connect via localhost",
                               user.name)
            return
        self.user = user.name
        self.user_record = user
        self.state = TUNE
        self.send_method(0, C.Connection.Tune(channel_max=self.channel_max,
                                              frame_max=self.frame_max,
                                              heartbeat=self.config.limits.heartbeat))

    def _certificate_user(self):
        """(user name, None) from the client certificate's CN, or (None, why not)."""
        tls = self.tls or {}
        if not tls.get("verified"):
            return None, "TLS configuration is unsafe (listeners.amqps.verify_peer is off)"
        if not tls.get("peercert"):
            return None, "connection peer presented no TLS (x.509) certificate"
        name = sasl.peer_cert_name(tls["peercert"])
        if name is None:
            return None, "no name found"
        return name, None

    def _refuse_login(self, mechanism: str, why: str = "", user: str | None = None) -> None:
        # The client gets RabbitMQ's deliberately vague text; the log says why.
        text = (f"ACCESS_REFUSED - Login was refused using authentication mechanism "
                f"{mechanism}. For details see the broker logfile.")
        log.warning("login refused for %s: %s login refused: %s%s; client %s", self.peer,
                    mechanism, why,
                    f" (user '{user}')" if user and f"'{user}'" not in why else "",
                    client_label(self.client_properties))
        if self.capabilities.get("authentication_failure_close"):
            self.close(403, text)        # and wait up to 3 s for close-ok, as RabbitMQ
            return
        # Without the capability the client gets no frame; RabbitMQ keeps the socket 3 s
        # before dropping it, a brake on password guessing.
        self.state = CLOSED
        self.io.linger(self, self.config.limits.close_timeout, reading=False)

    def _tune_ok(self, m: C.Connection.TuneOk) -> None:
        server_channels, server_frame = self.channel_max, self.frame_max
        if server_channels and m.channel_max > server_channels:
            raise errors.NotAllowed(
                f"negotiated channel_max = {m.channel_max} is higher than the maximum allowed "
                f"value ({server_channels})", 10, 31)
        self.channel_max = m.channel_max or server_channels or 65535
        if m.frame_max and m.frame_max < FRAME_MIN_SIZE:
            raise errors.NotAllowed(
                f"negotiated frame_max = {m.frame_max} is lower than the minimum allowed "
                f"value ({FRAME_MIN_SIZE})", 10, 31)
        if server_frame and m.frame_max > server_frame:
            raise errors.NotAllowed(
                f"negotiated frame_max = {m.frame_max} is higher than the maximum allowed "
                f"value ({server_frame})", 10, 31)
        self.frame_max = m.frame_max or server_frame
        self.reader.frame_max = self.frame_max
        self.frame_limit = self.frame_max
        self.heartbeat = m.heartbeat
        self.state = OPENING
        if self.heartbeat:
            self.io.start_heartbeat(self, self.heartbeat)

    def _open(self, m: C.Connection.Open) -> None:
        name = m.virtual_host
        vhost = self.broker.vhosts.get(name)
        access = self.access
        # In RabbitMQ's order: node limit, vhost (exists, limit), user limit, permissions.
        refusal = access.check_open(self.user, name, vhost is not None)
        if refusal is not None:
            raise errors.NotAllowed(refusal, 10, 40)
        self.grant = grant = access.grant(self.user, name)
        self._everything = {p: grant.allows_everything(p) for p in ("configure", "write", "read")}
        self.vhost = vhost
        access.opened(self, self.user, name)
        self.counted = True
        self.publish_rate = self.user_record.max_publish_rate if self.user_record else 0.0
        self.state = RUNNING
        self.broker.connections.add(self)          # statistics add up its channels
        self.broker.counters.connections_opened += 1
        self.send_method(0, C.Connection.OpenOk())
        self.sent = False     # RabbitMQ's first heartbeat comes heartbeat/2 after open-ok
        log.info("connection %s opened: user '%s' vhost '%s' client %s", self.peer,
                 self.user, vhost.name, client_label(self.client_properties))
