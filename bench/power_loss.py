"""Power-loss figures: many simulated power cuts per storage.fsync mode (no pass/fail beyond
the exit code: figures to read).

    python3 bench/power_loss.py [--cuts 400] [--rounds 120] [--modes always,batch,never]
                                [--seeds 1] [--restarts 2]

For each mode and seed, a real amqpd (in-process, real sockets) runs a recorded workload from
a real client (confirmed persistent publishes, acks, requeues, rejects, TTL expiries, a queue
deleted and declared again, segment rolls, clean restarts), then each cut point rebuilds the
data directory as a power cut there may have left it, a fresh amqpd recovers it and a client
reads every queue back (tests/powerloss.py has the rules). Prints, per mode: cut points tried,
confirmed messages lost (summed over cuts), cuts that lost any, recovery failures and other
violations (a message invented, duplicated or out of order, an ack covered by a later confirm
undone, a deleted queue's messages back). Exit code 1 if always or batch lost anything or any
mode failed a recovery or broke another rule.
"""
import argparse
import logging
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests import powerloss  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuts", type=int, default=400, help="cut points per mode and seed")
    ap.add_argument("--rounds", type=int, default=120, help="workload steps per recording")
    ap.add_argument("--modes", default="always,batch,never")
    ap.add_argument("--seeds", type=int, default=1, help="recordings per mode (seeds 1..N)")
    ap.add_argument("--restarts", type=int, default=2, help="clean restarts per recording")
    ap.add_argument("--verbose", action="store_true", help="print every violation")
    args = ap.parse_args()
    # Recovery of torn images logs a warning per dropped tail: expected, not interesting here.
    logging.basicConfig(level=logging.ERROR, format="%(name)s %(levelname)s %(message)s")
    print(f"$ python3 bench/power_loss.py --cuts {args.cuts} --rounds {args.rounds} "
          f"--modes {args.modes} --seeds {args.seeds} --restarts {args.restarts}")
    print(time.strftime("%Y-%m-%d %H:%M:%S"), f"segment size {powerloss.SEGMENT_SIZE} B")
    bad = False
    rows = []
    for mode in args.modes.split(","):
        total = powerloss.Result(mode)
        for seed in range(1, args.seeds + 1):
            r = powerloss.run(mode, cuts=args.cuts, rounds=args.rounds,
                              restarts=args.restarts, seed=seed)
            print("  seed", seed, r.summary(), flush=True)
            for cut, style, problems in (r.failures if args.verbose else r.failures[:3]):
                print(f"    cut {cut} ({style}): {'; '.join(problems)}")
            for cut, style, error in r.recovery_errors[:3]:
                print(f"    cut {cut} ({style}): recovery failed: {error}")
            for name in ("cuts", "lost", "cuts_with_loss", "confirmed", "events",
                         "publishes", "seconds", "problems"):
                setattr(total, name, getattr(total, name) + getattr(r, name))
            total.failures += r.failures
            total.recovery_errors += r.recovery_errors
        rows.append(total)
        if total.recovery_errors or total.failures or (mode != "never" and total.lost):
            bad = True
    print()
    print(f"{'fsync':8} {'cuts':>6} {'publishes':>10} {'confirmed at cuts':>18} "
          f"{'lost':>7} {'cuts losing':>12} {'recovery failed':>16} {'violations':>11}")
    for t in rows:
        print(f"{t.mode:8} {t.cuts:>6} {t.publishes:>10} {t.confirmed:>18} {t.lost:>7} "
              f"{t.cuts_with_loss:>12} {len(t.recovery_errors):>16} {len(t.failures):>11}")
    print("\n'confirmed at cuts': confirmed, unacked messages the client knew of, summed over "
          "cut points;\n'lost': those missing after recovery; 'violations': cuts breaking "
          "another rule.")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
