"""Deadlines of paged messages (broker/queue_paging.py, store/paging.py): a queue TTL
(x-message-ttl) or a message's expiration on messages beyond the RAM window is kept as 4 bytes
next to their position (16 bytes per message in all), they expire wherever they sit, are
dead-lettered as expired with x-death, and keep their deadline across a restart. Real store on
a temp dir, ManualClock."""
import os

import pytest

from amqpd.store.paging import CHUNK, GONE, Run
from tests.unit.stubs import declare_queue
from tests.unit.test_paging import Node, bodies, in_ram


def paged_entries(q) -> int:
    """Messages beyond the window held as objects (there should be none)."""
    return sum(len(run) for run in q.pager.runs if run.__class__ is not Run)


def with_dlq(node):
    """A dead-letter exchange "dlx" and its queue."""
    from tests.unit.stubs import declare_exchange
    dlx = declare_exchange(node.vhost, "dlx", "fanout")
    dlq = declare_queue(node.vhost, "dlq")
    node.vhost.bind(dlx, dlq, "", {})
    return dlq


def test_a_queue_ttl_pages_with_16_bytes_per_message(tmp_path):
    node = Node(tmp_path, window=4, segment_size=1 << 20, args={"x-message-ttl": 60_000})
    q = node.q
    for b in bodies(3000):
        node.publish(b)
    node.turn()
    assert q.pager is not None and in_ram(q) == 4 and q.pager.count == 2996
    assert paged_entries(q) == 0
    assert q.pager.memory() <= 16 * q.pager.count + 4 * 1024
    assert all(len(r.seqs) <= CHUNK for r in q.pager.runs)
    assert [b for b, _ in node.drain()] == bodies(3000)


def test_a_queue_ttl_expires_paged_messages_and_dead_letters_them_in_order(tmp_path):
    node = Node(tmp_path, window=3, args={"x-message-ttl": 1000,
                                         "x-dead-letter-exchange": "dlx"})
    dlq = with_dlq(node)
    q = node.q
    for b in bodies(10):
        node.publish(b)
    node.turn()
    node.clock.advance(0.5)
    for b in bodies(15)[10:]:                  # due 0.5 s later than the first ten
        node.publish(b)
    node.turn()
    assert q.message_count == 15 and q.pager.count == 12
    node.clock.advance(0.5)                    # the first ten are due: 3 in RAM, 7 paged
    node.turn()
    assert q.message_count == 5 and dlq.message_count == 10
    dead = []
    while (e := dlq.take()) is not None:
        dead.append(e)
    assert [e.message.body for e in dead] == bodies(10)
    death = dead[0].message.headers["x-death"][0]
    assert death["reason"] == "expired" and death["queue"] == "q"
    node.clock.advance(0.499)
    node.turn()
    assert q.message_count == 5
    node.clock.advance(0.001)
    node.turn()
    assert q.message_count == 0 and dlq.message_count == 5
    assert node.drain() == []
    node.restart()                                 # every SETTLED marker is on disk
    assert node.q.message_count == 0


def test_a_message_expiration_behind_paged_ones_is_paged_too(tmp_path):
    node = Node(tmp_path, window=2)
    q = node.q
    for i, b in enumerate(bodies(12)):
        node.publish(b, **({"expiration": str(100 * i)} if i % 2 else {}))
    node.turn()
    assert paged_entries(q) == 0 and q.pager.count == 10
    node.clock.advance(0.499)                # 1 (in the window) and 3 (paged) are due
    node.turn()
    assert q.message_count == 10
    node.clock.advance(0.001)                # 5
    node.turn()
    assert q.message_count == 9
    node.clock.advance(0.6)                  # 7, 9, 11 (up to 1.1 s)
    node.turn()
    assert q.message_count == 6
    assert [b for b, _ in node.drain()] == [bodies(12)[i] for i in (0, 2, 4, 6, 8, 10)]


@pytest.mark.parametrize("how", ["restart", "crash"])
def test_deadlines_of_paged_messages_survive_a_restart(tmp_path, how):
    node = Node(tmp_path, window=4, args={"x-message-ttl": 10_000})
    for b in bodies(20):
        node.publish(b)
    node.turn()
    node.clock.advance(5)
    for b in bodies(40)[20:]:
        node.publish(b)
    node.turn()
    getattr(node, how)()
    q = node.q
    assert q.message_count == 40 and in_ram(q) == 0
    assert paged_entries(q) == 0 and q.pager.memory() <= 16 * 40 + 4 * 1024
    node.clock.advance(5)                          # the first twenty are due
    node.turn()
    assert q.message_count == 20
    got = node.drain()
    assert [b for b, _ in got] == bodies(40)[20:]


