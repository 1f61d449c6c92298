"""Users, virtual-host permissions and limits: the access-control state every connection
consults, and the live connection counts the limits are checked against.

Pure data and rules, no I/O: the node builds it from the configuration, the stored users
(``access.json``, kept by the store) and RabbitMQ definitions files. Changed at run time, it
tells the user's open connections to drop their cached permission decisions.

Permissions work as in RabbitMQ: three regular expressions per user and vhost (configure, write,
read), searched (not anchored) in the resource name; the empty string grants nothing; the
default exchange is checked under the name ``amq.default``.
"""
import ipaddress
import logging
import re

from . import passwords

log = logging.getLogger("amqpd.access")

UNLIMITED = None


class UserRecord:
    __slots__ = ("name", "password", "password_hash", "hashing_algorithm", "tags",
                 "max_connections", "max_channels", "max_publish_rate")

    def __init__(self, name: str, password=None, password_hash=None,
                 hashing_algorithm: str = "rabbit_password_hashing_sha256", tags=(),
                 max_connections=UNLIMITED, max_channels=UNLIMITED, max_publish_rate=0.0):
        self.name = name
        self.password = password                  # plain (from the config file) or None
        self.password_hash = password_hash        # RabbitMQ's base64(salt + digest) or None
        self.hashing_algorithm = hashing_algorithm
        self.tags = tuple(tags)
        self.max_connections = max_connections    # None: no limit (0 forbids, as RabbitMQ)
        self.max_channels = max_channels
        self.max_publish_rate = max_publish_rate  # messages/s over all connections; 0: none

    def check_password(self, password: str) -> bool:
        return passwords.check_password(self, password)

    def exported_hash(self) -> str:
        """The hash to export: plain passwords from the config file are hashed here."""
        if self.password_hash is not None:
            return self.password_hash
        if self.password is not None:
            return passwords.hash_password(self.password)
        return ""

    def limits(self) -> dict:
        out = {}
        if self.max_connections is not None:
            out["max-connections"] = self.max_connections
        if self.max_channels is not None:
            out["max-channels"] = self.max_channels
        return out

    def to_json(self) -> dict:
        d = {"name": self.name, "password_hash": self.exported_hash(),
             "hashing_algorithm": self.hashing_algorithm, "tags": list(self.tags),
             "limits": self.limits()}
        if self.max_publish_rate:
            d["max_publish_rate"] = self.max_publish_rate
        return d


def _compile(pattern: str):
    """RabbitMQ: an empty pattern matches nothing; otherwise re:run, i.e. a search."""
    if pattern == "":
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        log.warning("permission pattern %r is not a valid regular expression (%s): it grants "
                    "nothing", pattern, exc)
        return None


class Grant:
    """One user's permissions in one vhost, with the patterns compiled once."""
    __slots__ = ("user", "vhost", "configure", "write", "read", "patterns")

    def __init__(self, user: str, vhost: str, configure: str, write: str, read: str):
        self.user = user
        self.vhost = vhost
        self.configure = configure
        self.write = write
        self.read = read
        self.patterns = {"configure": _compile(configure), "write": _compile(write),
                         "read": _compile(read)}

    def allows(self, permission: str, name: str) -> bool:
        pattern = self.patterns[permission]
        return pattern is not None and pattern.search(name) is not None

    def allows_everything(self, permission: str) -> bool:
        return getattr(self, permission) in (".*", "^.*$", "^.*", ".*$")

    def to_json(self) -> dict:
        return {"user": self.user, "vhost": self.vhost, "configure": self.configure,
                "write": self.write, "read": self.read}


class VHostRecord:
    __slots__ = ("name", "description", "tags", "max_connections", "max_queues")

    def __init__(self, name: str, description: str = "", tags=(),
                 max_connections=UNLIMITED, max_queues=UNLIMITED):
        self.name = name
        self.description = description
        self.tags = tuple(tags)
        self.max_connections = max_connections    # None: the configured default applies
        self.max_queues = max_queues

    def limits(self) -> dict:
        out = {}
        if self.max_connections is not None:
            out["max-connections"] = self.max_connections
        if self.max_queues is not None:
            out["max-queues"] = self.max_queues
        return out

    def to_json(self) -> dict:
        return {"name": self.name, "limits": [[k, v] for k, v in self.limits().items()],
                "metadata": {"description": self.description, "tags": list(self.tags)}}


