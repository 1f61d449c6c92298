"""Unit tests for the store (no sockets): the record format, a queue's segment log and its
recovery from damage, the data directory (lock, format version, group commit) and the
definitions journal."""
import errno
import json
import logging
import os

import pytest

from amqpd.store import records
from amqpd.store.definitions import DefinitionsJournal, decode_args, encode_args
from amqpd.store.fileio import FileIO
from amqpd.store.queue_log import QueueLog
from amqpd.store.commit import RECOVERED_AFTER
from amqpd.store.store import FORMAT, Store, StoreError
from tests.unit.stubs import commit_turn

ROUTE = b"\x02ex\x03key"          # exchange "ex", routing key "key" as two shortstrs
HEADER = b"\x00\x3c\x00\x00\x00\x00\x00\x00\x00\x05\x10\x00\x02"   # any raw header bytes


class FailureLog:
    """Stands where a channel with confirms outstanding stands: a waiter of the commit path,
    recording the generations it is told failed (it stays registered, as a channel with
    publishes outstanding does)."""

    def __init__(self, commit):
        self.commit = commit
        self.failed: list = []
        commit.wait(self)

    def nack_generations(self, lo: int, hi: int) -> None:
        self.failed.append((lo, hi))

    def flush_confirms(self) -> None:
        self.commit.wait(self)


def body(seq: int, size: int = 24) -> bytes:
    return (b"m%d-" % seq).ljust(size, b".")


def segments(path) -> list[int]:
    return sorted(int(n[:-4]) for n in os.listdir(path) if n.endswith(".seg"))


def seg_file(path, number: int) -> str:
    return os.path.join(path, f"{number:08d}.seg")


def seqs(live) -> list[int]:
    return [m[0] for m in live]


def recover(path, **kw):
    return QueueLog(str(path), **kw).recover()


def build(path, n: int = 5, **kw) -> QueueLog:
    """A closed log holding messages 1..n (one segment unless segment_size says otherwise)."""
    qlog = QueueLog(str(path), **kw)
    for seq in range(1, n + 1):
        qlog.append_message(seq, ROUTE, HEADER, body(seq))
    qlog.close()
    return qlog


def record_spans(data: bytes) -> list:
    """(offset, size, record) of every record of intact segment bytes."""
    problems = []
    out = [(r.offset, r.size, r) for r in records.scan(data, problems)]
    assert not problems
    return out


# -- records -------------------------------------------------------------------------------------
def test_message_record_round_trip():
    big = bytes(range(256)) * 600 + records.MAGIC * 10      # binary, with magic bytes inside
    data = records.message(7, ROUTE, HEADER, big)
    (rec,) = list(records.scan(data))
    assert (rec.kind, rec.seq, rec.route, rec.header, rec.body) == (records.MESSAGE, 7, ROUTE,
                                                                     HEADER, big)
    assert (rec.offset, rec.size) == (0, len(data))
    assert data[:2] == records.MAGIC
    assert len(data) == records.HEAD_SIZE + 1 + 8 + 2 + len(ROUTE) + 4 + len(HEADER) + len(big)


@pytest.mark.parametrize("kind", [records.SETTLED, records.DELIVERED])
def test_marker_record_round_trip(kind):
    data = records.marker(kind, 2**64 - 1)
    (rec,) = list(records.scan(data))
    assert (rec.kind, rec.seq, rec.route, rec.header, rec.body) == (kind, 2**64 - 1, None, None,
                                                                    None)
    assert rec.size == len(data) == records.HEAD_SIZE + 9


def test_empty_fields_round_trip():
    (rec,) = list(records.scan(records.message(1, b"\x00\x00", b"", b"")))
    assert (rec.route, rec.header, rec.body) == (b"\x00\x00", b"", b"")


def test_scan_yields_records_in_order_with_offsets_and_read_at(tmp_path):
    parts = [records.message(1, ROUTE, HEADER, b"one"), records.marker(records.DELIVERED, 1),
             records.message(2, ROUTE, HEADER, b"two"), records.marker(records.SETTLED, 1)]
    data = b"".join(parts)
    problems = []
    recs = list(records.scan(data, problems))
    assert problems == []
    assert [(r.kind, r.seq) for r in recs] == [(1, 1), (3, 1), (1, 2), (2, 1)]
    offsets = [sum(map(len, parts[:i])) for i in range(len(parts))]
    assert [r.offset for r in recs] == offsets
    path = tmp_path / "seg"
    path.write_bytes(data)
    again = records.read_at(str(path), offsets[2])
    assert (again.seq, again.body) == (2, b"two")
    assert records.read_at(str(path), len(data)) is None


# -- queue log: appends and recovery -------------------------------------------------------------
def test_append_settle_delivered_write_and_recover_in_order(tmp_path):
    path = tmp_path / "q"
    qlog = QueueLog(str(path))
    assert qlog.write() is False                        # nothing buffered: nothing written
    segs = {seq: qlog.append_message(seq, ROUTE, HEADER, body(seq)) for seq in range(1, 7)}
    assert set(segs.values()) == {0}
    assert not os.path.exists(seg_file(path, 0))        # buffered until write()
    assert qlog.write() is True and qlog.fd is not None
    assert os.path.getsize(seg_file(path, 0)) == qlog.active_size
    qlog.settle(2, segs[2])
    qlog.delivered(3)
    qlog.delivered(5)
    qlog.settle(5, segs[5])
    qlog.close()

    live, top = recover(path)
    assert top == 6
    assert live == [(1, ROUTE, HEADER, body(1), False, 0, None),
                    (3, ROUTE, HEADER, body(3), True, 0, None),
                    (4, ROUTE, HEADER, body(4), False, 0, None),
                    (6, ROUTE, HEADER, body(6), False, 0, None)]


def test_expiry_markers_carry_the_ttl_deadline_across_recovery(tmp_path):
    path = tmp_path / "q"
    qlog = QueueLog(str(path))
    seg = qlog.append_message(1, ROUTE, HEADER, body(1))
    qlog.expiry(1, 1_700_000_000_123)
    qlog.append_message(2, ROUTE, HEADER, body(2))
    qlog.close()
    live, _ = recover(path)
    assert [(m[0], m[6]) for m in live] == [(1, 1_700_000_000_123), (2, None)]
    assert seg == 0


