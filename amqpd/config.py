"""Configuration: frozen dataclasses loaded from YAML. Unknown keys and wrong types are errors
that name the key's path, so a typo never silently falls back to a default.

Every key, its default and its meaning is listed in ``amqpd/default.yaml`` (shipped in the
package: ``amqpd --print-default-config``; ``conf/amqpd.yaml`` in the repository is a link to
it) and ``docs/configuration.md``; a test keeps the three in step.
"""
import base64
import dataclasses
import os
import re
import typing
from dataclasses import dataclass

import yaml


class ConfigError(ValueError):
    pass


class Size(int):
    """A number of bytes: an integer, or a string with a unit as RabbitMQ writes them
    ("50MB" = 50 * 1000**2, "2GiB" = 2 * 1024**3, "512k" = 512 * 1024)."""


class Watermark(float):
    """The memory high watermark: a fraction of the machine's memory (0..1), or an absolute
    size (an integer above 1, or a string with a unit). See ``parse_watermark``."""


_UNITS = {"": 1, "b": 1,
          "k": 1024, "kib": 1024, "m": 1024 ** 2, "mib": 1024 ** 2, "g": 1024 ** 3,
          "gib": 1024 ** 3, "t": 1024 ** 4, "tib": 1024 ** 4,
          "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(value, path: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a size (bytes, or a string like 50MB), got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{path}: expected a size of 0 or more, got {value}")
        return value
    if isinstance(value, str):
        m = _SIZE.fullmatch(value)
        if m and m.group(2).lower() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ConfigError(f"{path}: expected a size (bytes, or a string like 50MB, 2GiB), "
                      f"got {type(value).__name__} {value!r}")


def parse_watermark(value, path: str):
    """A float in 0..1 is a fraction of total memory; anything else is a size in bytes."""
    if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)
                                    and value in (0, 1)):
        if not 0 <= value <= 1:
            raise ConfigError(f"{path}: expected a fraction between 0 and 1 or a size like "
                              f"200MB, got {value!r}")
        return float(value)
    return parse_size(value, path)


@dataclass(frozen=True)
class Listener:
    host: str = "127.0.0.1"
    port: int = 5672


@dataclass(frozen=True)
class TLSListener:
    host: str = "127.0.0.1"
    port: int = 5671
    certfile: str = ""
    keyfile: typing.Optional[str] = None
    cafile: typing.Optional[str] = None
    verify_peer: bool = False
    fail_if_no_peer_cert: bool = False


@dataclass(frozen=True)
class HTTPListener:
    """The management HTTP API (docs/management.md); TLS when certfile is set (the same keys
    as the AMQPS listener)."""
    host: str = "127.0.0.1"
    port: int = 15672
    certfile: typing.Optional[str] = None
    keyfile: typing.Optional[str] = None
    cafile: typing.Optional[str] = None
    verify_peer: bool = False
    fail_if_no_peer_cert: bool = False


@dataclass(frozen=True)
class PrometheusListener:
    """The Prometheus scrape endpoint (docs/metrics.md): /metrics and /metrics/per-object."""
    host: str = "127.0.0.1"
    port: int = 15692


@dataclass(frozen=True)
class Listeners:
    amqp: typing.Optional[Listener] = Listener()
    amqps: typing.Optional[TLSListener] = None
    http: typing.Optional[HTTPListener] = HTTPListener()
    prometheus: typing.Optional[PrometheusListener] = PrometheusListener()


DEFAULT_DATA_DIR = "~/.local/state/amqpd"


@dataclass(frozen=True)
class QueueWindow:
    # How much of a durable queue's backlog stays in RAM (the head consumers take next); the
    # rest is read back from its log (docs/storage.md, "Memory").
    messages: int = 2048
    bytes: Size = 8 << 20


@dataclass(frozen=True)
class Storage:
    # The XDG state directory: the same place whatever directory amqpd is started from
    # (``~`` expanded when the configuration is loaded). null: memory only.
    data_dir: typing.Optional[str] = DEFAULT_DATA_DIR
    fsync: str = "batch"
    queue_window: QueueWindow = QueueWindow()


