"""The data directory: one owner (a lock), a format version, the definitions journal and one
log per durable queue, plus the group-commit bookkeeping that says which writes are on disk.

Sans-IO as far as scheduling goes: the I/O edge calls ``write_pending()`` once per loop turn,
runs ``sync(job)`` for the job ``begin_sync()`` hands out (in a worker thread, or inline for
``fsync: always``), then reports back with ``synced(job)`` or ``sync_failed(job, exc)``.

Write batches are numbered (generations). A publish confirm waits until its generation is
synced. When a write or an fsync fails, the generations it touched are reported through
``on_failed(lo, hi)`` (meaning lo < gen <= hi): those publishes are nacked, never confirmed.
"""
import contextlib
import fcntl
import hashlib
import json
import logging
import os

from .definitions import DefinitionsJournal
from .fileio import REAL
from .queue_log import SEGMENT_SIZE, QueueLog

log = logging.getLogger("amqpd.store")

# Format 2: segment headers carry the queue's high-water seq (records.py). Format 1 data dirs
# are read and upgraded in place; a format-1 amqpd refuses a format-2 directory.
FORMAT = "amqpd-store 2"
# Writes count as working again (and the next failure is logged again) only after this many
# successful commits in a row: a failing device often fails some writes and not others.
RECOVERED_AFTER = 20
READABLE = ("amqpd-store 1", FORMAT)


class StoreError(Exception):
    pass


class SyncJob:
    """One fsync round: every write up to generation ``gen``."""
    __slots__ = ("gen", "fds", "dirs", "logs")

    def __init__(self, gen: int, fds: list, dirs: list, logs: list):
        self.gen, self.fds, self.dirs, self.logs = gen, fds, dirs, logs


