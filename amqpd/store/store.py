"""The data directory: one owner (a lock), a format version, the definitions journal and one
log per durable queue, plus the group-commit bookkeeping that says which writes are on disk.

Sans-IO as far as scheduling goes: the I/O edge calls ``write_pending()`` once per loop turn and
runs ``sync()`` in a worker thread, then reports back with ``synced(generation)``.
"""
import fcntl
import hashlib
import json
import os

from .definitions import DefinitionsJournal
from .queue_log import QueueLog

FORMAT = "amqpd-store 1"


class StoreError(Exception):
    pass


class Store:
    def __init__(self, data_dir: str, fsync: str = "batch"):
        self.data_dir = os.path.abspath(data_dir)
        self.fsync_mode = fsync
        os.makedirs(os.path.join(self.data_dir, "queues"), exist_ok=True)
        self._lock_fd = self._lock()
        try:
            self._check_format()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self.journal = DefinitionsJournal(os.path.join(self.data_dir, "definitions.jsonl"),
                                          fsync=fsync != "never")
        self.logs: dict[tuple, QueueLog] = {}
        self.dirty: dict = {}          # logs with buffered records
        self.unsynced: dict = {}       # logs written to the OS since the last fsync
        self.gen = 0                   # write batches handed to the OS so far
        self.synced_gen = 0            # write batches known to be on disk
        self.on_dirty = None           # set by the I/O edge: schedule a commit this turn

    # -- ownership ----------------------------------------------------------------------------
    def _lock(self) -> int:
        path = os.path.join(self.data_dir, "LOCK")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreError(f"data dir {self.data_dir} is in use by another amqpd "
                             f"(pid {owner})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _check_format(self) -> None:
        path = os.path.join(self.data_dir, "FORMAT")
        try:
            with open(path) as f:
                found = f.read().strip()
        except FileNotFoundError:
            with open(path, "w") as f:
                f.write(FORMAT + "\n")
            return
        if found != FORMAT:
            raise StoreError(f"data dir {self.data_dir} has format {found!r}; this amqpd "
                             f"reads {FORMAT!r}")

    # -- queue logs ---------------------------------------------------------------------------
    def queue_log(self, vhost: str, name: str) -> QueueLog:
        key = (vhost, name)
        qlog = self.logs.get(key)
        if qlog is None:
            digest = hashlib.sha1(f"{vhost}\0{name}".encode()).hexdigest()[:24]
            path = os.path.join(self.data_dir, "queues", digest)
            qlog = self.logs[key] = QueueLog(path)
            meta = os.path.join(path, "queue.json")
            if not os.path.exists(meta):
                with open(meta, "w") as f:           # for humans looking at the directory
                    json.dump({"vhost": vhost, "name": name}, f)
        return qlog

    def delete_queue_log(self, vhost: str, name: str) -> None:
        qlog = self.logs.pop((vhost, name), None)
        if qlog is not None:
            self.dirty.pop(qlog, None)
            self.unsynced.pop(qlog, None)
            qlog.delete()

    def mark_dirty(self, qlog: QueueLog) -> None:
        if not self.dirty and self.on_dirty is not None:
            self.on_dirty()
        self.dirty[qlog] = None

    @property
    def next_gen(self) -> int:
        """The write batch a record buffered now belongs to."""
        return self.gen + 1

    # -- group commit -------------------------------------------------------------------------
    def write_pending(self) -> bool:
        """Hand every buffered record to the OS (once per loop turn). True if anything was."""
        if not self.dirty:
            return False
        for qlog in self.dirty:
            if qlog.write() is not None:
                self.unsynced[qlog] = None
        self.dirty.clear()
        self.gen += 1
        if self.fsync_mode == "never":
            self.synced_gen = self.gen
        return True

    def begin_sync(self):
        """Descriptors to fsync for everything written so far, and the generation they cover;
        None if nothing is waiting. The descriptors are duplicates: the worker closes them, so a
        log closed meanwhile cannot make it fsync a reused number."""
        if self.fsync_mode == "never" or self.synced_gen >= self.gen:
            return None
        fds = [os.dup(qlog.fd) for qlog in self.unsynced if qlog.fd is not None]
        self.unsynced.clear()
        return self.gen, fds

    @staticmethod
    def sync(fds: list) -> None:
        """Runs in a worker thread."""
        for fd in fds:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def synced(self, gen: int) -> None:
        self.synced_gen = max(self.synced_gen, gen)

    def close(self) -> None:
        self.write_pending()
        for qlog in self.logs.values():
            qlog.close()
        self.synced_gen = self.gen
        self.journal.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