def test_recovered_log_keeps_appending_and_settling(tmp_path):
    path = tmp_path / "q"
    build(path, 3)
    qlog = QueueLog(str(path))
    live, top = qlog.recover()
    assert seqs(live) == [1, 2, 3] and top == 3
    qlog.settle(1, live[0][5])
    qlog.append_message(4, ROUTE, HEADER, body(4))
    qlog.close()
    assert seqs(recover(path)[0]) == [2, 3, 4]


def test_empty_directory_recovers_nothing(tmp_path):
    assert recover(tmp_path / "q") == ([], 0)


def test_unwritten_records_are_not_recovered(tmp_path):
    """Only what write() handed to the OS exists after a crash."""
    path = tmp_path / "q"
    qlog = QueueLog(str(path))
    qlog.append_message(1, ROUTE, HEADER, body(1))
    qlog.write()
    qlog.append_message(2, ROUTE, HEADER, body(2))      # never written: the process died
    assert seqs(recover(path)[0]) == [1]


def test_orphan_settled_marker_is_ignored(tmp_path):
    path = tmp_path / "q"
    build(path, 3)
    seed = seed_of_segment(path, 0)
    with open(seg_file(path, 0), "ab") as f:
        f.write(records.marker(records.SETTLED, 999, seed))
        f.write(records.marker(records.DELIVERED, 998, seed))
    live, top = recover(path)
    assert seqs(live) == [1, 2, 3]
    assert [m[4] for m in live] == [False] * 3
    assert top == 999          # the markers were read (valid), and matched nothing


def test_delivered_markers_set_the_delivered_flag(tmp_path):
    path = tmp_path / "q"
    qlog = QueueLog(str(path))
    for seq in range(1, 5):
        qlog.append_message(seq, ROUTE, HEADER, body(seq))
    qlog.delivered(2)
    qlog.delivered(4)
    qlog.delivered(4)                    # twice is the same as once
    qlog.close()
    assert [(m[0], m[4]) for m in recover(path)[0]] == [(1, False), (2, True), (3, False),
                                                         (4, True)]


# -- queue log: damage ---------------------------------------------------------------------------
def test_torn_last_record_every_offset(tmp_path):
    """A crash mid-write: whatever prefix of the last record reached the disk, recovery returns
    exactly the earlier messages and cuts the file back to the end of the last good record."""
    path = tmp_path / "q"
    build(path, 3)
    f = seg_file(path, 0)
    intact = open(f, "rb").read()
    last_offset = record_spans(intact)[-1][0]
    for cut in range(last_offset, len(intact)):
        with open(f, "wb") as out:
            out.write(intact[:cut])
        live, _ = recover(path)
        assert seqs(live) == [1, 2], cut
        assert [m[3] for m in live] == [body(1), body(2)], cut
        assert os.path.getsize(f) == last_offset, cut
    # appends continue from the clean end and are recovered after the survivors
    qlog = QueueLog(str(path))
    live, top = qlog.recover()
    qlog.append_message(top + 1, ROUTE, HEADER, b"after the tear")
    qlog.close()
    live, _ = recover(path)
    assert seqs(live) == [1, 2, 3]
    assert live[-1][3] == b"after the tear"
    problems = []
    list(records.scan(open(f, "rb").read(), problems))
    assert problems == []


@pytest.mark.parametrize("kind, expect", [
    (records.SETTLED, [1, 2, 3]),        # the settle did not reach the disk: message 2 is back
    (records.DELIVERED, [1, 3]),
])
def test_torn_last_marker(tmp_path, kind, expect):
    path = tmp_path / "q"
    qlog = QueueLog(str(path))
    for seq in (1, 2, 3):
        qlog.append_message(seq, ROUTE, HEADER, body(seq))
    qlog.settle(2, 0)
    qlog.write()
    if kind == records.DELIVERED:
        qlog.delivered(3)
    qlog.close()
    f = seg_file(path, 0)
    intact = open(f, "rb").read()
    last_offset = record_spans(intact)[-1][0]
    for cut in range(last_offset + 1, len(intact)):
        with open(f, "wb") as out:
            out.write(intact[:cut])
        live, _ = recover(path)
        assert seqs(live) == expect, cut
        assert not any(m[4] for m in live), cut
        assert os.path.getsize(f) == last_offset


REGIONS = {"magic": (0, 2), "length": (2, 6), "crc": (6, 10), "payload": (10, None)}


@pytest.mark.parametrize("region", list(REGIONS))
@pytest.mark.parametrize("victim", [0, 2, 4])      # first, middle, last record
def test_flipped_byte_drops_only_that_record(tmp_path, region, victim, caplog):
    path = tmp_path / "q"
    build(path, 5)
    f = seg_file(path, 0)
    intact = open(f, "rb").read()
    spans = record_spans(intact)
    offset, size, _ = spans[victim]
    lo, hi = REGIONS[region]
    hi = size if hi is None else hi
    expect = [s for s in range(1, 6) if s != victim + 1]
    for pos in range(offset + lo, offset + hi):
        for flip in (0x01, 0xFF):
            damaged = bytearray(intact)
            damaged[pos] ^= flip
            with open(f, "wb") as out:
                out.write(damaged)
            with caplog.at_level(logging.WARNING, logger="amqpd.store"):
                live, _ = recover(path)
            assert seqs(live) == expect, (pos, flip)
            assert [m[3] for m in live] == [body(s) for s in expect]
            # a damaged record in the middle stays on disk; only a damaged tail is cut off
            end = offset if victim == len(spans) - 1 else len(intact)
            assert os.path.getsize(f) == end
    assert "dropped" in caplog.text


