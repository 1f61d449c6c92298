"""Run-time changes of users, vhosts and permissions (the management API, definitions POST,
embedding): applied to access control at once — the open connections of a changed user drop
their cached permission decisions (access/control.py) — and stored the way a definitions
import stores them: in the data directory's access layer (access.json), laid over the
configuration file at the next start.

What the configuration file itself lists cannot be removed for good from here: a user or vhost
of the file deleted at run time is back after a restart (change the file for that)."""
import logging
import re

from . import definitions
from .access.control import Grant, UserRecord, VHostRecord
from .access.passwords import hash_password

log = logging.getLogger("amqpd.admin")


class AdminError(ValueError):
    """A change that cannot be made (the text says why; the API answers 400)."""


class Admin:
    def __init__(self, broker, access, store=None):
        self.broker = broker
        self.access = access
        self.store = store
        stored = store.read_access() if store is not None else None
        self.layer = definitions.AccessLayer.from_document(stored)

    # -- users --------------------------------------------------------------------------------
    def put_user(self, name: str, *, password=None, password_hash=None, tags=(),
                 hashing_algorithm: str = "rabbit_password_hashing_sha256",
                 limits=None) -> bool:
        """Create or replace a user; returns True when it was created. ``password`` (plain)
        is hashed here; ``password_hash`` "" means no password (login refused)."""
        if not name:
            raise AdminError("user name must not be empty")
        created = name not in self.access.users
        old = self.access.users.get(name)
        if password is not None:
            password_hash = hash_password(password)
            hashing_algorithm = "rabbit_password_hashing_sha256"
        elif password_hash is None:
            if old is None:
                raise AdminError("password or password_hash needed")
            password_hash = old.exported_hash()       # tags changed only
            hashing_algorithm = old.hashing_algorithm
        limits = dict(limits or (old.limits() if old is not None else {}))
        entry = {"name": name, "password_hash": password_hash,
                 "hashing_algorithm": hashing_algorithm, "tags": list(tags), "limits": limits}
        if old is not None and old.max_publish_rate:
            entry["max_publish_rate"] = old.max_publish_rate
        self.access.add_user(UserRecord(
            name, None, password_hash, hashing_algorithm, tags,
            limits.get("max-connections"), limits.get("max-channels"),
            float(entry.get("max_publish_rate", 0) or 0)))
        self.layer.users[name] = entry
        self._save()
        return created

    def delete_user(self, name: str) -> bool:
        if name not in self.access.users:
            return False
        self.access.delete_user(name)
        self.layer.users.pop(name, None)
        for key in [k for k in self.layer.permissions if k[0] == name]:
            del self.layer.permissions[key]
        self._save()
        return True

    # -- vhosts -------------------------------------------------------------------------------
    def put_vhost(self, name: str, description: str = "", tags=()) -> bool:
        if not name:
            raise AdminError("vhost name must not be empty")
        created = name not in self.broker.vhosts
        self.broker.add_vhost(name)
        record = self.access.vhosts.get(name)
        old_limits = record.limits() if record is not None else {}
        self.access.add_vhost(VHostRecord(name, description, tags,
                                          old_limits.get("max-connections"),
                                          old_limits.get("max-queues")))
        self.layer.vhosts[name] = {"name": name, "limits": old_limits,
                                   "description": description, "tags": list(tags)}
        self._save()
        return created

    def delete_vhost(self, name: str) -> bool:
        if not self.broker.delete_vhost(name):
            return False
        self.layer.vhosts.pop(name, None)
        for key in [k for k in self.layer.permissions if k[1] == name]:
            del self.layer.permissions[key]
        self._save()
        return True

    # -- permissions --------------------------------------------------------------------------
    def set_permissions(self, user: str, vhost: str, configure: str, write: str,
                        read: str) -> bool:
        for what, pattern in (("configure", configure), ("write", write), ("read", read)):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise AdminError(f"invalid {what} regular expression {pattern!r}: {exc}") \
                    from None
        created = (user, vhost) not in self.access.grants
        self.access.set_permissions(Grant(user, vhost, configure, write, read))
        self.layer.permissions[(user, vhost)] = {"user": user, "vhost": vhost,
                                                 "configure": configure, "write": write,
                                                 "read": read}
        self._save()
        return created

    def clear_permissions(self, user: str, vhost: str) -> bool:
        if (user, vhost) not in self.access.grants:
            return False
        self.access.clear_permissions(user, vhost)
        self.layer.permissions.pop((user, vhost), None)
        self._save()
        return True

    # -- definitions --------------------------------------------------------------------------
    def import_definitions(self, doc: dict, vhost: str | None = None) -> dict:
        """A RabbitMQ definitions document, as a file in load_definitions: users, vhosts and
        permissions into access (stored), exchanges, queues and bindings declared. With
        ``vhost``, only that vhost's topology and policies are imported, into it (RabbitMQ's
        POST /api/definitions/{vhost}, the counterpart of its GET)."""
        if vhost is not None:
            doc = {key: [dict(item, vhost=vhost) for item in doc.get(key, ())
                         if isinstance(item, dict)]
                   for key in ("policies", "queues", "exchanges", "bindings")}
            return definitions.apply_topology(self.broker, doc)
        incoming = definitions.AccessLayer()
        incoming.merge(doc)
        for name, v in incoming.vhosts.items():
            self.broker.add_vhost(name)
        incoming.apply(self.access)
        for name in incoming.vhosts:          # the broker's own vhost limits (max-queues)
            record = self.access.vhosts.get(name)
            if name in self.broker.vhosts and record is not None:
                self.broker.vhosts[name].max_queues = record.max_queues
        self.layer.merge(doc)
        self._save()
        return definitions.apply_topology(self.broker, doc)

    def export_definitions(self) -> dict:
        return definitions.export(self.access, self.broker)

    # -- storage ------------------------------------------------------------------------------
    def _save(self) -> None:
        if self.store is not None:
            self.store.save_access(self.layer.to_document())
