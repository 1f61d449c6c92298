"""Backlogs: fill, memory, drain and restart, amqpd and RabbitMQ in the same invocation.

    python3 bench/backlog.py --scenario one --messages 200000
    python3 bench/backlog.py --scenario many --messages 1000000 --no-rabbitmq
    python3 bench/backlog.py --scenario delayed --messages 1000000

Scenarios (1 KiB bodies, publisher confirms, pipelined with --window outstanding):
  one        1 durable queue x N persistent messages
  many       100 durable queues x N/100 persistent messages
  transient  1 non-durable queue x N non-persistent messages
  delayed    N persistent messages pending in a durable x-delayed-message exchange at once,
             then released at --release-rate per second into a durable queue; the timing
             error of each is (arrival) - (publish time + x-delay), on this process's clock;
             also the release rate achieved (N / first to last arrival) and the broker's CPU
             time per released message (load on a shared machine moves it little)

For each broker it prints the RSS of the broker process before, at its peak during the fill
and after it, the publish rate (N / first publish to last confirm), the drain rate (N / first to
last delivery while consuming with acks, prefetch --prefetch), and for amqpd the time from
exec to listening and to the first delivery after ``kill -9`` with the backlog in place (the
drain then runs on the restarted broker). RabbitMQ (3.10.8 on 127.0.0.1:5672, shared: only a
uniquely named queue, deleted after) is never restarted: its restart figures are n/a, and so
is its delayed scenario unless its delayed-message plugin is enabled.

The client is a raw-frame AMQP client on plain sockets (prebuilt frames, a fast frame scanner)
so that it is not the bottleneck; each broker gets the same client.
"""
import argparse
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pamqp import body as pbody, commands as C, frame as pframe, header as pheader  # noqa: E402

from interop.process import AmqpdProcess  # noqa: E402
from tests.rawclient import RawClient  # noqa: E402

BODY = 1024
_frame_head = struct.Struct(">BHI")
_u64 = struct.Struct(">Q")
_stamp = struct.Struct(">dq")          # publish time (monotonic), x-delay ms: first body bytes
ACK = b"\x00\x3c\x00\x50"              # basic.ack
NACK = b"\x00\x3c\x00\x78"             # basic.nack
DELIVER = b"\x00\x3c\x00\x3c"          # basic.deliver
DELAY_MARK = 2_000_000_000              # x-delay placeholder patched per message


# -- measuring the broker process ---------------------------------------------------------------
def rss_mb(pid) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid) -> float:
    """User + system CPU time of a process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Peak RSS of a process, sampled every 100 ms on a thread."""

    def __init__(self, pid):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            r = rss_mb(self.pid)
            if r == r and r > self.peak:
                self.peak = r
            self._stop.wait(0.1)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return self.peak


def pid_listening(port: int):
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True,
                         text=True).stdout
    m = re.search(r"pid=(\d+)", out)
    return int(m.group(1)) if m else None


