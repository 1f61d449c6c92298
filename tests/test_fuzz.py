"""The fuzzer in CI: a fixed seed, tens of thousands of structured, mutated inputs against the
real CLI (``python -m amqpd``) over real sockets, in well under a minute.

It fails on any finding: a 541 or a traceback in the log, a hang, a socket closed without
``connection.close``, a close code RabbitMQ would not use, the broker dying or wedging, the
canary (an unrelated client) stalling, RSS growing. Findings that have a regression test still
marked ``xfail(strict=True, reason="FUZZ: <signature>")`` in tests/test_fuzz_findings.py are
known and tolerated; removing the mark (once fixed) makes this test strict about them again.
A failure prints each new finding with its minimal input; ``python3 bench/fuzz.py`` runs the
same fuzzer for longer and saves repro files.
"""
import json

from .fuzzing.broker import BrokerProcess
from .fuzzing.engine import Engine, Settings
from .test_fuzz_findings import open_signatures

SEED = 1
INPUTS = 30000
TIME_BUDGET = 40.0        # seconds of fuzzing at most, whatever the machine's load
MIN_INPUTS = 5000         # fewer than this in the budget would make the run meaningless


def describe(findings) -> str:
    lines = []
    for f in findings:
        d = f.to_json()
        lines.append(f"{f.signature} ({f.kind}, seen {f.count}x, "
                     f"{'confirmed' if f.confirmed else 'not reproduced alone'})")
        lines.append(f"  minimal input: {d['minimal_frames']}")
        lines.append(f"  stream hex: {d['stream_hex'][:400]}")
        lines.append(f"  observed: {d['observed']}")
        lines.append("  " + d["detail"][-800:].replace("\n", "\n  "))
    return "\n".join(lines)


def test_fuzz(tmp_path):
    broker = BrokerProcess(data_dir=str(tmp_path / "data")).start()
    settings = Settings(seed=SEED, inputs=INPUTS, duration=TIME_BUDGET, known=open_signatures(),
                        heavy=False, connections=12, pre_connections=4,
                        out_dir=str(tmp_path / "findings"), shrink_budget=100)
    engine = Engine(broker, settings)
    try:
        engine.run()
    finally:
        code = broker.stop()
        broker.cleanup()
    stats = engine.stats()
    print(json.dumps(stats, indent=1))
    new = engine.new_findings()
    assert not new, f"{len(new)} new fuzz finding(s):\n{describe(new)}"
    assert stats["inputs"] >= MIN_INPUTS, stats
    assert stats["broker_restarts"] == 0, stats
    assert not stats["trouble"], stats["trouble"]
    assert code == 0, f"amqpd exited with {code} on SIGTERM"
