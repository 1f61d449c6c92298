#!/usr/bin/env python3
"""Compare amqpd with RabbitMQ under the amqp-perf scenario matrix.

    python3 bench/compare.py                                  # s1,s2,s4,s7; 10 s; 2 rounds
    python3 bench/compare.py --scenarios all --duration 5 --rounds 3 --json /tmp/r.json
    python3 bench/compare.py --amqpd 127.0.0.1:5690            # use an amqpd that is already running

What it does, in order:
  1. builds the C load generator bench/amqp-perf/amqp-perf.c into bench/.build/ (again when
     the .c is newer);
  2. starts amqpd (`python -m amqpd`, from this repo) on a free port, unless --amqpd is given;
  3. checks RabbitMQ at --rabbitmq with an AMQP handshake (guest/guest, vhost "/");
     when it does not answer, only amqpd is measured, and the output says so;
  4. runs each scenario of MATRIX (below), alternating brokers A B A B, with
     --broker-pid so the broker's CPU use is reported;
  5. prints a table (per-round rates, median, latency, broker CPU, amqpd/RabbitMQ ratio);
  6. stops the amqpd it started.

Standard library only. See bench/README.md for how to read the figures.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BUILD_DIR = BENCH_DIR / ".build"
DEFAULT_SRC = os.environ.get("AMQP_PERF_SRC", str(BENCH_DIR / "amqp-perf" / "amqp-perf.c"))
DEFAULT_SCENARIOS = "s1,s2,s4,s7"

# The scenario matrix: name and amqp-perf arguments (bench/README.md says what each measures).
# Results are compared by these names, so a changed scenario gets a new name.
MATRIX: list[tuple[str, str]] = [
    ("s1-1p1c-16B-autoack", "-x 1 -y 1 -s 16 -a -t direct"),
    ("s2-1p1c-16B-ack-q100", "-x 1 -y 1 -s 16 -q 100 -t direct"),
    ("s3-1p1c-1K-persistent-confirm100-ack-q100", "-x 1 -y 1 -s 1024 --persistent -c 100 -q 100 -t direct"),
    ("s4-4p4c-1K-ack-q50", "-x 4 -y 4 -s 1024 -q 50 -t direct"),
    ("s5-fanout-1p-10q-10c-16B-autoack", "-x 1 -y 10 --queues 10 -s 16 -a -t fanout"),
    ("s6-publish-only-1K-then-drain", "-x 1 --publish-only -s 1024 -t direct"),
    ("s7-rate1000-1p1c-16B-ack-q100", "-x 1 -y 1 -s 16 -q 100 -r 1000 -t direct"),
]
SHORT = {name.split("-", 1)[0]: (name, args) for name, args in MATRIX}
# the figure a scenario is judged by: received msg/s, except publish-only (s6)
METRIC = {short: ("sent_rate" if short == "s6" else "recv_rate") for short in SHORT}


def log(msg: str) -> None:
    print(msg, flush=True)


def warn(msg: str) -> None:
    print(f"# WARNING: {msg}", flush=True)


class HarnessError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# building amqp-perf
# --------------------------------------------------------------------------------------------
def ensure_amqp_perf(src: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / "amqp-perf"
    if not src.is_file():
        if binary.exists():
            warn(f"{src} not found; using the cached {binary}")
            return binary
        raise HarnessError(f"amqp-perf source not found at {src} (use --amqp-perf-src or --amqp-perf)")
    if binary.exists() and os.access(binary, os.X_OK) and binary.stat().st_mtime >= src.stat().st_mtime:
        return binary
    if not Path("/usr/include/amqp.h").exists():
        if os.geteuid() != 0:
            raise HarnessError("/usr/include/amqp.h missing: install librabbitmq-dev "
                               "(apt-get install -y librabbitmq-dev) or run as root")
        log("# installing librabbitmq-dev (header /usr/include/amqp.h missing)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = subprocess.run(["apt-get", "install", "-y", "librabbitmq-dev"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            # the package lists may be absent on a fresh machine
            subprocess.run(["apt-get", "update"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            r = subprocess.run(["apt-get", "install", "-y", "librabbitmq-dev"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0 or not Path("/usr/include/amqp.h").exists():
            raise HarnessError(f"apt-get install -y librabbitmq-dev failed: {r.stderr.strip()[-500:]}")
    cc = os.environ.get("CC", "gcc")
    if not shutil.which(cc):
        raise HarnessError(f"C compiler {cc!r} not found (apt-get install -y gcc)")
    tmp = out_dir / f"amqp-perf.tmp{os.getpid()}"
    cmd = [cc, "-O2", "-pthread", "-o", str(tmp), str(src), "-lrabbitmq"]
    log(f"# building: {shlex.join(cmd)}")
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise HarnessError(f"building amqp-perf failed:\n{r.stdout}")
    os.replace(tmp, binary)
    return binary


# --------------------------------------------------------------------------------------------
# a minimal AMQP 0-9-1 client: handshake check (login, open vhost, close) and server properties
# --------------------------------------------------------------------------------------------
def _shortstr(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!B", len(b)) + b


def _longstr(b: bytes) -> bytes:
    return struct.pack("!I", len(b)) + b


def _method_frame(class_id: int, method_id: int, args: bytes) -> bytes:
    payload = struct.pack("!HH", class_id, method_id) + args
    return struct.pack("!BHI", 1, 0, len(payload)) + payload + b"\xce"


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise HarnessError("connection closed by the server")
        buf += chunk
    return buf


def _read_method(sock: socket.socket) -> tuple[int, int, bytes]:
    while True:
        hdr = _recv_exact(sock, 7)
        if hdr[:4] == b"AMQP":  # protocol header back: version refused
            raise HarnessError(f"server refused AMQP 0-9-1 (answered {hdr!r}...)")
        ftype, _ch, size = struct.unpack("!BHI", hdr)
        payload = _recv_exact(sock, size)
        end = _recv_exact(sock, 1)
        if end != b"\xce":
            raise HarnessError("bad frame end")
        if ftype == 8:  # heartbeat
            continue
        if ftype != 1:
            raise HarnessError(f"unexpected frame type {ftype}")
        cid, mid = struct.unpack("!HH", payload[:4])
        return cid, mid, payload[4:]


def _parse_value(b: bytes, i: int):
    t = chr(b[i])
    i += 1
    fixed = {"t": "!B", "b": "!b", "B": "!B", "s": "!h", "u": "!H", "I": "!i", "i": "!I",
             "l": "!q", "L": "!Q", "f": "!f", "d": "!d", "T": "!Q"}
    if t in fixed:
        fmt = fixed[t]
        v = struct.unpack_from(fmt, b, i)[0]
        return (bool(v) if t == "t" else v), i + struct.calcsize(fmt)
    if t == "D":
        scale, val = struct.unpack_from("!Bi", b, i)
        return val / (10 ** scale), i + 5
    if t in "Sx":
        (n,) = struct.unpack_from("!I", b, i)
        raw = b[i + 4:i + 4 + n]
        return (raw.decode(errors="replace") if t == "S" else raw), i + 4 + n
    if t == "F":
        return _parse_table(b, i)
    if t == "A":
        (n,) = struct.unpack_from("!I", b, i)
        end, i, out = i + 4 + n, i + 4, []
        while i < end:
            v, i = _parse_value(b, i)
            out.append(v)
        return out, end
    if t == "V":
        return None, i
    raise ValueError(f"unknown field type {t!r}")


def _parse_table(b: bytes, i: int) -> tuple[dict, int]:
    (n,) = struct.unpack_from("!I", b, i)
    end, i, out = i + 4 + n, i + 4, {}
    while i < end:
        klen = b[i]
        key = b[i + 1:i + 1 + klen].decode(errors="replace")
        i += 1 + klen
        out[key], i = _parse_value(b, i)
    return out, end


def amqp_probe(host: str, port: int, user: str, password: str, vhost: str, timeout: float = 5.0) -> dict:
    """Log in and open the vhost; return the server properties. Raises HarnessError/OSError."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        cid, mid, args = _read_method(sock)
        if (cid, mid) != (10, 10):
            raise HarnessError(f"expected connection.start, got {cid}.{mid}")
        props = {}
        try:
            props, _ = _parse_table(args, 2)
        except (ValueError, struct.error, IndexError):
            pass
        client_props = b"\x00\x00\x00\x00"
        sock.sendall(_method_frame(10, 11, client_props + _shortstr("PLAIN")
                                   + _longstr(f"\0{user}\0{password}".encode()) + _shortstr("en_US")))
        try:
            cid, mid, args = _read_method(sock)
        except HarnessError as e:
            raise HarnessError(f"login as {user!r} failed ({e})") from None
        if (cid, mid) == (10, 50):
            raise HarnessError(f"login refused: {_close_text(args)}")
        if (cid, mid) != (10, 30):
            raise HarnessError(f"expected connection.tune, got {cid}.{mid}")
        channel_max, frame_max, _hb = struct.unpack_from("!HIH", args, 0)
        sock.sendall(_method_frame(10, 31, struct.pack("!HIH", channel_max, frame_max, 0)))
        sock.sendall(_method_frame(10, 40, _shortstr(vhost) + _shortstr("") + b"\x00"))
        cid, mid, args = _read_method(sock)
        if (cid, mid) == (10, 50):
            raise HarnessError(f"vhost {vhost!r} refused: {_close_text(args)}")
        if (cid, mid) != (10, 41):
            raise HarnessError(f"expected connection.open-ok, got {cid}.{mid}")
        sock.sendall(_method_frame(10, 50, struct.pack("!H", 200) + _shortstr("bench probe") + struct.pack("!HH", 0, 0)))
        try:
            _read_method(sock)  # close-ok
        except (HarnessError, OSError):
            pass
        return props


