"""Listening sockets: the AMQPS listener's TLS context, binding errors as an operator needs to
read them, and the checks ``--check-config`` makes without keeping a port."""
import errno
import ipaddress
import socket
import ssl

from ..config import ConfigError


class StartError(Exception):
    """The configuration is sound but the broker cannot start now (its port is taken)."""


def tls_context(tls, name: str = "amqps") -> ssl.SSLContext:
    """The AMQPS listener's context: TLS 1.2 or later; client certificates requested when
    verify_peer is on (required with fail_if_no_peer_cert), checked against cafile.

    A file that will not do is a ConfigError naming its key and path, and why: missing,
    unreadable, no PEM certificate or key in it, an encrypted key, a key that is not the
    certificate's."""
    for key in ("certfile", "keyfile", "cafile"):
        if getattr(tls, key):
            _readable(key, getattr(tls, key), name)
    _has_certificate("certfile", tls.certfile, name)
    key_in = "keyfile" if tls.keyfile else "certfile"
    key_path = tls.keyfile or tls.certfile
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.certfile, tls.keyfile, password=_no_password)
    except _EncryptedKey:
        raise ConfigError(f"listeners.{name}.{key_in}: the private key in {key_path} is "
                          f"encrypted; amqpd needs it unencrypted") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"listeners.{name}.{key_in}: the private key in {key_path} does "
                              f"not belong to the certificate in {tls.certfile}") from None
        hint = "" if tls.keyfile else f" (set listeners.{name}.keyfile if the key is elsewhere)"
        raise ConfigError(f"listeners.{name}.{key_in}: no PEM private key in {key_path}"
                          f"{hint}") from None
    if tls.cafile:
        _has_certificate("cafile", tls.cafile, name)
        context.load_verify_locations(tls.cafile)
    if tls.fail_if_no_peer_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.verify_peer:
        context.verify_mode = ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


class _EncryptedKey(Exception):
    pass


def _no_password():
    """Asked for a key's password: without this OpenSSL would prompt on the terminal."""
    raise _EncryptedKey


def _readable(key: str, path: str, name: str = "amqps") -> None:
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise ConfigError(f"listeners.{name}.{key}: {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"listeners.{name}.{key}: {path} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"listeners.{name}.{key}: {path} is not readable "
                          f"({exc.strerror})") from None


def _has_certificate(key: str, path: str, name: str = "amqps") -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(path)
    except ssl.SSLError as exc:
        why = "" if exc.reason == "NO_CERTIFICATE_OR_CRL_FOUND" else f" ({exc.reason or exc})"
        raise ConfigError(f"listeners.{name}.{key}: {path} holds no PEM certificate{why}") \
            from None


def listen_error(name: str, listener, exc: OSError) -> Exception:
    """A failed bind as the operator needs to read it: ConfigError when the configuration
    must change (an address that does not resolve or is not this machine's, a port that needs
    privileges), StartError when the port is in use."""
    where = f"{listener.host}:{listener.port}"
    if isinstance(exc, socket.gaierror):
        return ConfigError(f"listeners.{name}.host: {listener.host!r} does not resolve "
                           f"({exc.strerror})")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"listeners.{name}.host: {listener.host!r} is not an address of "
                           f"this machine")
    if exc.errno == errno.EACCES:
        return ConfigError(f"listeners.{name}.port: cannot listen on {where}: permission "
                           f"denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)")
    if exc.errno == errno.EADDRINUSE:
        return StartError(f"listeners.{name}: {where} is already in use")
    return ConfigError(f"listeners.{name}: cannot listen on {where}: "
                       f"{exc.strerror or exc}")


def reaches_loopback(listener) -> bool:
    """Whether clients on this machine can connect from a loopback address (127.0.0.1, ::1):
    the listener is on one, or on every address."""
    try:
        infos = socket.getaddrinfo(listener.host or None, listener.port,
                                   type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False
    for _family, _kind, _proto, _name, address in infos:
        ip = ipaddress.ip_address(address[0].split("%")[0])
        if ip.is_loopback or ip.is_unspecified:
            return True
    return False


def check_listener(name: str, listener) -> str | None:
    """What binding at start-up would say, without listening or keeping the port: raises
    ConfigError as ``listen_error``; returns a note when the port is in use (by the running
    broker, most likely)."""
    try:
        infos = socket.getaddrinfo(listener.host or None, listener.port,
                                   type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise listen_error(name, listener, exc) from None
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                error = listen_error(name, listener, exc)
                if isinstance(error, StartError):
                    return f"{error} (by the running broker?): start-up fails while it is"
                raise error from None
    return None
