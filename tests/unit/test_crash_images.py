"""Power cuts at the level of the store, without sockets: the store's file operations are
recorded through its I/O seam (tests/powerloss.py RecordingIO) and replayed into the disk model,
which writes the data directory a power cut would leave (only what was fsynced, plus any prefix
of the rest). Each test is a bug the crash harness found, or one it would find, pinned down."""
import os
import random

import pytest

from amqpd.store import records
from amqpd.store.queue_log import QueueLog
from amqpd.store.store import FORMAT, Store
from tests.powerloss import Model, RecordingIO

ROUTE = b"\x02ex\x03key"
HEADER = b"\x00\x3c\x00\x00\x00\x00\x00\x00\x00\x05\x10\x00\x02"


def body(seq: int) -> bytes:
    return (b"m%d-" % seq).ljust(40, b".")


def image(events, root, dest, style="min", seed=0, upto=None) -> str:
    """The data directory a power cut after events[:upto] may leave."""
    model = Model(root)
    model.advance(events, len(events) if upto is None else upto)
    model.materialize(dest, random.Random(seed), style)
    return dest


def group_commit(store: Store) -> None:
    """What the edge does in one loop turn: write, fsync (and remove deleted queues' files),
    report."""
    store.commit.write_pending()
    job = store.commit.begin_sync()
    if job is not None:
        store.commit.sync(job)
        store.commit.synced(job)


def recover_in(path: str) -> list:
    if not os.path.isdir(path):
        return []
    return [m[0] for m in QueueLog(path).recover()[0]]


