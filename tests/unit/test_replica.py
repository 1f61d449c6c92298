"""The pure parts of quorum-queue replication (amqpd/cluster/replica.py), without sockets:
a QueueLog's tap replayed into a copy gives byte-identical files; the catch-up plan (tail,
whole file, unlink); the commit rule's bookkeeping."""
import os

from amqpd.cluster.replica import (Commits, ReplicaFiles, file_state, fsync_all, majority,
                                   plan_sync)
from amqpd.store.queue_log import QueueLog


class Replay:
    """A tap that applies every change to a ReplicaFiles copy (as a member does)."""

    def __init__(self, source: str, copy: ReplicaFiles):
        self.source, self.copy = source, copy
        self.ops = []

    def append(self, name, offset, data):
        self.ops.append(("append", name))
        self.copy.append(name, offset, bytes(data))

    def truncate(self, name, size):
        self.copy.truncate(name, size)

    def written(self):
        self.ops.append(("written",))

    def unlink(self, name):
        self.ops.append(("unlink", name))
        self.copy.unlink(name)

    def rewrite(self, name):
        self.ops.append(("rewrite", name))
        with open(os.path.join(self.source, name), "rb") as f:
            self.copy.whole(name, f.read())


def tree(path: str) -> dict:
    out = {}
    for name in sorted(os.listdir(path)):
        if name.endswith((".seg", ".idx")):
            with open(os.path.join(path, name), "rb") as f:
                out[name] = f.read()
    return out


def sync(qlog: QueueLog, copy: ReplicaFiles) -> None:
    qlog.write()
    fds, dirs = qlog.sync_targets()
    for fd in fds:
        os.fsync(fd)
        os.close(fd)
    qlog.index_synced()
    fsync_all(*copy.sync_targets())


def test_a_tapped_log_replayed_gives_identical_files(tmp_path):
    qlog = QueueLog(str(tmp_path / "leader"), segment_size=4096)
    copy = ReplicaFiles(str(tmp_path / "member"))
    qlog.tap = tap = Replay(qlog.path, copy)
    segments = {}
    for seq in range(1, 200):
        segments[seq] = qlog.append_message(seq, b"\x00\x01q", b"\x00" * 14, b"x" * 100)
        if seq % 7 == 0:
            sync(qlog, copy)
    sync(qlog, copy)
    assert tree(qlog.path) == tree(copy.directory)
    # settle most: whole segments go (unlinked on both sides), compaction rewrites some
    for seq in range(1, 190):
        if seq % 50:
            qlog.settle(seq, segments[seq])
    sync(qlog, copy)
    for number in qlog.compaction_targets():
        qlog.compact(number, {s: False for s in range(1, 200)
                              if segments[s] == number and not s % 50}, sync=True)
    sync(qlog, copy)
    assert ("unlink", "00000000.seg") in tap.ops
    assert any(op[0] == "rewrite" and op[1].endswith(".seg") for op in tap.ops), "no compaction"
    assert any(op[0] == "rewrite" and op[1].endswith(".idx") for op in tap.ops)
    assert tree(qlog.path) == tree(copy.directory)
    qlog.close()
    copy.close()
    # and the copy recovers to the same messages
    a, top_a = QueueLog(qlog.path).recover()
    b, top_b = QueueLog(copy.directory).recover()
    assert [m[0] for m in a] == [m[0] for m in b] and top_a == top_b
    assert [m[0] for m in b] == [50, 100, 150] + list(range(190, 200))


def test_catch_up_plan_tail_whole_and_unlink(tmp_path):
    leader = {"00000001.seg": b"abcdef", "00000002.seg": b"xyz", "00000002.idx": b"I"}
    member_dir = tmp_path / "m"
    member_dir.mkdir()
    (member_dir / "00000001.seg").write_bytes(b"abc")          # a prefix: gets the tail
    (member_dir / "00000002.seg").write_bytes(b"xyQQ")         # differs: the whole file
    (member_dir / "00000003.seg").write_bytes(b"uncommitted")  # the leader lacks it
    theirs = file_state(str(member_dir))
    ops = plan_sync(leader, leader.get, theirs)
    assert ("append", "00000001.seg", 3, b"def") in ops
    assert ("whole", "00000002.seg", b"xyz") in ops
    assert ("whole", "00000002.idx", b"I") in ops
    assert ("unlink", "00000003.seg") in ops
    copy = ReplicaFiles(str(member_dir))
    for op in ops:
        copy.apply(op)
    fsync_all(*copy.sync_targets())
    copy.close()
    assert tree(str(member_dir)) == leader
    # in sync: nothing to send
    assert plan_sync(leader, leader.get, file_state(str(member_dir))) == []


