"""Definitions: users, vhosts, permissions, exchanges, queues and bindings in RabbitMQ's
definitions JSON format (``rabbitmqctl export_definitions``), imported at start-up
(``load_definitions``) or from the command line, and exported.

Where things live:

- exchanges, queues and bindings are declared through the vhost API, so the durable ones are
  journaled by the store like any client's declarations;
- users, vhosts and permissions that came from definitions are kept by the store in
  ``DATA_DIR/access.json`` (same JSON shape, written atomically), so they survive a restart. At start-up the broker's
  access control is the configuration file's users/vhosts/permissions with the stored ones
  laid over them (an imported entry wins over a configured one of the same name).

Policies (and operator policies) are set through ``broker.policies`` (journaled by the
store), before the queues and exchanges they may match.

Importing is additive, as in RabbitMQ: nothing is deleted. A definitions file exported from
RabbitMQ 3.10 imports unchanged; the parts amqpd has no use for (runtime parameters other than
vhost limits, topic permissions, policy keys amqpd does not know such as ha-mode) are reported
and skipped.
"""
import base64
import dataclasses
import datetime
import decimal
import json
import logging
import os

from . import errors
from .access.control import AccessControl, Grant, UserRecord, VHostRecord
from .version import __version__
from . import config as config_mod
from .config import ConfigError

log = logging.getLogger("amqpd.definitions")

IGNORED = ("topic_permissions", "global_parameters")
OPERATOR_POLICY = "operator_policy"    # RabbitMQ exports operator policies as parameters


class DefinitionsError(ConfigError):
    """A definitions file that cannot be read at all (not JSON, wrong shape)."""


# -- reading ------------------------------------------------------------------------------------
def read(path: str) -> dict:
    """One definitions file, or every ``*.json`` of a directory merged (as RabbitMQ's
    ``load_definitions`` accepts both)."""
    if os.path.isdir(path):
        merged: dict = {}
        for name in sorted(os.listdir(path)):
            if name.endswith(".json"):
                for key, value in read(os.path.join(path, name)).items():
                    if isinstance(value, list):
                        merged.setdefault(key, []).extend(value)
                    else:
                        merged[key] = value
        return merged
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except OSError as exc:
        raise DefinitionsError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise DefinitionsError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DefinitionsError(f"{path}: expected a JSON object at the top level")
    for key, value in data.items():
        if key in ("users", "vhosts", "permissions", "exchanges", "queues", "bindings",
                   "parameters", "policies") + IGNORED and not isinstance(value, list):
            raise DefinitionsError(f"{path}: {key}: expected a list")
    return data


def _items(defs: dict, key: str):
    for i, item in enumerate(defs.get(key) or ()):
        if not isinstance(item, dict):
            log.warning("definitions: %s[%d] is not an object, skipped", key, i)
            continue
        yield i, item


