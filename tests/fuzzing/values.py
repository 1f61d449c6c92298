"""Argument values the generator draws from: names, field-table values (valid, wrong-typed and
malformed), queue/exchange/binding/consumer arguments and message properties as RabbitMQ's
clients and plugins use them. Names come from small pools so that a long run touches a bounded
set of queues and exchanges (the janitor deletes what mutations invent)."""
import struct

from .wire import Array, Raw, Table, Typed, long_, shortstr

QUEUES = [b"fz.q0", b"fz.q1", b"fz.q2", b"fz.q3", b"fz.dlq", b"fz.d0", b"", b"amq.gen-fuzz",
          b"amq.rabbitmq.reply-to", b"amq.rabbitmq.reply-to.x", b"t\xc3\xa2che", b"a*b",
          b"q" * 255, b"\xff\xfe", b"fz q", b"fz.q0\x00"]
EXCHANGES = [b"", b"amq.direct", b"amq.fanout", b"amq.topic", b"amq.headers", b"amq.match",
             b"fz.x0", b"fz.xt", b"fz.xh", b"fz.xc", b"fz.xd", b"fz.xdd", b"fz.xae",
             b"amq.rabbitmq.trace", b"amq.fuzz", b"nope", b"\xff\xfe", b"x" * 255]
TYPES = [b"direct", b"fanout", b"topic", b"headers", b"x-consistent-hash", b"x-delayed-message",
         b"x-message-deduplication", b"bogus", b"", b"DIRECT", b"x-random", b"\xff"]
ROUTING = [b"", b"fz.q0", b"fz.q1", b"fz.dlq", b"a.b.c", b"#", b"*", b"a.*.c", b"#.#.#",
           b"a.#.b.#", b"*.*.*.*.*.*.*.*", b"1", b"10", b"100", b"0", b"-1", b"." * 64,
           b"r" * 255, b"\xff\xfe", b"amq.rabbitmq.reply-to"]
TAGS = [b"", b"c1", b"c2", b"amq.ctag-x", b"t" * 255, b"\xff"]
INTS = [0, 1, 2, -1, 7, 100, 255, 256, 65535, 2 ** 31 - 1, -2 ** 31, 2 ** 32, 2 ** 63 - 1,
        -2 ** 63]
TYPE_CODES = b"tbBsuIilfdDSATFVx"
_deep: dict = {}      # (depth, shape) -> Raw, built once