def test_flipped_byte_in_a_settled_marker_brings_that_message_back(tmp_path):
    """At-least-once: a lost SETTLED marker means redelivery, never a lost message."""
    path = tmp_path / "q"
    qlog = QueueLog(str(path))
    for seq in (1, 2, 3):
        qlog.append_message(seq, ROUTE, HEADER, body(seq))
    qlog.settle(2, 0)
    qlog.append_message(4, ROUTE, HEADER, body(4))
    qlog.close()
    f = seg_file(path, 0)
    intact = open(f, "rb").read()
    offset, size, rec = record_spans(intact)[3]
    assert rec.kind == records.SETTLED
    for pos in range(offset, offset + size):
        damaged = bytearray(intact)
        damaged[pos] ^= 0x40
        with open(f, "wb") as out:
            out.write(damaged)
        assert seqs(recover(path)[0]) == [1, 2, 3, 4], pos


def test_several_damaged_records(tmp_path):
    path = tmp_path / "q"
    build(path, 8)
    f = seg_file(path, 0)
    damaged = bytearray(open(f, "rb").read())
    spans = record_spans(bytes(damaged))
    for victim in (1, 2, 5):              # two neighbours and one further on
        damaged[spans[victim][0] + 12] ^= 0xFF
    with open(f, "wb") as out:
        out.write(damaged)
    assert seqs(recover(path)[0]) == [1, 4, 5, 7, 8]


def test_damaged_record_with_a_record_inside_its_body_recovers_no_phantom(tmp_path):
    """A message body may be anything, including bytes that form a valid record (a client
    storing a copy of a segment file, or a hostile publisher). When the outer record is torn or
    damaged, recovery must not turn its body into messages."""
    path = tmp_path / "q"
    qlog = QueueLog(str(path))
    qlog.append_message(1, ROUTE, HEADER, body(1))
    inner = records.message(99, ROUTE, HEADER, b"phantom")
    qlog.append_message(2, ROUTE, HEADER, b"<<" + inner + b">>")
    qlog.close()
    f = seg_file(path, 0)
    intact = open(f, "rb").read()
    with open(f, "wb") as out:
        out.write(intact[:-1])                           # torn tail of message 2
    assert seqs(recover(path)[0]) == [1]


def test_truncated_middle_segment(tmp_path):
    """A middle segment lost its end: every intact record (before the cut and in the other
    segments) is recovered, and nothing else."""
    path = tmp_path / "q"
    qlog = build(path, 9, segment_size=300)
    number_of = {m[0]: m[5] for m in recover(path)[0]}
    assert len(segments(path)) >= 3
    middle = segments(path)[1]
    f = seg_file(path, middle)
    intact = open(f, "rb").read()
    spans = record_spans(intact)
    assert len(spans) >= 2
    for cut in range(len(intact)):
        with open(f, "wb") as out:
            out.write(intact[:cut])
        lost = {r.seq for off, size, r in spans if off + size > cut}
        expect = [s for s in range(1, 10) if s not in lost]
        live, _ = recover(path, segment_size=300)
        assert seqs(live) == expect, cut
        assert all(m[5] == number_of[m[0]] for m in live)
        assert [m[3] for m in live] == [body(s) for s in expect]
    assert qlog.active == segments(path)[-1]


def test_empty_last_segment(tmp_path):
    path = tmp_path / "q"
    build(path, 4, segment_size=200)
    last = segments(path)[-1]
    open(seg_file(path, last + 1), "wb").close()
    qlog = QueueLog(str(path), segment_size=200)
    live, _ = qlog.recover()
    assert seqs(live) == [1, 2, 3, 4]
    assert qlog.active == last + 1


# -- queue log: segments -------------------------------------------------------------------------
RECORD = len(records.message(1, ROUTE, HEADER, body(1)))


def seed_of_segment(path, number: int) -> int:
    """The CRC seed a hand-written record needs to be valid in that segment."""
    with open(seg_file(path, number), "rb") as f:
        return records.segment_seed(f.read())[0]

SEGHEAD = len(records.segment_header(bytes(8)))    # each segment opens with its salt


def test_segment_rollover(tmp_path):
    path = tmp_path / "q"
    size = SEGHEAD + RECORD * 3 + 5
    qlog = QueueLog(str(path), segment_size=size)
    where = [qlog.append_message(seq, ROUTE, HEADER, body(seq)) for seq in range(1, 11)]
    assert where == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    qlog.close()
    assert segments(path) == [0, 1, 2, 3]
    for n in segments(path):
        assert os.path.getsize(seg_file(path, n)) <= size
    live, _ = recover(path, segment_size=size)
    assert [(m[0], m[5]) for m in live] == list(zip(range(1, 11), where))


def test_oversized_record_gets_a_segment(tmp_path):
    path = tmp_path / "q"
    qlog = QueueLog(str(path), segment_size=100)
    assert qlog.append_message(1, ROUTE, HEADER, b"x" * 500) == 0
    assert qlog.append_message(2, ROUTE, HEADER, b"y" * 500) == 1
    qlog.close()
    assert seqs(recover(path)[0]) == [1, 2]


def test_settling_everything_leaves_only_the_active_segment(tmp_path):
    path = tmp_path / "q"
    size = SEGHEAD + RECORD * 3 + 5
    qlog = QueueLog(str(path), segment_size=size)
    where = {seq: qlog.append_message(seq, ROUTE, HEADER, body(seq)) for seq in range(1, 13)}
    qlog.write()
    assert segments(path) == [0, 1, 2, 3]
    for seq in range(1, 13):                 # settled in order: segments go oldest first
        qlog.settle(seq, where[seq])
        qlog.write()                         # (files go with the next write)
        done = where[seq] if seq % 3 == 0 else where[seq] - 1
        assert segments(path) == [n for n in range(4) if n > done or n == 3], seq
    qlog.close()
    assert segments(path) == [qlog.active] == [3]
    assert recover(path, segment_size=size)[0] == []


