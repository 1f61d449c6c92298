"""Durable definitions (exchanges, queues, bindings, policies) as an append-only journal of JSON lines.

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

from .fileio import REAL

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
    """Appends go to an existing, durable file (``rewrite`` at start-up creates it: temp file,
    fsync, rename, fsync of the directory), so an fsynced line is a durable line. A failed
    append (a full disk, an I/O error) is cut back out of the file and raised: the change is
    refused rather than half-kept. After a failed fsync the file's unsynced pages may be lost
    whatever a retry says, so the next append first rewrites the journal from scratch.

    With ``fsync`` on (every mode but ``never``), an append is fsynced before it returns, on
    the loop thread: definition changes are rare, and a deferred fsync of this file lost
    confirmed messages in the power-loss harness (see docs/storage.md)."""

    def __init__(self, path: str, fsync: bool = True, io=REAL):
        self.path = path
        self.fsync = fsync
        self.io = io
        self.fd = None
        self.size = 0              # bytes of complete lines in the file
        self.suspect = False       # an fsync failed: rewrite before appending again
        self.unsynced = False      # lines written since the last fsync

    def load(self) -> list[dict]:
        """Replay: the net effect of the journal, as a list of live definitions."""
        exchanges, queues, bindings, policies = {}, {}, {}, {}
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
            elif op == "policy":
                policies[key + (bool(d.get("operator")),)] = d
            elif op == "policy.delete":
                policies.pop(key + (bool(d.get("operator")),), None)
            elif op in ("bind", "unbind"):
                bkey = (d["vhost"], d["source"], d["dest_kind"], d["dest"], d["key"], d["args"])
                if op == "bind":
                    bindings[bkey] = d
                else:
                    bindings.pop(bkey, None)
        # policies first: a recovered queue or exchange gets its policy as it is restored
        return (list(policies.values()) + list(exchanges.values()) + list(queues.values())
                + list(bindings.values()))

    def rewrite(self, entries: list[dict]) -> None:
        """Replace the journal with exactly these entries (atomic: temp file + rename)."""
        self.close()
        data = b"".join(json.dumps(d, sort_keys=True).encode() + b"\n" for d in entries)
        self.io.write_file(self.path, data)
        self.suspect = False

    def append(self, entry: dict) -> None:
        if self.suspect:
            self.rewrite(self.load())
        io = self.io
        if self.fd is None:
            self.fd = io.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self.size = os.fstat(self.fd).st_size
        line = json.dumps(entry, sort_keys=True).encode() + b"\n"
        try:
            io.write_all(self.fd, line)
        except OSError:
            self._cut_back()
            raise
        if self.fsync:
            try:
                io.fsync(self.fd)
            except OSError:
                self._cut_back()
                self.suspect = True
                raise
        self.size += len(line)

    def sync_target(self):
        """A descriptor of the journal for the next fsync (the caller closes it), or None."""
        if not self.unsynced or self.fd is None:
            return None
        self.unsynced = False
        return self.io.dup(self.fd)

    def _cut_back(self) -> None:
        """Remove a line that did not make it, so the next one starts on a clean line."""
        try:
            self.io.ftruncate(self.fd, self.size)
        except OSError:
            self.suspect = True        # a torn line stays until the rewrite
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            self.io.close(self.fd)
            self.fd = None
