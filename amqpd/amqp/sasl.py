"""SASL PLAIN / AMQPLAIN / EXTERNAL: the user name and password (or certificate name) a
client's start-ok response carries. Checking them is access control's business."""
import struct

from ..wire import tables


def parse_response(mechanism: str, response) -> tuple[str, str] | None:
    """Return (username, password) from a SASL response, or None when it is malformed."""
    if isinstance(response, str):
        response = response.encode("latin-1", "replace")
    try:
        if mechanism == "PLAIN":
            parts = response.split(b"\x00")
            if len(parts) != 3:
                return None
            return parts[1].decode(), parts[2].decode()
        if mechanism == "AMQPLAIN":
            # A field table without its length prefix (depth-limited: no recursion blow-up).
            table = tables.decode_table(response)
            login, password = table.get("LOGIN"), table.get("PASSWORD")
            if login is None or password is None:
                return None
            if isinstance(login, bytes):
                login = login.decode()
            if isinstance(password, bytes):
                password = password.decode()
            return str(login), str(password)
    except (ValueError, UnicodeDecodeError, struct.error, IndexError):
        return None
    return None


def peer_cert_name(peercert: dict | None) -> str | None:
    """The user name SASL EXTERNAL takes from a verified client certificate: the subject's
    common name (RabbitMQ's ``ssl_cert_login_from = common_name``)."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None