def _limit(value):
    """RabbitMQ limit values: a negative number means no limit."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if value < 0 else int(value)


def _tags(value) -> tuple:
    if isinstance(value, str):       # RabbitMQ before 3.9 exported "administrator,management"
        return tuple(t.strip() for t in value.split(",") if t.strip())
    if isinstance(value, list):
        return tuple(str(t) for t in value)
    return ()


# -- the access layer (users, vhosts, permissions) ---------------------------------------------
class AccessLayer:
    """Users, vhosts and permissions that came from definitions; the store keeps them
    (access.json) as this document."""

    def __init__(self):
        self.users: dict = {}
        self.vhosts: dict = {}
        self.permissions: dict = {}

    @classmethod
    def from_document(cls, doc: dict | None) -> "AccessLayer":
        layer = cls()
        if doc is not None:
            layer.merge(doc)
        return layer

    @classmethod
    def load(cls, data_dir: str) -> "AccessLayer":
        """From a data directory, read only (export, --check-config)."""
        from .store.store import StoreError, read_access_file
        try:
            return cls.from_document(read_access_file(data_dir))
        except StoreError as exc:
            raise DefinitionsError(str(exc)) from None

    def merge(self, defs: dict) -> dict:
        """Take the users, vhosts (with their limits) and permissions of a definitions
        document; returns counts."""
        counts = {"users": 0, "vhosts": 0, "permissions": 0}
        for i, u in _items(defs, "users"):
            if not isinstance(u.get("name"), str):
                log.warning("definitions: users[%d] has no name, skipped", i)
                continue
            entry = {"name": u["name"], "tags": list(_tags(u.get("tags"))),
                     "hashing_algorithm": u.get("hashing_algorithm",
                                                "rabbit_password_hashing_sha256"),
                     "limits": u.get("limits") if isinstance(u.get("limits"), dict) else {}}
            if isinstance(u.get("password_hash"), str):
                entry["password_hash"] = u["password_hash"]
            elif isinstance(u.get("password"), str):
                from .access.passwords import hash_password
                entry["password_hash"] = hash_password(u["password"])
            else:
                entry["password_hash"] = ""
            if isinstance(u.get("max_publish_rate"), (int, float)):
                entry["max_publish_rate"] = u["max_publish_rate"]
            self.users[u["name"]] = entry
            counts["users"] += 1
        for i, v in _items(defs, "vhosts"):
            if not isinstance(v.get("name"), str):
                log.warning("definitions: vhosts[%d] has no name, skipped", i)
                continue
            old = self.vhosts.get(v["name"], {})
            limits = dict(old.get("limits", {}))
            raw = v.get("limits")
            if isinstance(raw, list):       # 3.10: [["max-connections", 20], ...]
                limits.update({k: val for k, val in (p for p in raw if isinstance(p, list)
                                                     and len(p) == 2)})
            elif isinstance(raw, dict):
                limits.update(raw)
            meta = v.get("metadata") if isinstance(v.get("metadata"), dict) else {}
            self.vhosts[v["name"]] = {
                "name": v["name"], "limits": limits,
                "description": meta.get("description", v.get("description", "")) or "",
                "tags": list(_tags(meta.get("tags", v.get("tags"))))}
            counts["vhosts"] += 1
        for i, p in _items(defs, "parameters"):
            if p.get("component") == "vhost-limits" and isinstance(p.get("value"), dict):
                name = p.get("vhost")
                entry = self.vhosts.setdefault(name, {"name": name, "limits": {},
                                                      "description": "", "tags": []})
                entry.setdefault("limits", {}).update(p["value"])
        for i, p in _items(defs, "permissions"):
            if not isinstance(p.get("user"), str) or not isinstance(p.get("vhost"), str):
                log.warning("definitions: permissions[%d] needs user and vhost, skipped", i)
                continue
            self.permissions[(p["user"], p["vhost"])] = {
                "user": p["user"], "vhost": p["vhost"],
                **{k: str(p.get(k, "")) for k in ("configure", "write", "read")}}
            counts["permissions"] += 1
        return counts

    def apply(self, access: AccessControl) -> None:
        for u in self.users.values():
            limits = u.get("limits", {})
            access.add_user(UserRecord(
                u["name"], None, u.get("password_hash", ""), u.get("hashing_algorithm"),
                u.get("tags", ()), _limit(limits.get("max-connections")),
                _limit(limits.get("max-channels")), float(u.get("max_publish_rate", 0) or 0)))
        for v in self.vhosts.values():
            limits = v.get("limits", {})
            access.add_vhost(VHostRecord(v["name"], v.get("description", ""), v.get("tags", ()),
                                         _limit(limits.get("max-connections")),
                                         _limit(limits.get("max-queues"))))
        for p in self.permissions.values():
            access.set_permissions(Grant(p["user"], p["vhost"], p["configure"], p["write"],
                                         p["read"]))

    def to_document(self) -> dict:
        return {"users": list(self.users.values()), "vhosts": list(self.vhosts.values()),
                "permissions": list(self.permissions.values())}


# -- exchanges, queues, bindings ----------------------------------------------------------------
def apply_topology(broker, defs: dict) -> dict:
    """Declare the exchanges, queues and bindings of a definitions document through the vhost
    API (durable ones are journaled by the store). Entries that cannot be declared are logged
    and skipped; returns counts of what was declared."""
    counts = {"exchanges": 0, "queues": 0, "bindings": 0, "policies": 0, "skipped": 0}

    def skip(what: str, why: str) -> None:
        counts["skipped"] += 1
        log.warning("definitions: %s skipped: %s", what, why)

    # policies: {"vhost", "name", "pattern", ...}; operator policies: parameters of component
    # "operator_policy" whose value holds the pattern, definition, priority and apply-to
    found = [(p, False) for _, p in _items(defs, "policies")]
    found += [({**p["value"], "vhost": p.get("vhost"), "name": p.get("name")}, True)
              for _, p in _items(defs, "parameters")
              if p.get("component") == OPERATOR_POLICY and isinstance(p.get("value"), dict)]
    for p, operator in found:
        what = (f"{'operator policy' if operator else 'policy'} {p.get('name')!r} in vhost "
                f"{p.get('vhost')!r}")
        problem = _import_policy(broker, p, operator)
        if problem:
            skip(what, problem)
        else:
            counts["policies"] += 1

    for i, x in _items(defs, "exchanges"):
        what = f"exchange {x.get('name')!r} in vhost {x.get('vhost')!r}"
        vhost = broker.vhosts.get(x.get("vhost"))
        if vhost is None or not isinstance(x.get("name"), str):
            skip(what, "no such vhost" if vhost is None else "no name")
            continue
        if x["name"] == "" or x["name"].startswith("amq."):
            continue                      # the standard exchanges exist everywhere
        try:
            vhost.declare_exchange(x["name"], str(x.get("type", "direct")), False,
                                   bool(x.get("durable", True)), bool(x.get("auto_delete")),
                                   bool(x.get("internal")), _args_in(x.get("arguments")))
            counts["exchanges"] += 1
        except errors.AMQPError as exc:
            skip(what, exc.reply_text)
    for i, q in _items(defs, "queues"):
        what = f"queue {q.get('name')!r} in vhost {q.get('vhost')!r}"
        vhost = broker.vhosts.get(q.get("vhost"))
        if vhost is None or not isinstance(q.get("name"), str) or not q["name"]:
            skip(what, "no such vhost" if vhost is None else "no name")
            continue
        try:
            vhost.declare_queue(q["name"], None, False, bool(q.get("durable", True)), False,
                                bool(q.get("auto_delete")), _args_in(q.get("arguments")))
            counts["queues"] += 1
        except errors.AMQPError as exc:
            skip(what, exc.reply_text)
    for i, b in _items(defs, "bindings"):
        what = (f"binding {b.get('source')!r} -> {b.get('destination_type')} "
                f"{b.get('destination')!r} ({b.get('routing_key')!r}) in vhost "
                f"{b.get('vhost')!r}")
        vhost = broker.vhosts.get(b.get("vhost"))
        if vhost is None:
            skip(what, "no such vhost")
            continue
        kind = b.get("destination_type", "queue")
        table = vhost.exchanges if kind == "exchange" else vhost.queues
        source = vhost.exchanges.get(b.get("source"))
        dest = table.get(b.get("destination"))
        if source is None or dest is None:
            skip(what, f"no {'source exchange' if source is None else 'destination ' + kind}")
            continue
        try:
            vhost.bind(source, dest, str(b.get("routing_key", "")), _args_in(b.get("arguments")))
            counts["bindings"] += 1
        except errors.AMQPError as exc:
            skip(what, exc.reply_text)
    return counts


def _import_policy(broker, p: dict, operator: bool):
    """Set one policy of a definitions file; the reason when it cannot be. Keys amqpd does
    not know (ha-mode, federation-upstream, ...) are dropped with a warning, so the rest of
    a RabbitMQ policy still applies."""
    from .broker.policy import KEYS, OPERATOR_KEYS, PolicyError
    if not isinstance(p.get("vhost"), str) or not isinstance(p.get("name"), str):
        return "needs vhost and name"
    if p["vhost"] not in broker.vhosts:
        return "no such vhost"
    body = dict(p)
    definition = body.get("definition")
    if isinstance(definition, dict):
        known = OPERATOR_KEYS if operator else KEYS
        dropped = sorted(k for k in definition if k not in known)
        if dropped:
            log.warning("definitions: policy %r in vhost %r: %s not supported by amqpd, "
                        "ignored", p["name"], p["vhost"], ", ".join(dropped))
            body["definition"] = {k: v for k, v in definition.items() if k in known}
            if not body["definition"]:
                return "no setting amqpd supports"
    try:
        broker.policies.set(p["vhost"], p["name"], body, operator)
    except PolicyError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot write to the data directory: {exc.strerror or exc}"
    return None


def _args_in(value) -> dict:
    """JSON arguments -> field-table values (JSON has no bytes, so strings stay strings)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): _value_in(v) for k, v in value.items()}


