"""A durable queue's bounded RAM window (broker/queue_paging.py, store/paging.py): the
window's bounds by count and by bytes, read-back in order, requeue to the original place,
redelivered flags and recovery from positions; and a model-based test (hypothesis) of random
publish / get / ack / requeue / reject / TTL / purge / restart / crash sequences against a tiny
window, checked against a plain in-memory model. Real store on a temp dir, ManualClock."""
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amqpd import config as amqpd_config
from amqpd.access.control import AccessControl
from amqpd.broker.broker import Broker
from amqpd.broker.clock import ManualClock
from amqpd.store.store import Store
from tests.unit.stubs import commit_turn, declare_queue, message


class Node:
    """A broker with a store, restartable (clean) and crashable (no close: what was written
    to the OS stays, as after kill -9)."""

    def __init__(self, path, window=4, window_bytes=1 << 20, segment_size=4096, args=None):
        self.path = str(path)
        self.args = args or {}
        self.cfg = amqpd_config.from_dict({"storage": {
            "data_dir": self.path, "fsync": "never",
            "queue_window": {"messages": window, "bytes": window_bytes}}})
        self.segment_size = segment_size
        self.clock = ManualClock()
        self.start()

    def start(self):
        self.store = Store(self.path, "never", segment_size=self.segment_size)
        self.broker = Broker(self.cfg, self.store, AccessControl(self.cfg), self.clock)
        self.broker.recover()
        self.vhost = self.broker.vhosts["/"]
        self.q = self.vhost.queues.get("q") or declare_queue(self.vhost, "q", durable=True,
                                                             **self.args)

    def publish(self, body: bytes, **props):
        props.setdefault("delivery_mode", 2)
        self.vhost.publish(self.vhost.exchanges[""], message(body, "q", **props))

    def turn(self):
        self.broker.run_dispatch()
        commit_turn(self.store)
        self.clock.advance(0)

    def restart(self):
        self.broker.finish_background()
        self.store.close()
        self.start()

    def crash(self):
        """kill -9: buffered records are lost, written ones stay; the lock goes with us."""
        commit = self.store.commit
        for qlog in self.store.logs.values():
            qlog.pending.clear()
            for fd in qlog.retired + ([qlog.fd] if qlog.fd is not None else []):
                os.close(fd)
            qlog.retired, qlog.fd = [], None
        commit.dirty.clear()
        os.close(self.store._lock_fd)
        self.store.journal.close()
        self.start()

    def take(self):
        entry = self.q.take()
        return entry

    def drain(self):
        out = []
        while (e := self.q.take()) is not None:
            self.q.settle(e)
            out.append((e.message.body, e.redelivered))
        self.turn()
        return out


def bodies(n, size=10):
    return [b"m%05d" % i + b"x" * (size - 6) for i in range(n)]


def in_ram(q) -> int:
    return len(q.ready) + len(q.ready.back)


def record_segment_reads(node, monkeypatch) -> list:
    """The names of the segment files the store reads whole from now on (recovery scans)."""
    read = []
    real_read = node.store.io.read

    def spy(path):
        read.append(os.path.basename(path))
        return real_read(path)
    monkeypatch.setattr(type(node.store.io), "read", staticmethod(spy), raising=False)
    return read


@pytest.mark.parametrize("n", [3, 4, 5, 9, 40])
def test_window_bound_by_count(tmp_path, n):
    node = Node(tmp_path, window=4)
    for b in bodies(n):
        node.publish(b)
    node.turn()
    q = node.q
    assert q.message_count == n
    assert in_ram(q) == min(n, 4)
    assert q.pager.count == max(0, n - 4)
    assert [b for b, _ in node.drain()] == bodies(n)
    assert q.message_count == 0 and q.pager.count == 0


@pytest.mark.parametrize("size,expect", [(100, 3), (101, 3), (99, 4), (400, 1), (1000, 1)])
def test_window_bound_by_bytes(tmp_path, size, expect):
    """300 bytes of window: messages are admitted while the window holds fewer bytes (the last
    one may cross the bound); at least one is always in RAM."""
    node = Node(tmp_path, window=100, window_bytes=300)
    for b in bodies(20, size):
        node.publish(b)
    node.turn()
    assert in_ram(node.q) == expect
    assert [b for b, _ in node.drain()] == bodies(20, size)


