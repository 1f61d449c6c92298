"""Priority queues (x-max-priority) beyond the RAM window: one pager per priority level
(store/paging.py PriorityPagers), each level read in behind its RAM entries, so the highest
priority is served first wherever its messages sit, FIFO within a priority, requeue to the
original place; 12 bytes per paged message (16 with a deadline); a restart sorts the recovered
positions by priority and reads no window. Real store on a temp dir, ManualClock."""
import os

import pytest

from amqpd.store.paging import PriorityPagers, Run
from tests.unit.test_paging import Node, bodies, in_ram


def expected(n, prio, top=5):
    """Drain order of bodies(n) published with priority prio(i): highest first, FIFO."""
    return [b for _p, _i, b in sorted((-min(prio(i), top), i, b)
                                      for i, b in enumerate(bodies(n)))]


def publish(node, n, prio):
    for i, b in enumerate(bodies(n)):
        node.publish(b, priority=prio(i))
    node.turn()


@pytest.mark.parametrize("n", [3, 4, 5, 16, 17, 200])
def test_window_boundaries_and_order(tmp_path, n):
    node = Node(tmp_path, window=4, args={"x-max-priority": 5})
    q = node.q
    publish(node, n, lambda i: i % 7)
    assert isinstance(q.pager, PriorityPagers)
    assert q.message_count == n
    assert in_ram(q) == min(n, 4) and q.pager.count == max(0, n - 4)
    assert [b for b, _ in node.drain()] == expected(n, lambda i: i % 7)


def test_a_high_priority_message_behind_a_full_window_is_served_first(tmp_path):
    node = Node(tmp_path, window=4, args={"x-max-priority": 9})
    publish(node, 10, lambda i: 9 if i == 8 else 0)    # 4 low in RAM, the 9 paged
    e = node.q.take()
    assert e.message.body == bodies(10)[8]


def test_requeue_goes_back_to_its_place_within_its_priority(tmp_path):
    node = Node(tmp_path, window=4, args={"x-max-priority": 5})
    publish(node, 40, lambda i: i % 3)
    q = node.q
    order = expected(40, lambda i: i % 3)
    taken = [q.take() for _ in range(8)]
    assert [e.message.body for e in taken] == order[:8]
    for e in reversed(taken[2:6]):
        q.requeue(e)
    for e in taken[:2] + taken[6:]:
        q.settle(e)
    got = node.drain()
    assert [b for b, _ in got] == order[2:6] + order[8:]
    assert [r for _, r in got] == [True] * 4 + [False] * 32


@pytest.mark.parametrize("how", ["restart", "crash"])
def test_restart_sorts_positions_by_priority(tmp_path, how):
    node = Node(tmp_path, window=4, segment_size=4096, args={"x-max-priority": 5})
    publish(node, 300, lambda i: (i * 7) % 6)
    q = node.q
    first = [q.take() for _ in range(3)]        # delivered: redelivered after the restart
    node.turn()
    getattr(node, how)()
    q = node.q
    assert q.message_count == 300 and in_ram(q) == 0
    assert q.pager.memory() <= 12 * 300 + 6 * 4 * 1024
    got = node.drain()
    assert [b for b, _ in got] == expected(300, lambda i: (i * 7) % 6)
    assert [r for _, r in got] == [True] * 3 + [False] * 297
    del first


def test_paged_priority_messages_with_a_ttl_expire(tmp_path):
    node = Node(tmp_path, window=2, args={"x-max-priority": 3, "x-message-ttl": 1000})
    publish(node, 30, lambda i: i % 4)
    node.clock.advance(0.5)
    publish(node, 10, lambda i: 3)               # due 0.5 s after the first 30
    q = node.q
    assert sum(len(r) for r in q.pager.runs if r.__class__ is not Run) == 0
    node.clock.advance(0.5)
    node.turn()
    assert q.message_count == 10
    node.restart()
    assert node.q.message_count == 10
    node.clock.advance(0.5)
    node.turn()
    assert node.q.message_count == 0


def test_purge_and_delete_of_a_paged_priority_queue(tmp_path):
    node = Node(tmp_path, window=4, args={"x-max-priority": 5})
    publish(node, 100, lambda i: i % 6)
    assert node.q.purge() == 100
    node.publish(b"after", priority=1)
    node.turn()
    node.restart()
    assert [b for b, _ in node.drain()] == [b"after"]
    publish(node, 50, lambda i: i % 6)
    node.vhost.delete_queue(node.q)
    node.turn()
    node.restart()
    assert node.q.message_count == 0


def test_a_restart_takes_the_levels_from_the_summaries(tmp_path, monkeypatch):
    """Sealed segments' summaries keep each message's level: a restart reads no record of
    them (only the active segment is scanned); without the levels (an older summary) the
    records are read instead, with the same result."""
    from amqpd.broker.queue_paging import Paging
    from tests.unit.test_paging_bytes import _as_format_1
    node = Node(tmp_path, window=4, segment_size=4096, args={"x-max-priority": 5})
    publish(node, 300, lambda i: (i * 7) % 6)
    reads = []
    real = Paging._read_priorities

    def spy(self, run, top):
        reads.append(run.segment)
        return real(self, run, top)
    monkeypatch.setattr(Paging, "_read_priorities", spy)
    node.crash()
    assert reads == []
    assert [b for b, _ in node.drain()] == expected(300, lambda i: (i * 7) % 6)
    publish(node, 300, lambda i: (i * 5) % 6)
    qdir = node.q.log.path
    idx = sorted(n for n in os.listdir(qdir) if n.endswith(".idx"))
    for name in idx:
        _as_format_1(os.path.join(qdir, name))
    node.crash()
    assert len(reads) == len(idx)
    assert [b for b, _ in node.drain()] == expected(300, lambda i: (i * 5) % 6)
