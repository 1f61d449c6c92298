"""A subscription of one channel to one queue."""
from ..wire.fastpath import shortstr


class Consumer:
    __slots__ = ("tag", "ctag", "channel", "queue", "no_ack", "exclusive", "priority",
                 "prefetch", "unacked", "arguments", "delivered", "redelivered")

    def __init__(self, tag: str, channel, queue, no_ack: bool, exclusive: bool,
                 priority: int, prefetch: int, arguments: dict):
        self.tag = tag
        self.ctag = shortstr(tag)   # encoded once, written into every Basic.Deliver
        self.channel = channel
        self.queue = queue
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.priority = priority
        self.prefetch = prefetch    # basic.qos global=false in force when the consumer started
        self.unacked = 0
        self.delivered = 0          # statistics (broker/stats.py): deliveries, and of those
        self.redelivered = 0        # the redelivered ones
        self.arguments = arguments

    def has_credit(self) -> bool:
        return self.channel.can_deliver(self)
