"""The data directory: one owner (a lock), a format version, the definitions journal, the
stored users/vhosts/permissions (``access.json``) and one log per durable queue. Every durable
write goes through here; when a write is durable is ``commit.py``'s business (``store.commit``).
"""
import contextlib
import fcntl
import hashlib
import json
import logging
import os

from .commit import Commit
from .delayed_log import DelayedLog
from .definitions import DefinitionsJournal
from .fileio import REAL
from .queue_log import SEGMENT_SIZE, QueueLog

log = logging.getLogger("amqpd.store")

# Format 2: segment headers carry the queue's high-water seq (records.py). Format 1 data dirs
# are read and upgraded in place; a format-1 amqpd refuses a format-2 directory.
FORMAT = "amqpd-store 2"
READABLE = ("amqpd-store 1", FORMAT)


ACCESS_FILE = "access.json"
TRASH = ".deleted-"           # a deleted queue's directory, renamed until it is removed
REPLICA_MARK = "replica.json"  # a cluster's replicated queue: its files are kept at start-up


class StoreError(Exception):
    pass


def read_access_file(data_dir: str) -> dict | None:
    """access.json of a data directory, read without taking the directory over (a running
    broker's works too); None when there is none. Raises StoreError when it is unreadable."""
    path = os.path.join(data_dir, ACCESS_FILE)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: cannot read stored users and permissions: {exc}") from None


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
        # Scratch segments of transient messages paged out of RAM: worthless after a stop.
        self.scratch_dir = os.path.join(self.data_dir, "scratch")
        if os.path.exists(self.scratch_dir):
            io.rmtree(self.scratch_dir)
        self._scratch = 0
        self.scratch_logs: dict = {}
        self.journal = DefinitionsJournal(os.path.join(self.data_dir, "definitions.jsonl"),
                                          fsync=fsync != "never", io=io)
        self._trashed = 0
        self.logs: dict[tuple, QueueLog] = {}
        # (vhost, queue) of replicated queues this node holds files of (a cluster's quorum
        # queues): their directory may be written by the replication follower before the
        # queue is declared here, so it is never taken for a deleted queue's leftovers
        self.replicas: set = set()
        self.recovered = False         # set once recovery has opened the logs it found
        self.commit = Commit(self.data_dir, fsync, io)
        self.commit.journal = self.journal

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
            if self.recovered and os.path.exists(path) and key not in self.replicas:
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

    def replica_path(self, vhost: str, name: str) -> str:
        """The directory a replicated queue's files have on this node: where its log would
        be (a follower writes the leader's files there, so a promotion recovers from them
        exactly as a restart does). It carries a durable marker (REPLICA_MARK) from the
        first call on: a restart before this node's journal has the queue's definition
        (a member restarted just after the declare) keeps the files (``remove_orphans``),
        since what a member has acknowledged may be all a confirm relied on."""
        self.replicas.add((vhost, name))
        path = self._log_path(vhost, name)
        mark = os.path.join(path, REPLICA_MARK)
        if not os.path.exists(mark):
            created = not os.path.isdir(path)
            os.makedirs(path, exist_ok=True)
            # always fsynced: a member's acknowledgement must not outlive the marker
            self.io.write_file(mark, json.dumps({"vhost": vhost, "name": name}).encode())
            if created:
                self.io.fsync_dir(self.queues_dir)
        return path

    def replica_key(self, directory: str) -> tuple | None:
        """(vhost, name) of a queue directory holding a replica's marker, else None."""
        try:
            doc = json.loads(self.io.read(os.path.join(directory, REPLICA_MARK)))
            return str(doc["vhost"]), str(doc["name"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def forget_replica(self, vhost: str, name: str) -> None:
        """This node holds no copy of the queue any more: its directory goes."""
        self.replicas.discard((vhost, name))
        if (vhost, name) not in self.logs:
            try:
                self.io.rmtree(self._log_path(vhost, name))
            except OSError as exc:      # what is left is removed at the next start
                log.warning("removing the copy of queue %r: %s", name, exc)

    def drop_queue_log(self, vhost: str, name: str) -> None:
        """This node no longer writes the queue's log (a replicated queue's leader stepped
        down): what is buffered is thrown away, nothing more is written, and the files stay
        for the replication follower to bring in line with the new leader's."""
        qlog = self.logs.pop((vhost, name), None)
        if qlog is None:
            return
        self.commit.forget(qlog)
        qlog.tap = None
        qlog.deleted = True               # write() is a no-op from now on
        qlog.pending.clear()
        qlog.rolls = 0
        for fd in qlog.retired + ([qlog.fd] if qlog.fd is not None else []):
            try:
                self.io.close(fd)
            except OSError:
                pass
        qlog.retired.clear()
        qlog.fd = None

    def delayed_log(self, vhost: str, name: str, durable: bool = True) -> DelayedLog:
        """The bucket files of a delayed exchange's held messages (store/delayed_log.py), in
        the same place a queue log of that name would be. Non-durable: scratch files, removed
        at the next start by ``remove_orphans`` (no definition names them)."""
        key = (vhost, name)
        dlog = self.logs.get(key)
        if dlog is None:
            path = self._log_path(vhost, name)
            if (self.recovered or not durable) and os.path.exists(path):
                log.warning("%s: removing the files of an earlier exchange %r", path, name)
                self.io.rmtree(path)
            dlog = self.logs[key] = DelayedLog(path, self.io, durable)
        return dlog

    def scratch_log(self) -> QueueLog:
        """A log for one queue's transient messages beyond its RAM window: never fsynced,
        never recovered (the directory is removed at start-up), deleted with the queue."""
        self._scratch += 1
        qlog = QueueLog(os.path.join(self.scratch_dir, str(self._scratch)), self.segment_size,
                        self.io)
        qlog.scratch = True
        qlog.parent_dirty = False
        self.scratch_logs[qlog] = None
        return qlog

    def delete_scratch_log(self, qlog: QueueLog) -> None:
        self.commit.forget(qlog)
        self.scratch_logs.pop(qlog, None)
        self._scratch += 1
        trash = f"{qlog.path}{TRASH}{self._scratch}"
        try:
            qlog.delete(trash)
            self.commit.discard_later(trash, self.scratch_dir)
        except OSError as exc:
            log.warning("deleting %s: %s", qlog.path, exc)

    def remove_orphans(self, keep) -> None:
        """After recovery: delete queue directories no durable definition names (a queue
        deleted just before a crash, whose files were not all gone). ``keep`` holds the
        (vhost, name) of every durable queue and delay log, loaded or not."""
        self.recovered = True
        wanted = {os.path.basename(self._log_path(v, n)) for v, n in list(keep) + list(self.replicas)}
        removed = 0
        for name in os.listdir(self.queues_dir):
            base = name.partition(TRASH)[0]
            if base != name and base in wanted \
                    and not os.path.exists(os.path.join(self.queues_dir, base)):
                # A delete whose rename reached the disk but whose journal line did not: the
                # client never heard delete-ok, so the queue keeps its messages.
                log.warning("restoring %s: its deletion did not complete", base)
                self.io.replace(os.path.join(self.queues_dir, name),
                                os.path.join(self.queues_dir, base))
                removed += 1
                continue
            if name not in wanted and os.path.isdir(os.path.join(self.queues_dir, name)):
                key = self.replica_key(os.path.join(self.queues_dir, name))
                if key is not None:
                    # a replica whose definition did not reach this node's journal yet: the
                    # cluster decides once its view is loaded (replication.py's start)
                    self.replicas.add(key)
                    continue
                log.warning("removing %s: no durable queue owns it",
                            os.path.join(self.queues_dir, name))
                self.io.rmtree(os.path.join(self.queues_dir, name))
                removed += 1
        if removed and self.fsync_mode != "never":
            self.io.fsync_dir(self.queues_dir)

    def delete_queue_log(self, vhost: str, name: str) -> None:
        qlog = self.logs.pop((vhost, name), None)
        if qlog is not None:
            self.commit.forget(qlog)
            self._trashed += 1
            trash = f"{qlog.path}{TRASH}{self._trashed}"
            try:
                # The name is free at once (a queue declared again under it starts empty); the
                # files go on the commit path's worker, after the rename and the journal line
                # are durable (delete-ok waits for that, like declare-ok).
                qlog.delete(trash)
                self.commit.discard_later(trash, self.queues_dir)
            except OSError as exc:
                # The journal says deleted: what is left is an orphan, removed at the next
                # start (remove_orphans) or when the name is declared again (queue_log).
                log.warning("deleting %s: %s", qlog.path, exc)

    # -- users, vhosts, permissions ----------------------------------------------------------
    def read_access(self) -> dict | None:
        """The stored access document (access.json), or None when there is none."""
        return read_access_file(self.data_dir)

    def save_access(self, doc: dict) -> None:
        """Atomically: a temporary file, fsync, rename, fsync the directory."""
        path = os.path.join(self.data_dir, ACCESS_FILE)
        self.io.write_file(path, json.dumps(doc, indent=1, sort_keys=True).encode())

    def close(self) -> None:
        try:
            self.commit.write_pending()
        finally:
            sync = self.fsync_mode != "never"
            for qlog in self.logs.values():
                try:
                    qlog.close(sync)
                except OSError as exc:
                    log.error("closing %s: %s", qlog.path, exc)
            for qlog in self.scratch_logs:
                try:
                    qlog.close(sync=False)
                except OSError:
                    pass
            fd = self.journal.sync_target() if sync else None
            if fd is not None:
                try:
                    self.io.fsync(fd)
                except OSError as exc:
                    log.error("syncing %s: %s", self.journal.path, exc)
                finally:
                    self.io.close(fd)
            self.commit.synced_gen = self.commit.gen
            self.journal.close()
            if self._lock_fd is not None:
                self.io.close(self._lock_fd)
                self._lock_fd = None