def test_settling_out_of_order_deletes_oldest_first(tmp_path):
    path = tmp_path / "q"
    size = SEGHEAD + RECORD * 3 + 5
    qlog = QueueLog(str(path), segment_size=size)
    where = {seq: qlog.append_message(seq, ROUTE, HEADER, body(seq)) for seq in range(1, 13)}
    qlog.write()
    for seq in range(4, 10):                 # segments 1 and 2 fully settled, 0 still live
        qlog.settle(seq, where[seq])
    qlog.write()
    # segment 0 still holds live messages, so 1 and 2 (which hold nothing live) must stay
    # too: a later segment may hold the SETTLED markers of an older segment's messages
    assert segments(path) == [0, 1, 2, 3]
    for seq in (1, 2, 3):
        qlog.settle(seq, where[seq])
    qlog.write()
    assert segments(path) == [3]
    qlog.close()
    assert seqs(recover(path, segment_size=size)[0]) == [10, 11, 12]


def test_long_lived_message_keeps_its_segment(tmp_path):
    path = tmp_path / "q"
    size = SEGHEAD + RECORD * 3 + 5
    qlog = QueueLog(str(path), segment_size=size)
    where = {seq: qlog.append_message(seq, ROUTE, HEADER, body(seq)) for seq in range(1, 13)}
    qlog.write()
    for seq in range(2, 13):
        qlog.settle(seq, where[seq])
    qlog.close()
    assert 0 in segments(path)
    qlog = QueueLog(str(path), segment_size=size)
    live, _ = qlog.recover()
    assert [(m[0], m[5]) for m in live] == [(1, 0)]
    assert 0 in segments(path)
    qlog.settle(1, 0)                        # the old message finally goes
    qlog.close()
    assert segments(path) == [qlog.active]
    assert recover(path, segment_size=size)[0] == []


def test_recovery_deletes_fully_settled_old_segments(tmp_path):
    path = tmp_path / "q"
    size = SEGHEAD + RECORD * 3 + 5
    qlog = QueueLog(str(path), segment_size=size)
    for seq in range(1, 10):
        qlog.append_message(seq, ROUTE, HEADER, body(seq))
    qlog.close()
    # settle markers written by hand into the last segment (a log closed before it cleaned up)
    seed = seed_of_segment(path, 2)
    with open(seg_file(path, 2), "ab") as f:
        for seq in range(1, 7):
            f.write(records.marker(records.SETTLED, seq, seed))
    qlog = QueueLog(str(path), segment_size=size)
    live, top = qlog.recover()
    assert seqs(live) == [7, 8, 9] and top == 9
    assert segments(path) == [2]


def test_disk_use_follows_backlog_when_consumer_keeps_up(tmp_path):
    path = tmp_path / "q"
    size = SEGHEAD + RECORD * 3 + 5
    qlog = QueueLog(str(path), segment_size=size)
    for seq in range(1, 31):                 # publish one, ack it, publish the next ...
        segment = qlog.append_message(seq, ROUTE, HEADER, body(seq))
        qlog.write()
        qlog.settle(seq, segment)
        qlog.write()
    assert qlog.active >= 5
    assert segments(path) == [qlog.active]


def test_delete_removes_the_files(tmp_path):
    path = tmp_path / "q"
    qlog = build(path, 5, segment_size=SEGHEAD + RECORD * 2 + 1)
    qlog.append_message(6, ROUTE, HEADER, body(6))     # buffered: must never reach the disk
    qlog.delete()
    assert qlog.write() is False
    assert not os.path.exists(path) or segments(path) == []


# -- the data directory --------------------------------------------------------------------------
def test_second_store_on_the_same_dir_is_refused_naming_the_owner(tmp_path):
    d = str(tmp_path / "data")
    first = Store(d)
    try:
        with pytest.raises(StoreError) as info:
            Store(d)
        text = str(info.value)
        assert f"pid {os.getpid()}" in text
        assert "in use" in text and os.path.abspath(d) in text
    finally:
        first.close()
    Store(d).close()                              # free again once the owner closed it


def test_fresh_dir_gets_the_format_and_layout(tmp_path):
    d = tmp_path / "data"
    Store(str(d)).close()
    assert (d / "FORMAT").read_text().strip() == FORMAT
    assert (d / "queues").is_dir()
    assert (d / "LOCK").read_text().strip() == str(os.getpid())
    Store(str(d)).close()                         # and it opens again


def test_format_mismatch_is_refused(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "FORMAT").write_text("amqpd-store 999\n")
    with pytest.raises(StoreError) as info:
        Store(str(d))
    assert "amqpd-store 999" in str(info.value) and FORMAT in str(info.value)
    assert (d / "FORMAT").read_text() == "amqpd-store 999\n"     # left alone


def test_a_refused_store_releases_the_lock(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "FORMAT").write_text("amqpd-store 999\n")
    with pytest.raises(StoreError):
        Store(str(d))
    (d / "FORMAT").write_text(FORMAT + "\n")
    Store(str(d)).close()


def test_queue_logs_are_per_vhost_and_name(tmp_path):
    store = Store(str(tmp_path / "data"))
    try:
        a = store.queue_log("/", "q")
        assert store.queue_log("/", "q") is a
        b = store.queue_log("other", "q")
        c = store.queue_log("/", "q2")
        assert len({a.path, b.path, c.path}) == 3
        with open(os.path.join(a.path, "queue.json")) as f:
            assert json.load(f) == {"vhost": "/", "name": "q"}
        a.append_message(1, ROUTE, HEADER, b"x")
        store.commit.mark_dirty(a)
        store.commit.write_pending()
        store.delete_queue_log("/", "q")
        assert not os.path.exists(a.path) or segments(a.path) == []
        assert store.queue_log("/", "q") is not a
    finally:
        store.close()


