"""Fuzz inputs: structured AMQP frame sequences for every method class and for content, then
mutated at the frame and byte level.

An ``Input`` has a stage that says where the engine puts it:

- ``pre``: the whole opening of a fresh connection (protocol header, start-ok, secure-ok,
  tune-ok, open, maybe more), some part of it wrong; the engine ends it with connection.close.
- ``conn``: after a good handshake, outside any channel the engine opened: channel 0, channels
  that were never opened, heartbeats on channels, unknown frame types, oversized frames.
- ``chan``: on a channel the engine opens just before the input (channel.open) and closes
  right after it (channel.close): methods of every class, content, interleavings.
"""
import random

from . import wire as W
from .values import EXCHANGES, QUEUES, ROUTING, TAGS, TYPES, Values
from .wire import Raw


class Input:
    __slots__ = ("id", "stage", "chunks", "label", "channel")

    def __init__(self, id: int, stage: str, chunks: list, label: str, channel: int = 0):
        self.id, self.stage, self.chunks, self.label, self.channel = (id, stage, chunks, label,
                                                                      channel)

    def data(self) -> bytes:
        return b"".join(self.chunks)

    def __repr__(self):
        return f"<Input {self.id} {self.stage} {self.label} {len(self.data())}B>"


CLIENT_METHODS = [name for name in W.SCHEMA if not name.startswith("Connection.")
                  and name.split(".")[1] not in (
                      "OpenOk", "FlowOk", "DeclareOk", "DeleteOk", "BindOk", "UnbindOk",
                      "PurgeOk", "QosOk", "ConsumeOk", "CancelOk", "Return", "Deliver", "GetOk",
                      "GetEmpty", "RecoverOk", "SelectOk", "CommitOk", "RollbackOk")]
SERVER_METHODS = [name for name in W.SCHEMA if name not in CLIENT_METHODS]
CONNECTION_METHODS = [name for name in W.SCHEMA if name.startswith("Connection.")]
CHANNEL_RANGE = 2000      # chan-stage inputs use channels 2..2001 (1 is the engine's marker)


