"""The message hot path in-process, for repeatable instruction counts: publish -> route ->
enqueue -> dispatch -> deliver (-> ack) of N messages through the real sans-IO Connection,
Channel and Broker objects, with no sockets and no event loop.

One publisher connection sends reads of BATCH publishes (16-byte bodies, as amqp-perf's s1/s2);
one consumer connection (no-ack, or prefetch 100 with one basic.ack per message as s2) takes
what is delivered at the end of each read and, with acks, acknowledges it in one read.

``--persistent`` is amqp-perf's s3 instead: 1 KiB persistent messages to a durable queue (a real
store in a temporary directory, ``storage.fsync: batch``), publisher confirms, acks; each round
is one publisher read of PERSISTENT_BATCH publishes, the consumer's acks of the previous round,
and one commit (write, fsync job, confirms), as one event-loop turn of the broker.

Under callgrind the instruction count of a run includes Python's start-up and the imports, so
``--callgrind`` runs the loop twice (N and 2N messages) and prints the difference per message:

    python3 bench/hotloop.py --messages 12800 --acks         # plain run: messages/s (noisy)
    python3 bench/hotloop.py --callgrind --messages 12800    # instructions per message, both modes
    python3 bench/hotloop.py --callgrind --src /tmp/main-src # the same for another checkout
    python3 bench/hotloop.py --callgrind --persistent         # s3's path: instructions/message
    python3 bench/hotloop.py --ab /tmp/main-src --rounds 9  # CPU time per message, this checkout
                                                             # and another alternating (A B A B...)

Run with PYTHONHASHSEED=0 (``--callgrind`` sets it) so two runs execute the same instructions.
"""
import argparse
import os
import pathlib
import re
import struct
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH = 64            # publishes per read (an 8 KiB read holds about 80 such publishes)
PERSISTENT_BATCH = 80  # 1 KiB persistent publishes per read (a confirming publisher's budget)


def _frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + b"\xce"


def _shortstr(s: str) -> bytes:
    return bytes((len(s),)) + s.encode()


def _method(channel: int, method) -> bytes:
    from pamqp import frame as pamqp_frame
    return pamqp_frame.marshal(method, channel)


class _IO:
    """The I/O edge the core talks to; does nothing."""

    def wake(self, conn): pass
    def close(self, conn): pass
    def linger(self, conn, seconds, reading=True): pass
    def start_heartbeat(self, conn, interval): pass
    def published(self, conn, count): pass


def _connection(broker):
    from pamqp import commands as C
    from amqpd.amqp.connection import Connection
    conn = Connection(broker, _IO(), "hotloop")
    props = {"product": "hotloop", "version": "0",
             "capabilities": {"publisher_confirms": True, "basic.nack": True,
                              "consumer_cancel_notify": True}}
    conn.data_received(b"AMQP\x00\x00\x09\x01"
                       + _method(0, C.Connection.StartOk(client_properties=props,
                                                         mechanism="PLAIN",
                                                         response="\x00guest\x00guest",
                                                         locale="en_US"))
                       + _method(0, C.Connection.TuneOk(channel_max=2047, frame_max=131072,
                                                        heartbeat=0))
                       + _method(0, C.Connection.Open(virtual_host="/"))
                       + _method(1, C.Channel.Open()))
    conn.take_output()
    return conn


def setup(acks: bool):
    from pamqp import commands as C
    from amqpd import config as amqpd_config
    from amqpd.access.control import AccessControl
    from amqpd.broker.broker import Broker
    from amqpd.broker.clock import ManualClock
    config = amqpd_config.from_dict({})
    broker = Broker(config, None, AccessControl(config), ManualClock())
    pub = _connection(broker)
    pub.data_received(_method(1, C.Queue.Declare(queue="hot")))
    cons = _connection(broker)
    cons.data_received(_method(1, C.Basic.Qos(prefetch_count=100 if acks else 0))
                       + _method(1, C.Basic.Consume(queue="hot", consumer_tag="c",
                                                    no_ack=not acks)))
    pub.take_output()
    cons.take_output()
    body = b"x" * 16
    one = (_frame(1, 1, struct.pack(">HHH", 60, 40, 0) + _shortstr("") + _shortstr("hot")
                  + b"\x00")
           + _frame(2, 1, struct.pack(">HHQH", 60, 0, len(body), 0))
           + _frame(3, 1, body))
    return broker, pub, cons, one * BATCH


