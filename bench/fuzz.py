#!/usr/bin/env python3
"""Fuzz a running amqpd with structured, mutated AMQP input (the big run of issue 10, point 7).

    python3 bench/fuzz.py --inputs 1000000
    python3 bench/fuzz.py --inputs 50000 --seed 7 --connections 16 --duration 600

Starts amqpd from this repository (``python -m amqpd``, log level warning, data dir in a fresh
temporary directory on /dev/shm when there is one), runs the fuzzer (tests/fuzzing) against it
and prints: inputs run, connections, each distinct finding with its signature and the path of
its repro file, the canary's max/p99 round-trip latency, and the broker's RSS at start and end.
Exit status 1 if there are findings. See bench/README.md ("Fuzzing").
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.fuzzing.broker import BrokerProcess  # noqa: E402
from tests.fuzzing.engine import Engine, Settings  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", type=int, default=100000, help="inputs to run (default 100000)")
    p.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    p.add_argument("--connections", type=int, default=16,
                   help="post-handshake fuzz connections in parallel (default 16)")
    p.add_argument("--pre-connections", type=int, default=6,
                   help="pre-handshake fuzz connections in parallel (default 6)")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds even if --inputs did not run")
    p.add_argument("--batch", type=int, default=16, help="inputs in flight per connection")
    p.add_argument("--hang-timeout", type=float, default=5.0,
                   help="seconds without an answer that count as a hang (default 5)")
    p.add_argument("--stall-limit", type=float, default=0.25,
                   help="canary round trip / lone input time that counts as a stall (s)")
    p.add_argument("--out", default=None,
                   help="directory for repro files (default /tmp/amqpd-fuzz-TIMESTAMP)")
    p.add_argument("--data-dir", default=None, help="amqpd data dir (default: a temp dir)")
    p.add_argument("--amqpd-arg", action="append", default=[],
                   help="extra argument for amqpd (repeatable)")
    p.add_argument("--no-confirm", action="store_true",
                   help="only count violations: no replay/shrink of new signatures")
    p.add_argument("--known", action="store_true",
                   help="skip signatures that have an xfail regression test "
                        "(tests/test_fuzz_findings.py)")
    p.add_argument("--json", default=None, help="write figures and findings to this file")
    p.add_argument("--differential", type=int, default=0, metavar="N",
                   help="after the run, compare N unmutated inputs against RabbitMQ "
                        "(close codes and class/method ids; see tests/fuzzing/differential.py)")
    p.add_argument("--rabbitmq-port", type=int, default=5672,
                   help="RabbitMQ for --differential (127.0.0.1, guest/guest; default 5672)")
    return p.parse_args(argv)


def revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = args.out or f"/tmp/amqpd-fuzz-{time.strftime('%Y%m%d-%H%M%S')}"
    print("command: python3 bench/fuzz.py " + " ".join(shlex.quote(a) for a in
                                                      (argv or sys.argv[1:])))
    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}, amqpd revision {revision()}, repros in {out_dir}")
    data_dir = args.data_dir
    tmp = None
    if data_dir is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        tmp = tempfile.TemporaryDirectory(prefix="amqpd-fuzz-data-", dir=base)
        data_dir = tmp.name
    known = set()
    if args.known:
        from tests.test_fuzz_findings import open_signatures
        known = open_signatures()
    broker = BrokerProcess(*args.amqpd_arg, data_dir=data_dir).start()

    def progress(e):
        st = e.stats()
        print(f"  {st['elapsed']:7.0f} s  {st['inputs']:>9,} inputs  {st['rate']:6.0f}/s  "
              f"{st['connections']:>8,} connections  findings {st['findings']} "
              f"(+{st['unconfirmed']} unconfirmed)  rss {broker.rss() >> 20} MB", flush=True)

    settings = Settings(seed=args.seed, inputs=args.inputs, duration=args.duration,
                        connections=args.connections, pre_connections=args.pre_connections,
                        batch=args.batch, hang_timeout=args.hang_timeout,
                        stall_limit=args.stall_limit, out_dir=out_dir,
                        confirm=not args.no_confirm, known=known, progress=progress,
                        progress_every=30.0)
    engine = Engine(broker, settings)
    cpu0 = broker.cpu_total()
    differential = None
    try:
        engine.run()
        if args.differential:
            from tests.fuzzing import differential as diff
            differential = diff.run(broker.port, args.rabbitmq_port, args.differential,
                                    args.seed + 1000)
    except KeyboardInterrupt:
        print("interrupted: figures so far")
    finally:
        cpu = broker.cpu_total() - cpu0
        broker.stop()
        broker.cleanup()
        if tmp is not None:
            tmp.cleanup()
    st = engine.stats()
    findings = sorted(list(engine.findings.values()) + list(engine.unconfirmed.values()),
                      key=lambda f: -f.count)
    print()
    print(f"inputs run:        {st['inputs']:,} in {st['elapsed']:.0f} s "
          f"({st['rate']:.0f}/s; stages {st['stages']}; {st['requeued']:,} re-sent after "
          f"their connection closed)")
    print(f"connections:       {st['connections']:,} fuzz connections, "
          f"{st['replays']:,} replays, {st['broker_restarts']} broker restarts")
    print(f"canary:            {st['canary_samples']:,} round trips, max "
          f"{st['canary_max_ms'] or 0:.1f} ms, p99 {st['canary_p99_ms'] or 0:.1f} ms, "
          f"p50 {st['canary_p50_ms'] or 0:.2f} ms")
    print(f"broker RSS:        start {st['rss_start'] >> 20} MB, end {st['rss_end'] >> 20} MB, "
          f"max {st['rss_max'] >> 20} MB; broker CPU {cpu:.0f} s")
    if st["trouble"]:
        print(f"broker trouble:    {st['trouble']}")
    skipped = {k: v for k, v in engine.seen.items() if k in known}
    if skipped:
        print(f"known (xfail):     {sum(skipped.values())} violations of "
              f"{len(skipped)} known signatures")
    print(f"distinct findings: {len(findings)}")
    for f in findings:
        state = "confirmed" if f.confirmed else "NOT reproduced alone"
        print(f"  [{f.count:>6}x] {f.signature}  ({f.kind}, {state})")
        print(f"            repro: {f.repro_path}")
    if differential is not None:
        st_d = differential["stats"]
        divs = sorted(differential["divergences"].values(), key=lambda d: -d.count)
        print(f"differential:      {st_d.get('compared', 0)} unmutated inputs against RabbitMQ "
              f"in {st_d.get('seconds', 0)} s: {st_d.get('same', 0)} ended the same way, "
              f"{st_d.get('rabbitmq dropped', 0)} dropped by RabbitMQ without a close, "
              f"{sum(d.count for d in divs)} differently ({len(divs)} kinds; not findings: "
              f"review them)")
        for d in divs[:20]:
            print(f"  [{d.count:>4}x] {d.signature}")
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "differential.json"), "w") as fh:
            json.dump({"stats": st_d, "divergences": [d.to_json() for d in divs]}, fh,
                      indent=1)
        print(f"            all: {os.path.join(out_dir, 'differential.json')}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"stats": st, "findings": [f.to_json() for f in findings]}, fh, indent=1)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