class AccessControl:
    """The users, vhosts and grants in force, plus the open connections per vhost and user."""

    def __init__(self, config=None):
        self.users: dict[str, UserRecord] = {}
        self.grants: dict[tuple, Grant] = {}
        self.vhosts: dict[str, VHostRecord] = {}
        self.loopback_users: frozenset = frozenset()
        self.max_connections = 0
        self.max_connections_per_vhost = 0
        # live state
        self.by_vhost: dict[str, set] = {}
        self.by_user: dict[str, set] = {}
        self.running = 0
        if config is not None:
            self.apply_config(config)

    # -- loading ------------------------------------------------------------------------------
    def apply_config(self, config) -> None:
        """The configuration file's users, vhosts and permissions, plus the limits."""
        self.loopback_users = frozenset(config.loopback_users)
        self.max_connections = config.limits.max_connections
        self.max_connections_per_vhost = config.limits.max_connections_per_vhost
        for name in config.vhosts:
            self.vhosts.setdefault(name, VHostRecord(name))
        for u in config.users:
            self.users[u.name] = UserRecord(
                u.name, u.password, u.password_hash, u.hashing_algorithm, u.tags,
                u.max_connections or UNLIMITED, u.max_channels or UNLIMITED, u.max_publish_rate)
        for p in config.permissions:
            self.grants[(p.user, p.vhost)] = Grant(p.user, p.vhost, p.configure, p.write, p.read)

    # -- changes (start-up, and at run time: the open connections are told) -----------------
    def add_user(self, user: UserRecord) -> None:
        """Add or replace a user (a new password applies to the next login)."""
        self.users[user.name] = user
        self._changed(user.name)

    def delete_user(self, name: str) -> None:
        """The user and every grant it had: its open connections are refused from their next
        operation on."""
        self.users.pop(name, None)
        for key in [k for k in self.grants if k[0] == name]:
            del self.grants[key]
        self._changed(name)

    def add_vhost(self, vhost: VHostRecord) -> None:
        self.vhosts[vhost.name] = vhost

    def delete_vhost(self, name: str) -> list:
        """The vhost and every grant in it. Returns its open connections, which the broker
        closes (their users' cached decisions would be stale anyway)."""
        self.vhosts.pop(name, None)
        for key in [k for k in self.grants if k[1] == name]:
            del self.grants[key]
        return list(self.by_vhost.get(name, ()))

    def set_permissions(self, grant: Grant) -> None:
        self.grants[(grant.user, grant.vhost)] = grant
        self._changed(grant.user)

    def clear_permissions(self, user: str, vhost: str) -> None:
        self.grants.pop((user, vhost), None)
        self._changed(user)

    def _changed(self, user: str) -> None:
        """Connections cache their permission decisions: the user's forget them."""
        for conn in list(self.by_user.get(user, ())):
            conn.permissions_changed()

    # -- lookups ------------------------------------------------------------------------------
    def user(self, name: str):
        return self.users.get(name)

    def grant(self, user: str, vhost: str):
        return self.grants.get((user, vhost))

    def vhost_connection_limit(self, vhost: str):
        record = self.vhosts.get(vhost)
        if record is not None and record.max_connections is not None:
            return record.max_connections
        return self.max_connections_per_vhost or None

    def may_log_in_from(self, user: str, peer_ip) -> bool:
        """RabbitMQ's loopback_users: these users may connect only from the local host."""
        if user not in self.loopback_users or peer_ip is None:
            return True
        return is_loopback(peer_ip)

    # -- live connections ---------------------------------------------------------------------
    def check_open(self, user: str, vhost: str, exists: bool):
        """The reason a connection.open must be refused (530 text), or None."""
        if self.max_connections and self.running >= self.max_connections:
            return (f"connection refused: node connection limit ({self.max_connections}) "
                    f"is reached")
        if not exists:
            return f"vhost {vhost} not found"
        limit = self.vhost_connection_limit(vhost)
        if limit is not None and len(self.by_vhost.get(vhost, ())) >= limit:
            return (f"access to vhost '{vhost}' refused for user '{user}': connection limit "
                    f"({limit}) is reached")
        record = self.users.get(user)
        if record is not None and record.max_connections is not None \
                and len(self.by_user.get(user, ())) >= record.max_connections:
            return (f"connection refused for user '{user}': user connection limit "
                    f"({record.max_connections}) is reached")
        if (user, vhost) not in self.grants:
            return f"access to vhost '{vhost}' refused for user '{user}'"
        return None

    def opened(self, conn, user: str, vhost: str) -> None:
        self.by_vhost.setdefault(vhost, set()).add(conn)
        self.by_user.setdefault(user, set()).add(conn)
        self.running += 1

    def closed(self, conn, user: str, vhost: str) -> None:
        for table, key in ((self.by_vhost, vhost), (self.by_user, user)):
            conns = table.get(key)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del table[key]
        self.running -= 1

    def user_channels(self, user: str) -> int:
        return sum(len(c.channels) for c in self.by_user.get(user, ()))

    # -- persistence --------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"users": [u.to_json() for u in self.users.values()],
                "vhosts": [v.to_json() for v in self.vhosts.values()],
                "permissions": [g.to_json() for g in self.grants.values()]}


def is_loopback(peer_ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(peer_ip.split("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback
