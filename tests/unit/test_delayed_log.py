"""Held delayed messages on disk (store/delayed_log.py with broker/delayed.py), with a real
data directory and the injected ManualClock: due order across buckets of every width, the
bounded heap, a clean restart, a crash in the middle of a bucket (torn tail, settled markers),
and scratch files of a non-durable exchange."""
import os
import random
import shutil

import pytest

from amqpd import config as amqpd_config
from amqpd.access.control import AccessControl
from amqpd.broker.broker import Broker
from amqpd.broker.clock import ManualClock
from amqpd.broker.publish import ACCEPTED, STORED
from amqpd.broker.delayed import BATCH
from amqpd.store import delayed_log
from amqpd.store.delayed_log import bucket_of
from amqpd.store.store import Store

from .stubs import commit_turn, message

START, WALL = 1000.0, 1_800_000_000.0


def open_broker(data, clock):
    config = amqpd_config.from_dict({})
    store = Store(str(data))
    broker = Broker(config, store, AccessControl(config), clock)
    broker.recover()
    return broker, store


def setup(vh, durable=True):
    ex = vh.declare_exchange("dx", "x-delayed-message", False, durable, False, False,
                             {"x-delayed-type": "direct"})
    q = vh.declare_queue("q", None, False, True, False, False, {})
    vh.bind(ex, q, "k", {})
    return ex, q


def send(vh, body: bytes, delay_ms: int, persistent=True):
    return vh.publish(vh.exchanges["dx"], message(body, "k", "dx", headers={"x-delay": delay_ms},
                                                  delivery_mode=2 if persistent else 1))


def take_all(q) -> list:
    out = []
    while (entry := q.take()) is not None:
        q.settle(entry)
        out.append(entry.message.body)
    return out


def run_until(clock, store, q, seconds: float, step: float = 0.25) -> list:
    """Advance in steps (a commit turn after each, as the edge does); what was released,
    with the clock's time at release."""
    got = []
    end = clock.time() + seconds
    while clock.time() < end:
        clock.advance(min(step, end - clock.time()))
        commit_turn(store)
        got += [(body, clock.time()) for body in take_all(q)]
    return got


# Delays (ms) that land in buckets of many widths: under a second to two days.
DELAYS = [30, 250, 999, 1500, 4000, 61_000, 65_000, 600_000, 3_600_000, 7_200_000,
          86_400_000, 2 * 86_400_000]


def test_bucket_width_grows_with_the_delay():
    assert bucket_of(5_000, 100) == (4096, 1024)                 # the narrowest: 1.024 s
    start, width = bucket_of(10 ** 9, 3_600_000)                 # an hour: ~1/64 of it
    assert width == 32768 and start % width == 0 and start <= 10 ** 9 < start + width
    assert bucket_of(10 ** 12, 2 ** 32 - 1)[1] == 1 << 25        # the longest delay: 9.3 h


def test_due_order_across_buckets_and_never_early(tmp_path):
    clock = ManualClock(START, WALL)
    broker, store = open_broker(tmp_path, clock)
    vh = broker.vhosts["/"]
    ex, q = setup(vh)
    rng = random.Random(7)
    items = [(f"{d}-{i}".encode(), d + rng.randrange(0, 50) * 7) for d in DELAYS
             for i in range(20)]
    rng.shuffle(items)
    t0 = clock.time()
    for body, delay in items:
        assert send(vh, body, delay) is STORED            # confirm waits for the fsync
    commit_turn(store)
    assert ex.held == len(items)
    # Only near messages and one control entry per bucket are in RAM.
    assert len(ex.pending) < len(items) // 3
    due = {body: t0 + delay / 1000.0 for body, delay in items}
    got = []
    for horizon in (2, 70, 700, 3700, 7300, 86_500, 2 * 86_400 + 400):
        got += run_until(clock, store, q, t0 + horizon - clock.time(), step=0.5 if horizon < 100
                         else 37.0)
    assert sorted(b for b, _ in got) == sorted(b for b, _ in items)
    for body, at in got:
        assert at >= due[body] - 1e-6, body               # never early (ms on disk: rounded up)
    order = [b for b, _ in got]
    assert order == sorted(order, key=lambda b: due[b]) or \
        all(due[a] <= due[b] + 0.002 for a, b in zip(order, order[1:]))
    assert ex.held == 0
    store.close()
    # every bucket file is gone once its messages are routed
    assert not [n for _, _, names in os.walk(tmp_path / "queues") for n in names
                if n.endswith(".dlb")]


