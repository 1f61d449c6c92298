"""Forwarding without sockets: two in-memory brokers, each with its real cluster objects
(ClusterNode, Forwarding, Placements), the origin's link (forward_origin.Peer) and the
leader's (forward_session.Session) joined by a pipe that hands frames over on the next loop turn; clients
are sans-IO Connections. And VHost.replace_queue on its own."""
import asyncio
import struct

import pytest
from pamqp import commands as C

from amqpd import config as amqpd_config
from amqpd.cluster import ClusterNode
from amqpd.cluster.forward_session import Session
from amqpd.cluster.placement import record
from amqpd.cluster.remote_queue import RemoteQueue
from amqpd.store.store import Store

from .stubs import Client, declare_exchange, declare_queue, make_broker, message
from .test_connection_core import names

Basic = C.Basic


class Pipe:
    """A writer whose frames reach ``deliver(payload)`` on a later loop turn."""

    def __init__(self, loop, deliver):
        self.loop, self.deliver = loop, deliver
        self.open = True

    def write(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            length, kind, head_len = struct.unpack_from(">IBI", data, pos)
            payload = data[pos + 9 + head_len:pos + 4 + length]
            pos += 4 + length
            if self.open:
                self.loop.call_soon(self.deliver, kind, payload)


def node(name: str, data_dir=None):
    """A cluster node's forwarding on a memory-only broker, or one with its store there."""
    cfg = amqpd_config.Cluster(name="t", node=name)
    cluster = ClusterNode(cfg, None)
    broker = make_broker() if data_dir is None else \
        make_broker(store=Store(str(data_dir)), storage={"data_dir": str(data_dir)})
    cluster.forwarding.install(broker, broker.run_dispatch, cluster.make_queue)
    # the placement of "q": led by node1 (as the membership watch would hand it over)
    cluster.placements.apply("%2F/q", record("classic", "node1", ["node1"]), 7)
    cluster.member.alive = {"node1": {"state": "running"}, "node2": {"state": "running"}}
    return cluster, broker


class Pair:
    """node1 leads "q"; node2's proxy forwards to it."""

    def __init__(self, data_dir=None):
        loop = asyncio.get_running_loop()
        self.c1, self.b1 = node("node1", data_dir)
        self.c2, self.b2 = node("node2")
        self.leader_q = declare_queue(self.b1.vhosts["/"], "q", durable=True)
        self.proxy = declare_queue(self.b2.vhosts["/"], "q", durable=True)
        self.peer = self.c2.forwarding.peer("node1")
        self.session = Session(self.c1.forwarding, "node2")
        self.c1.forwarding.sessions.add(self.session)      # as the link's accept does

        def to_leader(kind, payload):
            self.session.feed(payload)
            self.b1.run_dispatch()

        def to_origin(kind, payload):
            self.peer.feed(payload)
            self.b2.run_dispatch()
        self.session.writer = Pipe(loop, to_origin)
        self.peer.writer = self.to_leader = Pipe(loop, to_leader)
        self.peer.connected = True

    def client(self) -> Client:
        c = Client(broker=self.b2)
        c.handshake()
        c.open_channel(1)
        return c


async def turns(n: int = 10) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def run(coro):
    asyncio.run(coro)


def test_the_factory_makes_a_proxy_for_a_queue_led_elsewhere():
    async def go():
        p = Pair()
        assert isinstance(p.proxy, RemoteQueue) and p.proxy.leader == "node1"
        assert not isinstance(p.leader_q, RemoteQueue)
    run(go())


def test_publish_is_confirmed_by_the_leader():
    async def go():
        p = Pair()
        c = p.client()
        c.send_method(1, C.Confirm.Select())
        c.expect_one(C.Confirm.SelectOk)
        c.send(_publish(b"hello"))
        assert c.methods() == []                  # not confirmed before the leader says so
        await turns()
        ack = c.expect_one(Basic.Ack)
        assert ack.delivery_tag == 1
        assert [e.message.body for e in p.leader_q.ready] == [b"hello"]
    run(go())


def test_consume_ack_and_nack_requeue_through_the_proxy():
    async def go():
        p = Pair()
        for body in (b"one", b"two"):
            p.leader_q.enqueue(message(body, "q"))
        c = p.client()
        c.send_method(1, Basic.Qos(prefetch_count=1))
        c.send_method(1, Basic.Consume(queue="q", consumer_tag="t1"))
        assert c.conn.output_held()               # consume-ok waits for the leader's
        await turns()
        got = c.methods()
        assert names(got)[:3] == [(1, "QosOk"), (1, "ConsumeOk"), (1, "Deliver")]
        assert got[2][1].redelivered is False and got[4][1].value == b"one"
        c.send_method(1, Basic.Nack(delivery_tag=1, requeue=True))
        await turns()
        got = c.methods()
        assert got[0][1].redelivered is True and got[2][1].value == b"one"
        c.send_method(1, Basic.Ack(delivery_tag=2))
        await turns()
        got = c.methods()
        assert got[2][1].value == b"two"
        c.send_method(1, Basic.Ack(delivery_tag=3))
        await turns()
        assert p.leader_q.message_count == 0 and p.leader_q.unacked == 0
    run(go())


def test_basic_get_is_a_deferred_reply_held_in_order():
    async def go():
        p = Pair()
        p.leader_q.enqueue(message(b"got", "q"))
        c = p.client()
        c.send_method(1, Basic.Get(queue="q"))
        assert c.conn.output_held()               # the get-ok's place is kept
        await turns()
        assert not c.conn.output_held()
        got = c.methods()
        assert names(got)[0] == (1, "GetOk") and got[2][1].value == b"got"
        c.send_method(1, Basic.Ack(delivery_tag=got[0][1].delivery_tag))
        await turns()
        assert p.leader_q.unacked == 0
        c.send_method(1, Basic.Get(queue="q"))
        await turns()
        assert names(c.methods()) == [(1, "GetEmpty")]
    run(go())


def test_declare_counts_purge_and_delete_are_the_leaders():
    async def go():
        p = Pair()
        for i in range(3):
            p.leader_q.enqueue(message(b"%d" % i, "q"))
        c = p.client()
        c.send_method(1, C.Queue.Declare(queue="q", passive=True))
        await turns()
        ok = c.expect_one(C.Queue.DeclareOk)
        assert ok.message_count == 3
        c.send_method(1, C.Queue.Purge(queue="q"))
        await turns()
        assert c.expect_one(C.Queue.PurgeOk).message_count == 3
        p.leader_q.enqueue(message(b"x", "q"))
        c.send_method(1, C.Queue.Delete(queue="q", if_empty=True))
        await turns()
        got = c.methods()
        assert names(got) == [(1, "Close")] and got[0][1].reply_code == 406
        c.send_method(1, C.Channel.CloseOk())
        c.open_channel(2)
        c.send_method(2, C.Queue.Delete(queue="q"))
        await turns()
        assert c.expect_one(C.Queue.DeleteOk).message_count == 1
        assert "q" not in p.b1.vhosts["/"].queues and "q" not in p.b2.vhosts["/"].queues
    run(go())


def test_a_dropped_link_nacks_publishes_and_cancels_consumers_and_requeues_at_the_leader():
    async def go():
        p = Pair()
        p.leader_q.enqueue(message(b"held", "q"))
        c = p.client()
        c.send_method(1, Basic.Consume(queue="q", consumer_tag="t1"))
        c.send_method(1, C.Confirm.Select())
        await turns()
        got = c.methods()
        assert (1, "Deliver") in names(got)
        p.to_leader.open = False                  # the link is cut: nothing more arrives
        c.send(_publish(b"lost"))
        p.peer._lost("test")
        p.session.close()
        got = names(c.methods())
        assert (1, "Cancel") in got and (1, "Nack") in got
        assert p.leader_q.message_count == 1      # the unacked delivery came back
        assert p.leader_q.ready.take().redelivered
        c.send_method(1, Basic.Ack(delivery_tag=1))     # taken, dropped: no 406
        assert names(c.methods()) == []
    run(go())


def test_replace_queue_moves_bindings_and_cancels_consumers():
    broker = make_broker()
    vhost = broker.vhosts["/"]
    old = declare_queue(vhost, "r", durable=True)
    fan = declare_exchange(vhost, "fan")
    direct = declare_exchange(vhost, "dx", "direct")
    vhost.bind(fan, old, "", {})
    vhost.bind(direct, old, "a", {})
    vhost.bind(direct, old, "b", {})
    c = Client(broker=broker)
    c.handshake()
    c.open_channel(1)
    c.send_method(1, Basic.Consume(queue="r", consumer_tag="t1"))
    c.methods()
    vhost.publish(direct, message(b"m", "a", "dx"))
    broker.run_dispatch()
    c.methods()
    new = type(old)(vhost, "r", True, None, False, {})
    vhost.replace_queue(old, new)
    assert vhost.queues["r"] is new and old.deleted
    assert names(c.methods()) == [(1, "Cancel")]
    assert old.sources == set() and new.sources == {fan, direct}
    assert set(vhost.route(direct, message(b"", "b", "dx"))) == {new}
    assert set(vhost.route(fan, message(b"", "", "fan"))) == {new}
    c.send_method(1, Basic.Ack(delivery_tag=1))     # a delivery of the old object: no 406
    assert names(c.methods()) == []


def _publish(body: bytes) -> bytes:
    from .stubs import publish
    return publish(1, body, routing_key="q")



def test_no_ack_consumer_gets_a_window_the_origin_gives_back_as_it_hands_out():
    async def go():
        from amqpd.cluster import forward_session
        p = Pair()
        n = forward_session.WINDOW + 44
        for i in range(n):
            p.leader_q.enqueue(message(b"%d" % i, "q"))
        c = p.client()
        c.send_method(1, Basic.Consume(queue="q", consumer_tag="t1", no_ack=True))
        c.methods()
        await turns(40)
        got = [f for _ch, f in c.methods() if isinstance(f, Basic.Deliver)]
        assert len(got) == n                       # credit came back, the rest followed
        assert p.leader_q.message_count == 0 and p.leader_q.unacked == 0
    run(go())


def test_deliveries_a_cancelled_consumer_never_saw_go_back_unmarked():
    async def go():
        p = Pair()
        for i in range(3):
            p.leader_q.enqueue(message(b"%d" % i, "q"))
        c = p.client()
        c.send_method(1, Basic.Qos(prefetch_count=3))
        c.methods()
        c.send_method(1, Basic.Consume(queue="q", consumer_tag="t1"))
        c.conn.writable = False                    # the client's socket does not drain
        await turns()
        assert names(c.methods()) == [(1, "ConsumeOk")]   # held at the origin, not delivered
        c.send_method(1, Basic.Cancel(consumer_tag="t1"))
        await turns()
        assert p.leader_q.message_count == 3
        assert not any(e.redelivered for e in p.leader_q.ready)
    run(go())


def test_an_exclusive_consumer_at_the_leader_refuses_a_consume_through_the_proxy_with_403():
    async def go():
        p = Pair()
        leader = Client(broker=p.b1)              # node1's own client holds it exclusively
        leader.handshake()
        leader.open_channel(1)
        leader.send_method(1, Basic.Consume(queue="q", consumer_tag="x", exclusive=True))
        assert (1, "ConsumeOk") in names(leader.methods())
        c = p.client()
        c.open_channel(2)
        c.methods()
        c.send_method(1, Basic.Consume(queue="q", consumer_tag="t1"))
        c.send_method(2, C.Queue.Declare(queue="q", passive=True))   # answered after it
        assert c.conn.output_held()
        await turns()
        got = c.methods()
        assert names(got) == [(1, "Close"), (2, "DeclareOk")]
        close = got[0][1]
        assert close.reply_code == 403 and (close.class_id, close.method_id) == (60, 20)
        assert close.reply_text == "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use"
        assert p.proxy.consumers == [] and p.peer.subs == {}
        assert [con.tag for con in p.leader_q.consumers] == ["x"]
        # the leader's exclusive consumer goes: a consume through the proxy is taken
        leader.send_method(1, Basic.Cancel(consumer_tag="x"))
        c.send_method(1, C.Channel.CloseOk())
        c.open_channel(1)
        c.methods()
        c.send_method(1, Basic.Consume(queue="q", consumer_tag="t1", exclusive=True))
        await turns()
        assert names(c.methods()) == [(1, "ConsumeOk")]
        assert [con.tag for con in p.leader_q.consumers] == ["t1"]
    run(go())


@pytest.mark.parametrize("stored", [True, False], ids=["data-dir", "memory-only"])
def test_what_an_origin_held_comes_back_when_the_queue_moves_after_it_unsubscribed(tmp_path,
                                                                                   stored):
    """The origin saw the move first: its subscription ended (an AMQP cancel requeues
    nothing) and it drops its client's acks of the old leader's deliveries. When the old
    leader sees the move, what that origin held comes back to be forwarded on (from a
    memory-only node's copy too: it has no log, but its messages are no less confirmed)."""
    async def go():
        p = Pair(tmp_path / "data" if stored else None)
        for body in (b"one", b"two"):
            p.leader_q.enqueue(message(body, "q"))
        c = p.client()
        c.send_method(1, Basic.Qos(prefetch_count=10))
        c.send_method(1, Basic.Consume(queue="q", consumer_tag="t1"))
        await turns()
        assert names(c.methods()).count((1, "Deliver")) == 2
        moved = record("classic", "node3", ["node3"])
        moved["epoch"] = 2
        p.c2.placements.apply("%2F/q", moved, 8)          # node2 sees it first
        await turns()
        assert (1, "Cancel") in names(c.methods())
        assert not p.leader_q.consumers and p.leader_q.unacked == 2
        p.c1.placements.apply("%2F/q", moved, 8)          # then node1
        assert p.leader_q.draining and p.leader_q.unacked == 0
        assert p.leader_q.message_count == 2
        assert all(e.redelivered for e in p.leader_q.ready)
        c.send_method(1, Basic.Ack(delivery_tag=1))       # dropped by the origin: no 406
        assert names(c.methods()) == []
        for task in list(p.c1.forwarding.draining):       # node3 is not reachable here
            task.cancel()
        if stored:
            p.b1.store.close()
    run(go())
