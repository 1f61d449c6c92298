"""The pure parts of queue replication (replication.py runs them over links):

- ``file_state(directory)``: what a member holds of a queue's log: {file name: (size, sha1
  of the whole file)} for its segments (``.seg``) and their summaries (``.idx``).
- ``plan_sync(names, read, theirs)``: what the leader sends a member so that its files
  become byte-identical to the leader's: the tail when the member's file is a prefix of the
  leader's, the whole file when it differs, an unlink for a file the leader lacks (how a
  deposed leader drops what it wrote that was never committed).
- ``ReplicaFiles``: the member's side: it applies those operations to the files of a
  directory and names what the next fsync must cover.
- ``Commits``: the commit rule's bookkeeping on the leader: a publish is confirmed once the
  operation that carried its record is fsynced by every member of the in-sync set, and that
  set holds a majority of the members.
"""
from __future__ import annotations

import hashlib
import os
from collections import deque

SUFFIXES = (".seg", ".idx")


def is_log_file(name: str) -> bool:
    return name.endswith(SUFFIXES) and name[:-4].isdigit()


def digest(data) -> str:
    return hashlib.sha1(data).hexdigest()


def file_state(directory: str, chunk: int = 1 << 20) -> dict:
    """{name: [size, sha1]} of the log files in ``directory`` (none when it is missing).
    Read in chunks (a segment is up to 16 MiB): a member runs it on a worker thread when a
    leader connects, over what may be gigabytes."""
    out = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return out
    for name in names:
        if not is_log_file(name):
            continue
        h = hashlib.sha1()
        size = 0
        try:
            with open(os.path.join(directory, name), "rb") as f:
                while True:
                    data = f.read(chunk)
                    if not data:
                        break
                    h.update(data)
                    size += len(data)
        except OSError:
            continue
        out[name] = [size, h.hexdigest()]
    return out


def plan_sync(names, read, theirs: dict, same=None, tail=None) -> list:
    """Operations that turn a member holding ``theirs`` ({name: [size, sha1]}) into a copy
    of the leader's files ``names`` (``read(name)`` -> bytes, None if it is gone meanwhile):
    ("append", name, offset, data), ("whole", name, data), ("unlink", name).

    ``same(name)`` (optional) says without reading that the leader's file still begins with
    the member's ``theirs[name][0]`` bytes (the catch-up copied them from that very file,
    catch_up.py); then only ``tail(name, offset)`` is read: the bytes from ``offset`` to
    the end (None if the file is gone). Otherwise the file is read whole and compared."""
    ops = []
    mine = set()
    for name in sorted(names):
        have = theirs.get(name)
        if have is not None and same is not None and same(name):
            size = int(have[0])
            rest = tail(name, size)
            if rest is None:
                continue
            mine.add(name)
            if rest:
                ops.append(("append", name, size, bytes(rest)))
            continue
        data = read(name)
        if data is None:
            continue
        mine.add(name)
        if have is not None:
            size, sha = int(have[0]), have[1]
            if size <= len(data) and digest(memoryview(data)[:size]) == sha:
                if size < len(data):
                    ops.append(("append", name, size, bytes(data[size:])))
                continue
        ops.append(("whole", name, bytes(data)))
    for name in sorted(theirs):
        if name not in mine:
            ops.append(("unlink", name))
    return ops


class ReplicaFiles:
    """A follower's copy of a queue's log directory. Operations are applied at once (small
    writes, on the caller's thread); ``sync_targets`` hands over what an fsync must cover."""

    def __init__(self, directory: str):
        self.directory = directory
        self.fds: dict[str, int] = {}        # open descriptors by file name
        self.sizes: dict[str, int] = {}      # their sizes (only this object writes them)
        self.dirty: dict[str, None] = {}     # written since the last sync_targets
        self.dir_dirty = False
        self.closing: list = []              # descriptors of replaced files: fsync, close
        created = not os.path.isdir(directory)
        os.makedirs(directory, exist_ok=True)
        self.parent_dirty = created

    def _path(self, name: str) -> str:
        if not is_log_file(name):
            raise ValueError(f"not a log file name: {name!r}")
        return os.path.join(self.directory, name)

    def _fd(self, name: str) -> int:
        fd = self.fds.get(name)
        if fd is None:
            path = self._path(name)
            if not os.path.exists(path):
                self.dir_dirty = True
            fd = self.fds[name] = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            self.sizes[name] = os.fstat(fd).st_size
        return fd

    def _drop_fd(self, name: str) -> None:
        fd = self.fds.pop(name, None)
        self.sizes.pop(name, None)
        if fd is not None:
            if name in self.dirty:
                self.closing.append(fd)      # its writes still need their fsync
                del self.dirty[name]
            else:
                os.close(fd)

    def append(self, name: str, offset: int, data: bytes) -> None:
        fd = self._fd(name)
        size = self.sizes[name]              # (no fstat per operation)
        if size > offset:
            os.ftruncate(fd, offset)         # (a torn tail the leader never had)
        elif size < offset:                  # a gap: never sent so; the link starts over
            raise ValueError(f"{name}: {offset - size} byte(s) missing before offset {offset}")
        self.sizes[name] = offset            # (until the write is done)
        end = offset + len(data)
        n = os.pwrite(fd, data, offset)
        if n < len(data):                    # a short write (rare): the rest, piecewise
            view = memoryview(data)[n:]
            offset += n
            while view:
                n = os.pwrite(fd, view, offset)
                offset += n
                view = view[n:]
        self.sizes[name] = end
        self.dirty[name] = None

    def truncate(self, name: str, size: int) -> None:
        os.ftruncate(self._fd(name), size)
        self.sizes[name] = size
        self.dirty[name] = None

    def whole(self, name: str, data: bytes) -> None:
        path = self._path(name)
        self._drop_fd(name)
        tmp = path + ".rtmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.replace(tmp, path)
        except BaseException:
            os.close(fd)
            raise
        self.closing.append(fd)
        self.dir_dirty = True

    def unlink(self, name: str) -> None:
        self._drop_fd(name)
        try:
            os.unlink(self._path(name))
            self.dir_dirty = True
        except FileNotFoundError:
            pass

    def apply(self, op: tuple) -> None:
        kind = op[0]
        if kind == "append":
            self.append(op[1], op[2], op[3])
        elif kind == "whole":
            self.whole(op[1], op[2])
        elif kind == "unlink":
            self.unlink(op[1])
        elif kind == "truncate":
            self.truncate(op[1], op[2])
        else:
            raise ValueError(f"unknown replication operation {kind!r}")

    def sync_targets(self) -> tuple[list, list, list]:
        """(descriptors to fsync and close (duplicates or retired ones: the caller owns
        them), directories to fsync)."""
        fds = [os.dup(self.fds[name]) for name in self.dirty if name in self.fds]
        fds += self.closing
        self.closing = []
        self.dirty.clear()
        dirs = []
        if self.dir_dirty:
            dirs.append(self.directory)
            self.dir_dirty = False
        if self.parent_dirty:
            dirs.append(os.path.dirname(self.directory))
            self.parent_dirty = False
        return fds, dirs

    def close(self) -> None:
        for fd in list(self.fds.values()) + self.closing:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        self.sizes.clear()
        self.closing = []
        self.dirty.clear()


