"""Differential fuzzing: the same inputs, one at a time, against amqpd and against RabbitMQ,
comparing how each broker ends them: which close (channel or connection), with which reply
code and class/method id, or none. Reply texts are not compared.

This checks "the close RabbitMQ would send" directly, where the main engine only checks that a
close is a plausible one. Left out: pre-handshake inputs (RabbitMQ waits 3 s before it drops
a failed handshake), inputs that use the plugin exchange types RabbitMQ 3.10.8 does not ship
(x-delayed-message, x-message-deduplication), and inputs RabbitMQ itself drops without any
close (its connection process crashed on them; there is nothing to compare with), and by
default mutated inputs."""
import collections
import time

from . import streams as S
from . import wire as W
from .generate import Generator, Input
from .judge import first_method
from .replay import connect, run_stream

PLUGINS_MISSING = (b"x-delayed-message", b"x-message-deduplication", b"x-delayed-type",
                   b"x-deduplication-header", b"x-cache-size", b"x-cache-ttl",
                   b"x-message-deduplication", b"x-delay")


def verdict(out) -> tuple:
    """How the broker ended the input: ('connection', code, class, method),
    ('channel', code, class, method), ('dropped',), ('hang',) or ('ok',)."""
    if out.conn_close:
        code, _text, c, m = out.conn_close
        return ("connection", code, c, m)
    if out.channel_closes:
        _ch, code, _text, c, m = out.channel_closes[0]
        return ("channel", code, c, m)
    if out.hung:
        return ("hang",)
    if out.eof and not out.close_ok and not out.marker:
        return ("dropped",)
    return ("ok",)


def _name(v: tuple) -> str:
    if v[0] in ("connection", "channel"):
        return f"{v[0]}.close {v[1]} ({W.NAMES.get((v[2], v[3]), f'{v[2]}.{v[3]}')})"
    return v[0]


def clean(port: int, inputs) -> None:
    """Delete what the inputs declare, so both brokers start each input from the same state."""
    from .engine import declared
    names = {"queue": set(), "exchange": set()}
    for i in inputs:
        declared(i, names)
    parts = []
    for k, (kind, name) in enumerate([("queue", n) for n in names["queue"]]
                                     + [("exchange", n) for n in names["exchange"]]):
        ch = 2 + k
        method = "Queue.Delete" if kind == "queue" else "Exchange.Delete"
        parts.append(S.channel_open(ch) + W.method(ch, method, {kind: name})
                     + S.channel_close(ch))
    if not parts:
        return
    try:
        sock = connect(port, timeout=5)
        # RabbitMQ runs channels in parallel: wait for every channel's close-ok before
        # closing the connection, or the deletes still running are abandoned.
        sock.sendall(S.HANDSHAKE + b"".join(parts))
        reader = S.Reader()
        pending = set(range(2, 2 + len(parts)))
        deadline = time.monotonic() + 5
        while pending and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                break
            for ftype, ch, payload in reader.frames(data):
                if ftype != 1:
                    continue
                if payload[:4] == b"\x00\x14\x00\x28":          # channel.close: answer it
                    sock.sendall(S.channel_close_ok(ch))
                    pending.discard(ch)
                elif payload[:4] == b"\x00\x14\x00\x29":        # channel.close-ok
                    pending.discard(ch)
                elif payload[:4] == b"\x00\x0a\x00\x32":        # connection.close
                    pending.clear()
        sock.close()
    except OSError:
        pass


class Divergence:
    def __init__(self, signature: str, inp: Input, amqpd: str, rabbitmq: str):
        self.signature = signature
        self.first = inp
        self.amqpd = amqpd
        self.rabbitmq = rabbitmq
        self.count = 1

    def to_json(self) -> dict:
        i = self.first
        return {"signature": self.signature, "count": self.count, "stage": i.stage,
                "channel": i.channel, "label": i.label, "amqpd": self.amqpd,
                "rabbitmq": self.rabbitmq, "frames": [W.describe(c) for c in i.chunks],
                "stream_hex": S.full_stream(i.stage, i.data(), i.channel).hex()}


def run(amqpd_port: int, rabbit_port: int, n: int, seed: int, timeout: float = 3.0,
        progress=None, mutated: bool = False) -> dict:
    """Compare ``n`` post-handshake inputs of generator ``seed``: only the unmutated ones
    unless ``mutated`` (mutated inputs differ mostly in which framing error a broker names
    first, which says little)."""
    gen = Generator(seed, heavy=False)
    found: dict = {}
    compared = []
    stats = collections.Counter()
    t0 = time.monotonic()
    while stats["compared"] < n:
        inp = gen.next()
        if inp.stage == "pre" or any(p in c for c in inp.chunks for p in PLUGINS_MISSING):
            continue
        if "+" in inp.label and not mutated:
            continue
        stream = S.full_stream(inp.stage, inp.data(), inp.channel)
        wait = inp.channel if inp.stage == "chan" else None
        outs = []
        for port, linger in ((rabbit_port, 0.15), (amqpd_port, 0.0)):
            clean(port, [inp])
            try:
                outs.append(run_stream(port, stream, inp.stage, timeout, channel=wait,
                                       linger=linger))
            except OSError as exc:
                raise RuntimeError(f"broker on port {port} unreachable: {exc}") from None
        r, a = verdict(outs[0]), verdict(outs[1])
        stats["compared"] += 1
        compared.append(inp)
        if r == ("dropped",):
            stats["rabbitmq dropped"] += 1
            continue
        if r == a:
            stats["same"] += 1
            continue
        if r[0] == a[0] == "connection" and r[1] == a[1]:
            stats["same code, other class/method"] += 1
        sig = f"{first_method(inp)}: amqpd {_name(a)}, RabbitMQ {_name(r)}"
        if sig in found:
            found[sig].count += 1
        else:
            found[sig] = Divergence(sig, inp, outs[1].summary(), outs[0].summary())
        if progress and stats["compared"] % 500 == 0:
            progress(stats, found, time.monotonic() - t0)
    clean(rabbit_port, compared)      # leave the shared RabbitMQ as it was
    stats["seconds"] = int(time.monotonic() - t0)
    return {"stats": dict(stats), "divergences": found}