class Generator:
    """``heavy``: also inputs that cost any broker real time by design (x-consistent-hash
    bindings of weight 1000 and 100000); the CI run leaves them out to stay within its time
    budget, the bench run keeps them."""

    def __init__(self, seed: int, heavy: bool = True):
        self.r = random.Random(seed)
        self.heavy = heavy
        self.v = Values(self.r)
        self.n = 0
        self.mutator = Mutator(self.r, self.v)

    def next(self) -> Input:
        self.n += 1
        r = self.r.random()
        if r < 0.12:
            inp = self.pre()
        elif r < 0.24:
            inp = self.conn()
        else:
            inp = self.chan()
        if self.r.random() < 0.7:
            inp.label += "+" + self.mutator.mutate(inp)
        return inp

    # -- method arguments ---------------------------------------------------------------------
    def args(self, name: str) -> dict:
        """Plausible arguments for a method, by argument name (so they reach the handlers),
        with a chance of lying string lengths."""
        v, out = self.v, {}
        for arg, kind in W.SCHEMA[name][2]:
            if kind == "bit":
                out[arg] = v.chance(0.3 if arg in ("nowait", "passive", "immediate") else 0.5)
                continue
            if kind == "table":
                out[arg] = (v.queue_args() if name == "Queue.Declare" else
                            v.exchange_args() if name == "Exchange.Declare" else
                            v.consume_args() if name == "Basic.Consume" else v.bind_args())
                continue
            if kind in ("shortstr", "longstr"):
                value = self.string_arg(name, arg)
                if kind == "shortstr" and v.chance(0.03):
                    value = v.shortstr_raw(value)
                elif kind == "longstr" and v.chance(0.03):
                    value = Raw(b"", W.long_(v.pick((2 ** 32 - 1, len(value) + 5))) + value)
                out[arg] = value
                continue
            out[arg] = self.int_arg(name, arg, kind)
        return out

    def string_arg(self, name: str, arg: str) -> bytes:
        v = self.v
        if arg in ("queue",):
            return v.name(QUEUES)
        if arg in ("exchange", "destination", "source"):
            return v.name(EXCHANGES)
        if arg == "exchange_type":
            return v.name(TYPES)
        if arg == "routing_key":
            return v.name(ROUTING)
        if arg == "consumer_tag":
            return v.name(TAGS)
        if arg in ("reply_text", "reason", "out_of_band", "known_hosts", "capabilities",
                   "cluster_id", "locale", "locales"):
            return v.pick((b"", b"x", b"en_US", b"\xff\xfe", b"t" * 255))
        if arg == "virtual_host":
            return v.pick((b"/", b"", b"nope", b"/" * 255, b"\xff"))
        if arg == "mechanism":
            return v.pick((b"PLAIN", b"AMQPLAIN", b"EXTERNAL", b"", b"bogus", b"plain"))
        return v.junk()

    def int_arg(self, name: str, arg: str, kind: str) -> int:
        v = self.v
        if arg == "ticket":
            return 0 if v.chance(0.9) else v.r.randrange(65536)
        if arg == "delivery_tag":
            return v.pick((0, 1, 1, 2, 3, 100, 2 ** 63, 2 ** 64 - 1))
        if arg == "prefetch_count":
            return v.pick((0, 1, 10, 65535))
        if arg == "prefetch_size":
            return v.pick((0, 0, 1, 2 ** 32 - 1))
        if arg == "reply_code":
            return v.pick((200, 0, 320, 404, 406, 541, 999, 65535))
        if arg in ("class_id", "method_id"):
            return v.pick((0, 10, 20, 40, 50, 60, 65535))
        if arg == "channel_max":
            return v.pick((0, 1, 2047, 2048, 65535))
        if arg == "frame_max":
            return v.pick((0, 1, 4095, 4096, 131072, 131073, 2 ** 32 - 1))
        if arg == "heartbeat":
            return v.pick((0, 0, 1, 60, 65535))
        return v.integer()

    def method(self, channel: int, name: str, **fixed) -> bytes:
        args = self.args(name)
        args.update(fixed)
        return W.method(channel, name, args)

    # -- content --------------------------------------------------------------------------------
    def content(self, channel: int, exchange: bytes | None = None, rk: bytes | None = None,
                props: dict | None = None, publish: bool = True) -> list:
        """basic.publish + content header + body frames, sometimes with the body size lying,
        the body split oddly, or the header malformed."""
        v = self.v
        frames = []
        if publish:
            args = {"exchange": exchange if exchange is not None else v.name(EXCHANGES),
                    "routing_key": rk if rk is not None else v.name(ROUTING),
                    "mandatory": v.chance(0.3), "immediate": v.chance(0.03)}
            frames.append(W.method(channel, "Basic.Publish", args))
        body = v.pick((b"", b"x", b"x", b"hello", b"hello", b"b" * 300)) if v.chance(0.97) \
            else v.pick((b"b" * 5000, b"B" * 140000))
        size = len(body)
        r = v.r.random()
        if r < 0.05:
            size = len(body) + v.pick((1, 100))
        elif r < 0.1:
            size = max(0, len(body) - 1)
        elif r < 0.12:
            size = v.pick((2 ** 63, 2 ** 64 - 1, 2 ** 27 + 1))
        flags = None
        if v.chance(0.05):
            flags = v.r.randrange(65536)
        class_id, weight = 60, 0
        if v.chance(0.03):
            class_id = v.pick((0, 10, 50, 61, 65535))
        if v.chance(0.02):
            weight = v.pick((1, 65535))
        props = props if props is not None else v.properties()
        frames.append(W.content_header(channel, size, props, class_id, weight, flags))
        split = v.pick((W.FRAME_MAX - 8, W.FRAME_MAX - 8, 1, 7, 4096, 500)) \
            if len(body) <= 300 else v.pick((W.FRAME_MAX - 8, 4096))
        frames.extend(W.body_frames(channel, body, split))
        return frames

    # -- chan stage -----------------------------------------------------------------------------
    def chan(self) -> Input:
        ch = 2 + self.n % CHANNEL_RANGE
        r = self.r.random()
        scenarios = CHAN_SCENARIOS
        for weight, fn in scenarios:
            if r < weight:
                label, chunks = fn(self, ch)
                return Input(self.n, "chan", chunks, label, ch)
            r -= weight
        label, chunks = chan_method(self, ch)
        return Input(self.n, "chan", chunks, label, ch)

    # -- conn stage -----------------------------------------------------------------------------
    def conn(self) -> Input:
        v = self.v
        other = v.pick((0, 0, 2 + CHANNEL_RANGE + v.r.randrange(1000), 65535, 2048, 30000))
        r = v.r.randrange(12)
        if r == 0:
            name = v.pick(CONNECTION_METHODS)
            chunks, label = [self.method(0, name)], f"ch0 {name}"
        elif r == 1:
            name = v.pick(CLIENT_METHODS + SERVER_METHODS)
            chunks, label = [self.method(0, name)], f"ch0 {name}"
        elif r == 2:
            name = v.pick(CLIENT_METHODS)
            chunks, label = [self.method(other, name)], f"unopened ch{other} {name}"
        elif r == 3:
            chunks, label = self.content(v.pick((0, other))), "content on ch0/unopened"
        elif r == 4:
            payload = v.pick((b"", b"", b"x", v.junk()))
            chunks, label = [W.frame(W.FRAME_HEARTBEAT, v.pick((0, other, 1)), payload)], \
                "heartbeat"
        elif r == 5:
            ftype = v.pick((0, 4, 5, 7, 9, 65 % 256, 255))
            chunks, label = [W.frame(ftype, v.pick((0, other)), v.junk())], f"frame type {ftype}"
        elif r == 6:      # a frame larger than frame_max, announced and (partly) sent
            size = v.pick((W.FRAME_MAX + 1, W.FRAME_MAX + 8, 2 ** 31, 2 ** 32 - 1))
            chunks = [W.pack_head(v.pick((1, 2, 3)), v.pick((0, other)), size) + v.junk(50)]
            label = "oversized frame"
        elif r == 7:      # open many channels, past channel_max
            n = v.pick((10, 300, 2100))
            base = 2 + CHANNEL_RANGE + v.r.randrange(20000)
            chunks = [b"".join(W.method((base + i) % 65536 or 1, "Channel.Open")
                               for i in range(n))]
            label = f"open {n} channels"
        elif r == 8:
            name = v.pick(("Connection.StartOk", "Connection.TuneOk", "Connection.Open",
                           "Connection.SecureOk", "Connection.UpdateSecret",
                           "Connection.Close", "Connection.CloseOk", "Connection.Blocked"))
            chunks, label = [self.method(0, name)], f"late {name}"
        elif r == 9:
            chunks, label = [v.junk(v.pick((1, 5, 8, 30, 500)))], "garbage bytes"
        elif r == 10:
            chunks = [W.method_frame(v.pick((0, other)), v.r.randrange(65536),
                                     v.r.randrange(65536), v.junk())]
            label = "random class/method ids"
        else:
            chunks = [W.method(other, "Channel.Open"), W.method(other, "Channel.Close",
                                                              {"reply_code": 200}),
                      W.method(other, "Channel.Close", {"reply_code": 200})]
            label = "double channel.close"
        return Input(self.n, "conn", chunks, label)

    # -- pre stage ------------------------------------------------------------------------------
    def pre(self) -> Input:
        v = self.v
        header = W.PROTOCOL_HEADER
        if v.chance(0.15):
            header = v.pick((b"AMQP\x01\x01\x08\x00", b"AMQP\x00\x00\x08\x00",
                             b"AMQP\x00\x01\x00\x00", b"AMQP\x03\x01\x00\x00",
                             b"AMQP\x01\x01\x00\x0a", b"AMQP\x00\x00\x09\x02", b"AMQ",
                             b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01\x00",
                             b"", b"AMQP\x01\x01\x00\x09"))
        steps = [("header", header), ("start-ok", self.start_ok()),
                 ("tune-ok", self.method(0, "Connection.TuneOk",
                                         **self.tune_values())),
                 ("open", W.method(0, "Connection.Open",
                                   {"virtual_host": v.pick((b"/", b"/", b"/", b"", b"nope",
                                                            b"\xff\xfe", b"/" * 255)),
                                    "capabilities": v.pick((b"", b"x")),
                                    "insist": v.chance(0.2)}))]
        label = "handshake"
        r = v.r.randrange(8)
        if r == 0:        # a frame where the handshake wants another
            i = v.r.randrange(len(steps) + 1)
            extra = v.pick((W.heartbeat(0), W.heartbeat(1),
                            W.method(1, "Channel.Open"),
                            W.method(0, "Connection.SecureOk",
                                     {"response": v.pick((b"", b"\0guest\0guest"))}),
                            W.content_header(0, 0), W.frame(W.FRAME_BODY, 0, b"x"),
                            self.method(0, v.pick(CONNECTION_METHODS)),
                            self.method(v.pick((0, 1)), v.pick(CLIENT_METHODS))))
            steps.insert(i, ("extra", extra))
            label = f"handshake with a frame at step {i}"
        elif r == 1:      # a step missing
            i = v.r.randrange(1, len(steps))
            label = f"handshake without {steps[i][0]}"
            del steps[i]
        elif r == 2:      # steps out of order / repeated
            i, j = v.r.randrange(1, len(steps)), v.r.randrange(1, len(steps))
            steps[i], steps[j] = steps[j], steps[i]
            if v.chance(0.5):
                steps.insert(j, steps[i])
            label = "handshake reordered"
        elif r == 3:      # after open: channel traffic at once, pipelined
            steps.append(("channel", W.method(1, "Channel.Open")))
            steps.append(("method", self.method(1, v.pick(CLIENT_METHODS))))
            label = "handshake + channel traffic"
        elif r == 4:      # cut short
            cut = v.r.randrange(1, len(steps) + 1)
            steps = steps[:cut]
            label = f"handshake cut after {cut} steps"
        chunks = [s for _n, s in steps]
        return Input(self.n, "pre", chunks, label)

    def start_ok(self) -> bytes:
        v = self.v
        r = v.r.random()
        if r < 0.7:
            caps = {b"authentication_failure_close": v.chance(0.7),
                    b"consumer_cancel_notify": True, b"publisher_confirms": True,
                    b"connection.blocked": v.chance(0.5)}
            props = W.Table({b"product": b"fuzz", b"capabilities": W.Table(caps)})
        elif r < 0.8:
            props = v.table()
        elif r < 0.85:
            props = v.huge_table()
        elif r < 0.9:
            props = v.deep()
        else:
            props = W.Table([(v.key(), v.value())])
        mechanism = v.pick((b"PLAIN", b"PLAIN", b"PLAIN", b"AMQPLAIN", b"AMQPLAIN", b"EXTERNAL",
                            b"", b"bogus", b"plain", b"\xff"))
        response = self.sasl_response(mechanism)
        args = {"client_properties": props, "mechanism": mechanism, "response": response,
                "locale": v.pick((b"en_US", b"", b"xx"))}
        if v.chance(0.05):
            args["mechanism"] = v.shortstr_raw(mechanism)
        return W.method(0, "Connection.StartOk", args)

    def sasl_response(self, mechanism: bytes):
        v = self.v
        if mechanism == b"AMQPLAIN" or v.chance(0.1):
            r = v.r.random()
            if r < 0.5:
                t = W.Table({b"LOGIN": v.pick((b"guest", b"nobody", 5)),
                             b"PASSWORD": v.pick((b"guest", b"wrong", W.Table({})))})
                data = W.table(t)[4:]        # AMQPLAIN: the table without its size
            elif r < 0.7:
                data = v.deep().data[4:]
            elif r < 0.8:
                data = v.huge_table().data[4:]
            else:
                data = W.table(v.table())[4:] + v.junk(v.pick((0, 3)))
            return data
        return v.pick((b"\0guest\0guest", b"\0guest\0guest", b"\0guest\0wrong",
                       b"guest\0guest", b"\0\0", b"", b"\0" * 3, b"\0guest", b"\xff\0\xfe\0",
                       b"\0" + b"u" * 300 + b"\0p", b"\0guest\0guest\0extra"))

    def tune_values(self) -> dict:
        v = self.v
        if v.chance(0.7):
            return {"channel_max": 2047, "frame_max": W.FRAME_MAX, "heartbeat": 0}
        return {"channel_max": self.int_arg("", "channel_max", "short"),
                "frame_max": self.int_arg("", "frame_max", "long"),
                "heartbeat": self.int_arg("", "heartbeat", "short")}


