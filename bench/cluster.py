#!/usr/bin/env python3
"""Cluster benchmarks (issue 15): a replicated queue's confirmed publishes, and many queues
spread over 2 nodes against 1.

    python3 bench/cluster.py                                  # both parts, 10 s runs, 2 rounds
    python3 bench/cluster.py --part replicated --duration 5 --rounds 1
    python3 bench/cluster.py --part spread --queues 20 --no-rabbitmq
    python3 bench/cluster.py --json /tmp/cluster.json

It starts its own etcd (Debian's ``etcd-server``; installed with apt-get when missing and run
as root, as .ci/run does) and amqpd nodes from this repository (``python -m amqpd -c
node.yaml``, each its own process and data directory under a temporary directory, removed at
the end; tests/cluster/harness.py starts them), and drives them with the C load generator
bench/amqp-perf (built as bench/compare.py builds it). Runs alternate between the setups
(A B C A B C ...) so they share the machine's conditions.

Part "replicated" (1 KiB persistent messages, 1 producer with confirms (100 outstanding),
1 consumer with acks (prefetch 100); shape "max" unthrottled, shape "rate" at --rate msg/s):

  quorum-leader    x-queue-type quorum on a 3-node cluster (3 replicas: a confirm means every
                   in-sync replica fsynced), clients connected to its leader
  quorum-follower  the same queue type, clients connected to a follower (publishes and
                   deliveries forwarded to the leader)
  classic          a classic durable queue (1 node; the same cluster), clients at its node
  rabbitmq-quorum  RabbitMQ (--rabbitmq, default 127.0.0.1:5672) quorum queue on one node;
                   skipped, saying so, when it does not answer or with --no-rabbitmq

Part "spread" (--queues queues, default 20, each with its own producer and consumer, one
amqp-perf process per queue; default message shape: 16 B transient messages on durable
classic queues, confirms (100 outstanding, so producers cannot run ahead of consumers and the
figure is a sustained rate, not a backlog being built), acks with prefetch 100; --spread-args
changes it): queues declared round-robin on the nodes (the declaring node leads a classic
queue), then

  1-node           a 1-node cluster: every queue and client on it
  2-node-leader    a 2-node cluster, each queue's clients connected to its leader
  2-node-random    the same, each queue's clients connected to a node chosen at random (seeded):
                   about half of them forwarded through the other node

The table gives msg/s (confirmed for "replicated", received for "spread"), the confirm latency
(publish -> confirm, producer side) p50/p99 and end-to-end latency, the CPU of every node of
the setup (percent of one core, summed), and ratios. Latency under unthrottled load is
queueing delay; shape "rate" is the broker's latency below saturation.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(REPO_ROOT))

import compare as cmp  # noqa: E402
from compare import HarnessError, fmt_ms, fmt_num, fmt_rate, med, num  # noqa: E402

PART_A_BASE = "-x 1 -y 1 -s 1024 --persistent -c 100 -q 100"
SPREAD_ARGS = "-x 1 -y 1 -s 16 -q 100 -c 100 --durable"


def log(msg: str = "") -> None:
    print(msg, flush=True)


# -- processes ----------------------------------------------------------------------------------
def ensure_etcd() -> str:
    path = shutil.which("etcd")
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise HarnessError("etcd is not installed: apt-get install -y etcd-server")
    log("# installing etcd-server (the etcd binary; its service is not used)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        "etcd-server"], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                            "etcd-server"], env=env, capture_output=True, text=True)
    path = shutil.which("etcd")
    if not path:
        raise HarnessError(f"apt-get install -y etcd-server failed: {r.stderr.strip()[-400:]}")
    return path


def cpu_seconds(pid) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Nodes:
    """amqpd nodes of one cluster (named ``name``) on the shared etcd."""

    def __init__(self, harness, etcd, root: Path, name: str, count: int):
        self.name = name
        self.etcd = etcd
        self.nodes = [harness.Node(str(root / f"{name}-node{i}"), f"node{i}", name, [etcd.url],
                                   3) for i in range(1, count + 1)]

    def start(self):
        for n in self.nodes:
            n.start(wait=False)
        for n in self.nodes:
            n.wait_started(60)
        return self

    def url(self, node) -> str:
        return f"amqp://guest:guest@127.0.0.1:{node.port}/%2F"

    def pids(self) -> list:
        return [n.pid for n in self.nodes]

    def placement(self, queue: str, vhost: str = "/"):
        key = (f"/amqpd/{self.name}/placement/{urllib.parse.quote(vhost, safe='')}/"
               f"{urllib.parse.quote(queue, safe='')}")
        try:
            return self.etcd.keys(key).get(key)
        except (OSError, ValueError):
            return None

    def has_queue(self, node, queue: str) -> bool:
        try:
            node.api(f"/api/queues/%2F/{urllib.parse.quote(queue, safe='')}")
            return True
        except OSError:
            return False

    def stop(self, log_dir: Path):
        for n in self.nodes:
            if n.running():
                try:
                    n.stop(20)
                except Exception:
                    n.kill()
            (log_dir / f"{self.name}-{n.name}.log").write_text(
                "\n".join(getattr(n, "previous_lines", []) + n.lines) + "\n")


def declare(node, queue: str, arguments: dict | None = None) -> None:
    """queue.declare (durable) through the node, so that node leads it."""
    from pamqp import commands as C

    from tests.rawclient import RawClient
    with RawClient(node.port, timeout=30) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.call(1, C.Queue.Declare(queue=queue, durable=True, arguments=arguments or {}),
                C.Queue.DeclareOk)


def delete(node, queue: str) -> None:
    from pamqp import commands as C

    from tests.rawclient import RawClient
    try:
        with RawClient(node.port, timeout=30) as rc:
            rc.handshake()
            rc.open_channel(1)
            rc.call(1, C.Queue.Delete(queue=queue), C.Queue.DeleteOk)
    except Exception as exc:            # the next run uses other names: say so and go on
        log(f"#   (could not delete {queue}: {exc})")


def wait_for(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


# -- amqp-perf ----------------------------------------------------------------------------------
def launch(binary, url: str, args: str, duration: int, label: str, base: Path,
           extra: list | None = None):
    cmd = [str(binary), "-h", url, "-z", str(duration), "-l", label, "--quiet",
           *shlex.split(args), *(extra or [])]
    out = open(f"{base}.out", "w")
    err = open(f"{base}.err", "w")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    return proc, cmd, out, err, base


def collect(run, duration: int) -> dict:
    proc, cmd, out, err, base = run
    status = None
    try:
        proc.wait(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        status = "harness_timeout"
    out.close()
    err.close()
    res = cmp.parse_result(Path(f"{base}.out").read_text()) or {"status": "no_result"}
    if status:
        res["status"] = status
    res["command"] = shlex.join(cmd)
    return res


class CpuMeter:
    def __init__(self, pids):
        self.pids = [p for p in pids if p]
        self.t0 = time.monotonic()
        self.c0 = sum(cpu_seconds(p) for p in self.pids)

    def percent(self) -> float | None:
        if not self.pids:
            return None
        used = sum(cpu_seconds(p) for p in self.pids) - self.c0
        v = 100.0 * used / max(1e-9, time.monotonic() - self.t0)
        return v if v == v else None


# -- part A: replicated vs classic vs RabbitMQ ----------------------------------------------------
def part_replicated(opts, binary, harness, etcd, root, log_dir, rabbit) -> list[dict]:
    log("## part replicated: 3-node cluster (lease_ttl 3)")
    cl = Nodes(harness, etcd, root, "repl", 3).start()
    n1, n2 = cl.nodes[0], cl.nodes[1]
    log(f"#   nodes: {', '.join(f'{n.name} amqp {n.port} pid {n.pid}' for n in cl.nodes)}")
    setups = ["quorum-leader", "quorum-follower", "classic"] + (["rabbitmq-quorum"] if rabbit
                                                               else [])
    shapes = {"max": PART_A_BASE, "rate": f"{PART_A_BASE} -r {opts.rate}"}
    runs = []
    try:
        for shape, args in shapes.items():
            for rnd in range(1, opts.rounds + 1):
                for setup in setups:
                    q = f"bench-{setup}-{shape}-{rnd}-{os.getpid()}"
                    quorum = setup != "classic"
                    qargs = ["--queue-type", "quorum"] if quorum else []
                    placement = None
                    if setup == "rabbitmq-quorum":
                        url, pids = rabbit.uri("guest", "guest", "/"), [rabbit.pid]
                        extra = ["-u", q]
                    else:
                        declare(n1, q, {"x-queue-type": "quorum"} if quorum else None)
                        at = n2 if setup == "quorum-follower" else n1
                        wait_for(lambda: cl.placement(q) is not None, 5)
                        if at is not n1 and not wait_for(lambda: cl.has_queue(at, q), 10):
                            log(f"#   {q} never reached {at.name}")
                        placement = cl.placement(q)
                        url, pids = cl.url(at), cl.pids()
                        extra = ["-u", q, "--no-delete"]
                    time.sleep(opts.pause)
                    meter = CpuMeter(pids)
                    res = collect(launch(binary, url, args, opts.duration, f"{setup}-{shape}",
                                         log_dir / f"repl.{setup}.{shape}.r{rnd}",
                                         qargs + extra), opts.duration)
                    res["cpu_pct"] = meter.percent()
                    if setup != "rabbitmq-quorum":
                        delete(n1, q)
                    members = (placement or {}).get("members")
                    runs.append({"part": "replicated", "shape": shape, "setup": setup,
                                 "round": rnd, "result": res, "placement": placement})
                    log(f"#   [{shape} r{rnd}] {setup}: confirm_rate={res.get('confirm_rate')} "
                        f"cp50_us={res.get('cp50_us')} cp99_us={res.get('cp99_us')} "
                        f"recv_rate={res.get('recv_rate')} cpu={fmt_num(res['cpu_pct'], 0)}% "
                        f"replicas={len(members) if members else 'n/a'} "
                        f"status={res.get('status')}")
    finally:
        cl.stop(log_dir)
    return runs


def table_replicated(runs, rounds) -> str:
    rows = []
    for shape in ("max", "rate"):
        by = {}
        for setup in ("quorum-leader", "quorum-follower", "classic", "rabbitmq-quorum"):
            rs = [r for r in runs if r["shape"] == shape and r["setup"] == setup]
            if not rs:
                continue
            rates = [num(r["result"].get("confirm_rate")) for r in rs]
            members = {len((r["placement"] or {}).get("members") or ()) or None for r in rs}
            by[setup] = row = {
                "shape": shape, "setup": setup, "rates": rates, "median": med(rates),
                "cp50": med([num(r["result"].get("cp50_us")) for r in rs]),
                "cp99": med([num(r["result"].get("cp99_us")) for r in rs]),
                "recv": med([num(r["result"].get("recv_rate")) for r in rs]),
                "p50": med([num(r["result"].get("p50_us")) for r in rs]),
                "p99": med([num(r["result"].get("p99_us")) for r in rs]),
                "cpu": med([r["result"].get("cpu_pct") for r in rs]),
                "replicas": ("1" if setup == "rabbitmq-quorum" else ",".join(
                    str(m) if m else "n/a" for m in sorted(members, key=lambda m: m or 0))),
                "status": ",".join(sorted({r["result"].get("status", "?") for r in rs}))}
            rows.append(row)
        for row in by.values():
            for ref, key in (("classic", "vs_classic"), ("rabbitmq-quorum", "vs_rmq")):
                other = by.get(ref)
                row[key] = (row["median"] / other["median"] if other and row["median"]
                            and other["median"] else None)
    headers = (["shape", "setup", "replicas"] + [f"r{i + 1}" for i in range(rounds)]
               + ["confirm/s", "c_p50_ms", "c_p99_ms", "recv/s", "e2e_p50", "e2e_p99",
                  "cpu%", "/classic", "/rmq", "status"])
    cells = [[r["shape"], r["setup"], r["replicas"],
              *([fmt_rate(v) for v in r["rates"]] + [""] * (rounds - len(r["rates"]))),
              fmt_rate(r["median"]), fmt_ms(r["cp50"]), fmt_ms(r["cp99"]), fmt_rate(r["recv"]),
              fmt_ms(r["p50"]), fmt_ms(r["p99"]), fmt_num(r["cpu"], 0),
              "" if r["vs_classic"] is None else f"{r['vs_classic']:.2f}x",
              "" if r["vs_rmq"] is None else f"{r['vs_rmq']:.2f}x", r["status"]]
             for r in rows]
    return render(headers, cells, right_from=2), rows


# -- part B: many queues on 2 nodes vs 1 ----------------------------------------------------------
def part_spread(opts, binary, harness, etcd, root, log_dir) -> list[dict]:
    log(f"## part spread: {opts.queues} queues, a producer and a consumer each "
        f"(amqp-perf {opts.spread_args})")
    one = Nodes(harness, etcd, root, "one", 1).start()
    two = Nodes(harness, etcd, root, "two", 2).start()
    rng = random.Random(opts.seed)
    configs = [("1-node", one, "leader"), ("2-node-leader", two, "leader"),
               ("2-node-random", two, "random")]
    qargs = {"x-queue-type": opts.spread_type} if opts.spread_type != "classic" else None
    runs = []
    try:
        for rnd in range(1, opts.rounds + 1):
            for config, cl, mode in configs:
                names = [f"spread-{config}-{rnd}-{k}-{os.getpid()}" for k in range(opts.queues)]
                leaders = [cl.nodes[k % len(cl.nodes)] for k in range(opts.queues)]
                for q, leader in zip(names, leaders):
                    declare(leader, q, qargs)
                placed = wait_for(lambda: all(cl.placement(q) for q in names), 5)
                at = [leader if mode == "leader" else rng.choice(cl.nodes)
                      for leader in leaders]
                for q, node in zip(names, at):
                    if not wait_for(lambda: cl.has_queue(node, q), 10):
                        log(f"#   {q} never reached {node.name}")
                forwarded = sum(a is not lead for a, lead in zip(at, leaders))
                time.sleep(opts.pause)
                extra = ["--queue-type", opts.spread_type] if qargs else []
                meter = CpuMeter(cl.pids())
                procs = [launch(binary, cl.url(node), opts.spread_args, opts.duration,
                                f"{config}-{k}", log_dir / f"spread.{config}.r{rnd}.q{k}",
                                extra + ["-u", q, "--no-delete"])
                         for k, (q, node) in enumerate(zip(names, at))]
                results = [collect(p, opts.duration) for p in procs]
                cpu = meter.percent()
                for q, leader in zip(names, leaders):
                    delete(leader, q)
                gen = sum(num(r.get("harness_cpu_pct")) or 0 for r in results)
                sent = sum(num(r.get("sent_rate")) or 0 for r in results)
                recv = sum(num(r.get("recv_rate")) or 0 for r in results)
                statuses = sorted({r.get("status", "?") for r in results})
                runs.append({"part": "spread", "config": config, "round": rnd, "sent": sent,
                             "recv": recv, "cpu_pct": cpu, "gen_cpu_pct": gen, "forwarded": forwarded,
                             "placed": placed, "status": ",".join(statuses),
                             "results": results})
                log(f"#   [r{rnd}] {config}: recv {recv:,.0f}/s sent {sent:,.0f}/s "
                    f"cpu {fmt_num(cpu, 0)}% (amqp-perf {gen:.0f}%) forwarded {forwarded}/{opts.queues} "
                    f"placement records: {'yes' if placed else 'NO'} status={','.join(statuses)}")
    finally:
        one.stop(log_dir)
        two.stop(log_dir)
    return runs


def table_spread(runs, rounds) -> str:
    rows = []
    for config in ("1-node", "2-node-leader", "2-node-random"):
        rs = [r for r in runs if r["config"] == config]
        if not rs:
            continue
        rates = [r["recv"] for r in rs]
        rows.append({"config": config, "rates": rates, "median": med(rates),
                     "sent": med([r["sent"] for r in rs]), "cpu": med([r["cpu_pct"] for r in rs]),
                     "gen": med([r["gen_cpu_pct"] for r in rs]),
                     "forwarded": rs[0]["forwarded"], "status": ",".join(sorted(
                         {s for r in rs for s in r["status"].split(",")}))})
    base = next((r["median"] for r in rows if r["config"] == "1-node"), None)
    headers = (["setup"] + [f"r{i + 1}" for i in range(rounds)]
               + ["recv/s", "sent/s", "cpu%", "gen_cpu%", "forwarded", "/1-node", "status"])
    cells = [[r["config"], *([fmt_rate(v) for v in r["rates"]] + [""] * (rounds - len(r["rates"]))),
              fmt_rate(r["median"]), fmt_rate(r["sent"]), fmt_num(r["cpu"], 0),
              fmt_num(r["gen"], 0), str(r["forwarded"]),
              f"{r['median'] / base:.2f}x" if base and r["median"] else "", r["status"]]
             for r in rows]
    return render(headers, cells, right_from=1), rows


def render(headers, cells, right_from: int) -> str:
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    right = set(range(right_from, len(headers) - 1))

    def line(row):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(c) for c in cells])


# -- main ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--part", choices=("all", "replicated", "spread"), default="all")
    ap.add_argument("--duration", type=int, default=10, help="seconds per amqp-perf run")
    ap.add_argument("--rounds", type=int, default=2, help="runs per setup (alternating)")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds before each run")
    ap.add_argument("--rate", type=int, default=500,
                    help="msg/s of the replicated part's fixed-rate shape")
    ap.add_argument("--queues", type=int, default=20, help="queues of the spread part")
    ap.add_argument("--spread-args", default=SPREAD_ARGS,
                    help="amqp-perf arguments of each spread queue's process")
    ap.add_argument("--spread-type", default="classic", choices=("classic", "quorum"),
                    help="x-queue-type of the spread queues")
    ap.add_argument("--seed", type=int, default=15, help="the random client placement's seed")
    ap.add_argument("--rabbitmq", metavar="HOST:PORT", default="127.0.0.1:5672")
    ap.add_argument("--no-rabbitmq", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--log-dir")
    ap.add_argument("--keep", action="store_true", help="keep the nodes' data directories")
    ap.add_argument("--amqp-perf", metavar="PATH")
    opts = ap.parse_args(argv)
    if opts.duration < 1 or opts.rounds < 1 or opts.queues < 1:
        ap.error("--duration, --rounds and --queues must be >= 1")

    shown = sys.argv if argv is None else [sys.argv[0], *argv]
    rel = os.path.relpath(os.path.abspath(shown[0]), os.getcwd())
    log(f"# command: (cd {shlex.quote(os.getcwd())} && "
        f"{shlex.join(['python3', rel, *shown[1:]])})")
    started = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    rev = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip() or "unknown"
    log(f"# date: {started.isoformat()}  host: {platform.node()}, {os.cpu_count()} cpus, load "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}  python {platform.python_version()}"
        f"  amqpd repo: {rev}")
    log_dir = Path(opts.log_dir or f"/tmp/amqpd-cluster-bench-{started:%Y%m%d-%H%M%S}-"
                                   f"{os.getpid()}")
    log_dir.mkdir(parents=True, exist_ok=True)
    log(f"# logs: {log_dir}")

    root = Path(tempfile.mkdtemp(prefix="amqpd-cluster-bench-"))
    doc = {"command": shlex.join(shown), "started_at": started.isoformat(), "rev": rev,
           "cpus": os.cpu_count(), "duration_s": opts.duration, "rounds": opts.rounds}
    etcd = None
    out = []
    try:
        binary = Path(opts.amqp_perf) if opts.amqp_perf else cmp.ensure_amqp_perf(
            Path(cmp.DEFAULT_SRC), cmp.BUILD_DIR)
        log(f"# amqp-perf: {binary}")
        ensure_etcd()
        from tests.cluster import harness
        etcd = harness.EtcdServer(str(root / "etcd")).start()
        log(f"# etcd: {etcd.url} (pid {etcd.pid})")
        rabbit = None
        if opts.part in ("all", "replicated"):
            if opts.no_rabbitmq:
                log("# rabbitmq: skipped (--no-rabbitmq)")
            else:
                host, port = cmp.parse_hostport(opts.rabbitmq, "--rabbitmq")
                try:
                    props = cmp.amqp_probe(host, port, "guest", "guest", "/")
                except (OSError, HarnessError) as exc:
                    log(f"# rabbitmq: NOT REACHABLE at {host}:{port} ({exc}): not measured "
                        "(rabbitmq-server -detached && rabbitmqctl await_startup)")
                else:
                    pid = cmp.port_owner_pid(port, prefer="beam.smp") if cmp.is_local(host) \
                        else None
                    rabbit = cmp.Broker("rabbitmq", host, port, pid, cmp.product_of(props))
                    log(f"# rabbitmq: {host}:{port} pid={pid} ({rabbit.product})")
            runs = part_replicated(opts, binary, harness, etcd, root, log_dir, rabbit)
            table, rows = table_replicated(runs, opts.rounds)
            doc["replicated"] = {"runs": runs, "summary": rows}
            out += ["", "## replicated queue: confirmed publishes, 1 KiB persistent, confirms "
                        f"(100 outstanding), acks (prefetch 100); rate shape {opts.rate} msg/s",
                    table,
                    "# confirm/s: medians over rounds; c_p50/c_p99: publish -> confirm (ms); "
                    "e2e: publish -> delivery (ms);",
                    "# cpu%: every amqpd node of the cluster (3) or RabbitMQ's beam.smp, "
                    "percent of one core; replicas: members of the placement record"]
        if opts.part in ("all", "spread"):
            runs = part_spread(opts, binary, harness, etcd, root, log_dir)
            table, rows = table_spread(runs, opts.rounds)
            doc["spread"] = {"runs": runs, "summary": rows}
            out += ["", f"## many queues: {opts.queues} queues, a producer and a consumer each "
                        f"({opts.spread_args}), {os.cpu_count()} cpus", table,
                    "# recv/s and sent/s: the sum over the queues' amqp-perf processes (medians "
                    "over rounds); cpu%: all nodes, percent of one core;",
                    "# gen_cpu%: the amqp-perf processes (the load generator shares the machine);",
                    "# forwarded: queues whose clients are on a node that does not lead them"]
    except HarnessError as exc:
        log(f"# ERROR: {exc}")
        return 2
    except KeyboardInterrupt:
        log("# interrupted")
        return 130
    finally:
        if etcd is not None:
            etcd.kill()
        if not opts.keep:
            shutil.rmtree(root, ignore_errors=True)
    for line in out:
        log(line)
    if opts.json:
        Path(opts.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        log(f"# raw results: {opts.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