class Values:
    """Draws values with one ``random.Random`` (so a seed gives the same inputs)."""

    def __init__(self, rnd):
        self.r = rnd

    def pick(self, seq):
        return seq[self.r.randrange(len(seq))]

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def junk(self, n: int | None = None) -> bytes:
        if n is None:
            n = self.pick((0, 1, 2, 3, 4, 7, 8, 13, 40, 255))
        return self.r.randbytes(n)

    # -- scalars --------------------------------------------------------------------------------
    def name(self, pool) -> bytes:
        if self.chance(0.03):
            return self.junk(self.pick((1, 3, 8, 40)))
        return self.pick(pool)

    def shortstr_raw(self, value: bytes) -> Raw:
        """A short string whose length octet lies."""
        declared = self.pick((0, 255, len(value) + 1, max(0, len(value) - 1),
                              self.r.randrange(256)))
        return Raw(b"", shortstr(value, declared))

    def integer(self) -> int:
        return self.pick(INTS) if self.chance(0.7) else self.r.randrange(-2 ** 40, 2 ** 40)

    # -- field values ---------------------------------------------------------------------------
    def scalar(self):
        r = self.r.randrange(16)
        if r == 0:
            return Typed("b", self.r.randrange(-128, 128))
        if r == 1:
            return Typed("B", self.r.randrange(256))
        if r == 2:
            return Typed("s", self.r.randrange(-32768, 32768))
        if r == 3:
            return Typed("u", self.r.randrange(65536))
        if r == 4:
            return Typed("I", self.r.randrange(-2 ** 31, 2 ** 31))
        if r == 5:
            return Typed("i", self.r.randrange(2 ** 32))
        if r == 6:
            return Typed("l", self.r.randrange(-2 ** 63, 2 ** 63))
        if r == 7:
            return Typed("f", self.pick((0.1, -1.5, float("inf"), float("nan"), 1e30)))
        if r == 8:
            return Typed("d", self.pick((0.1, 1e300, -0.0, float("nan"), float("-inf"), 5e-324)))
        if r == 9:
            return Typed("D", (self.r.randrange(256), self.r.randrange(-2 ** 31, 2 ** 31)))
        if r == 10:
            return Typed("T", self.r.randrange(2 ** 64))
        if r == 11:
            return Typed("t", self.chance(0.5))
        if r == 12:
            return Typed("V", None)
        if r == 13:
            return Typed("x", self.junk())
        if r == 14:
            return self.pick((b"", b"abc", b"\xff\xfe", "tâche".encode(), b"x" * 300))
        return self.integer()

    def malformed_value(self) -> Raw:
        """A field value no decoder should accept, or one that lies about its size."""
        r = self.r.randrange(9)
        if r == 0:      # unknown type code
            code = self.pick(b"zZcCLnNoOpPqQrRwWyYaeEgGhHjJkKmM\x00\xff")
            return Raw(bytes([code]), self.junk(self.pick((0, 1, 4, 8))))
        if r == 1:      # longstr longer than what follows
            return Raw(b"S", long_(self.pick((2 ** 31 - 1, 2 ** 32 - 1, 1000, 5))) + b"ab")
        if r == 2:      # table / array with a lying size
            code = self.pick((b"F", b"A"))
            return Raw(code, long_(self.pick((2 ** 32 - 1, 1 << 20, 3, 1))) + self.junk(3))
        if r == 3:      # truncated fixed-size value
            code = bytes([self.pick(b"bBsuIilfdDT")])
            return Raw(code, self.junk(self.r.randrange(0, 3)))
        if r == 4:      # byte array with a lying size
            return Raw(b"x", long_(self.pick((2 ** 32 - 1, 50))) + self.junk(4))
        if r == 5:      # a table entry whose key has a lying length, in a table
            return Raw(b"F", long_(4) + b"\xff" + b"abc")
        if r == 6:
            return Raw(b"A", long_(2) + b"F\x00")
        if r == 7:      # decimal with a huge scale
            return Raw(b"D", b"\xff" + struct.pack(">i", -1))
        return Raw(b"S", long_(3) + b"\xc3\x28\xff")    # invalid UTF-8

    def deep(self) -> Raw:
        """Tables and arrays nested very deep (built bottom-up: no recursion here)."""
        depth = self.pick((20, 100, 400, 600, 1000, 3000, 10000))
        shape = self.r.randrange(3)       # tables only, arrays only, alternating
        key = (depth, shape)
        if key not in _deep:
            inner = b"V"
            for i in range(depth):
                if shape == 0 or (shape == 2 and i % 2):
                    body = shortstr(b"k") + inner
                    inner = b"F" + long_(len(body)) + body
                else:
                    inner = b"A" + long_(len(inner)) + inner
            _deep[key] = Raw(inner[:1], inner[1:])
        return _deep[key]

    def value(self, depth: int = 0):
        r = self.r.random()
        if r < 0.55 or depth > 3:
            return self.scalar()
        if r < 0.7:
            return self.table(depth + 1)
        if r < 0.82:
            return Array([self.value(depth + 1) for _ in range(self.r.randrange(4))])
        if r < 0.95:
            return self.malformed_value()
        return self.deep()

    def key(self) -> bytes:
        return self.pick((b"k", b"", b"x-match", b"CC", b"BCC", b"x-delay", b"x-death",
                          b"x-priority", b"a" * 255, b"\xff\xfe", b"k2", b"hash"))

    def table(self, depth: int = 0, size: int | None = None) -> Table:
        if size is None:
            size = self.pick((0, 1, 1, 2, 3, 5))
        t = Table([(self.key(), self.value(depth)) for _ in range(size)])
        if self.chance(0.05):
            t.declared = self.pick((0, 1, 2 ** 32 - 1, 2 ** 31, 65536, 7))
        return t

    def huge_table(self) -> Raw:
        """Many tiny entries: cheap to send, expensive to decode into objects."""
        n = self.pick((1000, 5000, 20000, 40000))
        body = b"\x00V" * n
        return Raw(b"F", long_(len(body)) + body)

    def any_table(self):
        """A table argument: usually meaningful, sometimes garbage."""
        r = self.r.random()
        if r < 0.02:
            return self.huge_table()
        if r < 0.04:
            return self.deep()
        return self.table()

    # -- domain arguments ---------------------------------------------------------------------
    def _args(self, spec: dict, n_max: int = 3) -> Table:
        keys = list(spec)
        entries = []
        for _ in range(self.r.randrange(n_max + 1)):
            k = self.pick(keys)
            entries.append((k, self.pick(spec[k]) if self.chance(0.85) else self.value()))
        if self.chance(0.15):
            entries.append((self.key(), self.value()))
        t = Table(entries)
        if self.chance(0.03):
            t.declared = self.pick((2 ** 32 - 1, 3, 1))
        return t

    QUEUE_ARGS = {
        b"x-message-ttl": [0, 1, 100, 60000, -1, 2 ** 32, "100", 1.5, Typed("s", 5),
                           Typed("b", -1), Typed("l", 2 ** 62)],
        b"x-expires": [1, 100, 0, -5, "x", 2 ** 31, Typed("d", 1e300)],
        b"x-max-length": [0, 1, 2, -1, "2", 2 ** 40, Typed("u", 3)],
        b"x-max-length-bytes": [0, 10, -1, 2 ** 40],
        b"x-overflow": [b"drop-head", b"reject-publish", b"reject-publish-dlx", b"bogus", 5,
                        b"\xff\xfe"],
        b"x-dead-letter-exchange": [b"", b"amq.fanout", b"fz.x0", b"nope", 5, b"\xff\xfe"],
        b"x-dead-letter-routing-key": [b"fz.q1", b"", 7, b"\xff"],
        b"x-max-priority": [0, 1, 10, 255, 256, -1, b"5", Typed("B", 200)],
        b"x-queue-type": [b"classic", b"quorum", b"stream", b"bogus", b"\xff\xfe", 1],
        b"x-queue-mode": [b"lazy", b"default", b"x", 5, b"\xff\xfe"],
        b"x-single-active-consumer": [True, False, 1, b"true"],
        b"x-delivery-limit": [0, 1, -1, b"x", 2 ** 40],
        b"x-message-deduplication": [True, False, 1],
        b"x-cache-size": [1, 0, -1, b"--5", 10, 2 ** 40],
        b"x-cache-ttl": [1, -1, b"x", 0],
        b"x-deduplication-header": [b"h", 5, b"", b"\xff"],
        b"x-queue-master-locator": [b"min-masters", b"x"],
        b"x-max-in-memory-length": [1, -1],
    }
    EXCHANGE_ARGS = {
        b"alternate-exchange": [b"fz.x0", b"nope", 5, b"", b"\xff\xfe", b"amq.fanout"],
        b"x-delayed-type": [b"direct", b"topic", b"headers", b"bogus", 5, b"x-delayed-message",
                            b"x-consistent-hash", b"\xff"],
        b"hash-header": [b"h", b"", 5],
        b"hash-property": [b"message_id", b"correlation_id", b"timestamp", b"bogus", 5,
                           b"\xff\xfe"],
        b"x-message-deduplication": [True, 1],
        b"x-cache-size": [1, 0, -1, b"--5", 100],
        b"x-cache-ttl": [1, -1, b"x"],
        b"x-cache-persistence": [b"memory", b"disk", b"x", 5],
        b"x-deduplication-header": [b"h", 5, b""],
    }
    BIND_ARGS = {
        b"x-match": [b"all", b"any", b"all-with-x", b"any-with-x", b"bogus", 5, b""],
        b"k": [b"v", 1, Typed("l", 1), True, None, Typed("d", 0.1)],
        b"h": [b"v", b"", 7],
        b"x-k": [b"v"],
    }
    CONSUME_ARGS = {
        b"x-priority": [1, -1, b"x", 2 ** 40, Typed("s", 3), Typed("B", 9)],
        b"x-cancel-on-ha-failover": [True, 1],
        b"x-stream-offset": [b"first", 5],
    }

    def queue_args(self):
        return self._args(self.QUEUE_ARGS) if self.chance(0.9) else self.any_table()

    def exchange_args(self):
        return self._args(self.EXCHANGE_ARGS, 2) if self.chance(0.9) else self.any_table()

    def bind_args(self):
        return self._args(self.BIND_ARGS) if self.chance(0.9) else self.any_table()

    def consume_args(self):
        return self._args(self.CONSUME_ARGS, 2) if self.chance(0.9) else self.any_table()

    def message_headers(self):
        spec = {
            b"CC": [Array([b"fz.q1"]), Array([b"fz.q1", b"fz.q2"]), b"fz.q1", Array([5]),
                    Array([]), Array([b"\xff"]), 5],
            b"BCC": [Array([b"fz.q2"]), b"fz.q2", Array([Array([b"x"])]), Array([None])],
            b"x-delay": [100, 0, -1, b"x", 2 ** 40, Typed("d", 1.5), Typed("l", -2 ** 63)],
            b"h": [b"v", b"", 7, Typed("d", 0.1), Typed("d", 1e300)],
            b"k": [b"v", 1, Typed("d", 1e300)],
            b"x-death": [Array([Table({b"count": 1, b"queue": b"q"})]), b"x", Array([5])],
            b"x-deduplication-header": [b"id1", b"", 5, Array([b"a"])],
            b"x-cache-ttl": [1, -1, b"x"],
            b"x-match": [b"all", b"any"],
        }
        return self._args(spec, 3)

    def properties(self) -> dict:
        props = {}
        spec = {
            "content_type": [b"text/plain", b"", b"\xff\xfe"],
            "content_encoding": [b"gzip", b""],
            "headers": None,
            "delivery_mode": [1, 2, 0, 3, 255],
            "priority": [0, 1, 5, 9, 10, 255],
            "correlation_id": [b"c", b"", b"x" * 255],
            "reply_to": [b"amq.rabbitmq.reply-to", b"amq.rabbitmq.reply-to.abc", b"fz.q1",
                         b"", b"\xff"],
            "expiration": [b"0", b"100", b"-1", b"--1", "²".encode(), b"abc",
                           b"99999999999999999999", b"", b"1.5", b" 5", b"\xff"],
            "message_id": [b"m1", b"", b"\xff\xfe"],
            "timestamp": [0, 2 ** 63, 2 ** 64 - 1],
            "type": [b"t"],
            "user_id": [b"guest", b"other", b"", b"\xff"],
            "app_id": [b"a"],
            "cluster_id": [b"c"],
        }
        for name, choices in spec.items():
            if self.chance(0.25):
                if name == "headers":
                    props[name] = self.message_headers() if self.chance(0.85) \
                        else self.any_table()
                else:
                    props[name] = self.pick(choices)
        return props