def _close_text(args: bytes) -> str:
    try:
        code = struct.unpack_from("!H", args, 0)[0]
        n = args[2]
        return f"{code} {args[3:3 + n].decode(errors='replace')}"
    except (struct.error, IndexError):
        return "connection.close"


def product_of(props: dict) -> str:
    p, v = props.get("product", "?"), props.get("version", "?")
    return f"{p} {v}"


# --------------------------------------------------------------------------------------------
# broker processes
# --------------------------------------------------------------------------------------------
def parse_hostport(s: str, what: str) -> tuple[str, int]:
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SystemExit(f"{what}: expected HOST:PORT, got {s!r}")
    return host.strip("[]"), int(port)


def is_local(host: str) -> bool:
    if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0", socket.gethostname()):
        return True
    try:
        addr = socket.gethostbyname(host)
    except OSError:
        return False
    return addr.startswith("127.")


def port_owner_pid(port: int, prefer: str | None = None) -> int | None:
    """pid of the process listening on the TCP port (via `ss -ltnpH`), preferring name `prefer`."""
    try:
        out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.findall(r'\("([^"]*)",pid=(\d+)', out)
    if not found:
        return None
    if prefer:
        for name, pid in found:
            if name == prefer:
                return int(pid)
    return int(found[0][1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Amqpd:
    """amqpd started by this harness, as `python -m amqpd` from the repo root."""

    def __init__(self, port: int, log_dir: Path, extra: list[str]):
        self.port = port
        self.data_dir = Path(tempfile.mkdtemp(prefix="amqpd-bench-data-"))
        self.log_path = log_dir / "amqpd.log"
        self.cmd = [sys.executable, "-m", "amqpd", "--host", "127.0.0.1", "--port", str(port),
                    "--data-dir", str(self.data_dir), "--log-level", "warning",
                    "--http-port", "0", "--prometheus-port", "0", *extra]
        self.proc: subprocess.Popen | None = None

    def start(self, user: str, password: str, vhost: str, wait: float = 30.0) -> dict:
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"amqpd exited with code {self.proc.returncode} before it listened:\n"
                                   + self.log_tail())
            try:
                return amqp_probe("127.0.0.1", self.port, user, password, vhost, timeout=3)
            except (OSError, HarnessError) as e:
                last = str(e)
            time.sleep(0.2)
        raise HarnessError(f"amqpd did not answer an AMQP handshake on port {self.port} within {wait:.0f} s "
                           f"(last error: {last}):\n" + self.log_tail())

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line for line in lines[-n:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class Broker:
    def __init__(self, name: str, host: str, port: int, pid: int | None, product: str):
        self.name, self.host, self.port, self.pid, self.product = name, host, port, pid, product

    def uri(self, user: str, password: str, vhost: str) -> str:
        from urllib.parse import quote
        return f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}/{quote(vhost, safe='')}"


# --------------------------------------------------------------------------------------------
# running and reporting
# --------------------------------------------------------------------------------------------
def parse_result(stdout: str) -> dict | None:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        return None
    out = {}
    for tok in lines[-1].split()[1:]:
        k, sep, v = tok.partition("=")
        if sep:
            out[k] = v
    return out


def num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None


def run_one(binary: Path, broker: Broker, name: str, args: str, duration: int, opts, log_dir: Path,
            round_no: int) -> dict:
    cmd = [str(binary), "-h", broker.uri(opts.user, opts.password, opts.vhost), "-z", str(duration), "-l", name]
    if broker.pid:
        cmd += ["--broker-pid", str(broker.pid)]
    cmd += shlex.split(args)
    base = log_dir / f"{name}.{broker.name}.r{round_no}"
    load1 = os.getloadavg()[0]
    t0 = time.monotonic()
    status_override = None
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=duration + 20)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as e:
        # SIGINT first: amqp-perf then stops and deletes its queues; SIGKILL if it does not
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if isinstance(e, KeyboardInterrupt):
            raise
        status_override = "harness_timeout"
    rc = proc.returncode
    elapsed = time.monotonic() - t0
    Path(f"{base}.out").write_text(out)
    Path(f"{base}.err").write_text(err)
    res = parse_result(out)
    if res is None:
        res = {"status": status_override or "no_result"}
    elif status_override:
        res["status"] = status_override
    return {"scenario": name.split("-", 1)[0], "name": name, "broker": broker.name, "round": round_no,
            "command": shlex.join(cmd), "rc": rc, "elapsed_s": round(elapsed, 2), "load1_before": load1,
            "result": res, "stderr_tail": err.strip().splitlines()[-5:]}


