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


# -- the catch-up in chunks (catch_up.py) ---------------------------------------------------------
import hashlib
import random
import shutil
import threading

from amqpd.cluster.catch_up import CatchUp


def drive(cu: CatchUp, copy: ReplicaFiles, between=lambda: None, watch=None, rounds=20,
          final_bytes=0) -> list:
    """Run a catch-up as the Shipper does, without sockets: passes of the bulk (each chunk
    applied to the member's copy as the member would), then the final plan, applied too.
    ``between()`` runs between any two steps (the leader's log going on meanwhile: on the
    loop, while a worker thread reads); ``watch()`` after each bulk operation. Returns the
    bulk's operations."""
    bulk = []
    for _ in range(rounds):
        todo = cu.survey()
        if cu.pending <= final_bytes and all(c.check is None for c in todo):
            break
        for c in todo:
            between()
            if c.check is not None and not cu.verify(c):
                continue
            while c.sent < c.limit:
                between()
                op = cu.read(c)
                copy.apply(op)
                bulk.append(op)
                if watch is not None:
                    watch()
    between()
    for op in cu.plan():
        copy.apply(op)
    fsync_all(*copy.sync_targets())
    return bulk


def write_new(path, data: bytes) -> None:
    """A whole file replaced as the log does it (a temporary file renamed over it)."""
    with open(str(path) + ".tmp", "wb") as f:
        f.write(data)
    os.replace(str(path) + ".tmp", path)


def prefixes_kept(directory: str, before: dict) -> None:
    """Every file the member had is still there and begins with what it had."""
    now = tree(directory)
    for name, data in before.items():
        assert name in now and now[name][:len(data)] == data, f"{name} lost bytes mid-way"


def test_chunked_catch_up_gives_the_files_plan_sync_gives_under_changes(tmp_path):
    """The leader's files change while the bulk copies them: appended, a failed write cut
    back, replaced whole (a compaction), unlinked, created; the member holds a prefix, a
    differing file, a file the leader lacks. After the final plan the member's files are
    the leader's, as plan_sync from the member's first state makes them; and during the
    bulk nothing the member had lost a byte."""
    rnd = random.Random(7)

    def blob(n):
        return rnd.randbytes(n)
    leader = tmp_path / "leader"
    leader.mkdir()
    member = tmp_path / "member"
    member.mkdir()
    files = {"00000001.seg": blob(300_000), "00000001.idx": blob(9_000),
             "00000002.seg": blob(250_000), "00000003.seg": blob(200_000),
             "00000004.seg": blob(100_000), "00000005.seg": blob(150_000)}
    for name, data in files.items():
        (leader / name).write_bytes(data)
    (member / "00000001.seg").write_bytes(files["00000001.seg"][:70_000])     # a prefix
    (member / "00000003.seg").write_bytes(files["00000003.seg"][:50_000] + b"X" * 10)
    (member / "00000009.seg").write_bytes(b"uncommitted")                     # not ours
    theirs = file_state(str(member))
    before = tree(str(member))
    plain = tmp_path / "plain"
    shutil.copytree(member, plain)
    steps = []

    def between():
        steps.append(None)
        n = len(steps)
        seg4 = leader / "00000004.seg"
        if n % 3 == 0:                                   # the active segment grows
            with open(seg4, "ab") as f:
                f.write(blob(7_000))
        if n == 5:                                       # a failed write, cut back
            size = seg4.stat().st_size
            with open(seg4, "ab") as f:
                f.write(b"torn" * 100)
            os.truncate(seg4, size)
        if n == 4:                                       # compaction: replaced whole
            write_new(leader / "00000002.seg", blob(120_000))
        if n == 6:                                       # settled: unlinked
            (leader / "00000005.seg").unlink()
        if n == 8:                                       # a new segment
            (leader / "00000006.seg").write_bytes(blob(90_000))
        if n == 10:                                      # a summary written (replaced)
            write_new(leader / "00000001.idx", blob(9_500))

    copy = ReplicaFiles(str(member))
    cu = CatchUp(str(leader), theirs, chunk=32 << 10)
    bulk = drive(cu, copy, between, watch=lambda: prefixes_kept(str(member), before))
    cu.close()
    copy.close()
    assert len(steps) > 10 and bulk
    assert all(op[0] == "append" for op in bulk), "the bulk only extends files"
    assert {op[1] for op in bulk} >= {"00000001.seg", "00000002.seg", "00000004.seg"}
    assert "00000003.seg" not in {op[1] for op in bulk}, "a differing file is left whole"
    expected = tree(str(leader))
    assert tree(str(member)) == expected
    # plan_sync from the member's first state, all at once, makes the same files
    other = ReplicaFiles(str(plain))
    names = os.listdir(leader)

    def read(name):
        with open(leader / name, "rb") as f:
            return f.read()
    for op in plan_sync(names, read, theirs):
        other.apply(op)
    fsync_all(*other.sync_targets())
    other.close()
    assert tree(str(plain)) == expected


