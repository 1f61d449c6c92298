"""Transient messages beyond a queue's RAM window while memory is plentiful
(``Broker.page_transient`` false, set by the edge below the paging threshold): they stay in RAM,
in order with what is paged ahead of them, and nothing goes to the scratch log; once memory
pressure sets the flag they spill again. Real store on a temp dir, ManualClock."""
import os

from tests.unit.stubs import message
from tests.unit.test_paging import Node, bodies, in_ram


def publish_all(node, q, expect, persistent_every=0):
    ex = node.vhost.exchanges[""]
    for i, b in enumerate(expect):
        mode = 2 if persistent_every and i % persistent_every == 0 else 1
        node.vhost.publish(ex, message(b, q.name, delivery_mode=mode))
    node.turn()


def drain(node, q):
    got = []
    while (e := q.take()) is not None:
        q.settle(e)
        got.append(e.message.body)
        node.turn()
    return got


def scratch_segments(node):
    root = os.path.join(node.path, "scratch")
    if not os.path.exists(root):
        return 0
    return sum(len([n for n in files if n.endswith(".seg")]) for _, _, files in os.walk(root))


def test_transient_backlog_grows_the_window_while_memory_is_plentiful(tmp_path):
    node = Node(tmp_path, window=4, segment_size=4096)
    node.broker.page_transient = False
    q = node.vhost.declare_queue("t", None, False, False, False, False, {})
    expect = bodies(300, 100)
    publish_all(node, q, expect)
    assert in_ram(q) == 300 and q.pager.count == 0
    assert scratch_segments(node) == 0
    assert drain(node, q) == expect


def test_transient_behind_paged_persistent_ones_keeps_its_place_in_ram(tmp_path):
    node = Node(tmp_path, window=4, segment_size=4096)
    node.broker.page_transient = False
    q = node.q                                         # durable: persistent ones are paged
    expect = bodies(300, 100)
    publish_all(node, q, expect, persistent_every=3)
    assert q.pager.count > 0 and scratch_segments(node) == 0
    assert drain(node, q) == expect


def test_memory_pressure_sends_new_arrivals_to_the_scratch_log(tmp_path):
    node = Node(tmp_path, window=4, segment_size=4096)
    node.broker.page_transient = False
    q = node.vhost.declare_queue("t", None, False, False, False, False, {})
    first, second = bodies(100, 50), [b"late-%03d" % i + b"y" * 50 for i in range(200)]
    publish_all(node, q, first)
    node.broker.page_transient = True                  # the edge saw RSS above the threshold
    publish_all(node, q, second)
    assert q.pager.count == 200 and scratch_segments(node) > 0
    node.broker.page_transient = False                 # and below it again: order still holds
    third = [b"after-%03d" % i for i in range(20)]
    publish_all(node, q, third)
    assert drain(node, q) == first + second + third
