"""A member's catch-up, the leader's side: the bulk of what a member lacks is copied in
chunks read on worker threads, before the one synchronous step that hands the member over to
streaming (replication.py, ``Shipper``). No asyncio here: the Shipper runs ``survey`` and
``plan`` on the loop and ``verify`` and ``read`` on a worker thread, one at a time.

**Why the leader's files may be read off the loop while its log goes on writing them.** A
queue's log (store/queue_log.py) changes its files only on the event loop, and tells its tap
of each change in the same synchronous step. Within one file (one inode), bytes that are
there at a moment the loop runs other code never change afterwards:

- segments grow by appends (``O_APPEND`` writes);
- a failed write is cut back (``ftruncate``) to the size the file had before that write,
  which is at least the size any earlier moment saw (the cut removes only bytes no moment
  saw);
- compaction and segment summaries (``.idx``) put a new file in place (a temporary file
  renamed over the old one: a new inode), and settled segments are unlinked; neither
  touches the old inode's bytes.

So the catch-up keeps a descriptor of each file it copies (while it is open the inode can
neither go nor have its number reused), notes the file's size on the loop (``survey``: its
``limit``), and a worker thread reads only below that size: bytes that are final. The
member's file is then always a prefix of that inode, of a known length and SHA-1 (``sent``,
``sha``). A file renamed over or unlinked meanwhile is noticed by the final step (``plan``):
its path no longer names the inode copied, so it is compared in full (read whole and
hashed, as ``plan_sync`` always did) or unlinked. The final step runs in the same synchronous
step as the Shipper's switch to streaming: every change before it is in the files it reads,
every change after it is streamed.

**The bulk only extends the member's files**, with the leader's bytes: a file the member
lacks, or the tail of one it holds a verified prefix of. A member file that is no prefix of
the leader's (a deposed leader's uncommitted tail, a segment compacted while the member was
away) is left to the final step, which sends it whole, and ``ReplicaFiles.whole`` replaces
it atomically, as before. Nothing the member had is destroyed before the final step. That
matters because a member that reconnects within the acknowledgement timeout is still in the
in-sync set and may be promoted before the catch-up ends: its copy is then its old files
(which hold everything it acknowledged, so every confirmed message) plus bytes the leader
wrote later, as a member that lags. A summary (``.idx``) is copied only for a segment whose
member copy is a verified prefix of the leader's (or new); an incomplete one fails its CRC
and size checks on load (``segment_index.load``), so a promotion mid-way scans the segment.
"""
from __future__ import annotations

import hashlib
import os
import threading

from .replica import is_log_file, plan_sync

CHUNK = 1 << 20          # bytes read (and shipped in one frame) at once


def _order(name: str):
    """Log order, a segment before its summary."""
    return int(name[:-4]), name.endswith(".idx")


def _ident(st) -> tuple:
    return st.st_dev, st.st_ino