_ack_head = struct.Struct(">BHIHHQB").pack


def setup_persistent(data_dir: str):
    """s3: a durable queue in a real store, a confirming publisher, a consumer with acks."""
    from pamqp import commands as C
    from amqpd import config as amqpd_config
    from amqpd.access.control import AccessControl
    from amqpd.broker.broker import Broker
    from amqpd.broker.clock import ManualClock
    from amqpd.store.store import Store
    config = amqpd_config.from_dict({"storage": {"data_dir": data_dir, "fsync": "batch"}})
    store = Store(data_dir, "batch")
    broker = Broker(config, store, AccessControl(config), ManualClock())
    pub = _connection(broker)
    pub.data_received(_method(1, C.Queue.Declare(queue="hot", durable=True))
                      + _method(1, C.Confirm.Select()))
    cons = _connection(broker)
    cons.data_received(_method(1, C.Basic.Qos(prefetch_count=100))
                       + _method(1, C.Basic.Consume(queue="hot", consumer_tag="c")))
    _commit(store)
    pub.take_output()
    cons.take_output()
    body = b"x" * 1024
    one = (_frame(1, 1, struct.pack(">HHH", 60, 40, 0) + _shortstr("") + _shortstr("hot")
                  + b"\x00")
           + _frame(2, 1, struct.pack(">HHQHB", 60, 0, len(body), 0x1000, 2))
           + _frame(3, 1, body))
    return broker, store, pub, cons, one * PERSISTENT_BATCH


def _commit(store) -> None:
    """What the edge does at the end of a turn: write, run the fsync job, report it."""
    commit = store.commit
    if commit.write_pending():
        job = commit.begin_sync()
        if job is not None:
            commit.sync(job)
            commit.finish(job)


def run_persistent(messages: int) -> int:
    with tempfile.TemporaryDirectory(prefix="amqpd-hotloop-") as data_dir:
        broker, store, pub, cons, blob = setup_persistent(data_dir)
        pub_read, cons_read = pub.data_received, cons.data_received
        acks = b""
        tag = confirmed = sent = 0
        while sent < messages:
            pub_read(blob)
            sent += PERSISTENT_BATCH
            if acks:
                cons_read(acks)
            _commit(store)
            out = cons.take_output()
            got = out.count(b"\x00\x3c\x00\x3c")     # basic.deliver method frames
            acks = b"".join([_ack_head(1, 1, 13, 60, 80, t, 0) + b"\xce"
                             for t in range(tag + 1, tag + got + 1)])
            tag += got
            confirmed += len(pub.take_output()) > 0
        cons_read(acks)
        _commit(store)
        q = broker.vhosts["/"].queues["hot"]
        assert q.message_count == 0 and q.unacked == 0, (q.message_count, q.unacked)
        assert tag == sent and confirmed, (tag, sent, confirmed)
        store.close()
    return sent


def run(messages: int, acks: bool) -> int:
    broker, pub, cons, blob = setup(acks)
    pub_read, cons_read, take = pub.data_received, cons.data_received, cons.take_output
    tag = 0
    sent = 0
    while sent < messages:
        pub_read(blob)
        sent += BATCH
        out = take()
        if acks:
            cons_read(b"".join([_ack_head(1, 1, 13, 60, 80, t, 0) + b"\xce"
                                for t in range(tag + 1, tag + BATCH + 1)]))
            tag += BATCH
            take()
    q = broker.vhosts["/"].queues["hot"]
    assert q.message_count == 0 and q.unacked == 0, (q.message_count, q.unacked)
    assert out, "nothing was delivered"
    return sent