HASHING_ALGORITHMS = ("rabbit_password_hashing_sha256", "rabbit_password_hashing_sha512",
                      "rabbit_password_hashing_md5")
DIGEST_SIZES = (32, 64, 16)     # SHA-256, SHA-512, MD5: what a password_hash holds after its salt


def password_hash_problem(value: str):
    """Why no password can ever match this RabbitMQ ``password_hash`` (base64 of a 4-byte salt
    and a digest), or None. The empty string is allowed: a user without a password."""
    if value == "":
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return "not base64"
    if len(raw) - 4 not in DIGEST_SIZES:
        return (f"decodes to {len(raw)} bytes, where a RabbitMQ hash is a 4-byte salt and a "
                f"32-, 64- or 16-byte digest (SHA-256, SHA-512, MD5)")
    return None


@dataclass(frozen=True)
class User:
    name: str
    password: typing.Optional[str] = None
    password_hash: typing.Optional[str] = None
    hashing_algorithm: str = "rabbit_password_hashing_sha256"
    tags: tuple = ()
    max_connections: int = 0        # 0: no limit
    max_channels: int = 0           # 0: no limit (over all of the user's connections)
    max_publish_rate: float = 0     # messages per second over all connections; 0: no limit


@dataclass(frozen=True)
class Permission:
    user: str
    vhost: str = "/"
    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"


@dataclass(frozen=True)
class Limits:
    max_connections: int = 10000
    max_connections_per_vhost: int = 0
    max_queues_per_vhost: int = 0
    channel_max: int = 2047
    frame_max: int = 131072
    heartbeat: int = 60
    max_message_size: int = 134217728
    handshake_timeout: float = 10.0
    # seconds a connection being closed gets to answer close (or hang up) before tune-ok,
    # after a framing error or a refused login, and at shutdown; RabbitMQ's is 3
    close_timeout: float = 3.0


@dataclass(frozen=True)
class Resources:
    memory_high_watermark: Watermark = 0.4
    # Above this fraction of the watermark, transient messages beyond a queue's RAM window go
    # to its scratch log (RabbitMQ's vm_memory_high_watermark_paging_ratio); below, they stay
    # in RAM. 0: always (RAM bounded by the windows).
    memory_high_watermark_paging_ratio: float = 0.5
    disk_free_limit: Size = 50_000_000
    check_interval: float = 0.25


@dataclass(frozen=True)
class StatsD:
    """Push the Prometheus endpoint's counters and gauges to a StatsD (or DogStatsD)
    collector over UDP, fire and forget (docs/metrics.md)."""
    host: str = "127.0.0.1"
    port: int = 8125
    prefix: str = "amqpd"
    interval: float = 10.0
    dogstatsd: bool = False       # tags (#vhost:...) instead of names carrying them


@dataclass(frozen=True)
class Metrics:
    statsd: typing.Optional[StatsD] = None


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class Logging:
    """Applied by the command line only (amqpd/logconfig.py); an embedded broker leaves the
    host's logging alone. ``level`` null: ``log_level`` (the older key) decides."""
    level: typing.Optional[str] = None
    file: typing.Optional[str] = None     # null: standard error
    format: str = "text"                  # text | json (one object per line)


@dataclass(frozen=True)
class ClusterListen:
    """Node-to-node traffic (docs/clustering.md)."""
    host: str = "127.0.0.1"
    port: int = 25672


@dataclass(frozen=True)
class Cluster:
    """Membership of a cluster coordinated by etcd (docs/clustering.md). Absent: a single
    node that needs no etcd."""
    name: str
    node: str
    etcd: tuple = ("http://127.0.0.1:2379",)
    listen: ClusterListen = ClusterListen()
    lease_ttl: int = 3


MECHANISMS = ("AMQPLAIN", "PLAIN", "EXTERNAL")
# guest's entry when the file lists no permissions; compared by identity, so checks that a
# permission names an existing user apply to what the operator wrote, not to this default
DEFAULT_PERMISSIONS = (Permission("guest"),)


