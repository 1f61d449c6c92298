"""How the delayed exchange holds and releases at volume, with the injected ManualClock: a held
message is stored as it will be delivered (x-delay negated by rewriting that entry's bytes only,
the same bytes the whole-table rewrite gives), files of the older format (x-delay not yet
negated) still deliver it negated, a backlog due at once is routed a slice per turn, and one
release timer is armed however messages arrive."""
import os
import shutil

import pytest

from amqpd.broker import delayed
from amqpd.broker.clock import ManualClock
from amqpd.broker.delayed import RELEASE_SLICE, _delivered, _find_x_delay, _milliseconds
from amqpd.broker.message import Message
from amqpd.store import delayed_log, records
from amqpd.wire import properties
from amqpd.wire.tables import Byte, Long, LongL, Short, SignedInt, UnsignedInt

from .stubs import bodies, commit_turn, declare_exchange, declare_queue, make_broker, message
from .test_delayed_log import open_broker, run_until, setup, take_all
from .test_store import FaultyIO

START, WALL = 1000.0, 1_800_000_000.0


def whole_table_rewrite(msg: Message, delay: int) -> bytes:
    """The way a held message's x-delay was negated before: the table decoded and written
    back whole."""
    headers = dict(msg.headers)
    headers["x-delay"] = SignedInt(-delay) if -delay >= -(1 << 31) else Long(-delay)
    return properties.rewrite(msg.header, headers=headers)


def typed(headers: dict, **props) -> Message:
    """A message whose headers table has exactly these wire types, in this order (pamqp picks
    its own types and sorts the keys)."""
    msg = message(b"body", "k", "dx", **props)
    return Message("dx", "k", msg.raw_route, properties.rewrite(msg.header, headers=headers),
                   b"body")


HEADERS = [
    {"x-delay": SignedInt(5000)},
    {"x-delay": Byte(7)},
    {"x-delay": Short(300)},
    {"x-delay": UnsignedInt(70_000)},
    {"x-delay": Long(1234)},
    {"x-delay": LongL(3_000_000_000)},             # beyond a signedint: negated as a long
    {"x-delay": "2500"},
    {"x-delay": 12.7},
    {"a": "before", "x-delay": SignedInt(100), "z": {"nested": [1, "two", 3.5]}},
    {"first": Byte(1), "x-delay": Short(200)},
]


@pytest.mark.parametrize("headers", HEADERS, ids=range(len(HEADERS)))
@pytest.mark.parametrize("props", [{}, {"content_type": "text/plain", "content_encoding": "gzip",
                                        "delivery_mode": 2, "priority": 3, "message_id": "m1",
                                        "app_id": "app"}], ids=["plain", "props"])
def test_rewriting_only_x_delay_gives_the_whole_table_rewrite_bytes(headers, props):
    msg = typed(headers, **props)
    entry = _find_x_delay(msg.header)
    delay = _milliseconds(entry[0])
    assert delay == _milliseconds(msg.headers["x-delay"]) and delay > 0
    out = _delivered(msg, entry, delay)
    assert out.header == whole_table_rewrite(msg, delay)
    decoded = out.headers
    assert decoded["x-delay"] == -delay
    assert {k: v for k, v in decoded.items() if k != "x-delay"} == \
        {k: v for k, v in msg.headers.items() if k != "x-delay"}
    assert out.body == b"body" and out.raw_route == msg.raw_route


def test_no_headers_or_no_x_delay_is_not_found():
    assert _find_x_delay(message(b"", "k", "dx").header) is None
    assert _find_x_delay(message(b"", "k", "dx", headers={"x-delayed": 5}).header) is None


def test_a_table_naming_a_key_twice_is_rewritten_whole():
    # no encoder writes a duplicate key: splice one in (the decoder keeps the first)
    msg = typed({"x-delay": SignedInt(100), "b": SignedInt(1)})
    twice = msg.header.replace(b"\x01bI\x00\x00\x00\x01", b"\x01bI\x00\x00\x00\x01" * 2)
    table_at = twice.index(b"\x07x-delay") - 4
    length = int.from_bytes(twice[table_at:table_at + 4], "big") + 7
    twice = twice[:table_at] + length.to_bytes(4, "big") + twice[table_at + 4:]
    assert twice != msg.header
    msg = Message("dx", "k", msg.raw_route, twice, b"")
    entry = _find_x_delay(msg.header)
    assert entry[4] is False                      # not unique: the whole table is written
    assert _delivered(msg, entry, 100).header == whole_table_rewrite(msg, 100)