# -- chan-stage scenarios (each returns (label, chunks) for channel ch) ---------------------------
def chan_method(g: Generator, ch: int):
    name = g.v.pick(CLIENT_METHODS)
    return name, [g.method(ch, name)]


def chan_server_method(g: Generator, ch: int):
    name = g.v.pick(SERVER_METHODS)
    return f"server method {name}", [g.method(ch, name)]


def chan_methods(g: Generator, ch: int):
    names = [g.v.pick(CLIENT_METHODS) for _ in range(g.r.randrange(2, 6))]
    return "+".join(n.split(".")[1] for n in names), [g.method(ch, n) for n in names]


def chan_publish(g: Generator, ch: int):
    chunks = []
    for _ in range(g.v.pick((1, 1, 2, 5))):
        chunks += g.content(ch)
    return "publish", chunks


def chan_declare_publish_get(g: Generator, ch: int):
    v = g.v
    q = v.name(QUEUES[:6])
    chunks = [g.method(ch, "Queue.Declare", queue=q, passive=False, nowait=False)]
    if v.chance(0.5):
        chunks.append(g.method(ch, "Queue.Bind", queue=q, nowait=False))
    chunks += g.content(ch, exchange=v.pick((b"", b"amq.direct", b"amq.fanout", b"amq.topic")),
                        rk=q)
    chunks.append(g.method(ch, "Basic.Get", queue=q))
    if v.chance(0.5):
        name = v.pick(("Basic.Ack", "Basic.Nack", "Basic.Reject"))
        chunks.append(g.method(ch, name))
    if v.chance(0.3):
        chunks.append(g.method(ch, "Queue.Purge", queue=q, nowait=False))
    return "declare+publish+get", chunks