def test_longer_file_at_the_member_is_sent_whole(tmp_path):
    leader = {"00000001.seg": b"abc"}
    ops = plan_sync(leader, leader.get, {"00000001.seg": [5, "0" * 40]})
    assert ops == [("whole", "00000001.seg", b"abc")]


class T:
    def __init__(self):
        self.ok = None

    def resolve(self, ok=True):
        self.ok = ok


def test_commit_waits_for_every_in_sync_member_and_a_majority():
    c = Commits(["a", "b", "c"])
    assert majority(c.members) == 2
    t1, t2 = T(), T()
    c.add(t1)
    s1 = c.op(0.0)
    c.add(t2)
    s2 = c.op(0.0)
    isr = ["a", "b", "c"]
    assert c.ready(isr, "a") == []
    c.acked["b"] = s2
    assert c.ready(isr, "a") == []              # c has nothing yet
    c.acked["c"] = s1
    assert c.ready(isr, "a") == [t1]
    # c is dropped from the in-sync set: b alone with the leader is a majority
    assert c.ready(["a", "b"], "a") == [t2]
    # the leader alone is not
    t3 = T()
    c.add(t3)
    c.op(0.0)
    assert c.ready(["a"], "a") == []
    assert c.fail_all() == [t3]


def test_lag_is_the_age_of_the_oldest_unacked_operation():
    c = Commits(["a", "b"])
    c.op(10.0)
    c.op(11.0)
    assert c.lag("b", 12.0) == 2.0
    c.acked["b"] = 1
    assert c.lag("b", 12.0) == 1.0
    c.acked["b"] = 2
    assert c.lag("b", 12.0) == 0.0


def test_a_gap_is_refused_and_a_longer_tail_cut(tmp_path):
    import pytest
    copy = ReplicaFiles(str(tmp_path / "m"))
    copy.append("00000000.seg", 0, b"abcdef")
    with pytest.raises(ValueError):
        copy.append("00000000.seg", 10, b"zz")
    copy.append("00000000.seg", 3, b"XY")       # what the member had beyond is dropped
    fsync_all(*copy.sync_targets())
    copy.close()
    assert (tmp_path / "m" / "00000000.seg").read_bytes() == b"abcXY"


def test_replica_files_track_sizes_without_asking_the_file(tmp_path):
    """Appends check the offset against the size ReplicaFiles keeps (no fstat per op): an
    existing file's size is read once, a torn tail is cut, a truncate and a whole file
    reset it, a gap is refused."""
    directory = tmp_path / "member"
    directory.mkdir()
    (directory / "00000001.seg").write_bytes(b"abcdefXX")       # a torn tail of 2 bytes
    copy = ReplicaFiles(str(directory))
    copy.append("00000001.seg", 6, b"ghi")
    copy.append("00000001.seg", 9, b"jk")
    copy.truncate("00000001.seg", 4)
    copy.append("00000001.seg", 4, b"EF")
    try:
        copy.append("00000001.seg", 7, b"gap")
    except ValueError:
        pass
    else:
        raise AssertionError("a gap was accepted")
    copy.whole("00000001.seg", b"123")
    copy.append("00000001.seg", 3, b"45")
    fsync_all(*copy.sync_targets())
    copy.close()
    assert (directory / "00000001.seg").read_bytes() == b"12345"


def test_tickets_wait_on_the_last_operation_of_the_write_that_carried_them():
    """The leader ships with carry=False and calls carry() once the log wrote its records:
    an operation shipped before (a summary after an fsync) or a first chunk of a turn that
    crossed a segment boundary does not confirm them."""
    c = Commits(["a", "b"])
    t = object()
    c.add(t)
    early = c.op(0.0, carry=False)          # a segment summary, before the record
    c.op(0.0, carry=False)                  # the first chunk
    last = c.op(0.0, carry=False)           # the chunk in the next segment
    c.carry()
    c.acked["b"] = early
    assert c.ready(["a", "b"], "a") == []
    c.acked["b"] = last - 1
    assert c.ready(["a", "b"], "a") == []
    c.acked["b"] = last
    assert c.ready(["a", "b"], "a") == [t]
