"""``amqpd [--config FILE] [--host H] [--port N] [--data-dir DIR] [--log-level LEVEL]``."""
import argparse
import logging
import sys

from . import __version__, config as config_mod


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="amqpd", description="AMQP 0-9-1 message broker")
    p.add_argument("--config", "-c", help="YAML configuration file (default: built-in defaults)")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 5672)")
    p.add_argument("--data-dir", help="where durable state lives (default ./data)")
    p.add_argument("--log-level", help="debug, info, warning or error (default info)")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration and exit")
    p.add_argument("--version", action="version", version=f"amqpd {__version__}")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
        cfg = config_mod.override(cfg, args.host, args.port, args.data_dir, args.log_level)
    except config_mod.ConfigError as exc:
        print(f"amqpd: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print("configuration ok")
        return 0
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .server import run
    from .store.store import StoreError
    try:
        run(cfg)
    except StoreError as exc:
        print(f"amqpd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"amqpd: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