def chan_consume(g: Generator, ch: int):
    v = g.v
    q = v.pick(QUEUES[:4])
    chunks = [W.method(ch, "Queue.Declare", {"queue": q, "auto_delete": v.chance(0.3),
                                             "arguments": v.queue_args()}),
              g.method(ch, "Basic.Qos", global_=v.chance(0.5))]
    chunks.append(g.method(ch, "Basic.Consume", queue=q, consumer_tag=b"c1", nowait=False))
    for _ in range(v.pick((1, 2, 3))):
        chunks += g.content(ch, exchange=b"", rk=q)
    for _ in range(v.pick((0, 1, 2, 3))):
        name = v.pick(("Basic.Ack", "Basic.Nack", "Basic.Reject", "Basic.Recover",
                       "Basic.RecoverAsync", "Basic.Cancel", "Channel.Flow"))
        chunks.append(g.method(ch, name))
    if v.chance(0.3):
        chunks.append(W.method(ch, "Queue.Delete", {"queue": q}))
    return "consume", chunks


def chan_confirm(g: Generator, ch: int):
    v = g.v
    chunks = [g.method(ch, "Confirm.Select")]
    if v.chance(0.2):
        chunks.append(g.method(ch, "Tx.Select"))
    for _ in range(v.pick((1, 2, 5))):
        chunks += g.content(ch, exchange=v.pick((b"", b"amq.direct", b"nope")),
                            rk=v.pick(QUEUES[:6]))
    return "confirm+publish", chunks


