"""Flow control decided by the protocol layer, carried out by the edge (which stops reading a
socket): resource alarms block publishing connections, and a per-user publish rate limit
pauses a connection whose user has overdrawn it. No I/O and no clock of its own: the edge
passes the time in."""
MEMORY, DISK = "memory", "disk"


def blocked_reason(alarms) -> str:
    """RabbitMQ's connection.blocked reason text."""
    return "low on " + " & ".join(k for k in (MEMORY, DISK) if k in alarms)


class ResourceAlarms:
    """The alarms in force and the connections they block. As in RabbitMQ, a connection is
    blocked when it publishes while an alarm is in force (consumers keep going), and every
    blocked one is released when the last alarm clears."""

    def __init__(self):
        self.active: frozenset = frozenset()
        self.blocked: set = set()       # core connections blocked by an alarm

    def set(self, alarms) -> list:
        """Take the alarms now in force; returns the connections to unblock (all of them once
        no alarm is left)."""
        self.active = frozenset(alarms)
        if self.active or not self.blocked:
            return []
        released, self.blocked = list(self.blocked), set()
        return released

    def should_block(self, conn) -> bool:
        """A connection just published: does an alarm stop it?"""
        return bool(self.active) and conn not in self.blocked and conn.is_open

    def block(self, conn) -> str:
        self.blocked.add(conn)
        return blocked_reason(self.active)

    def forget(self, conn) -> None:
        self.blocked.discard(conn)


class PublishRates:
    """Per-user publish rate limits (messages/s): one token bucket per user, shared by the
    user's connections, holding one second's worth."""

    def __init__(self):
        self.buckets: dict = {}         # user -> [tokens, time]

    def charge(self, user: str, rate: float, count: int, now: float) -> float:
        """``count`` publishes at ``now``: how long the connection must stop reading (0: not
        at all) for the user to be back within ``rate``."""
        if not rate:
            return 0.0
        burst = max(rate, 1.0)
        bucket = self.buckets.get(user)
        if bucket is None:
            bucket = self.buckets[user] = [burst, now]
        tokens = min(burst, bucket[0] + (now - bucket[1]) * rate) - count
        bucket[0], bucket[1] = tokens, now
        return -tokens / rate if tokens < 0 else 0.0
