"""The fuzz engine: many fuzz connections in parallel on one ``selectors`` loop, feeding the
generator's inputs to a running broker and judging every answer, while a canary process
measures an unrelated client's round trips, the broker's log is scanned for tracebacks and
its RSS is sampled.

Post-handshake connections pipeline up to ``batch`` inputs in one write, each followed by the
marker (see ``streams``); an input likely to end its connection (mutated, outside a channel)
goes last, with nothing behind it until its marker is back. When the broker closes a
connection, the input whose marker had not come back is the one that did it; anything
pipelined behind it was never read and goes back to the queue. Pre-handshake inputs get a
connection each.

A violation (``judge.violations``, a traceback in the log, the broker dying, the canary
stalling) is named by a signature; the first time a signature is seen, its input is replayed
alone to confirm it and shrunk to a minimal reproducing input (``replay``), and the finding is
saved to the output directory.
"""
import collections
import json
import multiprocessing
import os
import re
import selectors
import socket
import struct
import time

from . import canary as canary_mod
from . import streams as S
from . import wire as W
from .generate import Generator, Input
from .judge import LogWatcher, Outcome, frames_of, last_frame, violations
from .replay import Replayer, run_stream, shrink, shrink_list

HANDSHAKE, READY, CLOSING, DONE = range(4)
INTERLEAVINGS = {"content reordered", "method inside content", "heartbeat on channel",
                 "content without publish", "two content headers", "extra body frame",
                 "body before header", "publishes interleaved"}


REFINED = ("hang", "silent-close")      # named after replaying prefixes of the input


def declared(inp: Input, names: dict) -> None:
    """Add the names of the queues and exchanges the input declares (if it decodes that far)
    to ``names["queue"]`` and ``names["exchange"]``."""
    for c in inp.chunks:
        if len(c) < 14 or c[0] != W.FRAME_METHOD:
            continue
        ids = c[7:11]
        if ids == b"\x00\x32\x00\x0a":
            kind = "queue"
        elif ids == b"\x00\x28\x00\x0a":
            kind = "exchange"
        else:
            continue
        n = c[13]
        name = c[14:14 + n]
        if len(name) == n and name and not name.startswith(b"amq."):
            names[kind].add(name)


def is_risky(inp: Input) -> bool:
    """Likely to end its connection: outside a channel, mutated, or content interleaved."""
    return inp.stage == "conn" or "+" in inp.label or inp.label in INTERLEAVINGS


# A replay waits this long for an answer or a socket close: more than the 3 s a broker keeps a
# connection it closed after a framing error that lost the stream's sync (RabbitMQ's timing).
REPLAY_TIMEOUT = 4.0

class Settings:
    def __init__(self, **kw):
        self.seed = 1
        self.inputs = 10000
        self.duration = None            # seconds; None: until ``inputs`` ran
        self.connections = 6            # post-handshake fuzz connections
        self.pre_connections = 3        # concurrent pre-handshake connections
        self.batch = 16                 # inputs in flight per connection
        self.hang_timeout = 5.0         # no marker/close for this long: a hang
        self.close_timeout = 10.0       # after connection.close: socket closed within this
        self.stall_limit = 0.25         # one input alone may take this long to answer
        self.canary_interval = 0.005
        self.janitor_interval = 5.0
        self.shrink_budget = 300
        self.out_dir = None             # where findings are saved (None: not saved)
        self.known = set()              # signatures expected (xfail regression tests)
        self.confirm = True             # replay and shrink new signatures
        self.heavy = True               # see generate.Generator
        self.progress = None            # callable(engine) every ``progress_every`` seconds
        self.progress_every = 10.0
        self.rss_growth_limit = 256 << 20   # RSS after the run vs. after warm-up
        for k, v in kw.items():
            if not hasattr(self, k):
                raise TypeError(k)
            setattr(self, k, v)


class Finding:
    def __init__(self, signature: str, kind: str, inp: Input, detail: str, outcome: str):
        self.signature = signature
        self.kind = kind
        self.first = inp
        self.minimal = None             # the shrunk input, once confirmed
        self.detail = detail
        self.outcome = outcome
        self.count = 1
        self.confirmed = False
        self.repro_path = None
        self.minimal_outcome = ""
        self.setup = []                 # inputs sent first on the same connection

    def stream(self) -> bytes:
        """What one connection sends to reproduce it: the handshake, the setup inputs (each
        with its marker), the minimal input."""
        m = self.minimal or self.first
        setup = [i for i in self.setup if i.stage != "pre"] if m.stage != "pre" else []
        stream = S.full_stream(m.stage, m.data(), m.channel)
        if setup:
            stream = S.HANDSHAKE + b"".join(S.wrap(i.stage, i.data(), i.channel)
                                            for i in setup) + stream[len(S.HANDSHAKE):]
        return stream

    def to_json(self) -> dict:
        m = self.minimal or self.first
        return {
            "signature": self.signature, "kind": self.kind, "count": self.count,
            "confirmed": self.confirmed, "stage": m.stage, "channel": m.channel,
            "label": self.first.label, "input_id": self.first.id,
            "minimal_chunks_hex": [c.hex() for c in m.chunks],
            "minimal_frames": [W.describe(c) for c in m.chunks],
            "stream_hex": self.stream().hex(),
            "setup_frames": [[W.describe(c) for c in i.chunks]
                             for i in (self.setup if self.confirmed else [])],
            "first_input_hex": self.first.data().hex(),
            "observed": self.minimal_outcome or self.outcome, "detail": self.detail,
        }


