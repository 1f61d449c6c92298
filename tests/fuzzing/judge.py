"""What the fuzzer observes about one input, and what counts as a violation.

RabbitMQ's rules: soft errors (311-313, 403-406) close the channel with ``channel.close``; hard
errors (320, 402, 403 at login, 501-506, 530, 540) close the connection with
``connection.close``; before ``connection.open`` completes the broker may also just drop the
socket. 541 INTERNAL_ERROR is never right: it means the broker had a bug. A connection that is
open never goes away without a ``connection.close`` (or the ``close-ok`` to the client's own
``close``), and every input gets an answer (its marker, a close) in bounded time.
"""
import re

from . import wire as W

SOFT = {311, 312, 313, 403, 404, 405, 406}
# 541 is never right, except RabbitMQ's bare "INTERNAL_ERROR" for a content header whose
# property block it cannot parse (a poison message refused at publish): a bug of ours would
# log a traceback too, which the log check catches.
HARD = {320, 402, 403, 501, 502, 503, 504, 505, 506, 530, 540}


class Outcome:
    """What the broker did with one input (on the engine's connection or in a replay)."""
    __slots__ = ("channel_closes", "conn_close", "close_ok", "eof", "marker", "hung", "elapsed",
                 "opened", "garbled", "marker_lost", "context_failed")

    def __init__(self):
        self.channel_closes: list = []   # (channel, code, text, class_id, method_id)
        self.conn_close = None           # (code, text, class_id, method_id)
        self.close_ok = False            # the broker answered a client connection.close
        self.eof = False                 # the broker closed the socket
        self.marker = False              # the round trip after the input came back
        self.hung = False                # neither marker nor close within the timeout
        self.elapsed = 0.0               # seconds from sending the input to its marker/close
        self.opened = False              # the connection was open (post-handshake) for it
        self.garbled = ""                # the broker sent bytes that are not AMQP frames
        self.marker_lost = False         # the input got the marker's channel closed
        self.context_failed = False      # inputs sent before it already ended the connection

    def summary(self) -> str:
        parts = []
        for ch, code, text, c, m in self.channel_closes:
            parts.append(f"channel.close ch{ch} {code} {text!r} ({c}.{m})")
        if self.conn_close:
            code, text, c, m = self.conn_close
            parts.append(f"connection.close {code} {text!r} ({c}.{m})")
        if self.close_ok:
            parts.append("connection.close-ok")
        if self.marker:
            parts.append("marker answered")
        if self.marker_lost:
            parts.append("marker channel closed")
        if self.eof:
            parts.append("socket closed")
        if self.hung:
            parts.append("no answer (hang)")
        if self.garbled:
            parts.append(f"garbled output: {self.garbled}")
        return "; ".join(parts) or "nothing"


def _closer(c: int, m: int) -> str:
    return W.NAMES.get((c, m), f"{c}.{m}")


def violations(out: Outcome, inp, stall_limit: float | None = None) -> list:
    """[(kind, signature, detail)] for one input's outcome (log tracebacks are judged apart:
    see ``Trace``). A hang or a silent close says nothing about which frame caused it: the
    engine names it by the frame that ends the shortest prefix of the input that still does
    it (``Engine._refine``)."""
    found = []
    for ch, code, text, c, m in out.channel_closes:
        if code == 541:
            found.append(("internal-error", f"541 on channel.close for {_closer(c, m)}", text))
        elif code not in SOFT:
            found.append(("bad-code", f"channel.close {code} for {_closer(c, m)}", text))
    if out.conn_close:
        code, text, c, m = out.conn_close
        if code == 541 and text == "INTERNAL_ERROR":
            pass    # RabbitMQ's own answer to a content header it cannot parse (no traceback)
        elif code == 541:
            found.append(("internal-error", f"541 {text.split(' - ', 1)[-1].split(':')[0]} "
                                            f"for {_closer(c, m)}", text))
        elif code not in HARD:
            found.append(("bad-code", f"connection.close {code} for {_closer(c, m)}", text))
    if out.garbled:
        found.append(("garbled-output", "broker sent bytes that are not frames", out.garbled))
    if out.hung:
        found.append(("hang", f"hang ({inp.stage})",
                      "no marker, close or socket close within the timeout"))
    elif out.eof and out.opened and not out.conn_close and not out.close_ok:
        found.append(("silent-close", "socket closed without connection.close",
                      out.summary()))
    if stall_limit is not None and out.elapsed > stall_limit and not out.hung:
        found.append(("stall", f"stall ({inp.stage}) on {first_method(inp)}",
                      f"{out.elapsed * 1000:.0f} ms for one input"))
    return found


