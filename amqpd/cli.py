"""``amqpd [--config FILE] [--host H] [--port N] [--http-port N] [--prometheus-port N]
[--data-dir DIR] [--log-level LEVEL]`` runs
the broker; ``amqpd --print-default-config`` writes the commented default configuration; ``amqpd [--config FILE] definitions export|import FILE`` moves definitions in and
out of a data directory in RabbitMQ's JSON format; ``amqpd hash-password [PW]`` prints a
password_hash for the configuration (as ``rabbitmqctl hash_password``)."""
import argparse
import logging
import os
import sys

from . import config as config_mod
from .version import __version__


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="amqpd", description="AMQP 0-9-1 message broker",
        epilog="definitions: 'amqpd [-c FILE] definitions export FILE' writes users, vhosts, "
               "permissions and durable exchanges/queues/bindings as RabbitMQ definitions "
               "JSON ('-' for stdout; works while the broker runs); 'amqpd [-c FILE] "
               "definitions import FILE' imports a RabbitMQ definitions file into the data "
               "directory (the broker must be stopped; to import into a running setup, use "
               "load_definitions and restart).")
    p.add_argument("--config", "-c", help="YAML configuration file (default: built-in defaults)")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 5672)")
    p.add_argument("--http-port", type=int,
                   help="management HTTP API port (default 15672; 0 picks a free one)")
    p.add_argument("--data-dir", help="where durable state lives (default "
                                      "~/.local/state/amqpd)")
    p.add_argument("--log-level", help="debug, info, warning or error (default info)")
    p.add_argument("--prometheus-port", type=int, metavar="N",
                   help="serve Prometheus metrics on port N (0: a free port; default: "
                        "listeners.prometheus, 15692)")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration (and TLS files, load_definitions) and exit")
    p.add_argument("--print-default-config", action="store_true",
                   help="write the default configuration (every key, commented) to stdout "
                        "and exit")
    p.add_argument("--version", action="version", version=f"amqpd {__version__}")
    sub = p.add_subparsers(dest="command",
                           metavar="{definitions {export,import} FILE, hash-password [PW]}")
    d = sub.add_parser("definitions", help="export or import RabbitMQ definitions JSON")
    d.add_argument("action", choices=["export", "import"])
    d.add_argument("file", help="the JSON file ('-' is stdout for export)")
    h = sub.add_parser("hash-password", help="print a RabbitMQ-compatible password_hash")
    h.add_argument("password", nargs="?", help="the password (default: read from stdin)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.print_default_config:
        sys.stdout.write(config_mod.default_text())
        return 0
    if args.command == "hash-password":
        from .access.passwords import hash_password
        password = args.password
        if password is None:
            password = sys.stdin.readline().rstrip("\n")
        print(hash_password(password))
        return 0
    try:
        cfg = config_mod.load(args.config)
        cfg = config_mod.override(cfg, args.host, args.port, args.data_dir, args.log_level,
                                  http_port=args.http_port)
        cfg = config_mod.override_prometheus(cfg, args.prometheus_port)
    except config_mod.ConfigError as exc:
        print(f"amqpd: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        return check(cfg)
    from . import logconfig
    try:
        logconfig.configure(cfg, args.log_level)
    except config_mod.ConfigError as exc:
        print(f"amqpd: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "definitions":
        return definitions_command(cfg, args.action, args.file)
    from .edge.listeners import StartError
    from .store.store import StoreError
    try:
        run(cfg)
    except config_mod.ConfigError as exc:      # what --check-config would have refused
        print(f"amqpd: configuration error: {exc}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"amqpd: cannot start: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"amqpd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"amqpd: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def check(cfg) -> int:
    """Everything start-up would refuse, and what would make logins fail, without starting:
    nothing is created, no port is kept, the data dir is not locked (so a running broker's
    configuration can be checked). Every problem is printed; exit 2 if there is one."""
    from . import definitions
    from .edge.listeners import check_listener, tls_context
    errors, notes = [], []

    def attempt(fn, *args):
        try:
            return fn(*args)
        except config_mod.ConfigError as exc:
            errors.append(str(exc))
            return None

    if cfg.listeners.amqps is not None:
        attempt(tls_context, cfg.listeners.amqps)
    if cfg.listeners.http is not None and cfg.listeners.http.certfile:
        attempt(tls_context, cfg.listeners.http, "http")
    for name in ("amqp", "amqps", "http"):
        listener = getattr(cfg.listeners, name)
        if listener is not None:
            notes.append(attempt(check_listener, name, listener))
    if cfg.listeners.prometheus is not None:
        notes.append(attempt(check_listener, "prometheus", cfg.listeners.prometheus))
    if cfg.logging.file:
        attempt(_check_log_file, cfg.logging.file)
    docs = attempt(definitions.load_definitions, cfg)
    if cfg.storage.data_dir is not None:
        attempt(definitions.check_data_dir, cfg.storage.data_dir)
    layer = attempt(definitions.stored_access, cfg)
    if docs is not None and layer is not None:
        for _path, defs in docs:
            layer.merge(defs)
        errors.extend(definitions.access_problems(cfg, layer, docs))
        errors.extend(_loopback_problems(cfg, {u.name for u in cfg.users} | set(layer.users)))
    for note in filter(None, notes):
        print(f"note: {note}")
    if errors:
        for error in errors:
            print(f"amqpd: configuration error: {error}", file=sys.stderr)
        return 2
    print("configuration ok")
    return 0


def _check_log_file(path: str) -> None:
    """logging.file could be opened for appending at start-up (checked without creating it)."""
    where = path if os.path.exists(path) else (os.path.dirname(os.path.abspath(path)))
    why = None
    if not os.path.exists(where):
        why = "No such file or directory"
    elif os.path.isdir(path):
        why = "Is a directory"
    elif not os.access(where, os.W_OK):
        why = "Permission denied"
    if why:
        raise config_mod.ConfigError(f"logging.file: cannot open {path} for writing: {why}")


def _loopback_problems(cfg, users) -> list:
    """loopback_users that exist can log in only from a loopback address: some listener must
    be on one (``--host 192.168.1.10`` alone locks guest out)."""
    from .edge.listeners import reaches_loopback
    listeners = [x for x in (cfg.listeners.amqp, cfg.listeners.amqps) if x is not None]
    if any(reaches_loopback(x) for x in listeners):
        return []
    hosts = ", ".join(x.host for x in listeners)
    return [f"loopback_users: {name!r} may connect only from this machine's loopback address, "
            f"and no listener is on one ({hosts}): {name!r} can never log in (listen on "
            f"127.0.0.1 too, or set loopback_users)"
            for name in cfg.loopback_users if name in users]


def definitions_command(cfg, action: str, path: str) -> int:
    from . import definitions
    from .store.store import StoreError
    try:
        if action == "export":
            definitions.write(definitions.export_data_dir(cfg), path)
            if path != "-":
                print(f"exported definitions to {path}", file=sys.stderr)
            return 0
        from .node import build
        if cfg.storage.data_dir is None:
            print("amqpd: storage.data_dir is null: there is nowhere to import into",
                  file=sys.stderr)
            return 2
        store, _access, _broker = build(cfg, definitions.prepare(cfg, [path]))
        store.close()
        print(f"imported definitions from {path} into {store.data_dir}", file=sys.stderr)
        return 0
    except config_mod.ConfigError as exc:      # the file, or a data dir that cannot be used
        print(f"amqpd: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"amqpd: {exc}; stop it first, or put the file in load_definitions",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"amqpd: {exc}", file=sys.stderr)
        return 1


async def serve(cfg, ready=None) -> None:
    """The standalone broker: a node, stopped by SIGINT or SIGTERM, with the garbage
    collection policy of a long-running server (edge/gc_policy.py). Only here are signal
    handlers installed."""
    import asyncio
    import signal
    from .edge import gc_policy
    from .node import Node
    log = logging.getLogger("amqpd.server")
    data_dir = cfg.storage.data_dir
    log.info("data directory: %s", "none (memory only)" if data_dir is None
             else os.path.abspath(data_dir))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # before the node starts: the AMQP listener serves while the management API is still
    # being set up, and a signal then must stop the broker cleanly too
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    node = await Node(cfg).start()
    gc_policy.install(loop)
    if ready is not None:
        ready(node)
    await stop.wait()
    log.info("shutting down")
    await node.stop()


def run(cfg) -> None:
    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is not None:
        uvloop.run(serve(cfg))
    else:
        import asyncio
        asyncio.run(serve(cfg))


if __name__ == "__main__":
    sys.exit(main())
