"""Replay a finding's repro against any broker and print what it answers, frame by frame:

    python -m tests.fuzzing.probe REPRO.json [--port 5672]      # e.g. RabbitMQ
    python -m tests.fuzzing.probe --hex 0100... --stage conn --port 5672

This is how the expected (RabbitMQ) behaviour of a finding is looked up."""
import argparse
import json
import socket
import time

from . import streams as S
from . import wire as W
from .replay import connect


def transcript(port: int, stream: bytes, timeout: float = 3.0, host: str = "127.0.0.1",
               settle: float = 0.5) -> list:
    """Send ``stream`` and list every frame the broker sends back (answering channel.close
    and connection.close with their close-ok), then "EOF" or "TIMEOUT"."""
    sock = connect(port, host, timeout)
    sock.settimeout(timeout)
    lines = []
    try:
        sock.sendall(stream)
    except OSError as exc:
        lines.append(f"send failed: {exc}")
    reader = S.Reader()
    deadline = time.monotonic() + timeout
    quiet_until = None
    while True:
        now = time.monotonic()
        if now >= deadline or (quiet_until and now >= quiet_until):
            lines.append("TIMEOUT (socket still open)")
            break
        sock.settimeout(min(deadline, quiet_until or deadline) - now)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError as exc:
            lines.append(f"EOF ({exc.__class__.__name__})")
            break
        if not data:
            lines.append("EOF")
            break
        if reader.proto_reply is False and data.startswith(b"AMQP") and reader.start:
            lines.append(f"protocol header {data[:8].hex()}")
        for ftype, ch, payload in reader.frames(data):
            desc = W.describe(W.frame(ftype, ch, payload))
            if ftype == W.FRAME_METHOD and payload[:4] in (b"\x00\x14\x00\x28",
                                                            b"\x00\x0a\x00\x32"):
                desc += f" {S.parse_close(payload)}"
                reply = S.channel_close_ok(ch) if payload[1] == 0x14 else S.CLOSE_OK
                try:
                    sock.sendall(reply)
                except OSError:
                    pass
            elif ftype == W.FRAME_METHOD and payload[:4] == b"\x00\x3c\x00\x0b" and \
                    ch == S.MARKER_CHANNEL:
                desc += " (marker)"
                quiet_until = time.monotonic() + settle
            lines.append(desc)
        if reader.garbled:
            lines.append(f"garbled: {reader.garbled}")
            break
    sock.close()
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("repro", nargs="?")
    p.add_argument("--hex", help="input bytes (hex)")
    p.add_argument("--stage", default="conn", choices=("pre", "conn", "chan"))
    p.add_argument("--channel", type=int, default=2)
    p.add_argument("--port", type=int, default=5672)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--first", action="store_true", help="the first input, not the minimal one")
    args = p.parse_args(argv)
    if args.repro:
        d = json.load(open(args.repro))
        if args.first:
            stream = S.full_stream(d["stage"], bytes.fromhex(d["first_input_hex"]),
                                   d["channel"])
        else:
            stream = bytes.fromhex(d["stream_hex"])
        setup = [bytes.fromhex(h) for h in d.get("setup_streams_hex", [])]
    else:
        stream = S.full_stream(args.stage, bytes.fromhex(args.hex), args.channel)
        setup = []
    for s in setup:
        print("setup:", transcript(args.port, s, host=args.host))
    for line in transcript(args.port, stream, host=args.host):
        print(line)


if __name__ == "__main__":
    main()