def chan_tx(g: Generator, ch: int):
    v = g.v
    chunks = [g.method(ch, "Tx.Select")]
    for _ in range(v.pick((1, 2, 4))):
        r = v.r.randrange(4)
        if r == 0:
            chunks += g.content(ch, exchange=b"", rk=v.pick(QUEUES[:4]))
        elif r == 1:
            chunks.append(g.method(ch, "Basic.Get", queue=v.pick(QUEUES[:4])))
        elif r == 2:
            chunks.append(g.method(ch, v.pick(("Basic.Ack", "Basic.Nack", "Basic.Reject"))))
        else:
            chunks.append(g.method(ch, v.pick(("Tx.Commit", "Tx.Rollback", "Confirm.Select"))))
    chunks.append(g.method(ch, v.pick(("Tx.Commit", "Tx.Rollback"))))
    return "tx", chunks


def chan_exchange_kinds(g: Generator, ch: int):
    """Declare one of the plugin exchange types, bind, publish: routing code paths."""
    v = g.v
    kind, name = v.pick(((b"headers", b"fz.xh"), (b"x-consistent-hash", b"fz.xc"),
                         (b"x-delayed-message", b"fz.xd"), (b"x-message-deduplication",
                                                            b"fz.xdd"),
                         (b"topic", b"fz.xt"), (b"direct", b"fz.xae")))
    chunks = [W.method(ch, "Exchange.Declare", {"exchange": name, "exchange_type": kind,
                                                "auto_delete": v.chance(0.3),
                                                "arguments": v.exchange_args()})]
    q = v.pick(QUEUES[:4])
    chunks.append(W.method(ch, "Queue.Declare", {"queue": q}))
    # (x-consistent-hash reads the routing key as a weight: big ones are rare on purpose, a
    # ring of that size costs any broker real time)
    rk = v.pick((b"1", b"2", b"10", b"0", b"-1", b"x", b"", b"a.*", b"#"))
    if v.chance(0.005) and g.heavy:
        rk = v.pick((b"1000", b"100000"))
    chunks.append(W.method(ch, "Queue.Bind", {"queue": q, "exchange": name, "routing_key": rk,
                                              "arguments": v.bind_args()}))
    if v.chance(0.3):
        chunks.append(g.method(ch, "Exchange.Bind", destination=name))
    for _ in range(v.pick((1, 2, 3))):
        chunks += g.content(ch, exchange=name, rk=v.pick(ROUTING))
    if v.chance(0.3):
        chunks.append(W.method(ch, "Exchange.Delete", {"exchange": name}))
    return f"exchange {kind.decode()}", chunks