def test_deleting_a_queue_log_removes_its_directory(tmp_path):
    store = Store(str(tmp_path / "data"))
    try:
        for i in range(3):
            qlog = store.queue_log("/", f"amq.gen-{i}")
            qlog.append_message(1, ROUTE, HEADER, b"x")
            store.commit.mark_dirty(qlog)
            store.commit.write_pending()
            store.delete_queue_log("/", f"amq.gen-{i}")
        # the names are free at once; the files go with the next commit job, off the loop
        assert all(".deleted-" in name for name in os.listdir(tmp_path / "data" / "queues"))
        store.commit.write_pending()
        job = store.commit.begin_sync()
        store.commit.sync(job)
        store.commit.finish(job)
        assert os.listdir(tmp_path / "data" / "queues") == []
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["always", "batch"])
def test_group_commit_generations(tmp_path, mode):
    store = Store(str(tmp_path / "data"), fsync=mode)
    calls = []
    store.commit.on_dirty = lambda: calls.append(1)
    try:
        qlog = store.queue_log("/", "q")
        assert store.commit.write_pending() is False and store.commit.begin_sync() is None
        assert store.commit.next_gen == 1
        qlog.append_message(1, ROUTE, HEADER, b"x")
        store.commit.mark_dirty(qlog)
        qlog.append_message(2, ROUTE, HEADER, b"y")
        store.commit.mark_dirty(qlog)
        assert calls == [1]                              # one commit per batch
        assert store.commit.write_pending() is True
        assert (store.commit.gen, store.commit.synced_gen) == (1, 0)
        job = store.commit.begin_sync()
        assert job.gen == 1 and len(job.fds) == 1
        qlog.append_message(3, ROUTE, HEADER, b"z")      # written while the fsync runs
        store.commit.mark_dirty(qlog)
        assert calls == [1, 1]
        assert store.commit.next_gen == 2
        store.commit.write_pending()
        store.commit.sync(job)
        store.commit.synced(job)
        assert store.commit.synced_gen == 1 < store.commit.gen == 2
        job = store.commit.begin_sync()                         # the next fsync covers the rest
        store.commit.sync(job)
        store.commit.synced(job)
        assert store.commit.synced_gen == store.commit.gen == 2
        assert store.commit.begin_sync() is None
    finally:
        store.close()
    assert seqs(recover(qlog.path)[0]) == [1, 2, 3]


def test_group_commit_never_mode_counts_writes_as_synced(tmp_path):
    store = Store(str(tmp_path / "data"), fsync="never")
    try:
        qlog = store.queue_log("/", "q")
        qlog.append_message(1, ROUTE, HEADER, b"x")
        store.commit.mark_dirty(qlog)
        store.commit.write_pending()
        assert store.commit.synced_gen == store.commit.gen == 1
        assert store.commit.begin_sync() is None
    finally:
        store.close()


def test_close_writes_buffered_records(tmp_path):
    store = Store(str(tmp_path / "data"))
    qlog = store.queue_log("/", "q")
    qlog.append_message(1, ROUTE, HEADER, b"x")
    store.commit.mark_dirty(qlog)
    store.close()
    assert seqs(recover(qlog.path)[0]) == [1]


# -- definitions journal -------------------------------------------------------------------------
def ex(name, kind="direct", vhost="/", **args):
    return {"op": "exchange", "vhost": vhost, "name": name, "type": kind, "durable": True,
            "auto_delete": False, "internal": False, "args": encode_args(args)}


def qu(name, vhost="/", **args):
    return {"op": "queue", "vhost": vhost, "name": name, "durable": True, "auto_delete": False,
            "args": encode_args(args)}


def bind(source, dest, key="", kind="queue", op="bind", vhost="/", args=None):
    return {"op": op, "vhost": vhost, "source": source, "dest_kind": kind, "dest": dest,
            "key": key, "args": encode_args(args)}


def delete(what, name, vhost="/"):
    return {"op": f"{what}.delete", "vhost": vhost, "name": name}


def journal_with(tmp_path, entries) -> DefinitionsJournal:
    j = DefinitionsJournal(str(tmp_path / "definitions.jsonl"))
    for e in entries:
        j.append(dict(e))
    j.close()
    return j


def summary(entries) -> set:
    out = set()
    for d in entries:
        if d["op"] in ("exchange", "queue"):
            out.add((d["op"], d["vhost"], d["name"]))
        else:
            out.add((d["op"], d["vhost"], d["source"], d["dest_kind"], d["dest"], d["key"]))
    return out


def test_args_round_trip_every_type():
    args = {"x-max-length": 10, "big": 2**40, "neg": -3, "s": "text", "b": True, "f": 1.5,
            "t": {"nested": "yes", "n": 1}, "a": [1, "two", False], "none": None}
    assert decode_args(encode_args(args)) == args
    assert decode_args(encode_args(None)) == {}
    assert decode_args("") == {}


def test_journal_missing_file_is_empty(tmp_path):
    assert DefinitionsJournal(str(tmp_path / "nope.jsonl")).load() == []


def test_journal_replay_declare_delete_bind_unbind(tmp_path):
    j = journal_with(tmp_path, [
        ex("x"), ex("gone", "fanout"), qu("q1"), qu("q2", **{"x-max-length": 5}),
        bind("x", "q1", "a"), bind("x", "q1", "b"), bind("x", "q2", "a"),
        bind("x", "q1", "b", op="unbind"),               # unbind of one of two keys
        bind("gone", "q1"), delete("exchange", "gone"),  # bindings of a deleted source go
        qu("doomed"), bind("x", "doomed", "a"), delete("queue", "doomed"),
        ex("e2e", "topic"), bind("x", "e2e", "k", kind="exchange"),
        bind("e2e", "q2", "#"),
        ex("x2"), bind("x2", "x", "k", kind="exchange"), delete("exchange", "x2"),
        ex("dst"), bind("x", "dst", "k", kind="exchange"), delete("exchange", "dst"),
        qu("again"), delete("queue", "again"), qu("again", **{"x-max-length": 7}),
    ])
    loaded = j.load()
    assert summary(loaded) == {
        ("exchange", "/", "x"), ("exchange", "/", "e2e"),
        ("queue", "/", "q1"), ("queue", "/", "q2"), ("queue", "/", "again"),
        ("bind", "/", "x", "queue", "q1", "a"), ("bind", "/", "x", "queue", "q2", "a"),
        ("bind", "/", "x", "exchange", "e2e", "k"), ("bind", "/", "e2e", "queue", "q2", "#"),
    }
    assert len(loaded) == 9
    # definitions come before the bindings that need them
    assert [d["op"] for d in loaded] == ["exchange"] * 2 + ["queue"] * 3 + ["bind"] * 4
    by_name = {d["name"]: d for d in loaded if d["op"] == "queue"}
    assert decode_args(by_name["again"]["args"]) == {"x-max-length": 7}
    assert decode_args(by_name["q2"]["args"]) == {"x-max-length": 5}


