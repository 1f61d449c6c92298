"""Run one input alone on a fresh connection (blocking sockets), judge it, and shrink it.

This is how a violation seen during a fuzz run is confirmed (does it happen again, alone?),
how its minimal reproducing input is found, and how the regression tests replay it."""
import select
import socket
import struct
import time

from pamqp import frame as pamqp_frame

from . import streams as S
from . import wire as W
from .generate import Input
from .judge import Outcome, violations


def connect(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Close with RST: a fuzzer opens ~10^5 connections, TIME_WAIT would exhaust ports.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return sock


def run_stream(port: int, stream: bytes, stage: str, timeout: float = 5.0,
               host: str = "127.0.0.1", before: int = 0,
               channel: int | None = None, linger: float = 0.0) -> Outcome:
    """Send ``stream`` (a whole connection's bytes, see ``streams.full_stream``) and watch the
    broker's answer until the marker comes back, the socket closes or ``timeout`` passes.
    ``before``: the stream first holds that many other inputs, each with its marker; the
    outcome is the last input's (``out.context_failed`` if the connection did not get that
    far). ``channel``: also wait for that channel's close-ok (a broker that answers channels
    in parallel, as RabbitMQ does, may send the marker before the input's own replies).
    ``linger``: then keep listening that long for a late connection.close (RabbitMQ can
    send one for an input after the marker of the channel it did not touch)."""
    out = Outcome()
    skip = before
    channel_done = channel is None
    sock = connect(port, host, timeout)
    reader = S.Reader()
    post = stage != "pre"
    started = time.monotonic()
    deadline = started + timeout
    pending = memoryview(stream)
    answered = None                 # when the marker, a connection.close or EOF came
    lingering = False
    sock.setblocking(False)
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                out.hung = not lingering
                break
            wlist = [sock] if pending else []
            r, w, _x = select.select([sock], wlist, [], deadline - now)
            if w and pending:
                try:
                    n = sock.send(pending[:262144])
                    pending = pending[n:]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    pending = pending[:0]     # the broker closed on us; read what it said
            if not r:
                continue
            try:
                data = sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                out.eof = True
                answered = answered or time.monotonic()
                break
            replies = []
            done = False
            for ftype, ch, payload in reader.frames(data):
                if ftype != W.FRAME_METHOD or len(payload) < 4:
                    continue
                ids = (payload[0] << 24) | (payload[1] << 16) | (payload[2] << 8) | payload[3]
                if ids == 0x000A0029:                   # connection.open-ok
                    out.opened = True
                elif ids == 0x0014000B and ch == S.MARKER_CHANNEL and post and not out.marker:
                    started = time.monotonic()           # handshake done: time the input
                elif ids == 0x003C000B and ch == S.MARKER_CHANNEL and post and skip:
                    skip -= 1                            # a context input's marker
                    out.channel_closes.clear()
                    started = time.monotonic()
                elif ids == 0x003C000B and ch == S.MARKER_CHANNEL and post:
                    out.marker = True
                    answered = time.monotonic()
                    done = channel_done
                    if done:
                        break
                elif ids == 0x00140029 and ch == channel and not skip:
                    channel_done = True                  # channel.close-ok of the input's channel
                    done = out.marker
                    if done:
                        break
                elif ids == 0x00140028:                  # channel.close
                    out.channel_closes.append((ch, *S.parse_close(payload)))
                    replies.append(S.channel_close_ok(ch))
                    if ch == S.MARKER_CHANNEL and post and out.opened:
                        out.marker_lost = True           # no marker can come back now
                        answered = time.monotonic()
                        done = True
                elif ids == 0x000A0032:                  # connection.close
                    out.conn_close = S.parse_close(payload)
                    answered = answered or time.monotonic()
                    # The broker reads nothing but close-ok now: the rest of the input is moot.
                    pending = pending[:0]
                    replies.append(S.CLOSE_OK)
                elif ids == 0x000A0033:
                    # the answer to the client's own close: the client hangs up, as real
                    # clients do (the broker leaves the socket to it, as RabbitMQ)
                    out.close_ok = True
                    answered = answered or time.monotonic()
                    done = True
            if reader.garbled:
                out.garbled = reader.garbled
            if replies:
                if not pending:
                    try:
                        sock.setblocking(True)
                        sock.sendall(b"".join(replies))
                        sock.setblocking(False)
                    except OSError:
                        pass
            if done and linger > 0 and out.conn_close is None and not out.eof:
                deadline = min(deadline, time.monotonic() + linger)
                linger = 0.0
                lingering = True
                post = False                    # only closes matter now
                continue
            if done:
                break
    finally:
        out.elapsed = (answered or time.monotonic()) - started
        sock.close()
    if skip:
        out.context_failed = True
    return out


class Replayer:
    """Replays inputs against a broker and names the violations they cause, including
    tracebacks the broker logged meanwhile (``watcher``: a ``judge.LogWatcher``)."""

    def __init__(self, port: int, watcher=None, timeout: float = 5.0,
                 stall_limit: float | None = None, host: str = "127.0.0.1",
                 alive=lambda: True):
        self.port, self.host = port, host
        self.watcher = watcher
        self.timeout = timeout
        self.stall_limit = stall_limit
        self.alive = alive
        self.runs = 0

    def run(self, inp: Input, timeout: float | None = None, settle: float = 0.03,
            context: list = ()):
        """(set of signatures, {signature: detail}, outcome, traces). ``context``: inputs
        sent first on the same connection (post-handshake inputs only)."""
        self.runs += 1
        if self.watcher is not None:
            self.watcher.poll()
        context = [i for i in context if i.stage != "pre"] if inp.stage != "pre" else []
        stream = S.full_stream(inp.stage, inp.data(), inp.channel)
        if context:
            stream = S.HANDSHAKE + b"".join(S.wrap(i.stage, i.data(), i.channel)
                                            for i in context) + stream[len(S.HANDSHAKE):]
        try:
            out = run_stream(self.port, stream, inp.stage, timeout or self.timeout, self.host,
                             len(context))
        except OSError as exc:                  # cannot even connect: the broker is gone
            out = Outcome()
            out.garbled = f"connect failed: {exc}"
        traces = []
        if self.watcher is not None:
            until = time.monotonic() + settle
            while True:
                traces += self.watcher.poll()
                now = time.monotonic()
                if now >= until and (self.watcher.partial is None or now >= until + 2):
                    break
                time.sleep(0.005)
        found = violations(out, inp, self.stall_limit) if not out.context_failed else []
        details = {}
        sigs = set()
        for kind, sig, detail in found:
            if kind == "internal-error" and traces:
                continue               # the traceback names it better
            sigs.add(sig)
            details[sig] = f"{kind}: {detail}"
        for t in traces:
            sigs.add(t.signature)
            details[t.signature] = t.text()
        if not self.alive():
            sigs.add("broker died")
            details["broker died"] = "the broker process exited"
        return sigs, details, out, traces

    def reproduces(self, inp: Input, signature: str, tries: int = 1,
                   timeout: float | None = None) -> bool:
        for _ in range(tries):
            if signature in self.run(inp, timeout)[0]:
                return True
        return False


# -- shrinking ------------------------------------------------------------------------------------
def shrink(inp: Input, fails, budget: int = 300) -> Input:
    """A smaller input for which ``fails(input)`` still holds: drop whole chunks (frames);
    then, in each well-formed frame, drop payload bytes keeping the frame's size right; then
    drop raw bytes anywhere. ``budget`` bounds the number of replays."""
    calls = [0]
    # Keep frames whose arguments decode decodable: a minimal input that another broker can
    # parse says what it should answer (RabbitMQ drops the connection on some garbage).
    allowed = undecodable(inp.chunks)

    def more() -> bool:
        return calls[0] < budget

    def test(chunks) -> bool:
        if not more() or undecodable(chunks) > allowed:
            return False
        calls[0] += 1
        return fails(Input(inp.id, inp.stage, chunks, inp.label, inp.channel))

    chunks = [c for c in inp.chunks if c]
    # A chunk may hold many frames (e.g. "open 2100 channels"): shrink over frames.
    split = []
    for c in chunks:
        split.extend(W.split_frames(c) if len(c) > 64 else [c])
    if len(split) != len(chunks) and test(split):
        chunks = split
    chunks = _ddmin(chunks, test)
    for i in range(len(chunks)):
        if more():
            chunks[i] = _shrink_payload(chunks, i, test, more)
    for i in range(len(chunks)):
        if more():
            chunks[i] = _shrink_bytes(chunks, i, test, more)
    chunks = [c for c in chunks if c]
    if chunks and not _well_formed(chunks[-1]) and len(chunks[-1]) >= 7:
        whole = chunks[-1] + W.missing(chunks[-1])    # what the broker saw anyway
        if _well_formed(whole) and test(chunks[:-1] + [whole]):
            chunks[-1] = whole
    return Input(inp.id, inp.stage, chunks, inp.label, inp.channel)


def undecodable(chunks) -> int:
    """How many of the chunks are method or content-header frames whose arguments pamqp
    cannot decode (or that are not whole frames)."""
    n = 0
    for c in chunks:
        if len(c) < 8 or c[0] not in (W.FRAME_METHOD, W.FRAME_HEADER):
            continue
        if not _well_formed(c):
            n += 1
            continue
        try:
            used, _ch, _frame = pamqp_frame.unmarshal(c)
            if used != len(c):
                n += 1
        except Exception:
            n += 1
    return n


def shrink_list(items: list, fails, budget: int = 60) -> list:
    """The smallest sublist (order kept) for which ``fails(sublist)`` holds."""
    calls = [0]

    def test(sub) -> bool:
        if calls[0] >= budget:
            return False
        calls[0] += 1
        return fails(sub)

    if not items or test([]):
        return []
    return _ddmin(list(items), test, allow_empty=False)


def _ddmin(items: list, test, allow_empty: bool = False) -> list:
    n = 2
    while len(items) >= 2:
        size = max(1, len(items) // n)
        removed = False
        for start in range(0, len(items), size):
            candidate = items[:start] + items[start + size:]
            if (candidate or allow_empty) and test(candidate):
                items = candidate
                n = max(n - 1, 2)
                removed = True
                break
        if not removed:
            if size == 1:
                break
            n = min(len(items), n * 2)
    return items


def _well_formed(chunk: bytes) -> bool:
    return len(chunk) >= 8 and chunk[-1] == W.FRAME_END and \
        W.unpack_head(chunk)[2] == len(chunk) - 8


def _shrink_payload(chunks: list, i: int, test, more) -> bytes:
    """Remove payload bytes of a well-formed frame (after a method's class/method ids), fixing
    its size each time: shorter arguments, fewer table entries, a smaller body."""
    chunk = chunks[i]
    if not _well_formed(chunk):
        return chunk
    ftype, channel, _size = W.unpack_head(chunk)
    keep = 4 if ftype == W.FRAME_METHOD else 0
    head, data = chunk[7:7 + keep], chunk[7 + keep:-1]

    def build(d):
        return W.frame(ftype, channel, head + d)

    def with_(d):
        return chunks[:i] + [build(d)] + chunks[i + 1:]

    size = len(data) // 2
    while size >= 1 and data and more():
        pos = 0
        while pos < len(data) and more():
            candidate = data[:pos] + data[pos + size:]
            if test(with_(candidate)):
                data = candidate
            else:
                pos += size
        size //= 2
    return build(data)


def _shrink_bytes(chunks: list, i: int, test, more) -> bytes:
    data = chunks[i]

    def with_(d):
        return chunks[:i] + [d] + chunks[i + 1:]

    size = len(data) // 2
    while size >= 1 and data and more():
        pos = 0
        while pos < len(data) and more():
            candidate = data[:pos] + data[pos + size:]
            if test(with_(candidate)):
                data = candidate
            else:
                pos += size
        size //= 2
    return data
