"""The canary: an unrelated, well-behaved client in its own process (so the fuzzer's own CPU
use does not show up as broker latency) that publishes one message and fetches it back with
basic.get every few milliseconds, and records each round trip's latency.

It reports through a pipe: ("slow", t_sent, latency) as soon as a round trip takes longer
than ``slow``; ("lost", error) if its connection fails; and at the end ("done", latencies).
``progress`` (a shared double) holds the monotonic time of the last completed round trip, so
the parent sees a broker that stopped answering even while the canary is still waiting."""
import socket
import struct
import time
from array import array

from . import streams as S
from . import wire as W

QUEUE = b"fz.canary"


def _frames(sock, reader, want: int, deadline: float):
    """Read until a method frame with class/method index ``want`` arrives."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("canary round trip timed out")
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("broker closed the canary connection")
        for ftype, _ch, payload in reader.frames(data):
            if ftype == W.FRAME_METHOD and len(payload) >= 4:
                index = struct.unpack_from(">I", payload)[0]
                if index == want:
                    return payload
                if index in (0x000A0032, 0x00140028):
                    raise ConnectionError(f"canary closed: {S.parse_close(payload)}")


def run(port: int, interval: float, slow: float, pipe, stop, progress,
        host: str = "127.0.0.1", timeout: float = 60.0) -> None:
    latencies = array("d")
    try:
        sock = socket.create_connection((host, port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = S.Reader()
        sock.sendall(S.HANDSHAKE)
        _frames(sock, reader, 0x0014000B, time.monotonic() + 10)
        sock.sendall(W.method(1, "Queue.Declare", {"queue": QUEUE, "exclusive": True}))
        _frames(sock, reader, 0x0032000B, time.monotonic() + 10)
        round_trip = (W.method(1, "Basic.Publish", {"routing_key": QUEUE})
                      + W.content_header(1, 6, {}) + W.frame(W.FRAME_BODY, 1, b"canary")
                      + W.method(1, "Basic.Get", {"queue": QUEUE, "no_ack": True}))
        progress.value = time.monotonic()
        while not stop.is_set():
            t0 = time.monotonic()
            sock.sendall(round_trip)
            _frames(sock, reader, 0x003C0047, t0 + timeout)   # basic.get-ok
            t1 = time.monotonic()
            progress.value = t1
            latency = t1 - t0
            latencies.append(latency)
            if latency > slow:
                pipe.send(("slow", t0, latency))
            pause = interval - (time.monotonic() - t0)
            if pause > 0:
                time.sleep(pause)
    except Exception as exc:  # reported, not raised: the parent decides what it means
        pipe.send(("lost", f"{type(exc).__name__}: {exc}"))
    pipe.send(("done", latencies.tobytes()))