def chan_deadletter(g: Generator, ch: int):
    v = g.v
    args = W.Table({b"x-dead-letter-exchange": v.pick((b"", b"amq.fanout", b"fz.x0")),
                    b"x-message-ttl": v.pick((0, 1, 0)),
                    b"x-dead-letter-routing-key": b"fz.dlq"})
    if v.chance(0.3):
        args.entries.append((b"x-max-length", v.pick((0, 1))))
    if v.chance(0.3):
        args.entries.append((b"x-overflow", v.pick((b"reject-publish-dlx", b"drop-head"))))
    chunks = [W.method(ch, "Queue.Declare", {"queue": b"fz.dlq"}),
              W.method(ch, "Queue.Declare", {"queue": b"fz.q3", "arguments": args})]
    for _ in range(v.pick((1, 2))):
        chunks += g.content(ch, exchange=b"", rk=b"fz.q3")
    if v.chance(0.5):
        chunks.append(W.method(ch, "Basic.Get", {"queue": b"fz.q3"}))
        chunks.append(W.method(ch, v.pick(("Basic.Reject", "Basic.Nack")),
                               {"delivery_tag": 1, "requeue": False}))
    chunks.append(W.method(ch, "Basic.Get", {"queue": b"fz.dlq", "no_ack": True}))
    return "dead-letter", chunks


def chan_reply_to(g: Generator, ch: int):
    v = g.v
    chunks = [W.method(ch, "Basic.Consume", {"queue": b"amq.rabbitmq.reply-to",
                                             "no_ack": v.chance(0.8)})]
    props = v.properties()
    props["reply_to"] = b"amq.rabbitmq.reply-to"
    chunks += g.content(ch, exchange=b"", rk=v.pick((b"fz.q0", b"amq.rabbitmq.reply-to")),
                        props=props)
    if v.chance(0.5):
        chunks += g.content(ch, exchange=b"", rk=v.pick((b"amq.rabbitmq.reply-to.abc",
                                                         b"amq.rabbitmq.reply-to")))
    return "direct reply-to", chunks


def chan_interleave(g: Generator, ch: int):
    """Content frames out of order, methods between header and body, heartbeats on the
    channel, content on a channel that is not publishing."""
    v = g.v
    content = g.content(ch, exchange=b"", rk=b"fz.q0")
    r = v.r.randrange(8)
    if r == 0 and len(content) > 2:
        i = v.r.randrange(1, len(content))
        j = v.r.randrange(1, len(content))
        content[i], content[j] = content[j], content[i]
        label = "content reordered"
    elif r == 1:
        i = v.r.randrange(1, len(content) + 1)
        content.insert(i, g.method(ch, v.pick(CLIENT_METHODS)))
        label = "method inside content"
    elif r == 2:
        i = v.r.randrange(0, len(content) + 1)
        content.insert(i, W.heartbeat(ch))
        label = "heartbeat on channel"
    elif r == 3:
        content = content[1:]
        label = "content without publish"
    elif r == 4:
        content.insert(2, content[1])
        label = "two content headers"
    elif r == 5:
        content.append(W.frame(W.FRAME_BODY, ch, v.junk(v.pick((1, 10)))))
        label = "extra body frame"
    elif r == 6:
        content.insert(1, W.frame(W.FRAME_BODY, ch, b"early"))
        label = "body before header"
    else:
        content += g.content(ch, exchange=b"", rk=b"fz.q0")
        content.insert(1, content.pop())
        label = "publishes interleaved"
    return label, content


