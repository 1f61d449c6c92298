"""RabbitMQ-compatible password hashes: base64(salt + digest), SHA-256 by default; SHA-512 and
MD5 hashes imported from RabbitMQ definitions are checked too."""
import base64
import hashlib
import hmac
import os


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