def _value_in(v):
    if isinstance(v, dict):
        return {str(k): _value_in(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_value_in(x) for x in v]
    return v


def value_out(v):
    """Field-table values -> JSON (bytes as text, decimals and timestamps as numbers)."""
    if isinstance(v, dict):
        return {str(k): value_out(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [value_out(x) for x in v]
    if isinstance(v, (bytes, bytearray, memoryview)):
        raw = bytes(v)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, datetime.datetime):
        return int(v.timestamp())
    return v


# -- export -------------------------------------------------------------------------------------
def export(access: AccessControl, broker) -> dict:
    """Everything in RabbitMQ's definitions format. Exchanges and queues are those of the
    broker object given: all non-exclusive ones for a running broker, the durable ones when it
    was rebuilt from the data directory (``export_data_dir``)."""
    from .broker.queue import Queue
    exchanges, queues, bindings = [], [], []
    for vname, vhost in broker.vhosts.items():
        for ex in vhost.exchanges.values():
            if ex.name == "" or ex.name.startswith("amq."):
                continue
            exchanges.append({"name": ex.name, "vhost": vname, "type": ex.kind,
                              "durable": ex.durable, "auto_delete": ex.auto_delete,
                              "internal": ex.internal, "arguments": value_out(ex.arguments)})
        for q in vhost.queues.values():
            if q.exclusive_owner is not None:
                continue
            queues.append({"name": q.name, "vhost": vname, "durable": q.durable,
                           "auto_delete": q.auto_delete, "arguments": value_out(q.arguments)})
        for ex in vhost.exchanges.values():
            if ex.name == "":
                continue
            for (dest, key, _frozen), args in ex.bindings.items():
                if getattr(dest, "exclusive_owner", None) is not None:
                    continue
                bindings.append({"source": ex.name, "vhost": vname, "destination": dest.name,
                                 "destination_type": "queue" if isinstance(dest, Queue)
                                 else "exchange",
                                 "routing_key": key, "arguments": value_out(args)})
    parameters = [{"component": "vhost-limits", "name": "limits", "vhost": v.name,
                   "value": v.limits()} for v in access.vhosts.values() if v.limits()]
    policies = [p.to_json() for p in broker.policies.list()]
    parameters += [{"component": OPERATOR_POLICY, "name": p.name, "vhost": p.vhost,
                    "value": {"pattern": p.pattern, "definition": dict(p.definition),
                              "priority": p.priority, "apply-to": p.apply_to}}
                   for p in broker.policies.list(operator=True)]
    return {"product_name": "amqpd", "product_version": __version__,
            "users": [u.to_json() for u in access.users.values()],
            "vhosts": [v.to_json() for v in access.vhosts.values()],
            "permissions": [g.to_json() for g in access.grants.values()],
            "topic_permissions": [], "parameters": parameters, "global_parameters": [],
            "policies": policies, "queues": queues, "exchanges": exchanges, "bindings": bindings}


def write(doc: dict, path: str) -> None:
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if path == "-":
        import sys
        sys.stdout.write(text)
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# -- start-up ---------------------------------------------------------------------------------
def _report_ignored(defs: dict, source: str) -> None:
    for key in IGNORED:
        if defs.get(key):
            log.warning("%s: %d %s ignored (not supported by amqpd)", source, len(defs[key]),
                        key)
    others = [p for p in defs.get("parameters") or () if isinstance(p, dict)
              and p.get("component") not in ("vhost-limits", OPERATOR_POLICY)]
    if others:
        log.warning("%s: %d runtime parameter(s) ignored (only vhost-limits and operator "
                    "policies are supported)",
                    source, len(others))


def prepare(config, import_files=()) -> list:
    """What start-up checks before it binds a port or creates a file: the definitions files
    (``import_files``, default ``config.load_definitions``) read, and the data directory
    usable. Returns [(path, definitions)]; raises ConfigError."""
    docs = [(path, read(path)) for path in import_files] or load_definitions(config)
    if config.storage.data_dir is not None:
        check_data_dir(config.storage.data_dir)
    return docs


def load_definitions(config) -> list:
    """[(path, definitions)] of ``config.load_definitions`` (empty when unset)."""
    if not config.load_definitions:
        return []
    try:
        return [(config.load_definitions, read(config.load_definitions))]
    except DefinitionsError as exc:
        raise DefinitionsError(f"load_definitions: {exc}") from None


def build_access(config, stored: dict | None, docs) -> tuple[AccessControl, AccessLayer]:
    """Access control as start-up builds it: the configuration's users, vhosts and
    permissions with the stored ones (``stored``: the access.json document) and those of the
    definitions files laid over them. Returns it and the merged layer (to store when
    ``docs`` added to it)."""
    layer = AccessLayer.from_document(stored)
    for path, defs in docs:
        counts = layer.merge(defs)
        log.info("definitions %s: %d user(s), %d vhost(s), %d permission(s)", path,
                 counts["users"], counts["vhosts"], counts["permissions"])
        _report_ignored(defs, path)
    for problem in access_problems(config, layer, docs):
        log.warning("%s (amqpd --check-config refuses this)", problem)
    access = AccessControl(config)
    layer.apply(access)
    return access, layer


def declare_topology(broker, docs) -> None:
    for path, defs in docs:
        counts = apply_topology(broker, defs)
        log.info("definitions %s: %d exchange(s), %d queue(s), %d binding(s), %d "
                 "policy(ies) declared, %d skipped", path, counts["exchanges"],
                 counts["queues"], counts["bindings"], counts["policies"], counts["skipped"])


# -- checks (start-up and --check-config) ----------------------------------------------------
def check_data_dir(data_dir: str) -> None:
    """The data directory is one the store can take: an existing writable directory holding
    this amqpd's format, or a path that can be created. Read-only: creates nothing, and takes
    no lock (a running broker's directory passes). Raises ConfigError."""
    from .store.store import FORMAT
    path = os.path.abspath(data_dir)
    key = "storage.data_dir"
    if not os.path.exists(path):
        if os.path.lexists(path):
            raise ConfigError(f"{key}: {path} is a broken symbolic link")
        parent = os.path.dirname(path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise ConfigError(f"{key}: cannot create {path}: {parent} is not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{key}: cannot create {path}: {parent} is not writable")
        return
    if not os.path.isdir(path):
        raise ConfigError(f"{key}: {path} is not a directory")
    _writable(key, path)
    for name in ("LOCK", "definitions.jsonl", "access.json"):
        entry = os.path.join(path, name)
        if os.path.exists(entry):
            if not os.path.isfile(entry):
                raise ConfigError(f"{key}: {entry} is not a regular file")
            if not os.access(entry, os.R_OK | os.W_OK):
                raise ConfigError(f"{key}: {entry} is not readable and writable")
    fmt = os.path.join(path, "FORMAT")
    if os.path.exists(fmt):
        try:
            with open(fmt) as f:
                found = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{key}: {fmt}: cannot read it ({exc})") from None
        if found != FORMAT:
            raise ConfigError(f"{key}: {path} has format {found!r}; this amqpd reads "
                              f"{FORMAT!r}")
    queues = os.path.join(path, "queues")
    if os.path.exists(queues):
        if not os.path.isdir(queues):
            raise ConfigError(f"{key}: {queues} is not a directory")
        _writable(key, queues)
        with os.scandir(queues) as entries:
            for entry in entries:
                if entry.is_dir():
                    _writable(key, entry.path)


def _writable(key: str, directory: str) -> None:
    if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {directory} is not writable")


def stored_access(config) -> AccessLayer:
    """The users, vhosts and permissions earlier imports left in the data directory (read
    only; nothing when the directory does not exist yet)."""
    if config.storage.data_dir is None:
        return AccessLayer()
    data_dir = os.path.abspath(config.storage.data_dir)
    if not os.path.isdir(data_dir):
        return AccessLayer()
    return AccessLayer.load(data_dir)


def access_problems(config, layer: AccessLayer, docs) -> list:
    """What would make logins or connection.open fail for everyone it concerns, although
    start-up accepts it: permissions naming a user or vhost that exists nowhere (configuration,
    access.json, definitions), password hashes no password can match, no user at all, SASL
    mechanisms no listener can use. ``layer`` has ``docs`` merged. Start-up logs these;
    ``--check-config`` refuses them."""
    users = {u.name for u in config.users} | set(layer.users)
    vhosts = set(config.vhosts) | set(layer.vhosts)
    problems = []

    def dangling(where: str, user, vhost) -> None:
        if user not in users:
            problems.append(f"{where}: user {user!r} does not exist "
                            f"(users: {', '.join(sorted(users)) or 'none'})")
        if vhost not in vhosts:
            problems.append(f"{where}: vhost {vhost!r} does not exist "
                            f"(vhosts: {', '.join(sorted(vhosts)) or 'none'})")

    if config.permissions is not config_mod.DEFAULT_PERMISSIONS:
        for i, p in enumerate(config.permissions):
            dangling(f"permissions[{i}]", p.user, p.vhost)
    for path, defs in docs:
        for i, p in _items(defs, "permissions"):
            if isinstance(p.get("user"), str) and isinstance(p.get("vhost"), str):
                dangling(f"{path}: permissions[{i}]", p["user"], p["vhost"])
        for i, u in _items(defs, "users"):
            h = u.get("password_hash")
            problem = config_mod.password_hash_problem(h) if isinstance(h, str) else None
            if problem:
                problems.append(f"{path}: users[{i}] {u.get('name')!r}: password_hash: "
                                f"{problem}")
    if "EXTERNAL" not in config.auth_mechanisms:
        for i, u in enumerate(config.users):
            if u.password is None and u.password_hash == "":
                problems.append(f"users[{i}] {u.name!r}: no password (password_hash \"\") "
                                f"and EXTERNAL is not in auth_mechanisms: this user can "
                                f"never log in")
    if not users:
        problems.append("users: there are none (configured or imported): nobody can log in")
    problems.extend(_mechanism_problems(config))
    return problems


def _mechanism_problems(config) -> list:
    mechanisms = set(config.auth_mechanisms)
    tls = config.listeners.amqps
    if "EXTERNAL" not in mechanisms:
        return []
    if tls is None:
        if mechanisms == {"EXTERNAL"}:
            return ["auth_mechanisms: only EXTERNAL, which is offered on amqps only, and "
                    "listeners.amqps is off: nobody can log in"]
        return ["auth_mechanisms: EXTERNAL is offered on amqps only, and listeners.amqps is "
                "off"]
    if not (tls.verify_peer or tls.fail_if_no_peer_cert):
        return ["auth_mechanisms: EXTERNAL refuses every login unless "
                "listeners.amqps.verify_peer is on (an unverified certificate proves nothing)"]
    return []


def export_data_dir(config) -> dict:
    """Export from the data directory without taking it over, so it also works while the
    broker runs: users/vhosts/permissions from the configuration and access.json, durable
    exchanges/queues/bindings from the definitions journal."""
    from .broker.broker import Broker
    from .store.definitions import DefinitionsJournal

    data_dir = os.path.abspath(config.storage.data_dir)
    if not os.path.isdir(data_dir):
        raise DefinitionsError(f"{data_dir}: no such data directory")
    access = AccessControl(config)
    AccessLayer.load(data_dir).apply(access)
    broker = Broker(dataclasses.replace(config, vhosts=tuple(access.vhosts)), None, access)
    for d in DefinitionsJournal(os.path.join(data_dir, "definitions.jsonl")).load():
        vhost = broker.vhosts.get(d.get("vhost"))
        if vhost is not None:
            broker._restore_definition(vhost, d)
    return export(access, broker)