def pread_all(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset`` (fewer only at the end of the file)."""
    parts = []
    while size > 0:
        data = os.pread(fd, size, offset)
        if not data:
            break
        parts.append(data)
        size -= len(data)
        offset += len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class Copy:
    """One of the leader's files as the catch-up copies it to the member."""

    __slots__ = ("name", "fd", "ident", "limit", "sent", "sha", "held", "check", "stale")

    def __init__(self, name: str, fd: int, ident: tuple, check):
        self.name = name
        self.fd = fd             # our descriptor of the inode copied
        self.ident = ident       # its (st_dev, st_ino)
        self.limit = 0           # its size at the last survey: the bytes below are final
        self.sent = 0            # bytes of it the member holds (verified or shipped)
        self.sha = hashlib.sha1()    # of those bytes
        self.held = check is not None    # the member has a file of this name
        self.check = check       # the member's (size, sha1), not verified yet as our prefix
        self.stale = False       # the path names another file now (or none): fd closed


class CatchUp:
    """The leader's copy of its queue's log directory to one member that reported
    ``theirs`` ({name: [size, sha1]}, replica.file_state).

    On the loop, while no worker-thread job is running: ``survey()`` lists what to work on
    now (and sets ``pending``). On a worker thread, one job at a time, for each of those:
    ``verify(copy)`` when it has a ``check``, then ``read(copy)`` while ``copy.sent <
    copy.limit``, each operation sent to the member in order as it comes. Once ``pending``
    is small, ``plan()`` on the loop gives the final operations (in the synchronous step
    that starts streaming). ``threaded(fn, copy)`` wraps a worker-thread job so that
    ``close()`` never closes a descriptor a job still reads."""

    def __init__(self, directory: str, theirs: dict, chunk: int = CHUNK):
        self.directory = directory
        self.theirs = {str(n): (int(v[0]), str(v[1])) for n, v in theirs.items()}
        self.chunk = chunk
        self.copies: dict[str, Copy] = {}
        self.differ: set = set()     # member files that are no prefix of ours: whole at the end
        self.pending = 0             # bytes left to copy at the last survey
        self.copied = 0              # bytes shipped so far
        self.started = 0.0           # (the caller's clock, for its log)
        self._lock = threading.Lock()
        self._jobs = 0
        self._closed = False

    # -- on the loop ---------------------------------------------------------------------------
    def survey(self) -> list:
        """The files to work on now, in log order, each with its size noted (``limit``);
        ``pending``: the bytes they lack. A file renamed over or unlinked since it was first
        opened is left to the final step."""
        try:
            names = [n for n in os.listdir(self.directory) if is_log_file(n)]
        except FileNotFoundError:
            names = []
        todo = []
        pending = 0
        for name in sorted(names, key=_order):
            if name in self.differ:
                continue
            if name.endswith(".idx") and not self._prefix_of_ours(name[:-4] + ".seg"):
                continue                     # (see the module's docstring)
            copy = self.copies.get(name)
            path = os.path.join(self.directory, name)
            if copy is None:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                copy = Copy(name, fd, _ident(os.fstat(fd)), self.theirs.get(name))
                self.copies[name] = copy
            elif copy.stale:
                continue
            elif not self._same_file(copy):
                self._let_go(copy)
                continue
            copy.limit = os.fstat(copy.fd).st_size
            if copy.check is not None:
                if copy.check[0] <= copy.limit:      # (else: the final step compares)
                    todo.append(copy)
                    pending += copy.limit - copy.check[0]
            elif copy.sent < copy.limit:
                todo.append(copy)
                pending += copy.limit - copy.sent
        listed = set(names)
        for copy in self.copies.values():
            if copy.name not in listed and not copy.stale:
                self._let_go(copy)
        self.pending = pending
        return todo

    def _let_go(self, copy: Copy) -> None:
        """The file was replaced or unlinked: the member keeps what it got (``plan``
        compares it in full, or unlinks it); our descriptor goes now, so that a deleted
        segment's space is not held while a long catch-up goes on. From now on the inode
        may go and its number be reused: ``stale`` is never undone."""
        copy.stale = True
        os.close(copy.fd)
        copy.fd = -1

    def plan(self) -> list:
        """The final operations (replica.plan_sync over the member's files as the bulk left
        them): the tails appended since a file was surveyed, files replaced or unlinked
        meanwhile, those the member holds differently, those it has and we do not. Runs on
        the loop, in the step that switches the member to streaming."""
        try:
            names = [n for n in os.listdir(self.directory) if is_log_file(n)]
        except FileNotFoundError:
            names = []
        state = dict(self.theirs)
        for name, copy in self.copies.items():
            if copy.check is None and copy.held and name not in self.differ:
                state[name] = (copy.sent, copy.sha.hexdigest())

        def same(name):
            copy = self.copies.get(name)
            return (copy is not None and copy.check is None and copy.held and not copy.stale
                    and name not in self.differ and self._same_file(copy)
                    and os.fstat(copy.fd).st_size >= copy.sent)

        def tail(name, offset):
            fd = self.copies[name].fd
            return pread_all(fd, os.fstat(fd).st_size - offset, offset)

        def read(name):
            try:
                with open(os.path.join(self.directory, name), "rb") as fh:
                    return fh.read()
            except OSError:
                return None
        return plan_sync(names, read, state, same, tail)

    def _same_file(self, copy: Copy) -> bool:
        """The path still names the inode we copy from."""
        try:
            return _ident(os.stat(os.path.join(self.directory, copy.name))) == copy.ident
        except FileNotFoundError:
            return False

    def _prefix_of_ours(self, segment: str) -> bool:
        """The member's copy of ``segment`` is (or becomes) a prefix of the file the path
        names now."""
        copy = self.copies.get(segment)
        return (copy is not None and copy.check is None and not copy.stale
                and segment not in self.differ and self._same_file(copy))

    # -- on a worker thread --------------------------------------------------------------------
    def verify(self, copy: Copy) -> bool:
        """Is the member's file a prefix of ours (its bytes are below ``limit``: final)?
        Then it is extended from its end; else it is left to the final step (sent whole)."""
        size, sha = copy.check
        h = hashlib.sha1()
        offset = 0
        while offset < size:
            data = os.pread(copy.fd, min(self.chunk, size - offset), offset)
            if not data:
                break
            h.update(data)
            offset += len(data)
        copy.check = None
        if offset == size and h.hexdigest() == sha:
            copy.sha, copy.sent = h, size
            return True
        self.differ.add(copy.name)
        return False

    def read(self, copy: Copy) -> tuple:
        """The next chunk of the file below ``limit``, as the operation that ships it:
        ("append", name, offset, data). It counts as the member's at once: the caller sends
        every operation it gets, in order, or drops the catch-up (and the link)."""
        offset = copy.sent
        data = os.pread(copy.fd, min(self.chunk, copy.limit - offset), offset)
        if not data:
            # below the size the loop saw: cannot happen while the log keeps its rules
            raise OSError(f"{copy.name}: nothing to read at {offset} (size seen {copy.limit})")
        copy.sha.update(data)
        copy.sent += len(data)
        copy.held = True
        self.copied += len(data)
        return ("append", copy.name, offset, data)

    # -- descriptors ---------------------------------------------------------------------------
    def threaded(self, fn, *args):
        """``fn(*args)`` as a job for a worker thread. A job may outlive its caller (a task
        cancelled while it waits): ``close`` then leaves the descriptors to the last job."""
        with self._lock:
            if self._closed:
                raise OSError("the catch-up is closed")
            self._jobs += 1

        def job():
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._jobs -= 1
                    last = self._closed and not self._jobs
                if last:
                    self._close_fds()
        return job

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = not self._jobs
        if idle:
            self._close_fds()

    def _close_fds(self) -> None:
        with self._lock:
            copies, self.copies = self.copies, {}
        for copy in copies.values():
            if copy.fd >= 0:
                try:
                    os.close(copy.fd)
                except OSError:
                    pass