# -- a raw pipelined client -----------------------------------------------------------------------
class Conn:
    """A handshaken connection with channel 1 open; after setup, raw bytes only."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 600):
        self.rc = RawClient(port, host, timeout=timeout)
        self.rc.handshake()
        self.rc.open_channel(1)
        self.sock = self.rc.sock
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(self, method, reply):
        return self.rc.call(1, method, reply)

    def close(self):
        try:
            self.rc.close()
        except OSError:
            pass

    def frames(self, stop):
        """Yield (type, payload) for every frame until ``stop()``."""
        buf = bytearray(self.rc.buf)
        self.rc.buf = b""
        sock = self.sock
        sock.settimeout(1.0)
        chunk = bytearray(1 << 20)
        while not stop():
            pos, end = 0, len(buf)
            while pos + 7 <= end:
                kind, _ch, size = _frame_head.unpack_from(buf, pos)
                stop_at = pos + 8 + size
                if stop_at > end:
                    break
                yield kind, bytes(buf[pos + 7:stop_at - 1])
                pos = stop_at
            if pos:
                del buf[:pos]
            try:
                n = sock.recv_into(chunk)
            except socket.timeout:
                continue
            if not n:
                raise ConnectionError("broker closed the connection")
            buf += chunk[:n]


def message_frames(exchange: str, key: str, persistent: bool, delayed: bool) -> bytearray:
    headers = {"x-delay": DELAY_MARK} if delayed else None
    props = C.Basic.Properties(delivery_mode=2 if persistent else 1, headers=headers)
    return bytearray(pframe.marshal(C.Basic.Publish(exchange=exchange, routing_key=key), 1)
                     + pframe.marshal(pheader.ContentHeader(0, BODY, props), 1)
                     + pframe.marshal(pbody.ContentBody(b"x" * BODY), 1))


class Publisher:
    """Publishes with confirms, at most ``window`` unconfirmed; a thread counts the acks."""

    def __init__(self, port, window):
        self.conn = Conn(port)
        self.conn.call(C.Confirm.Select(), C.Confirm.SelectOk)
        self.window = window
        self.confirmed = 0
        self.nacked = 0
        self.sent = 0
        self.done = threading.Event()
        self.error = None
        self._low, self._singles = 0, set()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        try:
            for kind, p in self.conn.frames(lambda: self.done.is_set()):
                if kind != 1:
                    continue
                head = bytes(p[:4])
                if head != ACK and head != NACK:
                    continue
                tag = _u64.unpack_from(p, 4)[0]
                multiple = p[12] & 1
                if head == NACK:
                    self.nacked += 1
                if multiple:
                    if tag > self._low:
                        self._low = tag
                        self._singles = {t for t in self._singles if t > tag}
                else:
                    self._singles.add(tag)
                while self._low + 1 in self._singles:
                    self._low += 1
                    self._singles.discard(self._low)
                self.confirmed = self._low + len(self._singles)
        except Exception as exc:      # reported by the caller
            self.error = exc
            self.done.set()

    def wait_window(self, target):
        while self.sent - self.confirmed > target:
            if self.error:
                raise self.error
            time.sleep(0.0005)

    def send(self, data: bytes, count: int):
        self.wait_window(self.window - count)
        self.conn.sock.sendall(data)
        self.sent += count

    def finish(self, timeout=600):
        deadline = time.monotonic() + timeout
        while self.confirmed < self.sent:
            if self.error:
                raise self.error
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.sent - self.confirmed} publishes never confirmed")
            time.sleep(0.001)
        self.done.set()
        self._t.join(3)
        self.conn.close()


class Consumer:
    """Consumes queues with manual acks (one multiple ack every ``prefetch // 4``
    deliveries) on a thread; records arrival times (and, for delayed messages, the error
    against the due time written into the body)."""

    def __init__(self, port, queues, prefetch, expect, timing=False):
        self.conn = Conn(port)
        self.conn.call(C.Basic.Qos(prefetch_count=prefetch), C.Basic.QosOk)
        # consume-oks and the first deliveries interleave: the reader skips the former
        self.conn.sock.sendall(b"".join(
            pframe.marshal(C.Basic.Consume(queue=q, consumer_tag=f"c{i}"), 1)
            for i, q in enumerate(queues)))
        self.expect, self.timing = expect, timing
        self.batch = max(1, prefetch // 4)
        self.count = 0
        self.first = self.last = None
        self.errors: list = []           # timing errors in ms
        self.error = None
        self.done = threading.Event()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        sock, count, unacked, tag = self.conn.sock, 0, 0, 0
        timing, errors, clock = self.timing, self.errors, time.monotonic
        stamp = _stamp.unpack_from
        try:
            for kind, p in self.conn.frames(lambda: self.done.is_set()):
                if kind == 1:
                    if p[:4] == DELIVER:
                        n = p[4]
                        tag = _u64.unpack_from(p, 5 + n)[0]
                elif kind == 3:
                    now = clock()
                    if count == 0:
                        self.first = now
                    count += 1
                    unacked += 1
                    if timing:
                        sent, delay = stamp(p, 0)
                        errors.append((now - sent) * 1000.0 - delay)
                    if unacked >= self.batch or count >= self.expect:
                        sock.sendall(pframe.marshal(C.Basic.Ack(delivery_tag=tag, multiple=True),
                                                    1))
                        unacked = 0
                    self.count = count
                    if count >= self.expect:
                        self.last = now
                        self.done.set()
        except Exception as exc:
            self.error = exc
            self.done.set()

    def n_ok(self) -> bool:
        return self.count >= self.expect and self.last is not None and self.last > self.first

    def wait(self, timeout):
        if not self.done.wait(timeout):
            raise TimeoutError(f"consumed {self.count} of {self.expect}")
        if self.error:
            raise self.error
        self.conn.close()


# -- the scenarios --------------------------------------------------------------------------------
class Scenario:
    def __init__(self, args, tag):
        self.args = args
        self.n = args.messages
        kind = args.scenario
        self.kind = kind
        self.persistent = kind != "transient"
        self.durable = kind != "transient"
        nq = 100 if kind == "many" else 1
        self.queues = [f"backlog-{tag}-{i}" for i in range(nq)]
        self.exchange = f"backlog-{tag}-dx" if kind == "delayed" else ""

    def declare(self, port):
        c = Conn(port)
        for q in self.queues:
            c.call(C.Queue.Declare(queue=q, durable=self.durable), C.Queue.DeclareOk)
        if self.exchange:
            c.call(C.Exchange.Declare(exchange=self.exchange, exchange_type="x-delayed-message",
                                      durable=True, arguments={"x-delayed-type": "direct"}),
                   C.Exchange.DeclareOk)
            c.call(C.Queue.Bind(queue=self.queues[0], exchange=self.exchange, routing_key="k"),
                   C.Queue.BindOk)
        c.close()

    def delete(self, port):
        c = Conn(port)
        for q in self.queues:
            c.call(C.Queue.Delete(queue=q), C.Queue.DeleteOk)
        if self.exchange:
            c.call(C.Exchange.Delete(exchange=self.exchange), C.Exchange.DeleteOk)
        c.close()

    def fill(self, port) -> float:
        """Publish every message; returns seconds from the first publish to the last confirm."""
        pub = Publisher(port, self.args.window)
        chunk = self.chunk = max(1, min(200, self.args.window))
        start = time.monotonic()
        if self.kind == "delayed":
            self._fill_delayed(pub, start)
        else:
            per = self.n // len(self.queues)
            frames = [bytes(message_frames("", q, self.persistent, False)) * chunk
                      for q in self.queues]
            left = {i: per for i in range(len(self.queues))}
            while left:
                for i in list(left):
                    k = min(chunk, left[i])
                    pub.send(frames[i] if k == chunk else frames[i][:len(frames[i]) // chunk * k],
                             k)
                    left[i] -= k
                    if not left[i]:
                        del left[i]
        pub.finish()
        if pub.nacked:
            print(f"  !! {pub.nacked} publishes nacked")
        return time.monotonic() - start

    def _fill_delayed(self, pub, start):
        """Message i is due at start + lead + i / release_rate: all pending at the end of the
        fill if the broker takes them faster than N / lead per second."""
        template = message_frames(self.exchange, "k", True, True)
        mark = template.find(b"I" + struct.pack(">i", DELAY_MARK))
        assert mark > 0, "x-delay placeholder not found"
        body_at = len(template) - 1 - BODY
        size = len(template)
        lead, rate = self.args.lead, self.args.release_rate
        self.early = 0
        i, n = 0, self.n
        while i < n:
            k = min(self.chunk, n - i)
            pub.wait_window(pub.window - k)
            buf = bytearray(template * k)
            now = time.monotonic()
            for j in range(k):
                delay = int((start + lead + (i + j) / rate - now) * 1000)
                if delay < 1:
                    delay = 1
                    self.early += 1
                at = j * size
                struct.pack_into(">i", buf, at + mark + 1, delay)
                _stamp.pack_into(buf, at + body_at, now, delay)
            pub.send(buf, k)
            i += k


def run_broker(name, port, pid, args, scenario, restart=None):
    """One broker's run; ``restart(pid) -> (new port, new pid, listening s, proc)`` for amqpd."""
    r = {"broker": name}
    scenario.declare(port)
    time.sleep(0.5)
    r["rss_before_mb"] = rss_mb(pid)
    sampler = RssSampler(pid)
    consumer = None
    if scenario.kind == "delayed":
        # the consumer is there from the start: the timing is the point
        consumer = Consumer(port, scenario.queues, args.prefetch, scenario.n, timing=True)
    took = scenario.fill(port)
    r["publish_s"] = took
    r["publish_rate"] = scenario.n / took
    time.sleep(1.0)
    r["rss_peak_fill_mb"] = sampler.stop()
    r["rss_after_fill_mb"] = rss_mb(pid)
    if consumer is not None:
        r["released_during_fill"] = consumer.count
        sampler = RssSampler(pid)
        cpu = cpu_seconds(pid)
        consumer.wait(scenario.args.lead + scenario.n / args.release_rate + 600)
        r["rss_peak_release_mb"] = sampler.stop()
        # CPU the broker spent from the end of the fill to the last arrival, per message: a
        # figure the load of a shared machine does not move much, unlike the timing error
        r["release_cpu_us"] = (cpu_seconds(pid) - cpu) / scenario.n * 1e6
        # first to last arrival: the release rate when it keeps up is --release-rate
        r["release_rate"] = scenario.n / (consumer.last - consumer.first) if consumer.n_ok() else 0
        errs = sorted(consumer.errors)
        r["timing_p50_ms"] = errs[len(errs) // 2]
        r["timing_p99_ms"] = errs[min(len(errs) - 1, int(len(errs) * 0.99))]
        r["timing_max_ms"] = errs[-1]
        r["timing_min_ms"] = errs[0]
        r["early_publishes"] = scenario.early
        r["rss_after_release_mb"] = rss_mb(pid)
        scenario.delete(port)
        return r
    if restart is not None and scenario.durable:
        port, pid, listening, first = restart(scenario)
        r["restart_listening_s"] = listening
        r["restart_first_delivery_s"] = first
        r["rss_after_restart_mb"] = rss_mb(pid)
    sampler = RssSampler(pid)
    consumer = Consumer(port, scenario.queues, args.prefetch, scenario.n)
    consumer.wait(3600)
    r["rss_peak_drain_mb"] = sampler.stop()
    r["drain_rate"] = scenario.n / (consumer.last - consumer.first) if consumer.n_ok() else 0
    scenario.delete(port)
    return r


def amqpd_args() -> list:
    """Every listener on a free port (RabbitMQ holds the defaults here): AmqpdProcess passes
    --port 0 and --http-port 0; others this amqpd has are added."""
    help_text = subprocess.run([sys.executable, "-m", "amqpd", "--help"], cwd=ROOT,
                               capture_output=True, text=True).stdout
    extra = ["--log-level", "info"]
    for flag in ("--prometheus-port",):
        if flag in help_text:
            extra += [flag, "0"]
    return extra


def run_amqpd(args, scenario):
    tmp = tempfile.TemporaryDirectory(prefix="amqpd-backlog-")
    extra = amqpd_args()
    state = {"proc": AmqpdProcess(*extra, data_dir=tmp.name).start(timeout=60)}
    try:
        def restart(sc):
            state["proc"].kill()                     # SIGKILL
            p = state["proc"] = AmqpdProcess(*extra, data_dir=tmp.name)
            p.start(timeout=600)
            c = Conn(p.port)
            c.call(C.Basic.Qos(prefetch_count=1), C.Basic.QosOk)
            c.rc.method(1, C.Basic.Consume(queue=sc.queues[0], consumer_tag="first"))
            c.rc.expect(C.Basic.ConsumeOk, timeout=600)
            c.rc.expect(C.Basic.Deliver, timeout=600)
            first = time.monotonic() - p.started_at
            c.close()          # the unacked one goes back to the head of the queue
            time.sleep(0.2)
            return p.port, p.proc.pid, p.listening_after, first

        p = state["proc"]
        return run_broker("amqpd", p.port, p.proc.pid, args, scenario, restart)
    finally:
        state["proc"].stop(timeout=60)
        tmp.cleanup()


def rabbitmq_has_delayed(host_port) -> bool:
    host = host_port.split(":")[0]
    req = urllib.request.Request(f"http://{host}:15672/api/overview")
    req.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            types = [t["name"] for t in json.load(resp).get("exchange_types", [])]
    except OSError:
        return False
    return "x-delayed-message" in types


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.3f}{unit}" if abs(v) < 10 else f"{v:,.0f}{unit}"
    return f"{v:,}{unit}"