def callgrind_count(src: str, messages: int, acks: bool, persistent: bool = False) -> int:
    """Instructions (Ir) of one run of this script under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        outfile = os.path.join(tmp, "cg.out")
        env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=src)
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={outfile}",
               sys.executable, __file__, "--messages", str(messages), "--src", src]
        if acks:
            cmd.append("--acks")
        if persistent:
            cmd.append("--persistent")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr[-2000:])
        m = re.search(r"Collected : (\d+)", proc.stderr)
        if m is None:
            with open(outfile) as f:
                m = re.search(r"^summary: (\d+)", f.read(), re.M)
        return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=12800, help="a multiple of 64")
    ap.add_argument("--acks", action="store_true", help="manual acks, prefetch 100 (as s2)")
    ap.add_argument("--persistent", action="store_true",
                    help="s3: 1 KiB persistent, durable queue, confirms, acks")
    ap.add_argument("--src", default=str(ROOT), help="checkout whose amqpd is measured")
    ap.add_argument("--callgrind", action="store_true",
                    help="instructions per message (runs N and 2N under callgrind, both modes)")
    ap.add_argument("--ab", metavar="SRC_B",
                    help="alternate --src (A) and SRC_B in fresh processes; CPU us/message")
    ap.add_argument("--rounds", type=int, default=9, help="--ab: rounds (A B per round)")
    args = ap.parse_args()
    if args.ab:
        ab(args)
        return
    if args.callgrind and args.persistent:
        n = args.messages
        small = callgrind_count(args.src, n, True, True)
        large = callgrind_count(args.src, 2 * n, True, True)
        print(f"persistent {(large - small) / n:10.1f} instructions/message  (Ir {small:,} for "
              f"{n}, {large:,} for {2 * n}; src {args.src})", flush=True)
        return
    if args.callgrind:
        n = args.messages
        for acks in (False, True):
            small = callgrind_count(args.src, n, acks)
            large = callgrind_count(args.src, 2 * n, acks)
            print(f"{'acks   ' if acks else 'no-ack '} {(large - small) / n:10.1f} "
                  f"instructions/message  (Ir {small:,} for {n}, {large:,} for {2 * n}; "
                  f"src {args.src})", flush=True)
        return
    sys.path.insert(0, args.src)
    started = time.process_time()
    sent = run_persistent(args.messages) if args.persistent else run(args.messages, args.acks)
    cpu = time.process_time() - started
    print(f"cpu_us_per_message={1e6 * cpu / sent:.3f} messages={sent}")


def ab(args) -> None:
    """CPU time per message of two checkouts, alternating in fresh processes (CPU time, not
    wall time: on a shared machine it moves less with the load), medians per mode."""
    import statistics
    srcs = (("A", args.src), ("B", args.ab))
    for acks in (False, True):
        got = {"A": [], "B": []}
        for _ in range(args.rounds):
            for name, src in srcs:
                cmd = [sys.executable, __file__, "--messages", str(args.messages), "--src", src]
                if acks:
                    cmd.append("--acks")
                out = subprocess.run(cmd, env=dict(os.environ, PYTHONHASHSEED="0",
                                                   PYTHONPATH=src),
                                     capture_output=True, text=True, check=True).stdout
                got[name].append(float(re.search(r"cpu_us_per_message=([\d.]+)", out).group(1)))
        a, b = statistics.median(got["A"]), statistics.median(got["B"])
        print(f"{'acks  ' if acks else 'no-ack'} A {a:.3f} us/msg  B {b:.3f} us/msg  "
              f"B/A {b / a:.4f}   (A={args.src}: {' '.join(f'{v:.2f}' for v in got['A'])}; "
              f"B={args.ab}: {' '.join(f'{v:.2f}' for v in got['B'])})", flush=True)


if __name__ == "__main__":
    main()