def chan_flow_qos(g: Generator, ch: int):
    v = g.v
    chunks = [W.method(ch, "Channel.Flow", {"active": v.chance(0.5)}),
              g.method(ch, "Basic.Qos"), g.method(ch, "Basic.Recover")]
    v.r.shuffle(chunks)
    return "flow/qos/recover", chunks[:v.r.randrange(1, 4)]


CHAN_SCENARIOS = [
    (0.25, chan_method), (0.04, chan_server_method), (0.08, chan_methods),
    (0.12, chan_publish), (0.08, chan_declare_publish_get), (0.08, chan_consume),
    (0.06, chan_confirm), (0.05, chan_tx), (0.08, chan_exchange_kinds),
    (0.04, chan_deadletter), (0.04, chan_reply_to), (0.06, chan_interleave),
    (0.02, chan_flow_qos),
]


# -- mutations ----------------------------------------------------------------------------------
class Mutator:
    """Frame- and byte-level mutations of an input's chunks, in place. Returns a label."""

    def __init__(self, rnd, values: Values):
        self.r = rnd
        self.v = values

    def mutate(self, inp: Input) -> str:
        labels = []
        for _ in range(self.v.pick((1, 1, 1, 2, 3))):
            ops = self.OPS
            op = ops[self.r.randrange(len(ops))]
            if not inp.chunks:
                inp.chunks.append(b"")
            labels.append(op(self, inp))
        return "+".join(labels)

    def _pick(self, inp: Input) -> int:
        return self.r.randrange(len(inp.chunks))

    def bitflip(self, inp):
        i = self._pick(inp)
        c = bytearray(inp.chunks[i])
        if not c:
            return "bitflip"
        for _ in range(self.v.pick((1, 1, 2, 4))):
            pos = self.r.randrange(len(c))
            c[pos] ^= 1 << self.r.randrange(8)
        inp.chunks[i] = bytes(c)
        return "bitflip"

    def set_byte(self, inp):
        i = self._pick(inp)
        c = bytearray(inp.chunks[i])
        if not c:
            return "setbyte"
        c[self.r.randrange(len(c))] = self.v.pick((0, 0xFF, 0x7F, 0x80, 0xCE, 1))
        inp.chunks[i] = bytes(c)
        return "setbyte"

    def truncate_chunk(self, inp):
        """Cut a frame short, leaving its size field as it was."""
        i = self._pick(inp)
        c = inp.chunks[i]
        inp.chunks[i] = c[:self.r.randrange(len(c) + 1)]
        return "truncate"

    def truncate_payload(self, inp):
        """Cut a frame's payload short and fix the size: truncated arguments."""
        i = self._pick(inp)
        c = inp.chunks[i]
        if len(c) < 8:
            return "truncpayload"
        payload = c[7:-1]
        cut = payload[:self.r.randrange(len(payload) + 1)]
        inp.chunks[i] = c[:3] + W.long_(len(cut)) + cut + c[-1:]
        return "truncpayload"

    def trailing_garbage(self, inp):
        i = self._pick(inp)
        c = inp.chunks[i]
        if len(c) < 8:
            return "trailing"
        payload = c[7:-1] + self.v.junk(self.v.pick((1, 2, 8)))
        inp.chunks[i] = c[:3] + W.long_(len(payload)) + payload + c[-1:]
        return "trailing"

    def frame_size(self, inp):
        i = self._pick(inp)
        c = inp.chunks[i]
        if len(c) < 7:
            return "size"
        size = W.unpack_head(c)[2]
        new = self.v.pick((size + 1, max(0, size - 1), 0, size + self.r.randrange(1, 100),
                           W.FRAME_MAX, W.FRAME_MAX + 1, 4097, 2 ** 32 - 1, 2 ** 31))
        inp.chunks[i] = c[:3] + W.long_(new) + c[7:]
        return "size"

    def frame_type(self, inp):
        i = self._pick(inp)
        c = inp.chunks[i]
        if not c:
            return "type"
        inp.chunks[i] = bytes([self.v.pick((0, 1, 2, 3, 4, 8, 9, 255))]) + c[1:]
        return "type"

    def frame_channel(self, inp):
        i = self._pick(inp)
        c = inp.chunks[i]
        if len(c) < 3:
            return "channel"
        ch = W.unpack_head(c + bytes(7))[1]
        new = self.v.pick((0, ch + 1, max(0, ch - 1), 65535, 2048, self.r.randrange(65536)))
        inp.chunks[i] = c[:1] + W.short(new) + c[3:]
        return "channel"

    def frame_end(self, inp):
        i = self._pick(inp)
        c = inp.chunks[i]
        if not c:
            return "end"
        inp.chunks[i] = c[:-1] + bytes([self.v.pick((0, 0xCF, 0xCD, 0xFF))])
        return "end"

    def method_ids(self, inp):
        i = self._pick(inp)
        c = inp.chunks[i]
        if len(c) < 12 or c[0] != W.FRAME_METHOD:
            return "ids"
        r = self.r.randrange(3)
        if r == 0:
            ids = W.short(c[7] << 8 | c[8]) + W.short(self.r.randrange(256))
        elif r == 1:
            ids = W.short(self.v.pick((10, 20, 40, 50, 60, 85, 90, 0, 30, 65535))) + c[9:11]
        else:
            ids = W.short(self.r.randrange(65536)) + W.short(self.r.randrange(65536))
        inp.chunks[i] = c[:7] + ids + c[11:]
        return "ids"

    def insert_bytes(self, inp):
        i = self._pick(inp)
        c = inp.chunks[i]
        pos = self.r.randrange(len(c) + 1)
        inp.chunks[i] = c[:pos] + self.v.junk(self.v.pick((1, 2, 4, 16))) + c[pos:]
        return "insert"

    def delete_bytes(self, inp):
        i = self._pick(inp)
        c = inp.chunks[i]
        if not c:
            return "delete"
        pos = self.r.randrange(len(c))
        inp.chunks[i] = c[:pos] + c[pos + self.v.pick((1, 2, 4, 16)):]
        return "delete"

    def duplicate(self, inp):
        i = self._pick(inp)
        inp.chunks.insert(self.r.randrange(len(inp.chunks) + 1), inp.chunks[i])
        return "dup"

    def drop(self, inp):
        if len(inp.chunks) > 1:
            del inp.chunks[self._pick(inp)]
        return "drop"

    def swap(self, inp):
        if len(inp.chunks) > 1:
            i, j = self._pick(inp), self._pick(inp)
            inp.chunks[i], inp.chunks[j] = inp.chunks[j], inp.chunks[i]
        return "swap"

    def heartbeat(self, inp):
        ch = inp.channel if inp.stage == "chan" and self.v.chance(0.7) else 0
        inp.chunks.insert(self.r.randrange(len(inp.chunks) + 1),
                          W.frame(W.FRAME_HEARTBEAT, ch, self.v.pick((b"", b"", b"\0"))))
        return "heartbeat"

    def lying_size_in_payload(self, inp):
        """Overwrite 1, 2 or 4 bytes of a payload with a size-like value (shortstr length,
        table size, longstr length): the decoder's bounds checks."""
        i = self._pick(inp)
        c = bytearray(inp.chunks[i])
        if len(c) < 13:
            return "liesize"
        pos = self.r.randrange(11, len(c) - 1)
        value = self.v.pick((b"\xff", b"\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff",
                             b"\x00\x01\x00\x00", b"\x80"))
        c[pos:pos + len(value)] = value
        inp.chunks[i] = bytes(c[:len(inp.chunks[i])])
        return "liesize"

    OPS = [bitflip, bitflip, set_byte, truncate_chunk, truncate_payload, truncate_payload,
           trailing_garbage, frame_size, frame_type, frame_channel, frame_end, method_ids,
           method_ids, insert_bytes, delete_bytes, duplicate, drop, swap, heartbeat,
           lying_size_in_payload, lying_size_in_payload]
