"""Every exchange type amqpd knows, by the name clients declare."""
from .consistent_hash import ConsistentHashExchange
from .deduplication import DeduplicationExchange
from .delayed import DelayedExchange
from .exchange import (DirectExchange, FanoutExchange, HeadersExchange, TopicExchange)

TYPES = {cls.kind: cls for cls in (DirectExchange, FanoutExchange, TopicExchange, HeadersExchange,
                                   ConsistentHashExchange, DelayedExchange,
                                   DeduplicationExchange)}