def fmt_rate(v: float | None) -> str:
    return "NA" if v is None else f"{v:,.0f}"


def fmt_num(v: float | None, nd: int = 0) -> str:
    if v is None:
        return "NA"
    return f"{v:,.{nd}f}"


def fmt_ms(us: float | None) -> str:
    if us is None:
        return "NA"
    ms = us / 1000.0
    return f"{ms:,.2f}" if ms < 10 else f"{ms:,.0f}"


def med(vals: list) -> float | None:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summarize(runs: list[dict], scenarios: list[str], brokers: list[Broker], rounds: int) -> tuple[list[dict], str]:
    rows = []
    for short in scenarios:
        metric = METRIC[short]
        per_broker = {}
        for b in brokers:
            rs = sorted((r for r in runs if r["scenario"] == short and r["broker"] == b.name), key=lambda r: r["round"])
            if not rs:
                continue
            rates = [num(r["result"].get(metric)) for r in rs]
            statuses = sorted({r["result"].get("status", "?") for r in rs})
            row = {"scenario": short, "broker": b.name, "metric": metric, "rates": rates, "median": med(rates),
                   "p50_us": med([num(r["result"].get("p50_us")) for r in rs]),
                   "p99_us": med([num(r["result"].get("p99_us")) for r in rs]),
                   "broker_cpu_pct": med([num(r["result"].get("broker_cpu_pct")) for r in rs]),
                   "harness_cpu_pct": med([num(r["result"].get("harness_cpu_pct")) for r in rs]),
                   "status": ",".join(statuses), "ratio": None}
            per_broker[b.name] = row
            rows.append(row)
        a, r = per_broker.get("amqpd"), per_broker.get("rabbitmq")
        if a and r:
            if a["median"] is not None and r["median"]:
                a["ratio"] = a["median"] / r["median"]
            for k in ("p50_us", "p99_us"):
                if a[k] is not None and r[k]:
                    a[k + "_ratio"] = a[k] / r[k]

    headers = (["scenario", "broker"] + [f"r{i + 1}" for i in range(rounds)]
               + ["median", "p50_ms", "p99_ms", "brk_cpu%", "amqpd/rmq", "status"])
    table = []
    for row in rows:
        rate_cells = [fmt_rate(v) for v in row["rates"]] + [""] * (rounds - len(row["rates"]))
        table.append([f"{row['scenario']} ({'sent' if row['metric'] == 'sent_rate' else 'recv'}/s)", row["broker"],
                      *rate_cells, fmt_rate(row["median"]), fmt_ms(row["p50_us"]), fmt_ms(row["p99_us"]),
                      fmt_num(row["broker_cpu_pct"], 1),
                      "" if row["ratio"] is None else (f"{row['ratio']:.2f}x" if row["ratio"] >= 0.1 else f"{row['ratio']:.3f}x"), row["status"]])
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(headers)]
    right = set(range(2, len(headers) - 1))

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    prev = None
    for row, cells in zip(rows, table):
        if prev is not None and row["scenario"] != prev:
            out.append("")
        prev = row["scenario"]
        out.append(line(cells))
    return rows, "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Benchmark amqpd against RabbitMQ with amqp-perf (A B A B, ratios of medians).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--amqpd", metavar="HOST:PORT",
                    help="use an amqpd that is already running instead of starting one")
    ap.add_argument("--rabbitmq", metavar="HOST:PORT", default="127.0.0.1:5672",
                    help="RabbitMQ to compare with (skipped, with a note, when it does not answer)")
    ap.add_argument("--no-rabbitmq", action="store_true", help="measure amqpd only")
    ap.add_argument("--scenarios", default=DEFAULT_SCENARIOS,
                    help=f"comma-separated subset of {','.join(SHORT)}, or 'all'")
    ap.add_argument("--duration", type=int, default=10, help="seconds per amqp-perf run")
    ap.add_argument("--rounds", type=int, default=2, help="runs per broker per scenario (A B A B ...)")
    ap.add_argument("--pause", type=float, default=2.0, help="seconds between runs")
    ap.add_argument("--json", metavar="FILE", help="save the raw results (every RESULT line, parsed) here")
    ap.add_argument("--log-dir", help="where the per-run stdout/stderr and amqpd.log go "
                                      "(default: a new /tmp/amqpd-bench-TIMESTAMP)")
    ap.add_argument("--amqp-perf", metavar="PATH", help="use this amqp-perf binary instead of building one")
    ap.add_argument("--amqp-perf-src", metavar="FILE", default=DEFAULT_SRC, help="amqp-perf.c to build")
    ap.add_argument("--amqpd-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for the amqpd this harness starts (repeatable)")
    ap.add_argument("--user", default="guest")
    ap.add_argument("--password", default="guest")
    ap.add_argument("--vhost", default="/")
    opts = ap.parse_args(argv)

    if opts.duration < 1 or opts.rounds < 1:
        ap.error("--duration and --rounds must be >= 1")
    if opts.scenarios.strip().lower() == "all":
        scenarios = list(SHORT)
    else:
        scenarios = []
        for s in opts.scenarios.split(","):
            s = s.strip().split("-", 1)[0]
            if not s:
                continue
            if s not in SHORT:
                ap.error(f"unknown scenario {s!r}; known: {', '.join(SHORT)}")
            if s not in scenarios:
                scenarios.append(s)
        if not scenarios:
            ap.error("no scenarios selected")

    # the exact command line, for reproducing the figures
    argv_shown = sys.argv if argv is None else [sys.argv[0], *argv]
    rel = os.path.relpath(os.path.abspath(argv_shown[0]), os.getcwd())
    log(f"# command: (cd {shlex.quote(os.getcwd())} && {shlex.join(['python3', rel, *argv_shown[1:]])})")
    started_at = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    git_rev = "unknown"
    try:
        g = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, timeout=5)
        if g.returncode == 0:
            git_rev = g.stdout.strip()
            d = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=5)
            if d.stdout.strip():
                git_rev += "+dirty"
    except (OSError, subprocess.TimeoutExpired):
        pass
    log(f"# date: {started_at.isoformat()}  host: {platform.node()}, {os.cpu_count()} cpus, "
        f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}  python {platform.python_version()}  "
        f"amqpd repo: {git_rev}")
    log(f"# scenarios: {','.join(scenarios)}  duration: {opts.duration}s  rounds: {opts.rounds}")

    log_dir = Path(opts.log_dir or f"/tmp/amqpd-bench-{started_at.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    log_dir.mkdir(parents=True, exist_ok=True)
    log(f"# logs: {log_dir}")

    amqpd: Amqpd | None = None

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    runs: list[dict] = []
    brokers: list[Broker] = []
    interrupted = False
    try:
        if opts.amqp_perf:
            binary = Path(opts.amqp_perf)
            if not os.access(binary, os.X_OK):
                raise HarnessError(f"--amqp-perf {binary} is not executable")
        else:
            binary = ensure_amqp_perf(Path(opts.amqp_perf_src), BUILD_DIR)
        log(f"# amqp-perf: {binary}")

        # A: amqpd
        if opts.amqpd:
            host, port = parse_hostport(opts.amqpd, "--amqpd")
            try:
                props = amqp_probe(host, port, opts.user, opts.password, opts.vhost)
            except (OSError, HarnessError) as e:
                raise HarnessError(f"amqpd at {host}:{port} does not answer an AMQP handshake: {e}")
            pid = port_owner_pid(port) if is_local(host) else None
            brokers.append(Broker("amqpd", host, port, pid, product_of(props)))
            how = "given with --amqpd"
        else:
            port = free_port()
            amqpd = Amqpd(port, log_dir, opts.amqpd_arg)
            log(f"# starting amqpd: (cd {shlex.quote(str(REPO_ROOT))} && {shlex.join(amqpd.cmd)})")
            props = amqpd.start(opts.user, opts.password, opts.vhost)
            brokers.append(Broker("amqpd", "127.0.0.1", port, amqpd.proc.pid, product_of(props)))
            how = "started by this harness"
        a = brokers[0]
        log(f"# A amqpd:    {a.host}:{a.port} pid={a.pid or 'unknown'} ({how}; server says {a.product})")

        # B: RabbitMQ
        if opts.no_rabbitmq:
            log("# B rabbitmq: skipped (--no-rabbitmq): measuring amqpd only, no ratios")
        else:
            host, port = parse_hostport(opts.rabbitmq, "--rabbitmq")
            try:
                props = amqp_probe(host, port, opts.user, opts.password, opts.vhost)
            except (OSError, HarnessError) as e:
                log(f"# B rabbitmq: NOT REACHABLE at {host}:{port} ({e}): measuring amqpd only, no ratios")
                log("#   (start it with: rabbitmq-server -detached && rabbitmqctl await_startup)")
            else:
                pid = port_owner_pid(port, prefer="beam.smp") if is_local(host) else None
                brokers.append(Broker("rabbitmq", host, port, pid, product_of(props)))
                b = brokers[1]
                log(f"# B rabbitmq: {b.host}:{b.port} pid={b.pid or 'unknown'} (server says {b.product})")
        if len(brokers) == 2 and (brokers[0].host, brokers[0].port) == (brokers[1].host, brokers[1].port):
            warn("amqpd and rabbitmq are the same broker here (a harness smoke test): ratios should be ~1")
        for b in brokers:
            if b.pid is None:
                warn(f"no pid for {b.name} at {b.host}:{b.port}: its broker_cpu_pct will be NA")
        log("")

        total = len(scenarios) * opts.rounds * len(brokers)
        n = 0
        for short in scenarios:
            name, args = SHORT[short]
            for rnd in range(1, opts.rounds + 1):
                for b in brokers:
                    n += 1
                    if amqpd is not None and b.name == "amqpd" and not amqpd.alive():
                        raise HarnessError(f"amqpd died (exit code {amqpd.proc.returncode}):\n" + amqpd.log_tail())
                    if n > 1 and opts.pause > 0:
                        time.sleep(opts.pause)
                    run = run_one(binary, b, name, args, opts.duration, opts, log_dir, rnd)
                    runs.append(run)
                    res = run["result"]
                    metric = METRIC[short]
                    log(f"# [{n}/{total}] {name} {b.name} round {rnd}: {metric}={res.get(metric, 'NA')} "
                        f"p50_us={res.get('p50_us', 'NA')} p99_us={res.get('p99_us', 'NA')} "
                        f"broker_cpu_pct={res.get('broker_cpu_pct', 'NA')} status={res.get('status', '?')}"
                        + ("" if run["rc"] == 0 else f" rc={run['rc']}")
                        + (f"  stderr: {run['stderr_tail'][-1]}" if run["rc"] != 0 and run["stderr_tail"] else ""))
    except KeyboardInterrupt:
        interrupted = True
        log("# interrupted: partial results follow")
    except HarnessError as e:
        log(f"# ERROR: {e}")
        if not runs:
            return 2
    finally:
        if amqpd is not None:
            amqpd.stop()
            log(f"# amqpd stopped (log: {amqpd.log_path})")

    rows, table = summarize(runs, scenarios, brokers, opts.rounds)
    log("")
    names = {b.name: b.product for b in brokers}
    log("# " + "  vs  ".join(f"{k} = {v}" for k, v in names.items()))
    log(table)
    log("")
    log("# rates are msg/s (recv, or sent for s6); p50/p99 latency (ms) and brk_cpu% (of one core) are medians "
        "over rounds;")
    log("# latency is end-to-end: queueing delay under unthrottled load, broker latency only in s7 (fixed rate).")
    log("# amqpd/rmq = ratio of median rates (>1: amqpd faster). Machine noise is about +-30%: "
        "compare only within one run.")
    for row in rows:
        if row["scenario"] == "s7" and row["broker"] == "amqpd" and row.get("p50_us_ratio") is not None:
            log(f"# s7 is the latency scenario: amqpd/rmq latency p50 {row['p50_us_ratio']:.2f}x, "
                f"p99 {row.get('p99_us_ratio', float('nan')):.2f}x (<1: amqpd lower)")
    if len(brokers) < 2:
        log("# RabbitMQ was not measured in this run: no ratios.")

    if opts.json:
        doc = {"command": shlex.join(argv_shown), "cwd": os.getcwd(), "started_at": started_at.isoformat(),
               "host": {"node": platform.node(), "cpus": os.cpu_count()}, "amqpd_repo_rev": git_rev,
               "duration_s": opts.duration, "rounds": opts.rounds, "scenarios": scenarios,
               "matrix": {s: {"name": SHORT[s][0], "args": SHORT[s][1], "metric": METRIC[s]} for s in scenarios},
               "brokers": [vars(b) for b in brokers], "interrupted": interrupted,
               "runs": runs, "summary": rows}
        Path(opts.json).write_text(json.dumps(doc, indent=2) + "\n")
        log(f"# raw results: {opts.json}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