ROWS = [("RSS before fill (MB)", "rss_before_mb"), ("RSS peak during fill (MB)", "rss_peak_fill_mb"),
        ("RSS after fill (MB)", "rss_after_fill_mb"), ("publish (msg/s)", "publish_rate"),
        ("publish time (s)", "publish_s"),
        ("restart: exec to listening (s)", "restart_listening_s"),
        ("restart: exec to first delivery (s)", "restart_first_delivery_s"),
        ("RSS after restart (MB)", "rss_after_restart_mb"),
        ("drain (msg/s)", "drain_rate"), ("RSS peak during drain (MB)", "rss_peak_drain_mb"),
        ("released during fill", "released_during_fill"),
        ("published already due (x-delay<=0)", "early_publishes"),
        ("timing error p50 (ms)", "timing_p50_ms"), ("timing error p99 (ms)", "timing_p99_ms"),
        ("timing error min (ms)", "timing_min_ms"), ("timing error max (ms)", "timing_max_ms"),
        ("release (msg/s)", "release_rate"),
        ("broker CPU per released message (us)", "release_cpu_us"),
        ("RSS peak during release (MB)", "rss_peak_release_mb"),
        ("RSS after release (MB)", "rss_after_release_mb")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", choices=["one", "many", "transient", "delayed"], default="one")
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--window", type=int, default=None,
                    help="unconfirmed publishes at most (default 5000; delayed: 200, as the "
                         "timing error counts from the client's send, so queueing inside the "
                         "window counts too: up to window / publish rate)")
    ap.add_argument("--prefetch", type=int, default=1000)
    ap.add_argument("--lead", type=float, default=None,
                    help="delayed: seconds from the start until the first message is due "
                         "(default: messages / 5000 + 5)")
    ap.add_argument("--release-rate", type=float, default=10000,
                    help="delayed: messages falling due per second after the lead")
    ap.add_argument("--rabbitmq", default="127.0.0.1:5672")
    ap.add_argument("--no-rabbitmq", action="store_true")
    ap.add_argument("--no-amqpd", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.window is None:
        args.window = 200 if args.scenario == "delayed" else 5000
    if args.lead is None:
        args.lead = args.messages / 5000 + 5
    if args.scenario == "many" and args.messages % 100:
        ap.error("--messages must be a multiple of 100 for 'many'")
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    print(f"# python3 bench/backlog.py {' '.join(sys.argv[1:])}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, rev {rev}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    results = []
    tag = f"{os.getpid()}-{int(time.time())}"
    if not args.no_amqpd:
        print("amqpd ...", flush=True)
        results.append(run_amqpd(args, Scenario(args, tag)))
    if not args.no_rabbitmq:
        host, port = args.rabbitmq.split(":")
        port = int(port)
        if args.scenario == "delayed" and not rabbitmq_has_delayed(args.rabbitmq):
            print("RabbitMQ: n/a (rabbitmq_delayed_message_exchange not enabled; not enabled "
                  "here on a shared broker)")
        else:
            pid = pid_listening(port)
            print(f"RabbitMQ (pid {pid}; not restarted: it is shared) ...", flush=True)
            sc = Scenario(args, tag)
            try:
                results.append(run_broker("RabbitMQ", port, pid, args, sc))
            except BaseException:
                try:
                    sc.delete(port)
                finally:
                    raise
    print(f"\nscenario {args.scenario}: {args.messages:,} x {BODY} B messages")
    print(f"{'':40}" + "".join(f"{r['broker']:>14}" for r in results))
    for label, key in ROWS:
        if any(key in r for r in results):
            print(f"{label:40}" + "".join(f"{fmt(r.get(key)):>14}" for r in results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "rev": rev, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