def test_a_released_message_is_negated_once_whatever_reads_it():
    msg = message(b"", "k", "dx", headers={"x-delay": SignedInt(100)})
    once = delayed._delivered_copy(msg)
    assert once.headers["x-delay"] == -100
    assert delayed._delivered_copy(once).header == once.header    # already negative: kept


def test_a_backlog_due_at_once_is_routed_a_slice_per_turn():
    clock = ManualClock(START, WALL)
    vh = make_broker(clock).vhosts["/"]
    ex = declare_exchange(vh, "dx", "x-delayed-message", **{"x-delayed-type": "direct"})
    q = declare_queue(vh, "q")
    vh.bind(ex, q, "k", {})
    n = 2 * RELEASE_SLICE + 10
    for i in range(n):
        vh.publish(ex, message(b"%d" % i, "k", "dx", headers={"x-delay": 1000 + i % 3}))
    # the clock jumps past every due time: one turn routes one slice, and arms the timer for
    # the next turn (the event loop's clock has moved on by then; this one stands still)
    clock.now += 5.0
    ex.armed = None                        # as the timer's callback does before releasing
    ex.release()
    assert q.message_count == RELEASE_SLICE
    assert ex.armed == clock.time()
    ex.armed = None
    ex.release()
    assert q.message_count == 2 * RELEASE_SLICE
    clock.advance(0)
    got = bodies(q)
    assert len(got) == n and ex.held == 0 and ex.pending == []
    assert got == sorted(got, key=lambda b: (1000 + int(b) % 3, int(b)))   # due order


def test_one_release_timer_however_many_messages_come_due_earlier():
    clock = ManualClock(START, WALL)
    broker = make_broker(clock)
    vh = broker.vhosts["/"]
    ex = declare_exchange(vh, "dx", "x-delayed-message", **{"x-delayed-type": "direct"})
    q = declare_queue(vh, "q")
    vh.bind(ex, q, "k", {})
    vh.publish(ex, message(b"last", "k", "dx", headers={"x-delay": 600_000}))
    for i in range(200):                   # each is due before every one held so far
        vh.publish(ex, message(b"%d" % i, "k", "dx", headers={"x-delay": 10_000 - i * 10}))
    clock.advance(11.0)
    assert len(bodies(q)) == 200
    # what is left armed: the timer of the last message, and none per earlier message
    assert len(broker.timers) <= 2
    clock.advance(600.0)
    assert bodies(q) == [b"last"]


def test_a_file_of_the_older_format_is_delivered_with_x_delay_negated(tmp_path, monkeypatch):
    """Files written before held messages were stored as delivered hold the header as
    published and no FINAL flag: x-delay is negated when they are read back."""
    clock = ManualClock(START, WALL)
    broker, store = open_broker(tmp_path, clock)
    vh = broker.vhosts["/"]
    setup(vh)
    with monkeypatch.context() as m:
        m.setattr(delayed_log, "FINAL", 0)
        m.setattr(delayed, "_delivered", lambda msg, entry, delay: msg)
        for i, ms in enumerate((5000, 70_000)):
            vh.publish(vh.exchanges["dx"], message(b"%d" % i, "k", "dx", delivery_mode=2,
                                                   headers={"x-delay": SignedInt(ms)}))
        commit_turn(store)
    store.close()
    broker, store = open_broker(tmp_path, clock)
    q = broker.vhosts["/"].queues["q"]
    got = []
    for _ in range(80):
        clock.advance(1.0)
        commit_turn(store)
        while (entry := q.take()) is not None:
            q.settle(entry)
            got.append((entry.message.body, entry.message.headers["x-delay"]))
    assert got == [(b"0", -5000), (b"1", -70_000)]
    assert all(isinstance(d, SignedInt) for _, d in got)
    store.close()