def test_the_final_plan_reads_only_the_tails(tmp_path):
    """What the bulk copied is not read again: the final step sends the bytes appended
    since the last pass (read from the end), and nothing for files unchanged."""
    leader = tmp_path / "leader"
    leader.mkdir()
    (leader / "00000001.seg").write_bytes(b"a" * 100_000)
    (leader / "00000002.seg").write_bytes(b"b" * 100_000)
    member = tmp_path / "member"
    cu = CatchUp(str(leader), {}, chunk=16 << 10)
    copy = ReplicaFiles(str(member))
    todo = cu.survey()
    assert cu.pending == 200_000
    for c in todo:
        while c.sent < c.limit:
            copy.apply(cu.read(c))
    with open(leader / "00000002.seg", "ab") as f:
        f.write(b"c" * 10)
    assert cu.survey() == [c for c in cu.copies.values() if c.name == "00000002.seg"]
    assert cu.pending == 10
    ops = cu.plan()
    assert ops == [("append", "00000002.seg", 100_000, b"c" * 10)]
    for op in ops:
        copy.apply(op)
    fsync_all(*copy.sync_targets())
    copy.close()
    cu.close()
    assert tree(str(member)) == tree(str(leader))
    # a file cut below what was copied (not something the log does) is sent whole
    cu = CatchUp(str(leader), file_state(str(member)), chunk=16 << 10)
    for c in cu.survey():
        assert cu.verify(c)
    os.truncate(leader / "00000001.seg", 50)
    assert cu.plan() == [("whole", "00000001.seg", b"a" * 50)]
    cu.close()


def test_a_differing_member_file_is_not_touched_by_the_bulk(tmp_path):
    """A deposed leader's segment (a common start, then bytes never committed) and its
    summary are left to the final step, which replaces them whole (atomically)."""
    leader = tmp_path / "leader"
    leader.mkdir()
    (leader / "00000001.seg").write_bytes(b"common" + b"L" * 50_000)
    (leader / "00000001.idx").write_bytes(b"leader's summary")
    member = tmp_path / "member"
    member.mkdir()
    (member / "00000001.seg").write_bytes(b"common" + b"M" * 60_000)
    cu = CatchUp(str(leader), file_state(str(member)), chunk=4096)
    copy = ReplicaFiles(str(member))
    assert drive(cu, copy) == []
    copy.close()
    cu.close()
    assert tree(str(member)) == tree(str(leader))


def test_a_job_still_reading_keeps_its_descriptors_open(tmp_path):
    """A task cancelled while a worker thread reads for it closes the catch-up: the
    descriptors are closed by the job when it ends, never under it."""
    leader = tmp_path / "leader"
    leader.mkdir()
    (leader / "00000001.seg").write_bytes(b"x" * 1000)
    cu = CatchUp(str(leader), {})
    (c,) = cu.survey()
    fd = c.fd
    go, inside = threading.Event(), threading.Event()

    def slow_read(copy):
        inside.set()
        go.wait(5)
        return cu.read(copy)
    result = {}
    thread = threading.Thread(target=lambda: result.update(op=cu.threaded(slow_read, c)()))
    thread.start()
    inside.wait(5)
    cu.close()
    os.fstat(fd)                                   # still open: the job reads it
    go.set()
    thread.join(5)
    assert result["op"] == ("append", "00000001.seg", 0, b"x" * 1000)
    try:
        os.fstat(fd)
    except OSError:
        pass
    else:
        raise AssertionError("the descriptor was left open")


def test_file_state_hashes_in_chunks(tmp_path):
    data = os.urandom(300_000)
    (tmp_path / "00000001.seg").write_bytes(data)
    (tmp_path / "junk.tmp").write_bytes(b"x")
    assert file_state(str(tmp_path), chunk=4096) == {
        "00000001.seg": [len(data), hashlib.sha1(data).hexdigest()]}