def first_method(inp) -> str:
    for c in inp.chunks:
        if len(c) >= 11 and c[0] == W.FRAME_METHOD:
            return W.method_name(c[7:])
    return W.describe(inp.chunks[0]) if inp.chunks else "empty input"


def frames_of(inp) -> list:
    """The input cut into frames (a pre input's protocol header first); a malformed tail is
    one piece."""
    data = inp.data()
    if inp.stage == "pre" and data.startswith(b"AMQP"):
        return [data[:8]] + W.split_frames(data[8:])
    return W.split_frames(data)


def last_frame(inp) -> str:
    """What the input's last frame is (method name, frame type), channel and size left out."""
    frames = frames_of(inp)
    if not frames:
        return "nothing"
    return re.sub(r" ch\d+ size \d+( \(malformed\))?", "", W.describe(frames[-1]))


# -- broker log tracebacks ---------------------------------------------------------------------
_FILE = re.compile(r'\s*File "([^"]+)", line (\d+), in (\S+)')


class Trace:
    """One logged traceback. A chained one ("During handling of the above exception...") is
    named by its last exception: the one that escaped."""
    __slots__ = ("header", "lines", "exc", "where", "port")

    def __init__(self, header: str, lines: list):
        self.header = header
        self.lines = lines
        last = max((i for i, line in enumerate(lines) if line.startswith("Traceback")),
                   default=0)
        section = lines[last:]
        self.exc = next((line for line in reversed(section) if line.strip()), "?")
        frames = [m for m in (_FILE.match(line) for line in section) if m]
        where = "?"
        for m in frames:
            if "/amqpd/" in m.group(1):
                where = f"{m.group(1).split('/amqpd/')[-1]}:{m.group(3)}"
        if where == "?" and frames:
            where = f"{frames[-1].group(1).rsplit('/', 1)[-1]}:{frames[-1].group(3)}"
        self.where = where
        m = re.search(r":(\d+)\s*$", header)
        self.port = int(m.group(1)) if m else None

    @property
    def signature(self) -> str:
        exc_type = self.exc.split(":", 1)[0].strip()
        return f"{exc_type} at amqpd/{self.where}" if self.where != "?" else exc_type

    def text(self) -> str:
        return "\n".join([self.header, *self.lines])


_CHAINED = ("During handling of the above exception", "The above exception was the direct")


class LogWatcher:
    """Reads the broker's log lines (a list another thread appends to) from where it left
    off and returns the tracebacks that completed since. A traceback is the
    ``Traceback (most recent call last):`` line, indented lines and the exception line, and
    the tracebacks chained to it; its header is the last log line before it (which names the
    peer for frame errors). A traceback whose last line has been read is complete when the
    next line is not a chained one, or when a poll finds no more lines."""

    def __init__(self, lines: list):
        self.lines = lines
        self.pos = 0
        self.header = ""
        self.partial = None           # lines of a traceback still being written
        self.ended = False            # its exception line has been read
        self.internal = 0             # log lines mentioning INTERNAL_ERROR

    def poll(self) -> list:
        out = []
        lines = self.lines
        end = len(lines)
        new = self.pos < end
        while self.pos < end:
            line = lines[self.pos]
            self.pos += 1
            if self.partial is not None:
                if self.ended and not (line == "" or line.startswith(_CHAINED)
                                       or line.startswith("Traceback")):
                    out.append(Trace(self.header, self.partial))
                    self.partial = None
                else:
                    self.partial.append(line)
                    self.ended = bool(line) and not line.startswith(
                        (" ", "\t", "Traceback") + _CHAINED)
                    continue
            if line.startswith("Traceback"):
                self.partial = [line]
                self.ended = False
            elif _is_log_line(line):
                self.header = line
                if "INTERNAL_ERROR" in line:
                    self.internal += 1
        if self.partial is not None and self.ended and not new:
            out.append(Trace(self.header, self.partial))
            self.partial = None
        if self.pos > 20000:          # a long run logs millions of lines: keep memory flat
            del lines[:self.pos]
            self.pos = 0
        return out


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def _is_log_line(line: str) -> bool:
    return bool(_LOG_LINE.match(line))