# -- the model itself -------------------------------------------------------------------------
def test_the_model_keeps_only_what_was_fsynced(tmp_path):
    events: list = []
    io = RecordingIO(events)
    root = tmp_path / "root"
    root.mkdir()
    fd = io.open(str(root / "a"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    io.write_all(fd, b"synced")
    io.fsync(fd)
    marks = {"file synced": len(events)}
    io.fsync_dir(str(root))
    marks["name synced"] = len(events)
    io.write_all(fd, b"+later")
    io.close(fd)
    cut = lambda name, style, upto: image(events, root, str(tmp_path / name), style, upto=upto)
    assert os.listdir(cut("i1", "min", marks["file synced"])) == []      # name not durable
    assert (tmp_path / cut("i2", "min", marks["name synced"]) / "a").read_bytes() == b"synced"
    assert (tmp_path / cut("i3", "min", None) / "a").read_bytes() == b"synced"
    assert (tmp_path / cut("i4", "max", None) / "a").read_bytes() == b"synced+later"
    seen = set()
    for seed in range(60):
        d = image(events, root, str(tmp_path / f"r{seed}"), "random", seed)
        seen.add((d and (tmp_path / d / "a").read_bytes()))
    assert all(s.startswith(b"synced") and b"synced+later".startswith(s.rstrip(b"\0"))
               for s in seen)
    assert len(seen) > 3                                   # torn at several places


# -- bugs -------------------------------------------------------------------------------------
def test_a_new_segment_file_survives_once_its_records_are_confirmed(tmp_path):
    """Bug: segment files were created without an fsync of their directory: a power cut after
    the confirm could lose the whole segment (every message in it)."""
    events: list = []
    path = str(tmp_path / "q")
    qlog = QueueLog(path, segment_size=200, io=RecordingIO(events))
    for seq in range(1, 13):
        qlog.append_message(seq, ROUTE, HEADER, body(seq))
        if seq % 4 == 0:                         # a group commit every few messages
            qlog.write()
            fds, dirs = qlog.sync_targets()
            for fd in fds:
                qlog.io.fsync(fd)
                qlog.io.close(fd)
            for d in dirs:
                qlog.io.fsync_dir(d)
    assert qlog.active >= 4
    # The root of the model is the queue's parent: the queue directory's own name is synced
    # here too (sync_targets names the parent for a new queue directory).
    img = image(events, str(tmp_path), str(tmp_path / "img"))
    assert recover_in(os.path.join(img, "q")) == list(range(1, 13))


def test_a_new_queue_directory_survives_once_its_messages_are_confirmed(tmp_path):
    """Bug: a durable queue's directory was created without an fsync of queues/: a power cut
    after the confirm lost the queue's messages."""
    events: list = []
    data = tmp_path / "data"
    data.mkdir()
    store = Store(str(data), io=RecordingIO(events))
    qlog = store.queue_log("/", "q")
    qlog.append_message(1, ROUTE, HEADER, body(1))
    store.commit.mark_dirty(qlog)
    group_commit(store)
    assert store.commit.synced_gen == 1              # the publish would be confirmed now
    img = image(events, str(data), str(tmp_path / "img"))
    rel = os.path.relpath(qlog.path, data)
    assert recover_in(os.path.join(img, rel)) == [1]
    store.close()


def test_the_format_file_is_whole_or_absent_after_any_cut(tmp_path):
    """Bug: FORMAT was written in place without fsync; a power cut could leave it empty or
    torn, and the next start refused the data directory ("has format ''")."""
    for mode in ("batch", "never"):
        events: list = []
        data = tmp_path / f"data-{mode}"
        data.mkdir()
        Store(str(data), fsync=mode, io=RecordingIO(events)).close()
        for upto in range(len(events) + 1):
            for style, seed in (("min", 0), ("random", upto), ("max", 0)):
                img = image(events, str(data), str(tmp_path / f"i-{mode}-{upto}-{style}"),
                            style, seed, upto)
                fmt = os.path.join(img, "FORMAT")
                assert not os.path.exists(fmt) or open(fmt).read() == FORMAT + "\n"
                Store(img).close()                  # opens


def test_a_deleted_queue_never_comes_back_under_a_queue_declared_with_its_name(tmp_path):
    """Bug: a queue's files were removed without an fsync of queues/; after delete-ok and a
    new declare of the same name, a power cut could bring the old directory back, and its
    messages with it, inside the new queue."""
    events: list = []
    data = tmp_path / "data"
    data.mkdir()
    store = Store(str(data), io=RecordingIO(events))
    store.remove_orphans([])                      # as after recovery
    old = store.queue_log("/", "q")
    for seq in (1, 2, 3):
        old.append_message(seq, ROUTE, HEADER, b"old")
    store.commit.mark_dirty(old)
    group_commit(store)
    store.delete_queue_log("/", "q")                # renamed away, name free at once
    group_commit(store)                             # delete-ok goes out after this
    deleted = len(events)
    new = store.queue_log("/", "q")                 # declared again
    new.append_message(1, ROUTE, HEADER, b"new")
    store.commit.mark_dirty(new)
    store.commit.write_pending()                           # written, not yet fsynced
    rel = os.path.relpath(new.path, data)
    for upto in range(deleted, len(events) + 1):
        for style, seed in (("min", 0), ("random", upto), ("random", upto + 99)):
            img = image(events, str(data), str(tmp_path / f"i{upto}{style}{seed}"), style,
                        seed, upto)
            path = os.path.join(img, rel)
            if os.path.isdir(path):
                live = QueueLog(path).recover()[0]
                assert all(m[3] == b"new" for m in live), (upto, style)
    store.close()


def test_sequence_numbers_are_not_reused_when_a_deleted_segment_comes_back(tmp_path):
    """Bug: the highest seq was read back from the surviving segments only. When the last
    segment held no record of the highest seq (it was started by a marker after a failed
    fsync moved the log to a fresh segment), a restart reused seqs; a power cut that then
    undid the deletion of an older segment let its SETTLED markers settle the new messages.
    Segment headers now carry the high-water mark."""
    events: list = []
    path = str(tmp_path / "q")
    io = RecordingIO(events)

    def commit(qlog):
        qlog.write()
        fds, dirs = qlog.sync_targets()
        for fd in fds:
            io.fsync(fd)
            io.close(fd)
        for d in dirs:
            io.fsync_dir(d)

    qlog = QueueLog(path, io=io)
    for seq in (1, 2, 3):
        qlog.append_message(seq, ROUTE, HEADER, body(seq))
    qlog.settle(3, 0)                               # seq 3 acked: its marker is in segment 0
    commit(qlog)
    qlog.abandon_segment()                          # an fsync failed: a fresh segment next
    qlog.delivered(1)                               # segment 1 starts with a marker
    commit(qlog)
    qlog.settle(1, 0)
    qlog.settle(2, 0)                               # segment 0 is deleted (not yet durable)
    commit(qlog)
    qlog.close()
    # restart: the next message gets a seq above everything ever written
    qlog = QueueLog(path, io=io)
    live, top = qlog.recover()
    assert live == [] and top >= 3
    qlog.append_message(top + 1, ROUTE, HEADER, b"confirmed")
    commit(qlog)                                    # confirmed now
    qlog.close()
    img = image(events, str(tmp_path), str(tmp_path / "img"))
    assert sorted(os.listdir(os.path.join(img, "q"))) == ["00000000.seg", "00000001.seg"]
    live, _ = QueueLog(os.path.join(img, "q")).recover()
    assert [m[3] for m in live] == [b"confirmed"]


def test_format_1_segments_are_still_read(tmp_path):
    """Segment headers without the high-water mark (format 1) recover as before."""
    path = tmp_path / "q"
    path.mkdir()
    salt = bytes(range(8))
    seed = records.seed_of(salt)
    old_header = records._frame([bytes([records.SEGMENT]), salt], 0)
    with open(path / "00000000.seg", "wb") as f:
        f.write(old_header + records.message(4, ROUTE, HEADER, b"x", seed))
    live, top = QueueLog(str(path)).recover()
    assert [(m[0], m[3]) for m in live] == [(4, b"x")] and top == 4


@pytest.mark.parametrize("found", ["amqpd-store 1", ""])
def test_format_1_and_empty_format_are_upgraded(tmp_path, found):
    data = tmp_path / "data"
    data.mkdir()
    (data / "FORMAT").write_text(found + "\n" if found else "")
    Store(str(data)).close()
    assert (data / "FORMAT").read_text() == FORMAT + "\n"