def leader_turn(qlog: QueueLog) -> None:
    """One turn of a leader's log: records handed to the OS, fsynced, summaries written."""
    qlog.write()
    fds, _dirs = qlog.sync_targets()
    for fd in fds:
        os.close(fd)
    qlog.index_synced()


def test_catch_up_of_a_live_log(tmp_path):
    """A real QueueLog goes on (appends, acks, whole segments unlinked, compactions,
    summaries) while a member that was away catches up in chunks: the member ends with the
    leader's files, and at every point of the bulk its copy, recovered, still has every
    message it had that the leader has not settled (what a promotion mid-way would
    serve)."""
    for seed in range(10):
        rnd = random.Random(seed)
        base = tmp_path / str(seed)
        qlog = QueueLog(str(base / "leader"), segment_size=8192)
        copy = ReplicaFiles(str(base / "member"))
        qlog.tap = Replay(qlog.path, copy)
        live, where, seq = {}, {}, 0

        def publish(n):
            nonlocal seq
            for _ in range(n):
                seq += 1
                where[seq] = qlog.append_message(seq, b"\x00\x01q", b"\x00" * 14,
                                                 rnd.randbytes(rnd.randrange(10, 400)))
                live[seq] = None

        def ack(n):
            # mostly the oldest, a few left behind: settled segments behind live ones,
            # so compactions rewrite segments (and summaries come and go)
            old = [s for s in sorted(live) if s % 13 or rnd.random() < 0.1][:n]
            for s in old:
                qlog.settle(s, where[s])
                del live[s]

        def compact():
            for number in qlog.compaction_targets():
                qlog.compact(number, {s: False for s in live if where[s] == number},
                             sync=False)
            qlog._drop_settled_prefix()           # (as the pager does after compacting)

        def step():
            action = rnd.random()
            if action < 0.6:
                publish(rnd.randrange(1, 30))
            elif action < 0.85:
                ack(rnd.randrange(1, 40))
            else:
                compact()
            leader_turn(qlog)

        for _ in range(30):
            step()
        fsync_all(*copy.sync_targets())
        qlog.tap = None                           # the member goes away
        copy.close()
        had = {s for s, *_ in QueueLog(copy.directory).recover()[0]}
        for _ in range(rnd.randrange(5, 40)):
            step()
        member = ReplicaFiles(copy.directory)
        cu = CatchUp(qlog.path, file_state(copy.directory), chunk=rnd.choice([2048, 8192]))
        checks = []

        def watch():
            if rnd.random() < 0.1 and len(checks) < 8:    # a promotion now would recover this
                snap = str(base / f"snap{len(checks)}")
                shutil.copytree(copy.directory, snap)
                got = {s for s, *_ in QueueLog(snap).recover()[0]}
                checks.append(snap)
                missing = (had & set(live)) - got
                assert not missing, f"seed {seed}: {sorted(missing)[:5]} lost mid-way"
        drive(cu, member, between=lambda: rnd.random() < 0.15 and step(), watch=watch)
        cu.close()
        member.close()
        assert tree(copy.directory) == tree(qlog.path), f"seed {seed}"
        assert {s for s, *_ in QueueLog(copy.directory).recover()[0]} == set(live)
        qlog.close()


def test_a_file_replaced_or_unlinked_meanwhile_is_let_go(tmp_path):
    """The next survey lets go of a file whose path names another one (or none): its
    descriptor is closed (a deleted segment's space is not held by a long catch-up), the
    member keeps what it got, and the final plan compares or unlinks it."""
    leader = tmp_path / "leader"
    leader.mkdir()
    (leader / "00000001.seg").write_bytes(b"1" * 50_000)
    (leader / "00000002.seg").write_bytes(b"2" * 50_000)
    cu = CatchUp(str(leader), {}, chunk=10_000)
    copy = ReplicaFiles(str(tmp_path / "member"))
    for c in cu.survey():
        copy.apply(cu.read(c))
    (leader / "00000001.seg").unlink()
    write_new(leader / "00000002.seg", b"2" * 10_000 + b"compacted")
    assert cu.survey() == [] and cu.pending == 0
    assert all(c.stale and c.fd == -1 for c in cu.copies.values())
    ops = cu.plan()
    assert ops == [("append", "00000002.seg", 10_000, b"compacted"),
                   ("unlink", "00000001.seg")]
    for op in ops:
        copy.apply(op)
    fsync_all(*copy.sync_targets())
    copy.close()
    cu.close()
    assert tree(str(tmp_path / "member")) == tree(str(leader))