_datasync = getattr(os, "fdatasync", os.fsync)


def fsync_all(fds: list, dirs: list) -> None:
    """Run on a worker thread: flush and close every descriptor, then fsync the
    directories. Raises the first OSError after closing them all. The files get
    ``fdatasync``: it writes their data and the metadata needed to read it back (the size
    an append or a truncate changed), not their timestamps, so it makes them as durable as
    ``fsync`` for the commit rule at about half the cost; new names are made durable by the
    directories' ``fsync``."""
    error = None
    for fd in fds:
        try:
            _datasync(fd)
        except OSError as exc:
            error = error or exc
        finally:
            os.close(fd)
    for path in dirs:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            error = error or exc
    if error is not None:
        raise error


def majority(members) -> int:
    return len(members) // 2 + 1


class Commits:
    """The leader's side of the commit rule. ``seq`` numbers the operations shipped; a
    ticket added with ``add`` belongs to the next operation (the write that carries its
    record); ``acked[member]`` is the highest operation that member has fsynced.
    ``ready(isr, me)`` pops the tickets every in-sync member has (none while the set is
    smaller than a majority of ``members``)."""

    def __init__(self, members):
        self.members = list(members)
        self.seq = 0
        self.acked: dict[str, int] = {}
        self.unassigned: list = []
        self.waiting: deque = deque()          # (seq, ticket), seq ascending
        self.confirmed = 0                     # the highest operation ever found committed
        self.sent: deque = deque()             # (seq, time shipped)

    def add(self, ticket) -> None:
        self.unassigned.append(ticket)

    def op(self, now: float, carry: bool = True) -> int:
        """An operation is shipped: its number; with ``carry`` the open tickets are now
        waiting on it (else they wait for ``carry()``)."""
        self.seq += 1
        self.sent.append((self.seq, now))
        if carry and self.unassigned:
            self.carry()
        return self.seq

    def carry(self) -> None:
        """The operations shipped so far carry every open ticket's record (the log's
        ``written``): those tickets wait on the last of them. (Not on the first write of a
        turn: a turn that crosses a segment boundary ships its records in several appends,
        and a segment summary written after an fsync ships between turns, before the
        records of publishes still buffered.)"""
        if self.unassigned:
            seq = self.seq
            for t in self.unassigned:
                self.waiting.append((seq, t))
            self.unassigned = []

    def committed(self, isr, me: str, joining=()) -> int:
        """The highest operation every in-sync member has (0 without a majority). Members
        ``joining`` the in-sync set (its compare-and-swap in flight) are waited for too but
        do not count towards the majority: once in the set they must have everything
        confirmed, including what was confirmed while the swap was on its way."""
        if len(isr) < majority(self.members):
            return 0
        low = self.seq
        for name in isr:
            if name != me:
                low = min(low, self.acked.get(name, 0))
        for name in joining:
            low = min(low, self.acked.get(name, 0))
        return low

    def ready(self, isr, me: str, joining=()) -> list:
        upto = self.committed(isr, me, joining)
        if upto > self.confirmed:
            # (not ``committed()`` later: it is 0 while the set is below a majority, and a
            # member must never join the set lacking what was confirmed before that)
            self.confirmed = upto
        out = []
        waiting = self.waiting
        while waiting and waiting[0][0] <= upto:
            out.append(waiting.popleft()[1])
        while len(self.sent) > 1 and self.sent[0][0] <= upto:
            self.sent.popleft()
        return out

    def lag(self, name: str, now: float) -> float:
        """How long the oldest operation ``name`` has not acked has been out (0: none)."""
        have = self.acked.get(name, 0)
        for seq, at in self.sent:
            if seq > have:
                return now - at
        return 0.0

    def fail_all(self) -> list:
        """Every open ticket (the leader steps down: they are nacked)."""
        out = self.unassigned + [t for _s, t in self.waiting]
        self.unassigned = []
        self.waiting.clear()
        return out