def test_window_refills_as_consumers_take_and_before_it_empties(tmp_path):
    node = Node(tmp_path, window=8)
    for b in bodies(50):
        node.publish(b)
    node.turn()
    q = node.q
    got = []
    for _ in range(5):                 # below half: refilled to the full window at once
        e = q.take()
        q.settle(e)
        got.append(e.message.body)
    assert len(q.ready) == 8
    assert q.message_count == 45
    assert got + [b for b, _ in node.drain()] == bodies(50)


def test_records_of_this_turn_are_read_once_written(tmp_path):
    """The window empties before the log is written: the queue waits for the write."""
    node = Node(tmp_path, window=2)
    for b in bodies(6):
        node.publish(b)
    q = node.q
    got = [q.take(), q.take()]
    assert q.take() is None and q.message_count == 4     # not written yet
    node.turn()
    got += [q.take() for _ in range(4)]
    assert [e.message.body for e in got] == bodies(6)


def test_requeue_goes_back_to_its_place_before_paged_messages(tmp_path):
    node = Node(tmp_path, window=3)
    for b in bodies(12):
        node.publish(b)
    node.turn()
    q = node.q
    taken = [q.take() for _ in range(6)]
    for e in reversed(taken[1:4]):
        q.requeue(e)
    for e in taken[:1] + taken[4:]:
        q.settle(e)
    got = node.drain()
    assert [b for b, _ in got] == bodies(12)[1:4] + bodies(12)[6:]
    assert [r for _, r in got] == [True] * 3 + [False] * 6


def test_transient_messages_behind_paged_ones_keep_their_place(tmp_path):
    node = Node(tmp_path, window=2)
    expect = bodies(10)
    for i, b in enumerate(expect):
        node.publish(b, delivery_mode=1 if i % 3 == 0 else 2)
    node.turn()
    assert [b for b, _ in node.drain()] == expect


def test_restart_recovers_positions_and_reads_the_window_when_first_needed(tmp_path):
    node = Node(tmp_path, window=4)
    for b in bodies(30):
        node.publish(b)
    node.turn()
    delivered = [node.q.take() for _ in range(2)]      # DELIVERED markers written
    node.turn()
    node.restart()
    q = node.q
    assert q.message_count == 30
    assert in_ram(q) == 0 and q.pager.count == 30       # nothing read until it is needed
    first = q.take()                                     # the window is read in now
    assert first.message.body == bodies(30)[0] and first.redelivered
    assert in_ram(q) == 3 and q.pager.count == 26
    q.requeue(first)
    got = node.drain()
    assert [b for b, _ in got] == bodies(30)
    assert [r for _, r in got] == [True, True] + [False] * 28
    del delivered


def test_crash_keeps_every_written_message_in_order(tmp_path):
    node = Node(tmp_path, window=4)
    for b in bodies(25):
        node.publish(b)
    node.turn()
    e = node.q.take()
    node.q.settle(e)
    node.turn()
    node.publish(b"lost")                 # buffered, never written: not confirmed either
    node.crash()
    assert [b for b, _ in node.drain()] == bodies(25)[1:]


def test_purge_of_a_paged_queue_settles_everything_in_slices(tmp_path):
    node = Node(tmp_path, window=4)
    for b in bodies(3000):
        node.publish(b)
    node.turn()
    assert node.q.purge() == 3000
    assert node.q.message_count == 0
    node.publish(b"after")
    node.turn()
    node.restart()                    # runs the rest of the purge first
    assert [b for b, _ in node.drain()] == [b"after"]


def test_delete_drops_the_pager(tmp_path):
    node = Node(tmp_path, window=4)
    for b in bodies(50):
        node.publish(b)
    node.turn()
    node.vhost.delete_queue(node.q)
    node.turn()
    node.restart()
    assert node.q.message_count == 0


def test_paged_messages_cost_at_most_16_bytes_each(tmp_path):
    node = Node(tmp_path, window=4, segment_size=1 << 20)
    for b in bodies(5000):
        node.publish(b)
    node.turn()
    pager = node.q.pager
    assert pager.count == 4996
    assert pager.memory() <= 16 * pager.count + 4 * 1024    # the arrays' growth slack
    node.restart()
    assert node.q.pager.memory() <= 16 * node.q.pager.count + 4 * 1024