@pytest.mark.parametrize("chunk", [4 << 20, 777], ids=["one-read", "many-reads"])
def test_a_big_bucket_is_read_in_batches(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(delayed_log, "SCAN_CHUNK", chunk)   # records straddle the reads
    clock = ManualClock(START, WALL)
    broker, store = open_broker(tmp_path, clock)
    vh = broker.vhosts["/"]
    ex, q = setup(vh)
    n = 3 * BATCH + 17
    for i in range(n):                       # one wide bucket: due over 30 s, an hour ahead
        send(vh, b"%d" % i, 3_600_000 + (i * 30_000) // n)
    commit_turn(store)
    assert len(ex.pending) <= 2              # one control entry (the bucket) + arm
    got = run_until(clock, store, q, 3599.0, step=60.0)
    assert got == []
    biggest = 0
    end = clock.time() + 40
    while clock.time() < end:
        clock.advance(0.05)
        commit_turn(store)
        biggest = max(biggest, len(ex.in_ram()))
        got += take_all(q)
    assert got == [b"%d" % i for i in range(n)]
    assert biggest <= 2 * BATCH              # the batch being routed and the next, read ahead
    store.close()


def _publish_spread(vh, clock, count=60):
    """count messages due every 100 ms from 1 s on, published in a shuffled order."""
    items = [(b"m%03d" % i, 1000 + 100 * i) for i in range(count)]
    random.Random(3).shuffle(items)
    for body, delay in items:
        send(vh, body, delay)
    return [b"m%03d" % i for i in range(count)]


def test_clean_restart_keeps_due_order_and_what_was_routed_stays_routed(tmp_path):
    clock = ManualClock(START, WALL)
    broker, store = open_broker(tmp_path, clock)
    vh = broker.vhosts["/"]
    ex, q = setup(vh)
    expected = _publish_spread(vh, clock)
    commit_turn(store)
    first = [b for b, _ in run_until(clock, store, q, 2.55, step=0.05)]
    assert first == expected[:16]            # due at 1.0 .. 2.5 s
    store.close()
    # The broker is down for 3 s: more come due meanwhile (overdue at start: due order).
    clock2 = ManualClock(START + 100, clock.wall() + 3.0)
    broker2, store2 = open_broker(tmp_path, clock2)
    ex2 = broker2.vhosts["/"].exchanges["dx"]
    q2 = broker2.vhosts["/"].queues["q"]
    rest = [b for b, _ in run_until(clock2, store2, q2, 5.0, step=0.05)]
    assert rest == expected[16:]
    assert ex2.held == 0
    store2.close()


@pytest.mark.parametrize("chunk", [4 << 20, 300], ids=["one-read", "many-reads"])
def test_crash_in_the_middle_of_a_bucket(tmp_path, monkeypatch, chunk):
    """A copy of the data dir taken while the broker runs (what a kill -9 leaves: written,
    not closed), with a torn record appended to a bucket file: every message not yet routed
    comes back once, in due order; routed ones do not."""
    monkeypatch.setattr(delayed_log, "SCAN_CHUNK", chunk)
    live, image = tmp_path / "live", tmp_path / "image"
    clock = ManualClock(START, WALL)
    broker, store = open_broker(live, clock)
    vh = broker.vhosts["/"]
    ex, q = setup(vh)
    expected = _publish_spread(vh, clock, count=40)
    commit_turn(store)
    done = [b for b, _ in run_until(clock, store, q, 1.45, step=0.05)]
    assert done == expected[:5]              # the first bucket is partly routed
    commit_turn(store)
    shutil.copytree(live, image)
    files = sorted(str(p) for p in image.rglob("*.dlb"))
    assert files
    with open(files[-1], "ab") as f:         # a record cut short by the crash
        f.write(b"\xa5\x17\x00\x00\x00\x00\x00\x00\x10\x00partial")
    store.close()
    clock2 = ManualClock(START + 50, clock.wall() + 0.2)
    broker2, store2 = open_broker(image, clock2)
    q2 = broker2.vhosts["/"].queues["q"]
    rest = [b for b, _ in run_until(clock2, store2, q2, 6.0, step=0.05)]
    assert rest == expected[5:]
    store2.close()
    # and once more: nothing comes back a second time
    broker3, store3 = open_broker(image, ManualClock(START, clock2.wall()))
    q3 = broker3.vhosts["/"].queues["q"]
    assert run_until(broker3.scheduler, store3, q3, 10.0, step=1.0) == []
    assert not list(image.rglob("*.dlb"))
    store3.close()


def test_non_durable_exchange_holds_them_in_scratch_files_gone_at_start(tmp_path):
    clock = ManualClock(START, WALL)
    broker, store = open_broker(tmp_path, clock)
    vh = broker.vhosts["/"]
    ex, q = setup(vh, durable=False)
    assert send(vh, b"t", 5000, persistent=False) is ACCEPTED     # no fsync to wait for
    commit_turn(store)
    assert ex.log is not None and not ex.log.durable
    scratch = ex.log.path
    assert any(n.endswith(".dlb") for n in os.listdir(scratch))
    store.close()
    broker2, store2 = open_broker(tmp_path, ManualClock(START, WALL))
    assert "dx" not in broker2.vhosts["/"].exchanges
    assert not os.path.exists(scratch)
    store2.close()


def test_deleting_the_exchange_removes_its_files(tmp_path):
    clock = ManualClock(START, WALL)
    broker, store = open_broker(tmp_path, clock)
    vh = broker.vhosts["/"]
    ex, q = setup(vh)
    send(vh, b"doomed", 10_000)
    commit_turn(store)
    path = ex.log.path
    vh.delete_exchange("dx", if_unused=False)
    commit_turn(store)
    assert not os.path.exists(path)
    clock.advance(20)
    assert q.message_count == 0
    store.close()


@pytest.mark.parametrize("delay", [50, 5000])
def test_released_message_keeps_its_delivery_mode(tmp_path, delay):
    clock = ManualClock(START, WALL)
    broker, store = open_broker(tmp_path, clock)
    vh = broker.vhosts["/"]
    ex, q = setup(vh)
    send(vh, b"transient", delay, persistent=False)
    commit_turn(store)
    clock.advance(delay / 1000.0 + 0.01)
    entry = q.take()
    assert entry.message.body == b"transient" and entry.message.persistent is False
    store.close()
