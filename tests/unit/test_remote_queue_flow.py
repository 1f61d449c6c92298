"""Back-pressure across a forwarding link (link_flow.py) without sockets: the real Peer and
Session of test_remote_queue's Pair; what the edge does with a held connection is recorded
by ``Edge`` (AMQPProtocol's hold/release, which tests/test_alarms.py and
tests/cluster/test_forwarding_flow.py exercise for real)."""
import asyncio

from amqpd.cluster.link_flow import FLOW_HIGH, FLOW_LOW

from .stubs import message
from .test_remote_queue import Pair, turns

BODY = 64 << 10


class Edge:
    """A connection as the gate sees it: held by whom, and why."""

    def __init__(self):
        self.holds: dict = {}

    def hold(self, holder, reason=None) -> None:
        self.holds[holder] = reason

    def release(self, holder) -> None:
        self.holds.pop(holder, None)


def run(coro):
    asyncio.run(coro)


def test_a_link_over_its_high_watermark_holds_its_publishers_until_below_the_low_one():
    async def go():
        p = Pair()
        gate = p.c2.forwarding.gate
        p.to_leader.open = False                  # the leader takes nothing for now
        pub, other = Edge(), Edge()
        p.proxy.enqueue(message(b"x" * BODY, routing_key="q"))
        size = p.peer.flow.unconfirmed           # one publish's bytes on the link
        for _ in range(FLOW_HIGH // size - 1):
            p.proxy.enqueue(message(b"x" * BODY, routing_key="q"))
        gate(pub)
        assert pub.holds == {}                    # at the watermark, not over it
        p.proxy.enqueue(message(b"x" * BODY, routing_key="q"))
        gate(pub)
        assert pub.holds == {p.peer.flow: None}   # held, silently (no connection.blocked)
        gate(other)                               # published into no link since
        assert other.holds == {}
        # the leader confirms: released once below the low watermark, not before
        corrs = sorted(p.peer.tickets)
        above_low = len(corrs) - FLOW_LOW // size - 1     # confirms that leave LOW or more
        for corr in corrs[:above_low]:
            p.peer.on_confirm(corr, 1)
        assert pub.holds and p.peer.flow.unconfirmed >= FLOW_LOW
        p.peer.on_confirm(corrs[above_low], 1)
        assert pub.holds == {}
    run(go())


def test_the_leaders_alarm_blocks_publishers_into_its_link_until_it_clears():
    async def go():
        p = Pair()
        gate = p.c2.forwarding.gate
        pub = Edge()
        p.peer.on_ctl({"op": "alarms", "alarms": ["disk", "memory"]}, b"")
        p.proxy.enqueue(message(b"x", routing_key="q"))
        gate(pub)
        assert pub.holds == {p.peer.flow: "low on memory & disk"}
        p.peer.on_ctl({"op": "alarms", "alarms": []}, b"")
        assert pub.holds == {}
    run(go())


def test_the_leader_tells_its_origins_its_alarms():
    async def go():
        p = Pair()
        p.c1.forwarding.sessions.add(p.session)

        class Alarms:
            active = frozenset({"memory"})
        p.c1.forwarding.edge_alarms = Alarms()
        p.c1.forwarding._tell_alarms()
        await turns()
        assert p.peer.flow.alarms == {"memory"}
        Alarms.active = frozenset()
        p.c1.forwarding._tell_alarms()
        await turns()
        assert p.peer.flow.alarms == frozenset()
    run(go())


def test_a_dropped_link_lets_its_publishers_go():
    async def go():
        p = Pair()
        pub = Edge()
        p.peer.on_ctl({"op": "alarms", "alarms": ["memory"]}, b"")
        p.proxy.enqueue(message(b"x", routing_key="q"))
        p.c2.forwarding.gate(pub)
        assert pub.holds
        p.peer._lost("test")
        assert pub.holds == {} and p.peer.flow.unconfirmed == 0
    run(go())
