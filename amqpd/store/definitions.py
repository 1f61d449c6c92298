"""Durable definitions (exchanges, queues, bindings) as an append-only journal of JSON lines.

A change is appended and fsynced before the client hears declare-ok, so a definition the client
was told about survives a crash. At start-up the journal is replayed and rewritten compacted.
Arguments are stored as base64 of their AMQP field-table encoding (wire/tables.py), so every
value comes back with its wire type: a non-UTF-8 string, a 'short', a float all survive a
restart as they were declared.
"""
import base64
import json
import logging
import os

from ..wire import tables

log = logging.getLogger("amqpd.store")


def encode_args(args: dict | None) -> str:
    """Canonical: keys sorted at every level (as the pamqp encoding of earlier journals was),
    so the same arguments always give the same text (bind/unbind entries match by it)."""
    return base64.b64encode(tables.encode_table(_sorted(args or {}))).decode()


def decode_args(text: str) -> dict:
    if not text:
        return {}
    return tables.decode_field_table(base64.b64decode(text))[0]


def _sorted(value):
    if isinstance(value, dict):
        return {k: _sorted(v) for k, v in sorted(value.items(), key=_key_bytes)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _key_bytes(item) -> bytes:
    key = item[0]
    return key.encode("utf-8", "surrogateescape") if isinstance(key, str) else bytes(key)


class DefinitionsJournal:
    def __init__(self, path: str, fsync: bool = True):
        self.path = path
        self.fsync = fsync
        self.fd = None

    def load(self) -> list[dict]:
        """Replay: the net effect of the journal, as a list of live definitions."""
        exchanges, queues, bindings = {}, {}, {}
        try:
            with open(self.path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            lines = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except ValueError:
                log.warning("%s: line %d is damaged, ignored", self.path, n)
                continue
            op, key = d.get("op"), (d.get("vhost"), d.get("name"))
            if op == "exchange":
                exchanges[key] = d
            elif op == "exchange.delete":
                exchanges.pop(key, None)
                bindings = {k: v for k, v in bindings.items()
                            if not (k[0] == d["vhost"] and (k[1] == d["name"] or
                                    (k[2] == "exchange" and k[3] == d["name"])))}
            elif op == "queue":
                queues[key] = d
            elif op == "queue.delete":
                queues.pop(key, None)
                bindings = {k: v for k, v in bindings.items()
                            if not (k[0] == d["vhost"] and k[2] == "queue" and k[3] == d["name"])}
            elif op in ("bind", "unbind"):
                bkey = (d["vhost"], d["source"], d["dest_kind"], d["dest"], d["key"], d["args"])
                if op == "bind":
                    bindings[bkey] = d
                else:
                    bindings.pop(bkey, None)
        return list(exchanges.values()) + list(queues.values()) + list(bindings.values())

    def rewrite(self, entries: list[dict]) -> None:
        """Replace the journal with exactly these entries (atomic: temp file + rename)."""
        self.close()
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            for d in entries:
                f.write(json.dumps(d, sort_keys=True).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(os.path.dirname(self.path))

    def append(self, entry: dict) -> None:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(self.fd, json.dumps(entry, sort_keys=True).encode() + b"\n")
        if self.fsync:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
