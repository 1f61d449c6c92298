"""SASL PLAIN / AMQPLAIN / EXTERNAL and RabbitMQ-compatible password hashes."""
import base64
import hashlib
import hmac
import os
import struct

from ..wire import tables


def hash_password(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def check_password(user, password: str) -> bool:
    if user.password_hash:
        try:
            raw = base64.b64decode(user.password_hash)
        except ValueError:
            return False
        salt, digest = raw[:4], raw[4:]
        algo = hashlib.sha512 if len(digest) == 64 else hashlib.md5 if len(digest) == 16 \
            else hashlib.sha256
        return hmac.compare_digest(algo(salt + password.encode()).digest(), digest)
    return user.password is not None and hmac.compare_digest(user.password.encode(),
                                                             password.encode())


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