def test_journal_binding_identity_includes_arguments(tmp_path):
    j = journal_with(tmp_path, [
        ex("h", "headers"), qu("q"),
        bind("h", "q", args={"x-match": "all", "a": 1}),
        bind("h", "q", args={"x-match": "any", "a": 1}),
        bind("h", "q", op="unbind", args={"x-match": "any", "a": 1}),
    ])
    bindings = [d for d in j.load() if d["op"] == "bind"]
    assert [decode_args(d["args"]) for d in bindings] == [{"x-match": "all", "a": 1}]


def test_journal_redeclare_keeps_latest(tmp_path):
    j = journal_with(tmp_path, [ex("x", "direct"), delete("exchange", "x"), ex("x", "fanout")])
    (d,) = j.load()
    assert d["type"] == "fanout"


def test_journal_vhosts_are_separate(tmp_path):
    j = journal_with(tmp_path, [qu("q", vhost="a"), qu("q", vhost="b"), ex("x", vhost="a"),
                                bind("x", "q", vhost="a"), delete("queue", "q", vhost="b")])
    assert summary(j.load()) == {("queue", "a", "q"), ("exchange", "a", "x"),
                                 ("bind", "a", "x", "queue", "q", "")}


@pytest.mark.parametrize("cut", [1, 10, -2, -1])
def test_journal_damaged_last_line_is_ignored(tmp_path, cut, caplog):
    j = journal_with(tmp_path, [ex("x"), qu("q"), bind("x", "q", "k")])
    good = open(j.path, "rb").read()
    line = json.dumps(qu("torn"), sort_keys=True).encode()
    with open(j.path, "wb") as f:
        f.write(good + line[:cut])                      # a crash in the middle of a write
    with caplog.at_level(logging.WARNING, logger="amqpd.store"):
        loaded = j.load()
    assert summary(loaded) == {("exchange", "/", "x"), ("queue", "/", "q"),
                               ("bind", "/", "x", "queue", "q", "k")}
    assert "damaged" in caplog.text
    # start-up rewrites the journal from what it loaded; appends then continue cleanly
    j.rewrite(loaded)
    j.append(qu("later"))
    j.close()
    assert ("queue", "/", "later") in summary(j.load())


def test_journal_damaged_middle_line_is_skipped(tmp_path):
    j = journal_with(tmp_path, [ex("x"), qu("q1"), qu("q2")])
    lines = open(j.path, "rb").read().split(b"\n")
    lines[1] = lines[1][:-3] + b"\xff\xfe"               # damaged, not even UTF-8
    with open(j.path, "wb") as f:
        f.write(b"\n".join(lines))
    assert summary(j.load()) == {("exchange", "/", "x"), ("queue", "/", "q2")}


def test_journal_rewrite(tmp_path):
    j = journal_with(tmp_path, [ex("x"), qu("q"), qu("tmp"), delete("queue", "tmp"),
                                bind("x", "q", "k"), bind("x", "q", "k2"),
                                bind("x", "q", "k2", op="unbind")])
    loaded = j.load()
    j.rewrite(loaded)
    text = open(j.path, "rb").read()
    assert text.count(b"\n") == 3 and text.endswith(b"\n")
    assert [json.loads(line) for line in text.splitlines()] == loaded
    assert not os.path.exists(j.path + ".tmp")
    assert j.load() == loaded
    j.append(qu("after"))                               # the journal keeps going after it
    j.close()
    assert ("queue", "/", "after") in summary(j.load())
    j.rewrite([])
    assert j.load() == [] and open(j.path, "rb").read() == b""


# -- write and fsync failures --------------------------------------------------------------------
class FaultyIO(FileIO):
    """The real file operations, except: once ``room`` bytes are used up, writes fail with
    ENOSPC (after a short write, as a full disk does); fsyncs fail while ``fsync_error`` is set;
    ftruncate fails while ``truncate_error`` is set."""

    def __init__(self):
        self.room = None
        self.fsync_error = None
        self.truncate_error = None
        self.unreadable = set()

    def read(self, path):
        if os.path.basename(path) in self.unreadable:
            raise OSError(errno.EBADMSG, os.strerror(errno.EBADMSG), path)
        return FileIO.read(path)

    def write(self, fd, data):
        if self.room is not None:
            if self.room <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = data[:self.room]
        n = os.write(fd, data)
        if self.room is not None:
            self.room -= n
        return n

    def fsync(self, fd):
        if self.fsync_error:
            raise OSError(self.fsync_error, os.strerror(self.fsync_error))
        os.fsync(fd)

    def ftruncate(self, fd, size):
        if self.truncate_error:
            raise OSError(self.truncate_error, os.strerror(self.truncate_error))
        os.ftruncate(fd, size)


def intact(path) -> bool:
    """Every segment scans without a damaged or torn record."""
    for n in segments(path):
        problems = []
        list(records.scan(open(seg_file(path, n), "rb").read(), problems))
        if problems:
            return False
    return True


def test_a_failed_write_is_cut_back_to_the_last_record_and_the_log_goes_on(tmp_path):
    io = FaultyIO()
    path = tmp_path / "q"
    qlog = QueueLog(str(path), io=io)
    for seq in (1, 2):
        qlog.append_message(seq, ROUTE, HEADER, body(seq))
    qlog.write()
    size = os.path.getsize(seg_file(path, 0))
    io.room = 30                                     # less than one record: a torn write
    qlog.append_message(3, ROUTE, HEADER, body(3))
    qlog.settle(1, 0)
    with pytest.raises(OSError):
        qlog.write()
    assert os.path.getsize(seg_file(path, 0)) == size and intact(path)
    io.room = None                                   # space again
    qlog.append_message(4, ROUTE, HEADER, body(4))
    qlog.write()
    qlog.close()
    assert intact(path) and segments(path) == [0]
    assert seqs(recover(path)[0]) == [1, 2, 4]      # 3 and the settle of 1 were not written