def test_a_message_read_into_the_window_after_its_deadline_is_not_served(tmp_path):
    """The pager's timer has not run yet (the clock jumped): reading in must not hand it out."""
    node = Node(tmp_path, window=2, args={"x-message-ttl": 1000})
    for b in bodies(6):
        node.publish(b)
    node.turn()
    node.restart()                                  # all six paged, none in RAM
    q = node.q
    node.clock.now += 2                             # no timer has run
    assert q.take() is None
    assert q.message_count == 0


@pytest.mark.parametrize("at", [3, 4, 5])
def test_window_boundary_with_deadlines(tmp_path, at):
    """A message with a deadline as the last in the window, the first paged, or later."""
    node = Node(tmp_path, window=4)
    for i, b in enumerate(bodies(8)):
        node.publish(b, **({"expiration": "1000"} if i == at else {}))
    node.turn()
    q = node.q
    assert paged_entries(q) == 0
    node.clock.advance(1)
    node.turn()
    assert q.message_count == 7
    assert [b for b, _ in node.drain()] == [b for i, b in enumerate(bodies(8)) if i != at]


def test_expired_paged_messages_are_skipped_when_read_back(tmp_path):
    """Expired in the middle of a run: marked GONE in place; reading back skips them, the
    count stays exact, and the SETTLED markers were written once (a restart agrees)."""
    node = Node(tmp_path, window=2)
    for i, b in enumerate(bodies(30)):
        node.publish(b, **({"expiration": "500"} if i % 3 == 0 else {}))
    node.turn()
    node.clock.advance(0.5)
    node.turn()
    q = node.q
    assert q.message_count == 20
    assert any(GONE in (r.dues or ()) for r in q.pager.runs if r.__class__ is Run)
    node.restart()
    assert node.q.message_count == 20
    assert [b for b, _ in node.drain()] == [b for i, b in enumerate(bodies(30)) if i % 3]


def test_purge_of_a_paged_ttl_queue_after_some_expired(tmp_path):
    node = Node(tmp_path, window=2)
    for i, b in enumerate(bodies(20)):
        node.publish(b, **({"expiration": "500"} if i % 2 else {}))
    node.turn()
    node.clock.advance(0.5)
    node.turn()
    assert node.q.purge() == 10
    node.turn()
    node.restart()
    assert node.q.message_count == 0


def test_deadlines_stay_with_their_messages_when_expired_ones_are_skipped(tmp_path):
    """Some messages of a run expired while paged; the others, read in afterwards, keep their
    own deadlines (the GONE ones are skipped in the deadlines as in the records)."""
    node = Node(tmp_path, window=4)
    start = node.clock.time()
    for i, b in enumerate(bodies(20)):
        node.publish(b, expiration="500" if i % 3 == 0 else "1000")
    node.turn()
    node.clock.advance(0.5)
    node.turn()
    q = node.q
    assert q.message_count == 13
    taken = []
    while (e := q.take()) is not None:             # read in a few at a time
        taken.append(e)
    assert [e.message.body for e in taken] == [b for i, b in enumerate(bodies(20)) if i % 3]
    assert [e.expires for e in taken] == [start + 1.0] * 13


def test_compaction_of_a_segment_with_expired_paged_messages(tmp_path):
    """Paged messages, some expired in place (GONE), in an old segment that compaction
    rewrites: the live ones keep their order and the runs stay readable."""
    node = Node(tmp_path, window=4, segment_size=4096)
    q = node.q
    for i, b in enumerate(bodies(40, 60)):
        node.publish(b, **({"expiration": "500"} if i % 4 == 1 else {}))
    node.turn()
    node.clock.advance(0.5)
    node.turn()
    for _ in range(30):                          # many settled segments behind the old ones
        for b in bodies(40, 100):
            node.publish(b, expiration="100")
        node.turn()
        node.clock.advance(0.1)
        node.turn()
    assert q.message_count == 30
    assert len([n for n in os.listdir(q.log.path) if n.endswith(".seg")]) <= 8
    got = node.drain()
    assert [b for b, _ in got] == [b for i, b in enumerate(bodies(40, 60)) if i % 4 != 1]
