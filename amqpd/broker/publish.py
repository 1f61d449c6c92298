"""What became of a publish: the verdict every path that puts messages into queues reports
(the channel, dead-lettering, the delayed exchange, and later forwarding between nodes), so
the publisher hears the right confirm."""
import enum


class PublishResult(enum.IntEnum):
    ACCEPTED = 0     # in memory wherever it routed: confirm at once
    STORED = 1       # a durable queue (or delayed exchange) logged it: confirm once durable
    REJECTED = 2     # a queue refused it (x-overflow reject-publish): nack
    DUPLICATE = 3    # a queue had its deduplication id already: dropped, confirm at once
    UNROUTABLE = 4   # no queue took it: confirm at once, basic.return when mandatory


ACCEPTED, STORED, REJECTED, DUPLICATE, UNROUTABLE = PublishResult