class Store:
    # Keyword defaults for every Store opened while set: the power-loss harness records the
    # I/O (``io``) and rolls segments often (``segment_size``). See ``overridden``.
    defaults: dict = {}

    def __init__(self, data_dir: str, fsync: str = "batch", io=None, segment_size=None):
        self.data_dir = os.path.abspath(data_dir)
        self.fsync_mode = fsync
        self.io = io = io or self.defaults.get("io") or REAL
        self.segment_size = segment_size or self.defaults.get("segment_size") or SEGMENT_SIZE
        self.queues_dir = os.path.join(self.data_dir, "queues")
        changed = io.makedirs(self.queues_dir)
        if changed is not None and fsync != "never":
            self._fsync_new_dirs(changed)
        self._lock_fd = self._lock()
        try:
            self._check_format()
        except BaseException:
            io.close(self._lock_fd)
            raise
        self.journal = DefinitionsJournal(os.path.join(self.data_dir, "definitions.jsonl"),
                                          fsync=fsync != "never", io=io)
        self.logs: dict[tuple, QueueLog] = {}
        self.recovered = False         # set once recovery has opened the logs it found
        self.dirty: dict = {}          # logs with buffered records
        self.unsynced: dict = {}       # logs written to the OS since the last fsync
        self.gen = 0                   # write batches handed to the OS so far
        self.synced_gen = 0            # write batches known to be on disk (or nacked)
        self.written = 0               # bytes handed to the OS (the disk alarm estimates)
        self.on_dirty = None           # set by the I/O edge: schedule a commit this turn
        self.on_failed = None          # set by the broker: nack generations lo < gen <= hi
        self.failing = None            # the error while writes fail (logged once)
        self.failures = 0              # failed writes/fsyncs since it started failing
        self.failed_gen = 0            # the last generation that failed
        self.good_run = 0              # successful commits since the last failure

    @classmethod
    @contextlib.contextmanager
    def overridden(cls, **defaults):
        saved = cls.defaults
        cls.defaults = {**saved, **defaults}
        try:
            yield
        finally:
            cls.defaults = saved

    def _fsync_new_dirs(self, changed: str) -> None:
        """Directories were just created below ``changed``: make their names durable."""
        path = self.queues_dir
        while True:
            parent = os.path.dirname(path)
            self.io.fsync_dir(parent)
            if parent == changed or len(parent) <= len(changed):
                return
            path = parent

    # -- ownership ----------------------------------------------------------------------------
    def _lock(self) -> int:
        path = os.path.join(self.data_dir, "LOCK")
        fd = self.io.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            self.io.close(fd)
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
            found = ""
        if found == FORMAT:
            return
        # Empty: a crash while the directory was first set up (FORMAT is written atomically
        # now, but older versions did not).
        if found and found not in READABLE:
            raise StoreError(f"data dir {self.data_dir} has format {found!r}; this amqpd "
                             f"reads {' and '.join(map(repr, READABLE))}")
        # fsynced in every mode, once: a torn FORMAT would make the directory unreadable.
        self.io.write_file(path, (FORMAT + "\n").encode())

    # -- queue logs ---------------------------------------------------------------------------
    def _log_path(self, vhost: str, name: str) -> str:
        digest = hashlib.sha1(f"{vhost}\0{name}".encode()).hexdigest()[:24]
        return os.path.join(self.queues_dir, digest)

    def queue_log(self, vhost: str, name: str) -> QueueLog:
        key = (vhost, name)
        qlog = self.logs.get(key)
        if qlog is None:
            path = self._log_path(vhost, name)
            if self.recovered and os.path.exists(path):
                # A new queue: whatever is there belongs to a deleted one (a removal that
                # failed, or was lost in a crash) and must not come back in it.
                log.warning("%s: removing the files of an earlier queue %r", path, name)
                self.io.rmtree(path)
            qlog = self.logs[key] = QueueLog(path, self.segment_size, self.io)
            meta = os.path.join(path, "queue.json")
            if not os.path.exists(meta):          # for humans looking at the directory
                with contextlib.suppress(OSError):
                    self.io.write_file(meta, json.dumps({"vhost": vhost, "name": name})
                                       .encode(), sync=False)
        return qlog

    def remove_orphans(self, keep) -> None:
        """After recovery: delete queue directories no durable definition names (a queue
        deleted just before a crash, whose files were not all gone). ``keep`` holds the
        (vhost, name) of every durable queue and delay log, loaded or not."""
        self.recovered = True
        wanted = {os.path.basename(self._log_path(v, n)) for v, n in keep}
        removed = 0
        for name in os.listdir(self.queues_dir):
            if name not in wanted and os.path.isdir(os.path.join(self.queues_dir, name)):
                log.warning("removing %s: no durable queue owns it",
                            os.path.join(self.queues_dir, name))
                self.io.rmtree(os.path.join(self.queues_dir, name))
                removed += 1
        if removed and self.fsync_mode != "never":
            self.io.fsync_dir(self.queues_dir)

    def delete_queue_log(self, vhost: str, name: str) -> None:
        qlog = self.logs.pop((vhost, name), None)
        if qlog is not None:
            self.dirty.pop(qlog, None)
            self.unsynced.pop(qlog, None)
            try:
                qlog.delete()
                # Durable before delete-ok: a queue declared again under the same name must
                # never find this one's files after a power cut.
                if self.fsync_mode != "never":
                    self.io.fsync_dir(self.queues_dir)
            except OSError as exc:
                # The journal says deleted: what is left is an orphan, removed at the next
                # start (remove_orphans) or when the name is declared again (queue_log).
                log.warning("deleting %s: %s", qlog.path, exc)

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
        """Hand every buffered record to the OS (once per loop turn). True if anything was.
        A log whose write fails drops what it buffered (see QueueLog.write): the publishes of
        this generation are reported as failed, the others carry on."""
        if not self.dirty:
            return False
        logs = list(self.dirty)
        self.dirty.clear()
        gen = self.gen + 1
        error = None
        for qlog in logs:
            before = qlog.written
            try:
                if qlog.write():
                    self.unsynced[qlog] = None
            except OSError as exc:
                self.unsynced[qlog] = None        # earlier writes and retired segments
                error = error or exc
            self.written += qlog.written - before
        self.gen = gen
        if error is not None:
            self._failed(gen - 1, gen, f"cannot write to {self.data_dir}", error)
        if self.fsync_mode == "never":
            for qlog in self.unsynced:
                qlog.release_retired()
            self.unsynced.clear()
            self.synced_gen = gen
            if error is None:
                self._writes_succeed(gen)
        return True

    def begin_sync(self) -> SyncJob | None:
        """What to fsync for everything written so far, and the generation it covers; None
        if nothing is waiting."""
        if self.fsync_mode == "never" or self.synced_gen >= self.gen:
            return None
        fds, dirs = [], []
        logs = list(self.unsynced)
        self.unsynced.clear()
        for qlog in logs:
            f, d = qlog.sync_targets()
            fds += f
            dirs += d
        return SyncJob(self.gen, fds, dirs, logs)

    def sync(self, job: SyncJob) -> None:
        """Runs in a worker thread (or inline). Files first, then the directories that name
        new ones. Every descriptor is closed; the first error is raised."""
        io = self.io
        error = None
        for fd in job.fds:
            try:
                if error is None:
                    io.fsync(fd)
            except OSError as exc:
                error = exc
            finally:
                io.close(fd)
        for path in dict.fromkeys(job.dirs):
            if error is None:
                try:
                    io.fsync_dir(path)
                except FileNotFoundError:
                    pass                           # the queue was deleted meanwhile
                except OSError as exc:
                    error = exc
        if error is not None:
            raise error

    def synced(self, job: SyncJob) -> None:
        self.synced_gen = max(self.synced_gen, job.gen)
        self._writes_succeed(job.gen)

    def sync_failed(self, job: SyncJob, exc: OSError) -> None:
        """The fsync did not complete: nothing it covered may be confirmed. Worse, Linux
        reports a failed writeback once and then forgets it (PostgreSQL's "fsyncgate"): a
        later fsync of the same file succeeds although pages written before the failure are
        gone. So every generation handed to the OS so far is nacked, and the one being
        buffered too (records already framed for the old segments go there), every log the
        fsync covered moves to a fresh segment, and the broker carries on."""
        self._failed(self.synced_gen, self.gen + 1, f"fsync in {self.data_dir} failed", exc)
        for qlog in job.logs:
            if not qlog.deleted:
                qlog.abandon_segment()
                qlog.dir_dirty = True          # the names may not be durable either
                self.mark_dirty(qlog)
        self.synced_gen = max(self.synced_gen, self.gen)

    def _failed(self, lo: int, hi: int, what: str, exc: OSError) -> None:
        self.failures += 1
        self.failed_gen = hi
        self.good_run = 0
        if self.failing is None:
            self.failing = what
            log.error("%s: %s; the publishes it held are nacked (further failures are "
                      "counted, not logged, until %d commits in a row succeed)", what, exc,
                      RECOVERED_AFTER)
        if self.on_failed is not None:
            self.on_failed(lo, hi)

    def _writes_succeed(self, gen: int) -> None:
        """A generation after the last failure made it to disk."""
        if self.failing is None or gen <= self.failed_gen:
            return
        self.good_run += 1
        if self.good_run >= RECOVERED_AFTER:
            log.warning("the message store is writable again (%d failed write(s) or fsync(s) "
                        "since: %s; their publishes were nacked)", self.failures, self.failing)
            self.failing = None
            self.failures = 0

    def close(self) -> None:
        try:
            self.write_pending()
        finally:
            sync = self.fsync_mode != "never"
            for qlog in self.logs.values():
                try:
                    qlog.close(sync)
                except OSError as exc:
                    log.error("closing %s: %s", qlog.path, exc)
            self.synced_gen = self.gen
            self.journal.close()
            if self._lock_fd is not None:
                self.io.close(self._lock_fd)
                self._lock_fd = None