def test_a_failed_write_that_cannot_be_cut_back_retires_the_segment(tmp_path, caplog):
    io = FaultyIO()
    path = tmp_path / "q"
    qlog = QueueLog(str(path), io=io)
    qlog.append_message(1, ROUTE, HEADER, body(1))
    qlog.write()
    io.room, io.truncate_error = 30, errno.EIO
    qlog.append_message(2, ROUTE, HEADER, body(2))
    with pytest.raises(OSError):
        qlog.write()
    io.room = io.truncate_error = None
    assert qlog.append_message(3, ROUTE, HEADER, body(3)) == 1      # a fresh segment
    qlog.write()
    qlog.close()
    assert segments(path) == [0, 1]
    assert seqs(recover(path)[0]) == [1, 3]          # the torn record 2 sits mid-log, skipped


def test_a_write_failure_reports_its_generation_and_is_logged_once(tmp_path, caplog):
    io = FaultyIO()
    store = Store(str(tmp_path / "data"), io=io)
    failed = FailureLog(store.commit).failed
    try:
        a, b = store.queue_log("/", "a"), store.queue_log("/", "b")
        a.append_message(1, ROUTE, HEADER, b"x")
        store.commit.mark_dirty(a)
        store.commit.write_pending()                        # generation 1 fine
        io.room = 10
        with caplog.at_level(logging.ERROR, logger="amqpd.store"):
            for seq in (2, 3, 4):                    # generations 2, 3, 4 fail
                a.append_message(seq, ROUTE, HEADER, b"x" * 100)
                b.append_message(seq, ROUTE, HEADER, b"x" * 100)
                store.commit.mark_dirty(a)
                store.commit.mark_dirty(b)
                assert store.commit.write_pending() is True
        assert failed == [(1, 2), (2, 3), (3, 4)]
        assert [r.levelno for r in caplog.records if r.name == "amqpd.store"] == [logging.ERROR]
        assert "No space left" in caplog.records[0].getMessage()
        io.room = None
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="amqpd.store"):
            for seq in range(5, 5 + RECOVERED_AFTER):   # a run of good commits
                a.append_message(seq, ROUTE, HEADER, b"x")
                store.commit.mark_dirty(a)
                store.commit.write_pending()
                job = store.commit.begin_sync()
                store.commit.sync(job)
                store.commit.synced(job)
                assert not caplog.records or seq == 4 + RECOVERED_AFTER
        assert store.commit.synced_gen == store.commit.gen and failed == [(1, 2), (2, 3), (3, 4)]
        assert ["writable again" in r.getMessage() for r in caplog.records] == [True]
    finally:
        store.close()
    assert seqs(recover(a.path)[0]) == [1, *range(5, 5 + RECOVERED_AFTER)]
    assert intact(a.path) and intact(b.path)


def test_a_failed_fsync_nacks_what_it_covered_and_moves_to_a_fresh_segment(tmp_path):
    io = FaultyIO()
    store = Store(str(tmp_path / "data"), io=io)
    failed = FailureLog(store.commit).failed
    try:
        qlog = store.queue_log("/", "q")
        qlog.append_message(1, ROUTE, HEADER, b"x")
        store.commit.mark_dirty(qlog)
        store.commit.write_pending()
        qlog.append_message(2, ROUTE, HEADER, b"y")
        store.commit.mark_dirty(qlog)
        store.commit.write_pending()
        job = store.commit.begin_sync()
        io.fsync_error = errno.EIO
        with pytest.raises(OSError) as info:
            store.commit.sync(job)
        store.commit.sync_failed(job, info.value)
        assert failed == [(0, 3)] and store.commit.synced_gen == 2   # nacked, not confirmed
        io.fsync_error = None
        assert qlog.append_message(3, ROUTE, HEADER, b"z") == 1  # never again into segment 0
        store.commit.write_pending()
        job = store.commit.begin_sync()
        store.commit.sync(job)
        store.commit.synced(job)
        assert store.commit.synced_gen == store.commit.gen == 3
    finally:
        store.close()
    assert segments(qlog.path) == [0, 1]
    assert seqs(recover(qlog.path)[0]) == [1, 2, 3]


def test_a_failed_journal_append_leaves_no_partial_line(tmp_path):
    io = FaultyIO()
    j = DefinitionsJournal(str(tmp_path / "definitions.jsonl"), io=io)
    j.rewrite([])
    j.append(qu("a"))
    io.room = 20
    with pytest.raises(OSError):
        j.append(qu("b" * 100))
    io.room = None
    j.append(qu("c"))
    j.close()
    assert summary(j.load()) == {("queue", "/", "a"), ("queue", "/", "c")}
    assert all(json.loads(line) for line in open(j.path, "rb").read().splitlines())


def test_after_a_failed_journal_fsync_the_journal_is_rewritten(tmp_path):
    io = FaultyIO()
    j = DefinitionsJournal(str(tmp_path / "definitions.jsonl"), io=io)
    j.rewrite([])
    j.append(qu("a"))
    before = os.stat(j.path).st_ino
    io.fsync_error = errno.EIO
    with pytest.raises(OSError):
        j.append(qu("b"))
    io.fsync_error = None
    j.append(qu("c"))
    j.close()
    assert os.stat(j.path).st_ino != before            # a fresh file, fsynced as a whole
    assert summary(j.load()) == {("queue", "/", "a"), ("queue", "/", "c")}


