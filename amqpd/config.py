"""Configuration: frozen dataclasses loaded from YAML. Unknown keys and wrong types are errors
that name the key's path, so a typo never silently falls back to a default."""
import dataclasses
import typing
from dataclasses import dataclass, field

import yaml


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Listener:
    host: str = "127.0.0.1"
    port: int = 5672


@dataclass(frozen=True)
class Listeners:
    amqp: Listener = Listener()


@dataclass(frozen=True)
class Storage:
    data_dir: str = "./data"
    fsync: str = "batch"


@dataclass(frozen=True)
class User:
    name: str
    password: typing.Optional[str] = None
    password_hash: typing.Optional[str] = None
    tags: tuple = ()


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
    channel_max: int = 2047
    frame_max: int = 131072
    heartbeat: int = 60
    max_message_size: int = 134217728
    handshake_timeout: float = 10.0


@dataclass(frozen=True)
class Config:
    listeners: Listeners = Listeners()
    storage: Storage = Storage()
    vhosts: tuple = ("/",)
    users: tuple = (User("guest", "guest", None, ("administrator",)),)
    permissions: tuple = (Permission("guest"),)
    limits: Limits = Limits()
    log_level: str = "info"

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
        unknown = sorted(set(data) - names)
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
        raise ConfigError(f"{path}: expected {cls.__name__}, got {type(data).__name__} {data!r}")
    return data


_ITEMS = {"users": User, "permissions": Permission, "vhosts": str, "tags": str}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def _validate(cfg: Config) -> Config:
    if cfg.storage.fsync not in ("always", "batch", "never"):
        raise ConfigError(f"storage.fsync: expected always, batch or never, got {cfg.storage.fsync!r}")
    if not 0 <= cfg.listeners.amqp.port <= 65535:
        raise ConfigError("listeners.amqp.port: expected 0..65535")
    if not 0 <= cfg.limits.channel_max <= 65535:
        raise ConfigError("limits.channel_max: expected 0..65535")
    if cfg.limits.frame_max and cfg.limits.frame_max < 4096:
        raise ConfigError("limits.frame_max: expected 0 or at least 4096")
    for i, u in enumerate(cfg.users):
        if u.password is None and u.password_hash is None:
            raise ConfigError(f"users[{i}]: needs password or password_hash")
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
        raise ConfigError(f"log_level: unknown level {cfg.log_level!r}")
    return cfg


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


def override(cfg: Config, host=None, port=None, data_dir=None, log_level=None) -> Config:
    """Command-line flags win over the file."""
    amqp = cfg.listeners.amqp
    if host is not None or port is not None:
        amqp = dataclasses.replace(amqp, host=host if host is not None else amqp.host,
                                   port=port if port is not None else amqp.port)
    cfg = dataclasses.replace(cfg, listeners=dataclasses.replace(cfg.listeners, amqp=amqp))
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, data_dir=data_dir))
    if log_level is not None:
        cfg = dataclasses.replace(cfg, log_level=log_level)
    return _validate(cfg)