def test_a_message_with_a_ttl_expires_wherever_it_sits(tmp_path):
    node = Node(tmp_path, window=2)
    for i, b in enumerate(bodies(8)):
        node.publish(b, **({"expiration": "1000"} if i == 5 else {}))
    node.turn()
    node.clock.advance(2)
    node.turn()
    assert node.q.message_count == 7
    assert [b for b, _ in node.drain()] == bodies(8)[:5] + bodies(8)[6:]


# -- model-based ----------------------------------------------------------------------------------
OPS = st.one_of(
    st.tuples(st.just("publish"), st.integers(1, 6), st.sampled_from([None, 500, 5000]),
              st.booleans()),
    st.tuples(st.just("get")),
    st.tuples(st.just("ack"), st.integers(0, 10)),
    st.tuples(st.just("requeue"), st.integers(0, 10)),
    st.tuples(st.just("reject"), st.integers(0, 10)),
    st.tuples(st.just("advance"), st.sampled_from([0.2, 1, 3])),
    st.tuples(st.just("purge")),
    st.tuples(st.just("restart")),
    st.tuples(st.just("crash")),
)


@settings(max_examples=int(os.environ.get("PAGING_EXAMPLES", 60)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(OPS, max_size=40), queue_ttl=st.sampled_from([None, 2000]),
       max_priority=st.sampled_from([None, 3]))
def test_model(tmp_path_factory, ops, queue_ttl, max_priority):
    """The queue behaves like a list in seq order: publish appends, get takes the oldest
    ready one, requeue puts it back at its place (redelivered), ack/reject drop it, a TTL drops
    a ready one once due (a queue TTL, x-message-ttl, or the message's expiration, whichever
    is sooner; wherever it sits, in the window or paged), purge drops every ready one,
    restart/crash turn every unacked one back into a ready, redelivered one (persistent ones
    only, after a crash or restart; a deadline is kept). In a priority queue the order is
    (highest priority first, then seq); the n-th message has priority n % 5 (4 is above the
    queue's maximum, 3: it counts as 3)."""
    args = {} if queue_ttl is None else {"x-message-ttl": queue_ttl}
    if max_priority is not None:
        args["x-max-priority"] = max_priority

    def order(it):
        return (-min(it[0] % 5, max_priority), it[0]) if max_priority else it[0]
    node = Node(tmp_path_factory.mktemp("model"), window=4, segment_size=2048, args=args)
    model = []              # ready: [seq, body, redelivered, deadline, persistent]
    out = []                # unacked, in delivery order: (entry, model item)
    n = 0
    for op in ops:
        kind = op[0]
        if kind == "publish":
            for _ in range(op[1]):
                n += 1
                body = b"b%04d" % n
                props = {"delivery_mode": 2 if op[3] else 1}
                ttl = queue_ttl
                if op[2] is not None:
                    props["expiration"] = str(op[2])
                    ttl = op[2] if ttl is None else min(ttl, op[2])
                deadline = None if ttl is None else node.clock.time() + ttl / 1000
                if max_priority is not None:
                    props["priority"] = n % 5
                node.publish(body, **props)
                model.append([n, body, False, deadline, op[3]])
            model.sort(key=order)
        elif kind == "get":
            e = node.q.take()
            if not model:
                assert e is None
                continue
            item = model.pop(0)
            assert e is not None, (item, node.q.message_count)
            assert (e.message.body, e.redelivered) == (item[1], item[2])
            out.append((e, item))
        elif kind in ("ack", "requeue", "reject") and out:
            e, item = out.pop(op[1] % len(out))
            if kind == "ack":
                node.q.settle(e)
            elif kind == "reject":
                node.q.reject(e)
            else:
                node.q.requeue(e)
                if item[3] is None or item[3] > node.clock.time():
                    item[2] = True
                    model.append(item)
                    model.sort(key=order)
        elif kind == "advance":
            node.turn()
            node.clock.advance(op[1])
            model = [it for it in model if it[3] is None or it[3] > node.clock.time()]
        elif kind == "purge":
            assert node.q.purge() == len(model)
            node.broker.finish_background()
            model = []
        elif kind in ("restart", "crash"):
            node.turn()
            getattr(node, kind)()
            for e, item in out:
                item[2] = True
                model.append(item)
            out = []
            # a deadline survives the restart (the clock did not move): due ones go
            model = [it for it in model if it[4]
                     and (it[3] is None or it[3] > node.clock.time())]
            model.sort(key=order)
        node.turn()
        assert node.q.message_count == len(model), (op, model)
    got = node.drain()
    assert [(b, r) for b, r in got] == [(it[1], it[2]) for it in model]
    node.store.close()


# -- segment summaries ------------------------------------------------------------------------------
def test_sealed_segments_get_summaries_and_a_restart_reads_only_those(tmp_path, monkeypatch):
    node = Node(tmp_path, window=4, segment_size=4096)
    for b in bodies(400, 100):
        node.publish(b)
    node.turn()
    for _ in range(3):
        node.q.settle(node.q.take())
    node.q.take()                                     # delivered, not acked
    node.turn()
    qdir = node.q.log.path
    segs = sorted(n for n in os.listdir(qdir) if n.endswith(".seg"))
    idx = sorted(n for n in os.listdir(qdir) if n.endswith(".idx"))
    assert len(segs) > 5 and len(idx) == len(segs) - 1   # all but the active one
    read = record_segment_reads(node, monkeypatch)
    node.crash()
    assert read == [segs[-1]]                          # only the active segment is scanned
    got = node.drain()
    assert [b for b, _ in got] == bodies(400, 100)[3:]
    assert [r for _, r in got] == [True] + [False] * 396


@pytest.mark.parametrize("damage", ["delete", "garble", "truncate", "stale"])
def test_a_missing_or_bad_summary_falls_back_to_scanning(tmp_path, damage):
    node = Node(tmp_path, window=4, segment_size=4096)
    for b in bodies(300, 100):
        node.publish(b)
    node.turn()
    node.q.settle(node.q.take())
    node.turn()
    qdir = node.q.log.path
    idx = sorted(os.path.join(qdir, n) for n in os.listdir(qdir) if n.endswith(".idx"))
    victim = idx[1]
    if damage == "delete":
        os.unlink(victim)
    elif damage == "garble":
        data = bytearray(open(victim, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(victim, "wb").write(bytes(data))
    elif damage == "truncate":
        open(victim, "r+b").truncate(20)
    else:                                              # another segment's summary
        open(victim, "wb").write(open(idx[2], "rb").read())
    node.crash()
    assert [b for b, _ in node.drain()] == bodies(300, 100)[1:]


# -- transient messages -----------------------------------------------------------------------------
@pytest.mark.parametrize("durable", [True, False])
def test_transient_messages_spill_to_scratch_segments(tmp_path, durable):
    node = Node(tmp_path, window=4, segment_size=4096)
    q = node.q if durable else node.vhost.declare_queue("t", None, False, False, False, False,
                                                         {})
    ex = node.vhost.exchanges[""]
    expect = bodies(300, 100)
    for i, b in enumerate(expect):
        node.vhost.publish(ex, message(b, q.name, delivery_mode=2 if durable and i % 2 else 1))
    node.turn()
    assert in_ram(q) == 4 and q.pager.count == 296 and not any(
        r.__class__.__name__ == "deque" for r in q.pager.runs)
    scratch = q.pager.scratch.path
    assert len([n for n in os.listdir(scratch) if n.endswith(".seg")]) > 3
    got = []
    while (e := q.take()) is not None:
        q.settle(e)
        got.append(e.message.body)
        assert e.message.persistent == (durable and len(got) % 2 == 0)
        node.turn()
    assert got == expect
    assert len([n for n in os.listdir(scratch) if n.endswith(".seg")]) == 1   # read back: gone
    node.vhost.delete_queue(q)
    node.turn()
    assert not os.path.exists(scratch)


def test_scratch_segments_are_removed_at_start_up(tmp_path):
    node = Node(tmp_path, window=2)
    q = node.vhost.declare_queue("t", None, False, False, False, False, {})
    for b in bodies(50):
        node.vhost.publish(node.vhost.exchanges[""], message(b, "t"))
    node.turn()
    assert os.listdir(os.path.join(node.path, "scratch"))
    node.crash()
    assert not os.path.exists(os.path.join(node.path, "scratch"))
    assert node.q.message_count == 0
    del q


# -- length limits ----------------------------------------------------------------------------------
def limited(node, **args):
    return node.vhost.declare_queue("lim", None, False, True, False, False, args)


@pytest.mark.parametrize("overflow", ["drop-head", "reject-publish"])
def test_max_length_on_a_paged_queue(tmp_path, overflow):
    node = Node(tmp_path, window=4)
    q = limited(node, **{"x-max-length": 50, "x-overflow": overflow,
                         "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"})
    dlq = node.vhost.declare_queue("dlq", None, False, True, False, False, {})
    for b in bodies(80):
        node.vhost.publish(node.vhost.exchanges[""], message(b, "lim", delivery_mode=2))
        node.turn()
    assert q.message_count == 50 and q.pager is not None and q.pager.count > 0
    got = []
    while (e := q.take()) is not None:
        q.settle(e)
        got.append(e.message.body)
    dropped = []
    while (e := dlq.take()) is not None:
        dlq.settle(e)
        dropped.append(e.message.body)
    if overflow == "drop-head":
        assert got == bodies(80)[30:] and dropped == bodies(80)[:30]
    else:
        assert got == bodies(80)[:50] and dropped == []


# -- compaction -------------------------------------------------------------------------------------
def segment_files(q):
    return sorted(n for n in os.listdir(q.log.path) if n.endswith(".seg"))


@pytest.mark.parametrize("how", ["unacked", "requeued", "paged"])
def test_an_old_live_message_does_not_pin_later_segments(tmp_path, how):
    """One message kept (unacked by a consumer, requeued, or paged behind the window) while
    thousands pass: its segment is rewritten with just the live ones and the settled segments
    go; a crash then brings back exactly what was live, redelivered flags right."""
    from pamqp import commands as C
    from tests.unit.stubs import Client
    node = Node(tmp_path, window=4, segment_size=4096)
    q = node.q
    for b in bodies(3):
        node.publish(b)
    node.turn()
    client = None
    if how == "unacked":
        client = Client(node.broker)
        client.handshake()
        client.open_channel(1)
        client.send_method(1, C.Basic.Qos(prefetch_count=1))
        client.send_method(1, C.Basic.Consume(queue="q"))
        node.turn()
        assert q.unacked == 1
    elif how == "requeued":
        q.requeue(q.take())
    else:
        for _ in range(2):
            q.settle(q.take())
        for _ in range(10):
            node.publish(b"keep")             # stay behind the others, paged or windowed
    node.turn()
    keep = 1 if how != "paged" else 11
    for _ in range(60):
        for b in bodies(40, 100):
            node.publish(b)
        node.turn()
        taken = []
        while q.message_count > keep:
            e = q.take()
            if e.message.body == b"keep" or (how == "requeued" and e.seq == 1):
                taken.append(e)
                continue
            q.settle(e)
        for e in taken:
            q.requeue(e)
        node.turn()
    assert len(segment_files(q)) <= 6, segment_files(q)
    live = q.message_count + q.unacked
    node.crash()
    got = node.drain()
    assert len(got) == live
    if how == "paged":
        assert got[:10] == [(b"keep", True)] * 10
    else:
        assert got[0] == (bodies(3)[0], True) and len(got) >= 1


def test_many_expired_messages_behind_paged_ones_keep_the_count_exact(tmp_path):
    """Over 1,024 expired in place (the ready list is rebuilt): the ones waiting in RAM behind
    paged messages are still counted as expired until they are reached."""
    node = Node(tmp_path, window=4, segment_size=1 << 20)
    for b in bodies(6):
        node.publish(b)
    for b in bodies(1500):
        node.publish(b, expiration="1000")
    node.publish(b"last")
    node.turn()
    node.clock.advance(2)
    node.turn()
    assert node.q.message_count == 7
    assert [b for b, _ in node.drain()] == bodies(6) + [b"last"]
    assert node.q.message_count == 0 and node.q.expired_in_place == 0


def test_a_summary_torn_inside_an_array_is_ignored(tmp_path):
    node = Node(tmp_path, window=4, segment_size=4096)
    for b in bodies(300, 100):
        node.publish(b)
    node.turn()
    qdir = node.q.log.path
    victim = sorted(os.path.join(qdir, n) for n in os.listdir(qdir) if n.endswith(".idx"))[0]
    size = os.path.getsize(victim)
    with open(victim, "r+b") as f:
        f.truncate(size - 3)                         # mid-item: not a multiple of 8
    node.crash()
    assert [b for b, _ in node.drain()] == bodies(300, 100)