@pytest.mark.parametrize("which", ["middle", "last"])
def test_an_unreadable_segment_is_set_aside_and_the_rest_recovers(tmp_path, which, caplog):
    """Found on ext4 after failed writebacks: a segment whose inode fails its checksum
    (EBADMSG). Recovery keeps every other segment and never appends to the bad one."""
    path = tmp_path / "q"
    size = SEGHEAD + RECORD * 3 + 5
    build(path, 9, segment_size=size)                 # segments 0, 1, 2 of 3 messages
    io = FaultyIO()
    bad = {"middle": 1, "last": 2}[which]
    io.unreadable = {f"{bad:08d}.seg"}
    qlog = QueueLog(str(path), segment_size=size, io=io)
    with caplog.at_level(logging.ERROR, logger="amqpd.store"):
        live, _ = qlog.recover()
    assert seqs(live) == [s for s in range(1, 10) if (s - 1) // 3 != bad]
    assert "cannot be read" in caplog.text
    assert os.path.exists(seg_file(path, bad) + ".unreadable")
    assert qlog.append_message(10, ROUTE, HEADER, body(10)) > bad or which == "middle"
    qlog.close()
    assert seqs(recover(path, segment_size=size)[0]) == seqs(live) + [10]


def test_what_was_written_while_a_failing_fsync_ran_is_nacked_too(tmp_path):
    """fsyncgate: Linux reports a failed writeback once; the next fsync of the same file
    succeeds although the pages written before the failure are gone. So a failed fsync nacks
    every generation written to the OS so far and what is buffered for the old segment, not
    just the generations that fsync was started for. (Found on a real loop device: a message
    confirmed after a failed fsync was zeros after a remount.)"""
    io = FaultyIO()
    store = Store(str(tmp_path / "data"), io=io)
    failed = FailureLog(store.commit).failed
    try:
        qlog = store.queue_log("/", "q")
        qlog.append_message(1, ROUTE, HEADER, b"x")
        store.commit.mark_dirty(qlog)
        store.commit.write_pending()                            # generation 1
        job = store.commit.begin_sync()                         # the fsync of generation 1 starts
        qlog.append_message(2, ROUTE, HEADER, b"y")
        store.commit.mark_dirty(qlog)
        store.commit.write_pending()                            # generation 2, same file, meanwhile
        qlog.append_message(3, ROUTE, HEADER, b"z")      # buffered: generation 3
        io.fsync_error = errno.EIO
        with pytest.raises(OSError) as info:
            store.commit.sync(job)
        io.fsync_error = None                            # the retry would "succeed"
        store.commit.sync_failed(job, info.value)
        assert failed == [(0, 3)]
    finally:
        store.close()


def test_a_store_closes_cleanly_when_the_disk_is_full(tmp_path, caplog):
    """A clean stop on a full disk: what can be fsynced is, every descriptor is closed, the
    error is logged, and the data directory opens again."""
    io = FaultyIO()
    store = Store(str(tmp_path / "data"), io=io)
    qlog = store.queue_log("/", "q")
    qlog.append_message(1, ROUTE, HEADER, b"x")
    store.commit.mark_dirty(qlog)
    store.commit.write_pending()                                # written, not yet fsynced
    qlog.append_message(2, ROUTE, HEADER, b"y" * 100)
    store.commit.mark_dirty(qlog)
    io.room = 10
    with caplog.at_level(logging.ERROR, logger="amqpd.store"):
        store.close()
    assert qlog.fd is None and not qlog.retired
    assert seqs(recover(qlog.path)[0]) == [1] and intact(qlog.path)
    Store(str(tmp_path / "data")).close()


def test_deleting_a_queue_whose_files_cannot_be_removed_still_deletes_it(tmp_path, caplog):
    class NoUnlink(FaultyIO):
        def unlink(self, path):
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)

    store = Store(str(tmp_path / "data"), io=NoUnlink())
    try:
        qlog = store.queue_log("/", "q")
        qlog.append_message(1, ROUTE, HEADER, b"x")
        store.commit.mark_dirty(qlog)
        store.commit.write_pending()
        store.delete_queue_log("/", "q")
        assert ("/", "q") not in store.logs
        with caplog.at_level(logging.WARNING, logger="amqpd.store"):
            commit_turn(store)                        # the files go here, off the loop
        assert "cannot remove" in caplog.text
    finally:
        store.close()
    store = Store(str(tmp_path / "data"))                # next start: an orphan, removed
    store.remove_orphans([])
    assert os.listdir(tmp_path / "data" / "queues") == []
    store.close()


def test_closing_a_log_whose_fsync_fails_closes_every_descriptor(tmp_path):
    io = FaultyIO()
    path = tmp_path / "q"
    qlog = QueueLog(str(path), segment_size=SEGHEAD + RECORD + 5, io=io)
    for seq in (1, 2):                                   # two segments: one retired fd
        qlog.append_message(seq, ROUTE, HEADER, body(seq))
    qlog.write()
    assert len(qlog.retired) == 1 and qlog.fd is not None
    before = len(os.listdir("/proc/self/fd"))
    io.fsync_error = errno.EIO
    with pytest.raises(OSError):
        qlog.close()
    assert len(os.listdir("/proc/self/fd")) == before - 2    # nothing left open


def test_a_replica_whose_definition_never_arrived_survives_a_restart(tmp_path):
    """A cluster member restarted just after a quorum queue's declare: its journal has no
    definition yet, but the files it acknowledged to the leader stay (the cluster drops them
    later if this node is no member), while a plain orphan still goes."""
    store = Store(str(tmp_path / "data"))
    path = store.replica_path("/", "orders")
    with open(os.path.join(path, "00000001.seg"), "wb") as f:
        f.write(b"acknowledged to the leader")
    orphan = store.queue_log("/", "deleted-meanwhile").path
    store.close()

    store = Store(str(tmp_path / "data"))
    store.remove_orphans([])                            # no definition names either
    try:
        assert os.path.exists(os.path.join(path, "00000001.seg"))
        assert not os.path.exists(orphan)
        assert ("/", "orders") in store.replicas
        assert store.replica_key(path) == ("/", "orders")
        # declared later (the definition arrives): a replica's files are not a deleted
        # queue's leftovers
        assert store.queue_log("/", "orders").path == path
        assert os.path.exists(os.path.join(path, "00000001.seg"))
        store.drop_queue_log("/", "orders")
        store.forget_replica("/", "orders")             # removed from its members
        assert not os.path.exists(path)
        assert ("/", "orders") not in store.replicas
    finally:
        store.close()
