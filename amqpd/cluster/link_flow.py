"""Back-pressure across the forwarding links, as RabbitMQ's credit flow and its cluster-wide
alarms: a publisher on one node cannot outpace the leader of the queues it publishes to.

Each link to a leader (``forward_origin.Peer``) has a ``LinkFlow`` that counts the bytes of the
publishes it forwarded and the leader has not confirmed yet (queued here, in the socket's
buffer, or being handled there). Past FLOW_HIGH, every connection that publishes into the
link stops being read (``AMQPProtocol.hold``, without telling the client: RabbitMQ's "flow"
state) until the count falls below FLOW_LOW. A leader with a memory or disk alarm tells its
origins (``alarms``); their connections that publish to its queues get connection.blocked
and are not read, as under a local alarm, until it clears.

Which connection published into which link: the edge calls ``Gate`` (``Server.publish_gate``)
after each read that held publishes, and the links published into since the last call are
that read's (``LinkFlow.sent`` marks them). A node without a cluster never calls any of this.
"""
from __future__ import annotations

import logging

from ..amqp.flow import blocked_reason

log = logging.getLogger("amqpd.cluster")

FLOW_HIGH = 8 << 20           # unconfirmed bytes on a link that pause its publishers
FLOW_LOW = 4 << 20            # ... and that let them go again
LOG_EVERY = 10.0              # seconds between two "over its watermark" lines of a link


class Gate:
    """The edge's ``publish_gate``: a connection's read held publishes; every link it
    published into that is over its watermark, or whose leader has an alarm, holds it."""

    def __init__(self):
        self.touched: set = set()     # LinkFlows published into since the last read

    def __call__(self, protocol) -> None:
        touched = self.touched
        if touched:
            self.touched = set()
            for flow in touched:
                flow.check(protocol)


class LinkFlow:
    """One link's unconfirmed bytes, its leader's alarms, and the connections they hold."""

    def __init__(self, peer_name: str, gate: Gate, clock):
        self.peer_name = peer_name
        self.gate = gate
        self.clock = clock            # () -> seconds (the loop's time), for the log's pace
        self.unconfirmed = 0
        self.over = False
        self.alarms: frozenset = frozenset()     # the leader's alarms in force
        self.held: set = set()        # AMQPProtocols this link holds
        self.logged_at = None

    def sent(self, size: int) -> None:
        self.unconfirmed += size
        self.gate.touched.add(self)
        if not self.over and self.unconfirmed > FLOW_HIGH:
            self.over = True
            now = self.clock()
            if self.logged_at is None or now - self.logged_at >= LOG_EVERY:
                self.logged_at = now
                log.info("cluster: forwarding to node %s: %d bytes not confirmed yet, over "
                         "the link's high watermark; its publishers are paused",
                         self.peer_name, self.unconfirmed)

    def confirmed(self, size: int) -> None:
        self.unconfirmed -= size
        if self.over and self.unconfirmed < FLOW_LOW:
            self.over = False
            if not self.alarms:
                self.release_all()

    def check(self, protocol) -> None:
        """``protocol`` just published into this link."""
        if self.alarms:
            self.held.add(protocol)
            protocol.hold(self, blocked_reason(self.alarms))
        elif self.over:
            self.held.add(protocol)
            protocol.hold(self)

    def set_alarms(self, alarms) -> None:
        """The leader's alarms now (it tells its origins when they change)."""
        alarms = frozenset(alarms)
        if alarms == self.alarms:
            return
        if alarms:
            log.warning("cluster: node %s is %s: publishers to its queues are blocked",
                        self.peer_name, blocked_reason(alarms))
        else:
            log.info("cluster: node %s cleared its resource alarms: publishers to its queues "
                     "are unblocked", self.peer_name)
        self.alarms = alarms
        if not alarms and not self.over:
            self.release_all()

    def reset(self) -> None:
        """The link's connection ended: nothing is in flight on it any more."""
        self.unconfirmed = 0
        self.over = False
        self.alarms = frozenset()
        self.release_all()

    def release_all(self) -> None:
        held, self.held = self.held, set()
        for protocol in held:
            protocol.release(self)