def test_held_messages_are_stored_as_delivered(tmp_path):
    clock = ManualClock(START, WALL)
    broker, store = open_broker(tmp_path, clock)
    vh = broker.vhosts["/"]
    ex, q = setup(vh)
    vh.publish(ex, message(b"m", "k", "dx", delivery_mode=2, headers={"x-delay": 90_000}))
    commit_turn(store)
    clock.advance(89.0)
    commit_turn(store)
    assert take_all(q) == []
    # read back ahead of its due time: its header is the delivered one already
    held = ex.in_ram()
    assert [m.headers["x-delay"] for m in held] == [-90_000]
    clock.advance(1.0)
    assert take_all(q) == [b"m"]
    store.close()


def _settled_markers(path) -> int:
    count = 0
    for name in os.listdir(path):
        if name.endswith(".dlb"):
            with open(os.path.join(path, name), "rb") as f:
                count += sum(1 for r in records.scan(f.read()) if r.kind == records.SETTLED)
    return count


@pytest.mark.parametrize("spread_ms", [1500, 0], ids=["spread", "all-due-at-once"])
def test_a_crash_in_the_middle_of_a_run_loses_nothing_and_routes_nothing_twice(tmp_path,
                                                                              spread_ms):
    """A bucket read back in runs is settled by one marker per turn (every message up to an
    index key): a copy of the data dir taken mid-bucket (what kill -9 leaves) brings back
    exactly the messages not yet routed, in due order -- also when they are all due in the
    same millisecond, so batches and slices end in the middle of ties."""
    live, image = tmp_path / "live", tmp_path / "image"
    clock = ManualClock(START, WALL)
    broker, store = open_broker(live, clock)
    vh = broker.vhosts["/"]
    ex, q = setup(vh)
    n = 3 * delayed.BATCH
    for i in range(n):                       # due over 1.5 s, a minute ahead: read back
        vh.publish(ex, message(b"%04d" % i, "k", "dx", delivery_mode=2,
                               headers={"x-delay": 60_000 + (i * spread_ms) // n}))
    commit_turn(store)
    clock.advance(59.5)                      # indexed and read back: in RAM, not yet due
    commit_turn(store)
    assert q.message_count == 0 and ex.in_ram()
    clock.now += 3.0                         # a busy loop: all have come due
    got = []
    while len(got) < n // 2 + 10:
        ex.armed = None                      # a turn: one slice
        ex.release()
        commit_turn(store)
        got += take_all(q)
    commit_turn(store)                       # the queue's acks of the last ones too
    assert got == [b"%04d" % i for i in range(len(got))]
    # far fewer markers than messages routed: one per bucket per turn
    assert 0 < _settled_markers(ex.log.path) < len(got) // 10
    shutil.copytree(live, image)
    store.close()
    clock2 = ManualClock(START + 500, clock.wall() + 0.5)
    broker2, store2 = open_broker(image, clock2)
    q2 = broker2.vhosts["/"].queues["q"]
    rest = [b for b, _ in run_until(clock2, store2, q2, 5.0, step=0.05)]
    assert got + rest == [b"%04d" % i for i in range(n)]
    assert broker2.vhosts["/"].exchanges["dx"].held == 0
    store2.close()
    assert not list(image.rglob("*.dlb"))


@pytest.mark.parametrize("step", [5.0, -5.0], ids=["wall-forward", "wall-back"])
def test_a_wall_clock_step_moves_no_release(tmp_path, step):
    """Due times are kept on disk in wall-clock ms (they outlive the process), but read back
    with the clock offset of when they were written: the wall clock stepping meanwhile (NTP,
    an operator) makes no message early or late."""
    clock = ManualClock(START, WALL)
    broker, store = open_broker(tmp_path, clock)
    vh = broker.vhosts["/"]
    ex, q = setup(vh)
    t0 = clock.time()
    vh.publish(ex, message(b"m", "k", "dx", delivery_mode=2, headers={"x-delay": 90_000}))
    commit_turn(store)
    clock.wall_offset += step
    got = run_until(clock, store, q, 95.0, step=0.25)
    assert got == [(b"m", t0 + 90.0)]
    store.close()


def test_a_bucket_indexed_in_ram_is_scanned_after_a_failed_write(tmp_path):
    """A bucket created here keeps its index keys in RAM as messages are appended (its file
    is never scanned); a write that fails cuts records off, so that bucket is scanned: what
    is read back is what is on disk, every record intact."""
    io = FaultyIO()
    dlog = delayed_log.DelayedLog(str(tmp_path / "dx"), io=io)
    now = 1_800_000_000_000
    due = now + 600_000
    route, header = b"\x02dx\x01k", message(b"", "k", "dx").header

    def append(i):
        return dlog.append(due + i, due + i - now, route, header, b"body%d" % i, now, 1000)

    bucket = append(0)[0]
    append(1)
    dlog.write()
    assert dlog.indexed(bucket)
    io.room = 40                                      # the next record is torn
    append(2)
    with pytest.raises(OSError):
        dlog.write()
    io.room = None
    assert not dlog.indexed(bucket)                   # its keys name a record that is gone
    assert dlog.scan(bucket) == 2
    assert [r[4] for r in dlog.read(bucket, 10)] == [b"body0", b"body1"]
    dlog.close()


def test_a_bucket_indexed_in_ram_reads_back_what_a_scan_would(tmp_path):
    dlog = delayed_log.DelayedLog(str(tmp_path / "dx"))
    now = 1_800_000_000_000
    route, header = b"\x02dx\x01k", message(b"", "k", "dx").header
    dues = [now + 600_000 + d for d in (5, 1, 9, 1, 0, 7)]     # out of order, a tie
    for i, due in enumerate(dues):
        bucket = dlog.append(due, due - now, route, header, b"%d" % i, now, 1000)[0]
    assert dlog.indexed(bucket)
    in_ram = dlog.scan(bucket), [(r[0], r[4]) for r in dlog.read(bucket, 10)]
    dlog.close()
    again = delayed_log.DelayedLog(str(tmp_path / "dx"))
    found, _ = again.recover()
    assert not again.indexed(found[0])
    scanned = again.scan(found[0]), [(r[0], r[4]) for r in again.read(found[0], 10)]
    assert in_ram == scanned == (6, sorted(zip(dues, (b"%d" % i for i in range(6))),
                                           key=lambda p: p[0]))
    again.close()


def test_a_record_damaged_on_disk_is_skipped_when_read_back(tmp_path, caplog):
    dlog = delayed_log.DelayedLog(str(tmp_path / "dx"))
    now = 1_800_000_000_000
    due = now + 600_000
    route, header = b"\x02dx\x01k", message(b"", "k", "dx").header
    offsets = []
    for i in range(3):
        bucket, offset, _, _ = dlog.append(due + i, due + i - now, route, header,
                                           b"body%d" % i, now, 1000)
        offsets.append(offset)
    dlog.write()
    with open(os.path.join(dlog.path, "00000001.dlb"), "r+b") as f:
        f.seek(offsets[1] + 40)
        f.write(b"\xff")                              # a flipped byte in the second
    assert dlog.scan(bucket) == 3                     # (keys in RAM: the file is not read)
    assert [r[4] for r in dlog.read(bucket, 10)] == [b"body0", b"body2"]
    assert "unreadable; message lost" in caplog.text
    assert bucket.live == 2
    dlog.close()


def test_a_due_time_kept_in_ms_is_rounded_up_never_early(tmp_path):
    """The due time on disk is whole ms of the wall clock: a publish at a fraction of a ms
    is rounded up, so the message is at most a ms late, never early."""
    clock = ManualClock(START, WALL + 0.0004)
    broker, store = open_broker(tmp_path, clock)
    vh = broker.vhosts["/"]
    ex, q = setup(vh)
    t0 = clock.time()
    vh.publish(ex, message(b"m", "k", "dx", delivery_mode=2, headers={"x-delay": 90_000}))
    commit_turn(store)
    clock.advance(90.0 - 0.0002 - (clock.time() - t0))
    commit_turn(store)
    assert take_all(q) == []
    clock.advance(0.001)
    assert take_all(q) == [b"m"]
    store.close()