@dataclass(frozen=True)
class Config:
    listeners: Listeners = Listeners()
    storage: Storage = Storage()
    vhosts: tuple = ("/",)
    users: tuple = (User("guest", "guest", None, tags=("administrator",)),)
    permissions: tuple = DEFAULT_PERMISSIONS
    loopback_users: tuple = ("guest",)
    auth_mechanisms: tuple = ("PLAIN", "AMQPLAIN")
    limits: Limits = Limits()
    resources: Resources = Resources()
    load_definitions: typing.Optional[str] = None
    log_level: str = "info"
    metrics: Metrics = Metrics()
    logging: Logging = Logging()
    cluster: typing.Optional[Cluster] = None

    def user(self, name: str) -> typing.Optional[User]:
        for u in self.users:
            if u.name == name:
                return u
        return None

    def permission(self, user: str, vhost: str) -> typing.Optional[Permission]:
        for p in self.permissions:
            if p.user == user and p.vhost == vhost:
                return p
        return None


def _build(cls, data, path: str):
    if dataclasses.is_dataclass(cls):
        if not isinstance(data, dict):
            raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(data) - names)
        if unknown:
            raise ConfigError(f"{_join(path, unknown[0])}: unknown key (expected one of "
                              f"{', '.join(sorted(names))})")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                kwargs[f.name] = _build(hints[f.name], data[f.name], _join(path, f.name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{_join(path, f.name)}: required")
        return cls(**kwargs)
    if cls is Size:
        return parse_size(data, path)
    if cls is Watermark:
        return parse_watermark(data, path)
    origin = typing.get_origin(cls)
    if origin is typing.Union:
        if data is None:
            return None
        (inner,) = [a for a in typing.get_args(cls) if a is not type(None)]
        return _build(inner, data, path)
    if cls is tuple:
        if not isinstance(data, list):
            raise ConfigError(f"{path}: expected a list, got {type(data).__name__}")
        item = _ITEMS.get(path.split(".")[-1].split("[")[0], str)
        return tuple(_build(item, v, f"{path}[{i}]") for i, v in enumerate(data))
    if cls is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if not isinstance(data, cls) or (cls is int and isinstance(data, bool)):
        raise ConfigError(f"{path}: expected {_TYPE_NAMES.get(cls, cls.__name__)}, got "
                          f"{type(data).__name__} {data!r}")
    return data


_ITEMS = {"users": User, "permissions": Permission, "vhosts": str, "tags": str,
          "loopback_users": str, "auth_mechanisms": str, "etcd": str}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def _validate(cfg: Config) -> Config:
    data_dir = cfg.storage.data_dir
    if data_dir is not None and data_dir.startswith("~"):
        cfg = dataclasses.replace(cfg, storage=dataclasses.replace(
            cfg.storage, data_dir=os.path.expanduser(data_dir)))
    if cfg.storage.fsync not in ("always", "batch", "never"):
        raise ConfigError(f"storage.fsync: expected always, batch or never, got {cfg.storage.fsync!r}")
    ratio = cfg.resources.memory_high_watermark_paging_ratio
    if not ratio >= 0:
        raise ConfigError("resources.memory_high_watermark_paging_ratio: expected a number "
                          f">= 0, got {ratio!r}")
    window = cfg.storage.queue_window
    if window.messages < 1 or window.bytes < 1:
        raise ConfigError("storage.queue_window: messages and bytes must be at least 1")
    listeners = cfg.listeners
    if listeners.amqp is None and listeners.amqps is None:
        raise ConfigError("listeners: at least one of amqp and amqps is needed")
    for name in ("amqp", "amqps", "http"):
        lst = getattr(listeners, name)
        if lst is not None and not 0 <= lst.port <= 65535:
            raise ConfigError(f"listeners.{name}.port: expected 0..65535, got {lst.port}")
    tls = listeners.amqps
    if tls is not None:
        if not tls.certfile:
            raise ConfigError("listeners.amqps.certfile: required (PEM certificate chain)")
        if (tls.verify_peer or tls.fail_if_no_peer_cert) and not tls.cafile:
            raise ConfigError("listeners.amqps.cafile: required to verify client certificates")
    http = listeners.http
    if http is not None and not http.certfile and (http.keyfile or http.cafile or
                                                   http.verify_peer or http.fail_if_no_peer_cert):
        raise ConfigError("listeners.http.certfile: required for HTTPS (the other TLS keys "
                          "are set)")
    if http is not None and (http.verify_peer or http.fail_if_no_peer_cert) and not http.cafile:
        raise ConfigError("listeners.http.cafile: required to verify client certificates")
    limits = cfg.limits
    for key in ("max_connections", "max_connections_per_vhost", "max_queues_per_vhost",
                "heartbeat", "max_message_size", "handshake_timeout"):
        if getattr(limits, key) < 0:
            raise ConfigError(f"limits.{key}: expected 0 or more, got {getattr(limits, key)}")
    if not 0 <= limits.channel_max <= 65535:
        raise ConfigError("limits.channel_max: expected 0..65535")
    if limits.frame_max and limits.frame_max < 4096:
        raise ConfigError("limits.frame_max: expected 0 or at least 4096")
    if limits.heartbeat > 65535:
        raise ConfigError("limits.heartbeat: expected 0..65535 seconds")
    if cfg.resources.check_interval < 0:
        raise ConfigError("resources.check_interval: expected 0 or more seconds")
    seen = set()
    for i, u in enumerate(cfg.users):
        if u.password is None and u.password_hash is None:
            raise ConfigError(f"users[{i}]: needs password or password_hash")
        if u.name in seen:
            raise ConfigError(f"users[{i}].name: user {u.name!r} is listed twice")
        seen.add(u.name)
        problem = None if u.password_hash is None else password_hash_problem(u.password_hash)
        if problem:
            raise ConfigError(f"users[{i}].password_hash: {problem}")
        if u.hashing_algorithm not in HASHING_ALGORITHMS:
            raise ConfigError(f"users[{i}].hashing_algorithm: expected one of "
                              f"{', '.join(HASHING_ALGORITHMS)}")
        for key in ("max_connections", "max_channels", "max_publish_rate"):
            if getattr(u, key) < 0:
                raise ConfigError(f"users[{i}].{key}: expected 0 (no limit) or more")
    for i, p in enumerate(cfg.permissions):
        for key in ("configure", "write", "read"):
            try:
                re.compile(getattr(p, key))
            except re.error as exc:
                raise ConfigError(f"permissions[{i}].{key}: invalid regular expression: "
                                  f"{exc}") from None
    for i, m in enumerate(cfg.auth_mechanisms):
        if m not in MECHANISMS:
            raise ConfigError(f"auth_mechanisms[{i}]: expected one of {', '.join(MECHANISMS)}, "
                              f"got {m!r}")
    if not cfg.auth_mechanisms:
        raise ConfigError("auth_mechanisms: at least one mechanism is needed")
    if cfg.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level: unknown level {cfg.log_level!r}")
    _validate_observability(cfg)
    _validate_cluster(cfg.cluster)
    return cfg


def _validate_observability(cfg: Config) -> None:
    """listeners.prometheus, metrics.statsd, logging."""
    prom = cfg.listeners.prometheus
    if prom is not None and not 0 <= prom.port <= 65535:
        raise ConfigError(f"listeners.prometheus.port: expected 0..65535, got {prom.port}")
    statsd = cfg.metrics.statsd
    if statsd is not None:
        if not 0 < statsd.port <= 65535:
            raise ConfigError(f"metrics.statsd.port: expected 1..65535, got {statsd.port}")
        if not statsd.host:
            raise ConfigError("metrics.statsd.host: required")
        if statsd.interval <= 0:
            raise ConfigError(f"metrics.statsd.interval: expected seconds above 0, got "
                              f"{statsd.interval}")
    lg = cfg.logging
    if lg.level is not None and lg.level.lower() not in LOG_LEVELS:
        raise ConfigError(f"logging.level: unknown level {lg.level!r} (expected one of "
                          f"{', '.join(LOG_LEVELS)})")
    if lg.format not in ("text", "json"):
        raise ConfigError(f"logging.format: expected text or json, got {lg.format!r}")


# etcd's shortest lease with its default timings (a TTL of 1 is granted as 2)
MIN_LEASE_TTL = 2
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]*")


def _validate_cluster(cluster) -> None:
    """The ``cluster`` section: names usable as etcd key segments, etcd URLs, ports."""
    if cluster is None:
        return
    for key in ("name", "node"):
        value = getattr(cluster, key)
        if not _NAME.fullmatch(value):
            raise ConfigError(f"cluster.{key}: expected letters, digits and _ . @ - (not "
                              f"starting with a symbol), got {value!r}")
    if not cluster.etcd:
        raise ConfigError("cluster.etcd: at least one etcd endpoint is needed")
    for i, url in enumerate(cluster.etcd):
        m = re.fullmatch(r"(https?)://([^/:\s]+|\[[0-9a-fA-F:]+\])(:\d{1,5})?/?", url)
        if not m:
            raise ConfigError(f"cluster.etcd[{i}]: expected a URL like http://127.0.0.1:2379, "
                              f"got {url!r}")
        if m.group(1) == "https":
            raise ConfigError(f"cluster.etcd[{i}]: https endpoints are not supported yet "
                              f"(docs/clustering.md)")
    if not 0 <= cluster.listen.port <= 65535:
        raise ConfigError(f"cluster.listen.port: expected 0..65535, got {cluster.listen.port}")
    if not cluster.listen.host:
        raise ConfigError("cluster.listen.host: required")
    if cluster.lease_ttl < MIN_LEASE_TTL:
        raise ConfigError(f"cluster.lease_ttl: expected at least {MIN_LEASE_TTL} seconds "
                          f"(etcd's shortest lease), got {cluster.lease_ttl}")


def effective_log_level(cfg: Config) -> str:
    """``logging.level`` when set, else ``log_level`` (kept as an alias)."""
    return (cfg.logging.level or cfg.log_level).upper()


def override_prometheus(cfg: Config, port=None) -> Config:
    """``--prometheus-port N``: the Prometheus listener on at port N (0: a free one)."""
    if port is None:
        return cfg
    prom = dataclasses.replace(cfg.listeners.prometheus or PrometheusListener(), port=port)
    return _validate(dataclasses.replace(
        cfg, listeners=dataclasses.replace(cfg.listeners, prometheus=prom)))


def default_text() -> str:
    """The commented default configuration shipped in the package (every key, its default,
    what it means): what ``amqpd --print-default-config`` writes."""
    from importlib import resources
    return resources.files(__package__).joinpath("default.yaml").read_text(encoding="utf-8")


def from_dict(data: dict | None) -> Config:
    return _validate(_build(Config, data or {}, ""))


def load(path: str | None) -> Config:
    if path is None:
        return from_dict({})
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    return from_dict(data)


def override(cfg: Config, host=None, port=None, data_dir=None, log_level=None,
             http_port=None) -> Config:
    """Command-line flags win over the file. ``http_port`` turns the management listener on
    (on its configured host, 127.0.0.1 by default) at that port; 0 picks a free one."""
    if http_port is not None:
        http = dataclasses.replace(cfg.listeners.http or HTTPListener(), port=http_port)
        cfg = dataclasses.replace(cfg, listeners=dataclasses.replace(cfg.listeners, http=http))
    amqp = cfg.listeners.amqp or Listener()
    if host is not None or port is not None:
        amqp = dataclasses.replace(amqp, host=host if host is not None else amqp.host,
                                   port=port if port is not None else amqp.port)
        cfg = dataclasses.replace(cfg, listeners=dataclasses.replace(cfg.listeners, amqp=amqp))
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, data_dir=data_dir))
    if log_level is not None:
        cfg = dataclasses.replace(cfg, log_level=log_level)
    return _validate(cfg)


def keys(cls=Config, prefix: str = "") -> list[str]:
    """Every configuration key path (``limits.frame_max``, ``users[].name``...), for the test
    that keeps the documentation complete."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = _join(prefix, f.name)
        out.append(path)
        t = hints[f.name]
        if typing.get_origin(t) is typing.Union:
            t = [a for a in typing.get_args(t) if a is not type(None)][0]
        if dataclasses.is_dataclass(t):
            out.extend(keys(t, path))
        elif t is tuple and dataclasses.is_dataclass(_ITEMS.get(f.name)):
            out.extend(keys(_ITEMS[f.name], path + "[]"))
    return out
