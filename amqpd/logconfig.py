"""The standalone broker's logging, from the ``logging:`` section of the configuration:
``level`` (``log_level`` is the older name and still works; ``--log-level`` wins over both),
``file`` (null: standard error) and ``format``: ``text`` (one line per record) or ``json``
(one object per line, for log shippers).

Only the command line calls ``configure``: a broker embedded in another program
(``amqpd.serve()``, ``BrokerThread``) never touches the root logger, its records go to the
host's ``logging`` tree under ``amqpd``.
"""
import json
import logging
import sys
import time

from . import config as config_mod

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601 with milliseconds), level, logger,
    message, and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(cfg, level: str | None = None) -> logging.Handler | None:
    """Install one handler on the root logger as the configuration says (``level``: the
    command line's --log-level). Raises ConfigError when the log file cannot be opened.

    Like ``logging.basicConfig``, it leaves a root logger that already has handlers it did
    not install alone (``amqpd.cli.main`` called inside a program or a test run that set up
    its own logging) and returns None then."""
    root = logging.getLogger()
    if any(not getattr(h, "amqpd_handler", False) for h in root.handlers):
        return None
    lg = cfg.logging
    level = (level or config_mod.effective_log_level(cfg)).upper()
    if lg.file:
        try:
            handler: logging.Handler = logging.FileHandler(lg.file, encoding="utf-8")
        except OSError as exc:
            raise config_mod.ConfigError(
                f"logging.file: cannot open {lg.file} for writing: "
                f"{exc.strerror or exc}") from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.amqpd_handler = True
    handler.setFormatter(JSONFormatter() if lg.format == "json"
                         else logging.Formatter(TEXT_FORMAT))
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    return handler