class Conn:
    __slots__ = ("sock", "kind", "state", "reader", "inflight", "out", "since", "port",
                 "opened", "head_started", "closing_since", "risky", "history")

    def __init__(self, sock, kind: str):
        self.sock = sock
        self.kind = kind
        self.state = HANDSHAKE if kind == "post" else READY
        self.reader = S.Reader()
        self.inflight = collections.deque()     # [input, outcome]
        self.out = bytearray()
        self.since = time.monotonic()
        self.head_started = self.since
        self.port = sock.getsockname()[1]
        self.opened = False
        self.closing_since = None
        self.risky = False                      # a risky input is in flight (the last one)
        self.history = collections.deque(maxlen=48)   # inputs this connection has run


class Engine:
    def __init__(self, broker, settings: Settings):
        self.broker = broker              # a broker.BrokerProcess (running)
        self.s = settings
        self.gen = Generator(settings.seed, settings.heavy)
        self.sel = selectors.DefaultSelector()
        self.conns: dict = {}             # fd -> Conn
        self.queue = collections.deque()  # inputs to run (requeued ones go to the front)
        self.watcher = LogWatcher(broker.log)
        self.replayer = Replayer(broker.port, self.watcher, settings.hang_timeout,
                                 settings.stall_limit, alive=broker.alive)
        self.findings: dict = {}          # signature -> Finding
        self.unconfirmed: dict = {}       # signature -> Finding (did not reproduce alone)
        self.seen = collections.Counter() # signature -> occurrences in the run
        self.attempts = collections.Counter()  # signature -> confirmations tried
        self.refined: dict = {}           # (coarse signature, last frame) -> its name
        self.to_refine: dict = {}
        self.pending_541 = []             # (deadline, port, inp, outcome) awaiting traceback
        self.traces_by_port: dict = {}
        self.to_confirm = collections.deque()
        self.recent = collections.deque(maxlen=256)   # (t_done, input) for log/canary blame
        self.run_count = 0
        self.requeued = 0
        self.connections_opened = 0
        self.stage_counts = collections.Counter()
        self.rss_samples = []             # (t, rss)
        self.paused = 0.0
        self.janitor_names = {"queue": set(), "exchange": set()}
        self.canary = None
        self.canary_latencies = []
        self.canary_slow = []             # (t_sent, latency)
        self.canary_lost = None
        self.broker_restarts = 0
        self.last_blame = 0.0
        self.janitor_time = 0.0
        self.started = None
        self.ended = None
        self.bytes_sent = 0

    # -- the run ----------------------------------------------------------------------------
    def run(self):
        s = self.s
        self.started = time.monotonic()
        self.rss_samples.append((0.0, self.broker.rss()))
        self._start_canary()
        last_tick = last_janitor = last_progress = time.monotonic()
        deadline = self.started + s.duration if s.duration else None
        try:
            while True:
                now = time.monotonic()
                if self.run_count >= s.inputs or (deadline and now >= deadline):
                    break
                self._fill()
                for key, events in self.sel.select(0.02):
                    conn = key.data
                    if events & selectors.EVENT_READ:
                        self._readable(conn)
                    if events & selectors.EVENT_WRITE and conn.state != DONE:
                        self._flush(conn)
                now = time.monotonic()
                if now - last_tick >= 0.05:
                    last_tick = now
                    self._tick(now)
                if now - last_janitor >= s.janitor_interval:
                    last_janitor = now
                    self._janitor()
                if s.progress and now - last_progress >= s.progress_every:
                    last_progress = now
                    s.progress(self)
            for conn in list(self.conns.values()):
                self._drop(conn)
            self._tick(time.monotonic(), final=True)
            self._janitor()
        finally:
            self.ended = time.monotonic()
            self._stop_canary()
            self.rss_samples.append((self.ended - self.started, self.broker.rss()))
        self._memory_check()
        return self

    def _memory_check(self) -> None:
        """RSS must not keep growing: compare the end of the run (everything the inputs
        declared deleted, every fuzz connection closed) with the broker after warm-up."""
        if self.broker_restarts or len(self.rss_samples) < 3:
            return
        warm = next((r for t, r in self.rss_samples if t >= 2.0), self.rss_samples[1][1])
        end = self.rss_samples[-1][1]
        if end - warm > self.s.rss_growth_limit:
            sig = "memory: broker RSS kept growing"
            self.seen[sig] += 1
            if sig not in self.s.known:
                f = Finding(sig, "memory", Input(0, "conn", [], "whole run"),
                            f"RSS {warm >> 20} MB after warm-up, {end >> 20} MB at the end",
                            "")
                f.confirmed = True
                self.findings[sig] = f
                self._save(f)

    # -- feeding inputs -----------------------------------------------------------------------
    def _fill(self) -> None:
        """Hand out inputs in the generator's order: a pre input opens its own connection; a
        post input goes to a ready connection with room (a risky one only to a connection
        with no risky input in flight, and nothing is sent behind it until its marker is
        back, so what it closes takes nothing else along)."""
        s = self.s
        q = self.queue
        in_flight = sum(len(c.inflight) for c in self.conns.values())
        budget = s.inputs - self.run_count - in_flight
        pres = posts = 0
        ready = []
        for conn in self.conns.values():
            if conn.state in (HANDSHAKE, READY):
                if conn.kind == "post":
                    posts += 1
                    if conn.state == READY and not conn.risky and \
                            len(conn.inflight) < s.batch:
                        ready.append(conn)
                else:
                    pres += 1
        batches = {}
        while budget > 0:
            if not q:
                inp = self.gen.next()
                self._note_names(inp)
                q.append(inp)
            inp = q[0]
            if inp.stage == "pre":
                if pres >= s.pre_connections:
                    break
                q.popleft()
                self._open("pre", inp)
                pres += 1
                budget -= 1
                continue
            conn = None
            while ready:
                c = ready[-1]
                if len(c.inflight) >= s.batch or c.risky:
                    ready.pop()
                    continue
                if inp.stage == "chan" and any(i.channel == inp.channel and i.stage == "chan"
                                               for i, _o in c.inflight):
                    ready.pop()
                    continue
                conn = c
                break
            if conn is None:
                if posts < s.connections:
                    self._open("post")
                    posts += 1
                break
            q.popleft()
            out = Outcome()
            out.opened = True
            if not conn.inflight:
                conn.head_started = time.monotonic()
            conn.inflight.append([inp, out])
            batches.setdefault(conn, []).append(S.wrap(inp.stage, inp.data(), inp.channel))
            budget -= 1
            if is_risky(inp):
                conn.risky = True
        for conn, parts in batches.items():
            conn.out += b"".join(parts)
            self._flush(conn)

    def _open(self, kind: str, inp: Input | None = None):
        try:
            sock = socket.create_connection(("127.0.0.1", self.broker.port), timeout=5)
        except OSError as exc:
            self._broker_trouble(f"connect failed: {exc}")
            if inp is not None:
                self.queue.appendleft(inp)
            return None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.setblocking(False)
        conn = Conn(sock, kind)
        self.traces_by_port.pop(conn.port, None)      # a stale one from a previous socket
        self.connections_opened += 1
        self.conns[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_READ, conn)
        if kind == "post":
            conn.out += S.HANDSHAKE
        else:
            conn.inflight.append([inp, Outcome()])
            conn.out += S.wrap("pre", inp.data())
        self._flush(conn)
        return conn

    def _flush(self, conn: Conn) -> None:
        if not conn.out:
            return
        try:
            n = conn.sock.send(conn.out)
            self.bytes_sent += n
            del conn.out[:n]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            conn.out.clear()
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        try:
            self.sel.modify(conn.sock, mask, conn)
        except (KeyError, ValueError):
            pass

    # -- reading ------------------------------------------------------------------------------
    def _readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._eof(conn)
            return
        replies = []
        for ftype, ch, payload in conn.reader.frames(data):
            if ftype != W.FRAME_METHOD or len(payload) < 4:
                continue
            index = (payload[0] << 24) | (payload[1] << 16) | (payload[2] << 8) | payload[3]
            head = conn.inflight[0] if conn.inflight else None
            if index == 0x003C000B and ch == S.MARKER_CHANNEL and conn.kind == "post":
                if head is not None and conn.state == READY:
                    head[1].marker = True
                    self._done(conn, conn.inflight.popleft())
                    conn.head_started = time.monotonic()
                    if not conn.inflight:
                        conn.risky = False
            elif index == 0x00140028:                       # channel.close
                if head is not None:
                    head[1].channel_closes.append((ch, *S.parse_close(payload)))
                replies.append(S.channel_close_ok(ch))
                if ch == S.MARKER_CHANNEL and conn.kind == "post":
                    # The input hit the engine's own channel: no marker comes back any more.
                    if conn.state == HANDSHAKE:
                        self._broker_trouble("marker channel closed during handshake")
                    elif head is not None and conn.state == READY:
                        head[1].marker_lost = True
                        self._done(conn, conn.inflight.popleft())
                    self._requeue(conn)
                    conn.state = CLOSING
                    conn.closing_since = time.monotonic()
                    replies.append(S.CLIENT_CLOSE)
            elif index == 0x000A0032:                       # connection.close
                if head is not None:
                    head[1].conn_close = S.parse_close(payload)
                elif conn.state == HANDSHAKE:
                    self._broker_trouble(f"handshake refused: {S.parse_close(payload)}")
                conn.out.clear()          # the broker reads nothing but close-ok any more
                replies.append(S.CLOSE_OK)
                self._closing(conn)
            elif index == 0x000A0033:                       # connection.close-ok
                if head is not None:
                    head[1].close_ok = True
                # The answer to our own close: hang up, as a real client does (the broker
                # leaves the socket to the client, as RabbitMQ does).
                self._closing(conn)
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            elif index == 0x000A0029:                       # connection.open-ok
                conn.opened = True
                if head is not None:
                    head[1].opened = True
            elif index == 0x0014000B and ch == S.MARKER_CHANNEL and conn.state == HANDSHAKE:
                conn.state = READY
        if conn.reader.garbled and conn.inflight:
            conn.inflight[0][1].garbled = conn.reader.garbled
            self._closing(conn)
        if replies:
            conn.out += b"".join(replies)
            self._flush(conn)

    def _closing(self, conn: Conn) -> None:
        """The connection is ending: the input at the head caused it; the rest go back."""
        if conn.state == CLOSING or conn.state == DONE:
            return
        conn.state = CLOSING
        conn.closing_since = time.monotonic()
        if conn.inflight:
            head = conn.inflight.popleft()
            self._requeue(conn)
            conn.inflight.appendleft(head)

    def _requeue(self, conn: Conn) -> None:
        rest = list(conn.inflight)
        conn.inflight.clear()
        for inp, _out in reversed(rest):
            self.queue.appendleft(inp)
            self.requeued += 1

    def _eof(self, conn: Conn) -> None:
        if conn.inflight:
            head = conn.inflight.popleft()
            head[1].eof = True
            if conn.state != CLOSING:
                self._requeue(conn)
            self._done(conn, head)
        elif conn.state == HANDSHAKE:
            self._broker_trouble("connection dropped during the handshake")
        self._drop(conn)

    def _drop(self, conn: Conn) -> None:
        if conn.state == DONE:
            return
        conn.state = DONE
        if conn.inflight:
            self._requeue(conn)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self.conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def _done(self, conn: Conn, item) -> None:
        inp, out = item
        now = time.monotonic()
        out.elapsed = now - conn.head_started
        self.run_count += 1
        self.stage_counts[inp.stage] += 1
        self.recent.append((now, inp))
        context = list(conn.history)
        conn.history.append(inp)
        # Stalls are judged by the canary (an unrelated client), not by this input's own
        # round trip, which includes waiting behind the other fuzz connections' inputs.
        for kind, sig, detail in violations(out, inp):
            if kind == "internal-error":
                self.pending_541.append((now + 5.0, conn.port, inp, out, sig, detail, context))
                continue
            self._violation(sig, kind, inp, detail, out.summary(), context)

    # -- timers and checks --------------------------------------------------------------------
    def _tick(self, now: float, final: bool = False) -> None:
        s = self.s
        # While the canary is waiting too, the broker is slow for everyone: no input is to
        # blame for its own wait (the canary check below finds a broker that is stuck).
        serving = self.canary is None or now - self.canary[3].value < 0.5
        for conn in list(self.conns.values()):
            if not serving:
                break
            if conn.state == CLOSING:
                if now - conn.closing_since > s.close_timeout:
                    if conn.inflight:
                        head = conn.inflight.popleft()
                        head[1].hung = True
                        self._done(conn, head)
                    self._drop(conn)
                continue
            if conn.state == HANDSHAKE and now - conn.since > s.hang_timeout:
                self._broker_trouble("handshake not answered in time")
                self._drop(conn)
                continue
            if conn.inflight and now - max(conn.head_started, conn.since) > s.hang_timeout:
                if not self._probe():       # not this connection: the whole broker is stuck
                    self._wedged()
                    return
                head = conn.inflight.popleft()
                head[1].hung = True
                self._requeue(conn)
                self._done(conn, head)
                self._drop(conn)
        for trace in self.watcher.poll():
            if trace.port is not None and "internal error handling a frame" in trace.header:
                self.traces_by_port[trace.port] = trace     # its connection gets a 541
            else:
                self._trace(trace)
        if len(self.traces_by_port) > 10000:
            self.traces_by_port.clear()
        keep = []
        for item in self.pending_541:
            deadline, port, inp, out, sig, detail, context = item
            trace = self.traces_by_port.pop(port, None)
            if trace is not None:
                self._violation(trace.signature, "internal-error", inp, trace.text(),
                                out.summary(), context)
            elif now >= deadline or final:
                self._violation(sig, "internal-error", inp, detail, out.summary(), context)
            else:
                keep.append(item)
        self.pending_541 = keep
        self._canary_poll(now)
        if not self.rss_samples or now - self.started - self.rss_samples[-1][0] >= 1.0:
            self.rss_samples.append((now - self.started, self.broker.rss()))
        if not self.broker.alive():
            self._broker_died()
        if self.to_refine:
            self._refine_all()
        if self.to_confirm and self.s.confirm:
            self._confirm_all()
        elif self.to_confirm:
            self.to_confirm.clear()

    def _trace(self, trace) -> None:
        """A traceback in the log that no 541 explains: blamed on recent inputs by replaying
        them alone."""
        sig = trace.signature
        self.seen[sig] += 1
        if sig in self.s.known:
            return
        if sig in self.findings or sig in self.unconfirmed:
            f = self.findings.get(sig) or self.unconfirmed[sig]
            f.count += 1
            return
        recent = [inp for _t, inp in list(self.recent)[-64:]]
        candidates = recent[-1:] + recent[:-1] + [i for c in self.conns.values()
                                                  for i, _o in c.inflight]
        # If none does it alone: the last one after the others (state they left behind).
        self.to_confirm.append((sig, "traceback", candidates, trace.text(), "logged",
                                recent[:-1]))

    def _violation(self, sig: str, kind: str, inp: Input, detail: str, summary: str,
                   context: list = ()) -> None:
        """``context``: the inputs sent before it on its connection, in case it fails only
        on what they left behind (a queue declared with some argument, a consumer...)."""
        if kind in REFINED:
            key = (sig, last_frame(inp))
            named = self.refined.get(key)
            if named is None:
                if key not in self.to_refine and len(self.to_refine) < 100:
                    self.to_refine[key] = (sig, kind, inp, detail, summary, context)
                return
            sig = named
        self.seen[sig] += 1
        if sig in self.s.known:
            return            # an open finding with its own (xfail) regression test
        f = self.findings.get(sig) or self.unconfirmed.get(sig)
        if f is not None:
            f.count += 1
            return
        if self.attempts[sig] >= 3 or any(sig == item[0] for item in self.to_confirm):
            return
        self.attempts[sig] += 1
        self.to_confirm.append((sig, kind, [inp], detail, summary, context))

    def _confirm_all(self) -> None:
        """Replay each new signature's input alone, shrink it, save the finding. The fuzz
        connections wait meanwhile (their hang clocks are moved by the pause)."""
        self._quiesce()
        t0 = time.monotonic()
        while self.to_confirm:
            item = self.to_confirm.popleft()
            if item[0] in self.findings or item[0] in self.unconfirmed:
                continue
            self._confirm(*item)
        self._shift_clocks(time.monotonic() - t0)

    def _quiesce(self) -> None:
        """Before replays: close the fuzz connections (their inputs go back to the queue),
        so their exclusive queues, consumers and unacked messages do not get in the way."""
        for conn in list(self.conns.values()):
            self._drop(conn)

    def _refine_all(self) -> None:
        self._quiesce()
        t0 = time.monotonic()
        while self.to_refine:
            key, (sig, kind, inp, detail, summary, context) = self.to_refine.popitem()
            self.refined[key] = self._refine(inp, kind, sig)
            self._violation(sig, kind, inp, detail, summary, context)
        self._shift_clocks(time.monotonic() - t0)

    def _refine(self, inp: Input, kind: str, coarse: str) -> str:
        """Name a hang or silent close by the frame that does it: the last frame of the
        shortest prefix of the input (in whole frames) that still does it alone."""
        frames = frames_of(inp)
        timeout = min(self.s.hang_timeout, REPLAY_TIMEOUT)
        for k in range(1, min(len(frames), 24) + 1):
            candidate = Input(inp.id, inp.stage, frames[:k], inp.label, inp.channel)
            if self._check(candidate, kind, coarse, timeout) is not None:
                return f"{coarse} after {last_frame(candidate)}"
        return f"{coarse} after {last_frame(inp)}"

    def _grace(self, seconds: float) -> None:
        for conn in self.conns.values():
            conn.head_started += seconds
            conn.since += seconds
            if conn.closing_since is not None:
                conn.closing_since += seconds

    def _shift_clocks(self, pause: float) -> None:
        self.paused += pause
        for conn in self.conns.values():
            conn.head_started += pause
            conn.since += pause
            if conn.closing_since is not None:
                conn.closing_since += pause
        if self.canary is not None:
            self.canary[3].value = max(self.canary[3].value, time.monotonic() - 1.0)

    def _check(self, inp: Input, kind: str, sig: str, timeout: float | None = None,
               setup: list = (), clean: list = ()):
        """Replay ``inp`` alone (after ``setup``: inputs sent first on the same connection) on
        a healthy broker, after deleting what it, ``setup`` and ``clean`` declare (so that
        neither earlier replays nor other inputs' leftovers make it pass or fail). Returns the
        signature it reproduces (``sig``; for a wedge, crash, canary blame or a 541 the one
        it causes), or None."""
        self._healthy()
        # A traceback from a timer (TTL, delayed delivery) comes after the input's answer.
        settle = 0.5 if kind == "traceback" else 0.03
        self._clean(list(clean) + list(setup) + [inp])
        sigs, _details, out, traces = self.replayer.run(inp, timeout, settle, setup)
        wedged = out.hung and not self._probe()
        if wedged or not self.broker.alive():
            self._restart()
        if kind == "wedge":
            return f"broker unresponsive after {last_frame(inp)}" if wedged else None
        if kind == "crash":
            return sig if "broker died" in sigs else None
        if kind == "canary":
            stalls = sorted(s for s in sigs if s.startswith("stall"))
            return stalls[0] if stalls else None
        if kind == "internal-error" and traces:
            return traces[-1].signature
        if kind in REFINED:             # "hang (chan) after X" is reproduced by any hang (chan)
            sig = sig.split(" after ")[0]
        return sig if sig in sigs else None

    def _clean(self, inputs: list) -> None:
        """Delete the queues and exchanges these inputs declare (before a context replay)."""
        names = {"queue": set(), "exchange": set()}
        for i in inputs:
            declared(i, names)
        todo = [("Queue.Delete", "queue", n) for n in names["queue"]]
        todo += [("Exchange.Delete", "exchange", n) for n in names["exchange"]]
        for _ in range(5):
            if not todo:
                break
            todo = self._janitor_pass(todo)

    def _confirm(self, sig, kind, candidates, detail, summary, context) -> None:
        slow = kind in ("hang", "stall", "wedge", "canary")
        setup = []
        found = None
        for inp in candidates[:64]:
            got = self._check(inp, kind, sig)
            if got is None or (kind == "stall" and self._check(inp, kind, sig) is None):
                continue
            if kind in REFINED:
                got = sig                # keep the name it was found (and deduplicated) by
            if kind == "canary":
                kind = "stall"
                if self._check(inp, kind, got) is None:
                    continue
            found = inp, got
            break
        if found is None and context and not slow and kind != "crash":
            # Not alone: maybe on what the inputs before it left behind (a queue declared
            # with some argument, a message waiting...). Find the fewest of them needed.
            inp = candidates[0]
            got = self._check(inp, kind, sig, setup=context)
            if got is not None:
                setup = shrink_list(context, lambda sub: self._check(
                    inp, kind, got, setup=sub) == got, budget=40)
                found = inp, got
        if found is None:
            if kind in ("stall", "canary"):
                return        # a slow moment of a busy machine, not a property of the input
            f = Finding(sig, kind, candidates[0], detail, summary)
            f.count = max(1, self.seen[sig])
            f.setup = context
            self.unconfirmed[sig] = f
            self._save(f)
            return
        inp, got = found
        if got in self.s.known or got in self.findings:
            self.seen[got] += 1   # another way to an open finding (e.g. a 541 named late)
            if got in self.findings:
                self.findings[got].count += 1
            return
        f = Finding(got, kind, inp, detail, summary)
        f.count = max(1, self.seen[sig])
        f.confirmed = True
        f.setup = setup
        budget = 40 if slow or setup or kind == "traceback" else self.s.shrink_budget
        timeout = min(self.s.hang_timeout, REPLAY_TIMEOUT) if kind in ("hang", "wedge") else None
        if kind == "wedge":
            def fails(c):
                return self._check(c, kind, got, timeout, clean=[inp]) is not None
        else:
            expect = got.split(" after ")[0] if kind in REFINED else got

            def fails(c):
                return self._check(c, kind, got, timeout, setup, clean=[inp]) == expect
        f.minimal = shrink(inp, fails, budget)
        if kind == "wedge":        # named by what the minimal input ends with
            f.signature = got = f"broker unresponsive after {last_frame(f.minimal)}"
        self._healthy()
        self._clean(setup + [inp, f.minimal])
        sigs, details, out, traces = self.replayer.run(f.minimal, None, 0.5, setup)
        if not self.broker.alive() or (out.hung and not self._probe()):
            self._restart()
        f.minimal_outcome = out.summary()
        if got in details:
            f.detail = details[got]
        for t in traces:              # e.g. what killed a connection that closed silently
            if t.signature != got:
                f.detail += "\n\nlogged meanwhile:\n" + t.text()
        old = self.findings.get(got)
        if old is not None:
            old.count += f.count
            return
        self.findings[got] = f
        self._save(f)

    # -- the broker itself ----------------------------------------------------------------------
    def _probe(self, timeout: float = 2.0) -> bool:
        """Does a fresh connection get a round trip through?"""
        if not self.broker.alive():
            return False
        try:
            out = run_stream(self.broker.port, S.full_stream("conn", b""), "conn", timeout)
        except OSError:
            return False
        return out.marker

    def _healthy(self) -> None:
        if not self._probe():
            self._restart()

    def _broker_trouble(self, what: str) -> None:
        self.seen["broker trouble: " + what] += 1

    def _suspects(self) -> list:
        """In-flight inputs first, then the last ones handled."""
        out = [i for c in self.conns.values() for i, _o in c.inflight]
        out += [inp for _t, inp in reversed(list(self.recent)[-32:])]
        return out

    def _abandon_all(self) -> None:
        """Drop every fuzz connection without re-running its inputs (they are suspects)."""
        for conn in list(self.conns.values()):
            conn.inflight.clear()
            self._drop(conn)

    def _broker_died(self) -> None:
        code = self.broker.proc.poll()
        tail = "\n".join(self.broker.log[-40:])
        suspects = self._suspects()
        self._abandon_all()
        self._restart()
        self.seen["broker died"] += 1
        if "broker died" not in self.findings:
            self.to_confirm.append(("broker died", "crash", suspects,
                                    f"exit code {code}\n{tail}", "the broker process exited",
                                    []))

    def _wedged(self) -> None:
        """The canary got no answer for a whole hang timeout. If a fresh connection gets none
        either, the broker is stuck: restart it and find the input that does that."""
        if self._probe():
            return
        t0 = time.monotonic()
        suspects = self._suspects()
        self._abandon_all()
        self._restart()
        self.seen["broker wedged"] += 1
        if self.attempts["broker wedged"] < 5:
            self.attempts["broker wedged"] += 1
            self.to_confirm.append(("broker wedged", "wedge", suspects,
                                    "the canary and a fresh connection got no answer",
                                    "broker unresponsive", []))
        self._shift_clocks(time.monotonic() - t0)

    def _restart(self) -> None:
        self.broker.kill()
        try:
            self.broker.start()
        except RuntimeError as exc:
            # What the inputs left in the data dir keeps the broker from starting: that is a
            # finding of its own; the run goes on with an empty data dir.
            sig = "broker does not start again on its data dir"
            self.seen[sig] += 1
            if sig not in self.findings:
                f = Finding(sig, "restart", Input(0, "conn", [], "restart"), str(exc)[-6000:],
                            "start failed")
                f.confirmed = True
                self.findings[sig] = f
                self._save(f)
                if self.s.out_dir:
                    import shutil
                    shutil.copytree(self.broker.data_dir, os.path.join(
                        self.s.out_dir, "data-dir-that-does-not-start"), dirs_exist_ok=True)
            self.broker.kill()
            self.broker.fresh_data_dir()
            self.broker.start()
        self.broker_restarts += 1
        self.replayer.port = self.broker.port
        self.watcher = LogWatcher(self.broker.log)
        self.replayer.watcher = self.watcher
        self._stop_canary()
        self._start_canary()

    # -- canary -----------------------------------------------------------------------------------
    def _start_canary(self) -> None:
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe(duplex=False)
        stop = ctx.Event()
        progress = ctx.Value("d", time.monotonic(), lock=False)
        proc = ctx.Process(target=canary_mod.run, daemon=True,
                           args=(self.broker.port, self.s.canary_interval, self.s.stall_limit,
                                 child, stop, progress))
        proc.start()
        self.canary = (proc, parent, stop, progress)

    def _canary_poll(self, now: float) -> None:
        if self.canary is None:
            return
        proc, pipe, stop, progress = self.canary
        while True:
            try:
                if not pipe.poll():
                    break
                msg = pipe.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "slow":
                self.canary_slow.append((msg[1], msg[2]))
                # Nobody was served meanwhile: that time does not count against fuzz inputs.
                self._grace(msg[2])
                self._canary_blame(msg[1], msg[2])
            elif msg[0] == "lost":
                self.canary_lost = msg[1]
                self._broker_trouble("canary lost its connection: " + msg[1])
                self._stop_canary()
                self._start_canary()
                return
            elif msg[0] == "done":
                self._canary_done(msg[1])
        if now - progress.value > self.s.hang_timeout:
            progress.value = now
            self._wedged()

    def _canary_blame(self, t_sent: float, latency: float) -> None:
        """A slow canary round trip: the inputs handled around it are replayed alone to find
        one that is expensive by itself."""
        suspects = [inp for t, inp in self.recent if t_sent - 0.05 <= t <= t_sent + latency]
        suspects += [i for c in self.conns.values() for i, _o in c.inflight]
        now = time.monotonic()
        if not suspects or self.attempts["canary"] >= 30 or now - self.last_blame < 2.0:
            return
        self.attempts["canary"] += 1
        self.last_blame = now
        self.to_confirm.append((f"canary stall {len(self.canary_slow)}", "canary", suspects,
                                f"canary round trip {latency * 1000:.0f} ms", "canary", []))

    def _canary_done(self, raw: bytes) -> None:
        from array import array
        a = array("d")
        a.frombytes(raw)
        self.canary_latencies.extend(a)

    def _stop_canary(self) -> None:
        if self.canary is None:
            return
        proc, pipe, stop, _progress = self.canary
        stop.set()
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                if pipe.poll(0.1):
                    msg = pipe.recv()
                    if msg[0] == "done":
                        self._canary_done(msg[1])
                        break
                    if msg[0] == "slow":
                        self.canary_slow.append((msg[1], msg[2]))
                elif not proc.is_alive():
                    break
        except (EOFError, OSError):
            pass
        proc.join(2)
        if proc.is_alive():
            proc.kill()
        self.canary = None

    # -- janitor: delete what the inputs declared, so a long run stays bounded ----------------------
    def _note_names(self, inp: Input) -> None:
        declared(inp, self.janitor_names)

    def _janitor(self) -> None:
        names = self.janitor_names
        todo = [("Queue.Delete", "queue", n) for n in names["queue"]]
        todo += [("Exchange.Delete", "exchange", n) for n in names["exchange"]]
        names["queue"], names["exchange"] = set(), set()
        t0 = time.monotonic()
        while todo and time.monotonic() - t0 < 10:
            todo = self._janitor_pass(todo)
        self.janitor_time += time.monotonic() - t0
        self._grace(time.monotonic() - t0)

    def _janitor_pass(self, todo: list) -> list:
        """Delete each name on its own channel, pipelined; returns what is left if the broker
        closed the connection (a name it refuses outright is skipped)."""
        from .replay import connect
        parts = [S.channel_open(2 + i % 2000) + W.method(2 + i % 2000, method, {arg: name})
                 + S.channel_close(2 + i % 2000) + S.MARKER
                 for i, (method, arg, name) in enumerate(todo)]
        done = 0
        try:
            sock = connect(self.broker.port, timeout=5)
            sock.sendall(S.HANDSHAKE + b"".join(parts))
            reader = S.Reader()
            deadline = time.monotonic() + 5
            while done < len(parts) and time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = sock.recv(262144)
                if not data:
                    break
                replies = []
                for ftype, ch, payload in reader.frames(data):
                    if ftype != 1:
                        continue
                    if payload[:4] == b"\x00\x3c\x00\x0b" and ch == S.MARKER_CHANNEL:
                        done += 1
                    elif payload[:4] == b"\x00\x14\x00\x28":
                        replies.append(S.channel_close_ok(ch))
                    elif payload[:4] == b"\x00\x0a\x00\x32":
                        sock.close()
                        return todo[done + 1:]
                if replies:
                    sock.sendall(b"".join(replies))
            sock.close()
        except OSError:
            return todo[done + 1:]
        return todo[done:] if done < len(parts) else []

    # -- results --------------------------------------------------------------------------------------
    def _save(self, f: Finding) -> None:
        if not self.s.out_dir:
            return
        os.makedirs(self.s.out_dir, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f.signature)[:100]
        path = os.path.join(self.s.out_dir, f"{name}.json")
        f.repro_path = path
        with open(path, "w") as fh:
            json.dump(f.to_json(), fh, indent=1)

    def new_findings(self) -> list:
        return [f for f in list(self.findings.values()) + list(self.unconfirmed.values())
                if f.signature not in self.s.known]

    def stats(self) -> dict:
        lat = sorted(self.canary_latencies)
        elapsed = (self.ended or time.monotonic()) - self.started
        rss = [r for _t, r in self.rss_samples if r]
        return {
            "inputs": self.run_count, "stages": dict(self.stage_counts),
            "requeued": self.requeued, "connections": self.connections_opened,
            "elapsed": elapsed, "rate": self.run_count / elapsed if elapsed else 0,
            "bytes_sent": self.bytes_sent, "replays": self.replayer.runs,
            "paused": self.paused, "janitor_time": self.janitor_time,
            "findings": len(self.findings), "unconfirmed": len(self.unconfirmed),
            "canary_samples": len(lat),
            "canary_max_ms": lat[-1] * 1000 if lat else None,
            "canary_p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else None,
            "canary_p50_ms": lat[len(lat) // 2] * 1000 if lat else None,
            "canary_slow": len(self.canary_slow), "canary_lost": self.canary_lost,
            "rss_start": rss[0] if rss else 0, "rss_end": rss[-1] if rss else 0,
            "rss_max": max(rss) if rss else 0,
            "broker_restarts": self.broker_restarts,
            "trouble": {k: v for k, v in self.seen.items() if k.startswith("broker trouble")},
        }
