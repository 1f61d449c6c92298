"""Issue 15's fault test: a replicated (quorum) queue on 3 amqpd nodes and a single-member etcd
(tests/cluster/harness.py), producers with confirms and consumers with manual acks connected
through different nodes, while the queue's current leader is killed (``kill -9``, then
restarted), paused (``SIGSTOP``, ``SIGCONT`` a few seconds later, past the lease) or stopped
gracefully (SIGTERM, then restarted), at random with a fixed seed, at least 10 times.

Clients (interop/cluster_faults.py), a producer and a consumer with its home on each node:
producers republish, with the same id, what was nacked, returned or unconfirmed when their
connection dropped (at-least-once); consumers subscribe again after a ``basic.cancel`` and
reconnect through another node when their connection drops. Each fault waits for the new
leader in the queue's placement record (etcd), heals the node, waits for the in-sync set to
be whole again, and moves every client back to its home node before the next one (so the
clients on the surviving nodes show when the new leader confirms and delivers).

After the last fault the producers stop, one more consumer per node joins, and the queue is
drained. The verdict: every confirmed message was consumed at least once (a loss fails the
test), nothing was delivered that was never published (or with a body not its own), and a
repeat delivery of an id that was published once carries ``redelivered=true``; duplicates are
counted (republished / redelivered). Failover times (fault -> first confirm or delivery
observed after the new leader's record was seen; the record is polled every 25 ms) are printed
with p50/max and written, with everything else, to ``cluster_faults.json`` in the test's
tmp_path (its path is printed), beside every node's log (``node1.log``, ...).

Two operator moves are mixed in (not counted in AMQPD_FAULTS; AMQPD_MOVES changes it): the
leader is removed from the queue's members through the management API (an in-sync member
leads, a new epoch) and added back (a learner that copies the queue again from nothing and
rejoins the in-sync set), under the same traffic and verdict.

AMQPD_FAULTS (default 10) and AMQPD_FAULT_SEED (default 15) change the run. The test needs
replicated queues and forwarding (amqpd/cluster/replication.py and remote_queue.py) and is
skipped, saying so, without them; AMQPD_CLUSTER_FAULTS_FORCE=1 runs it anyway.
AMQPD_CLUSTER_FAULTS_SELFCHECK=1 runs the same machinery on a classic durable queue (led by
node1, forwarded from the others; without forwarding, each node's own copy), faults on a random
node (a killed leader's messages wait for its restart), the drain through every node: a check
of the clients, the fault injection and the verdict, and of forwarding under faults, not of
failover (its "failover" times are not failovers).
"""
import base64
import importlib.util
import json
import logging
import os
import random
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pika
import pytest

from tests.cluster.harness import ETCD, Cluster, wait_until

from .cluster_faults import (QUEUE, Consumer, Ledger, Nodes, PlacementMonitor, Producer, check,
                             failover_times, percentile)

LEASE_TTL = 2
PRODUCERS = (0, 1, 2)       # each one's home node (an index into node1..node3)
CONSUMERS = (0, 1, 2)


# -- the verdict on its own (no broker) ---------------------------------------------------------
def test_the_verdict_finds_lost_unknown_corrupt_and_unflagged_messages():
    attempts = {"p-1": 1, "p-2": 2, "p-3": 1, "p-4": 1, "p-5": 1}
    confirmed = {"p-1", "p-2", "p-3", "p-4"}
    deliveries = [("p-1", False, True), ("p-2", False, True), ("p-2", False, True),  # republished
                  ("p-3", False, True), ("p-3", True, True),                       # redelivered
                  ("p-5", False, True), ("p-5", False, True),                      # unflagged
                  ("x-9", False, True), (None, False, False),                      # unknown
                  ("p-1", True, False)]                                            # corrupt
    v = check(attempts, confirmed, deliveries)
    assert v.lost == ["p-4"]
    assert v.unknown == ["x-9", None]
    assert v.corrupt == ["p-1"]
    assert v.unflagged == ["p-5"]
    assert (v.duplicates, v.repeat_deliveries, v.repeats_redelivered,
            v.repeats_republished) == (4, 4, 2, 1)
    assert (v.published, v.attempts, v.confirmed, v.delivered, v.deliveries) == (5, 6, 4, 4, 10)
    assert not v.ok and "never consumed" in v.problems()


def test_the_verdict_passes_at_least_once_with_flagged_repeats():
    attempts = {"a-1": 1, "a-2": 3, "a-3": 1}
    v = check(attempts, {"a-1", "a-2"},
              [("a-2", False, True), ("a-1", False, True), ("a-1", True, True),
               ("a-2", False, True)])
    assert v.ok, v.problems()
    assert v.lost == [] and v.duplicates == 2 and v.repeats_redelivered == 1
    assert "lost=0" in v.summary()


def test_failover_times_count_from_the_fault_to_the_first_event_under_the_new_leader():
    faults = [(10.0, 12.5), (20.0, 20.4), (30.0, None), (40.0, 41.0)]
    events = [9.0, 10.2, 12.4, 12.6, 13.0, 20.3, 20.9, 35.0]
    assert failover_times(faults, events) == [pytest.approx(2.6), pytest.approx(0.9), None,
                                              None]
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0 and percentile([1.0, 5.0], 100) == 5.0
    assert percentile([None], 50) is None


# -- the fault test -----------------------------------------------------------------------------
def capable() -> bool:
    return all(importlib.util.find_spec(m) is not None
               for m in ("amqpd.cluster.replication", "amqpd.cluster.remote_queue"))


def need_etcd():
    if ETCD is None:
        why = "etcd is not installed (apt-get install etcd-server; .ci/run does)"
        if os.environ.get("AMQPD_INTEROP_REQUIRE_ALL"):
            pytest.fail(why)
        pytest.skip(why)


def error_lines(cluster) -> list:
    return [f"{n.name}: {line}" for n in cluster.nodes
            for line in getattr(n, "previous_lines", []) + n.lines
            if " ERROR " in line or "Traceback" in line]


@pytest.mark.timeout(900)           # 10 faults with their recoveries: about 2 minutes in CI
def test_no_confirmed_message_is_lost_while_leaders_fail(tmp_path, capsys):
    need_etcd()
    selfcheck = bool(os.environ.get("AMQPD_CLUSTER_FAULTS_SELFCHECK"))
    if not (selfcheck or capable() or os.environ.get("AMQPD_CLUSTER_FAULTS_FORCE")):
        pytest.skip("needs replicated quorum queues and forwarding (amqpd/cluster/"
                    "replication.py, remote_queue.py); AMQPD_CLUSTER_FAULTS_FORCE=1 runs it")
    faults_wanted = max(1, int(os.environ.get("AMQPD_FAULTS", "10")))
    seed = int(os.environ.get("AMQPD_FAULT_SEED", "15"))
    rng = random.Random(seed)
    plan = ["kill", "pause", "term"] * (faults_wanted // 3)
    plan += [rng.choice(("kill", "pause", "term")) for _ in range(faults_wanted - len(plan))]
    rng.shuffle(plan)
    if not selfcheck:
        for _ in range(max(0, int(os.environ.get("AMQPD_MOVES", "2")))):
            plan.insert(rng.randrange(1, len(plan) + 1), "move")
    faults_wanted = len(plan)
    t0 = time.monotonic()

    def say(text: str) -> None:
        with capsys.disabled():
            print(f"cluster-faults [{time.monotonic() - t0:5.1f} s] {text}", flush=True)

    say(f"seed={seed} (AMQPD_FAULT_SEED) faults={plan} mode="
        f"{'selfcheck' if selfcheck else 'quorum'} logs={tmp_path}")
    cluster = Cluster(tmp_path, name="faults", lease_ttl=LEASE_TTL)
    stop_producers, stop_consumers = threading.Event(), threading.Event()
    clients, faults, failure = [], [], None
    ledger = Ledger()
    key = f"/amqpd/{cluster.name}/placement/%2F/{urllib.parse.quote(QUEUE, safe='')}"
    monitor = PlacementMonitor(cluster.etcd, key)
    quiet = logging.getLogger("pika")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)        # a warning per nack otherwise
    try:
        try:
            nodes = Nodes(cluster)
            run_faults(cluster, nodes, monitor, ledger, plan, rng, selfcheck, faults, clients,
                       stop_producers, stop_consumers, say)
        except AssertionError as exc:       # the verdict on what happened is still given
            failure = exc
            say(f"ABORTED: {exc}")
            say("clients: " + ", ".join(f"{c.name}@{c.node}{'' if c.is_alive() else ' (ended)'}"
                                        for c in clients)
                + f"; placement now {monitor.record}")
            for node in cluster.nodes:      # heal what the fault left, for the drain
                if node.proc is None:
                    continue
                if node.running():
                    node.signal(signal.SIGCONT)
                else:
                    node.start()
                nodes.mark(node.name, up=True)
        # -- drain: producers stop, one more consumer through each node -----------------------
        stop_producers.set()
        for c in clients[:len(PRODUCERS)]:
            c.join(15)
        if cluster.nodes and all(n.running() for n in cluster.nodes) and not (
                failure and not ledger.confirmed):
            drainers = [Consumer(f"d{i}", nodes, ledger, i, stop_consumers)
                        for i in range(len(cluster.nodes))]
            for c in drainers:
                c.start()
            clients += drainers
            confirmed = ledger.confirmed_ids()
            leader = (monitor.record or {}).get("leader")
            watch = cluster.nodes if selfcheck or leader is None else [cluster[leader]]

            def drained():
                if not confirmed <= ledger.delivered_ids():
                    return False
                return all(n.api(f"/api/queues/%2F/{QUEUE}")["messages"] == 0 for n in watch)
            try:
                wait_until(drained, 15 if failure else 30,
                           "every confirmed message consumed and the queue empty")
            except (AssertionError, OSError) as exc:
                say(f"drain incomplete: {exc}")
    finally:
        stop_producers.set()
        stop_consumers.set()
        for c in clients:
            c.join(10)
        monitor.stopping.set()
        quiet.setLevel(level)
        errors = error_lines(cluster)
        cluster.teardown()
        for node in cluster.nodes:          # for a post-mortem: every node's log
            (tmp_path / f"{node.name}.log").write_text(
                "\n".join(getattr(node, "previous_lines", []) + node.lines) + "\n")

    # -- verdict ------------------------------------------------------------------------------
    attempts, confirmed, deliveries = ledger.snapshot()
    verdict = check(attempts, confirmed, deliveries)
    times = failover_times([(f["_at"], f["_seen"]) for f in faults], ledger.event_times)
    for f, t in zip(faults, times):
        f["failover_s"] = None if t is None else round(t, 3)
        f["at_s"] = round(f.pop("_at") - t0, 3)
        del f["_seen"]
    p50, worst = percentile(times, 50), percentile(times, 100)
    report = {"seed": seed, "mode": "selfcheck" if selfcheck else "quorum",
              "lease_ttl": LEASE_TTL, "faults": faults,
              "failover_p50_s": p50 and round(p50, 3), "failover_max_s": worst and round(worst, 3),
              "verdict": verdict.summary(), "problems": verdict.problems(),
              "counters": dict(ledger.counters),
              "connections": {f"{c}@{n}": k for (c, n), k in sorted(ledger.connections.items())},
              "node_errors": errors[:50], "wall_s": round(time.monotonic() - t0, 1)}
    path = tmp_path / "cluster_faults.json"
    path.write_text(json.dumps(report, indent=2))
    say(f"verdict: {verdict.summary()}")
    say(f"failover: p50 {report['failover_p50_s']} s, max {report['failover_max_s']} s over "
        f"{len(faults)} faults: {[f['failover_s'] for f in faults]}")
    say(f"clients: {dict(ledger.counters)}; node log errors: {len(errors)}")
    say(f"report: {path}")

    if failure is not None:
        raise AssertionError(f"{failure} (after {len(faults)} faults; {verdict.summary()}; "
                             f"{verdict.problems()}; report {path})")
    assert not [c.name for c in clients if c.error], \
        f"client bugs: {[(c.name, repr(c.error)) for c in clients if c.error]}"
    assert len(faults) == faults_wanted, f"only {len(faults)} faults of {faults_wanted}"
    assert verdict.confirmed > 0, verdict.summary()
    assert verdict.ok, f"{verdict.summary()}: {verdict.problems()}"
    if not selfcheck:
        missing = [f["n"] for f in faults if f["failover_s"] is None]
        assert not missing, f"no confirm or delivery under the new leader after faults {missing}"


def run_faults(cluster, nodes, monitor, ledger, plan, rng, selfcheck, faults, clients,
               stop_producers, stop_consumers, say) -> None:
    """Start the cluster, the queue and the clients (added to ``clients``), then inject the
    planned faults on the queue's leader (``faults`` gets one dict each)."""
    cluster.start(3)
    conn = pika.BlockingConnection(pika.URLParameters(cluster.nodes[0].url))
    args = {} if selfcheck else {"x-queue-type": "quorum"}
    conn.channel().queue_declare(QUEUE, durable=True, arguments=args)
    conn.close()
    monitor.start()
    if selfcheck:
        for node in cluster.nodes:
            wait_until(lambda: any(q["name"] == QUEUE for q in node.api("/api/queues")), 10,
                       f"the queue on {node.name}")
    else:
        monitor.wait_for(lambda r: len(r.get("members", ())) == 3
                         and sorted(r.get("isr", ())) == sorted(r["members"]), 15,
                         "the quorum queue's placement: 3 members, all in sync")
    say(f"queue placed: {monitor.record}")
    clients += ([Producer(f"p{i}", nodes, ledger, start, stop_producers)
                 for i, start in enumerate(PRODUCERS)]
                + [Consumer(f"c{i}", nodes, ledger, start, stop_consumers)
                   for i, start in enumerate(CONSUMERS)])
    for c in clients:
        c.start()
    wait_until(lambda: len(ledger.confirmed) >= 20 and len(ledger.deliveries) >= 20, 20,
               "the first 20 confirms and deliveries")
    say(f"clients running: {len(ledger.confirmed)} confirmed")
    for n, kind in enumerate(plan, 1):
        faults.append(inject(cluster, nodes, monitor, ledger, clients, n, kind, rng, selfcheck,
                             say))
        before = len(ledger.confirmed)
        wait_until(lambda: len(ledger.confirmed) > before, 20,
                   f"a confirm after healing fault {n}")
        time.sleep(rng.uniform(0.3, 1.0))        # under load between faults


def api(node, method: str, tail: str, body: dict) -> int:
    """A management API request on the queue's replicas as guest: its status."""
    req = urllib.request.Request(
        f"{node.management_url}/api/queues/quorum/%2F/{urllib.parse.quote(QUEUE, safe='')}"
        f"{tail}", data=json.dumps(body).encode(), method=method,
        headers={"Content-Type": "application/json", "Authorization": "Basic "
                 + base64.b64encode(b"guest:guest").decode()})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def inject(cluster, nodes, monitor, ledger, clients, n, kind, rng, selfcheck, say) -> dict:
    """One fault on the queue's leader, then healing: the fault's record."""
    if selfcheck:
        target, epoch = rng.choice(cluster.nodes), None
    else:
        target, epoch = cluster[monitor.record["leader"]], monitor.record["epoch"]
    fault = {"n": n, "kind": kind, "node": target.name, "epoch": epoch}
    if kind != "move":                       # (a moved-off node keeps serving its clients)
        nodes.mark(target.name, up=False)
    at = time.monotonic()
    fault["_at"] = at
    if kind == "move":
        through = next(node for node in cluster.nodes if node is not target)
        status = api(through, "DELETE", "/replicas/delete", {"node": target.name})
        assert status == 202, f"delete_member {target.name}: {status}"
    elif kind == "kill":
        target.proc.send_signal(signal.SIGKILL)
        target.wait(10)
    elif kind == "pause":
        fault["pause_s"] = round(rng.uniform(LEASE_TTL + 1.0, LEASE_TTL + 2.5), 2)
        target.signal(signal.SIGSTOP)
    else:
        target.signal(signal.SIGTERM)
    if selfcheck:
        seen, rec = at, None
    else:
        seen, rec = monitor.wait_for(
            lambda r: r["epoch"] > epoch and r["leader"] != target.name, 15,
            f"a new leader after fault {n} ({kind} {target.name})")
    fault["elected_s"] = round(seen - at, 3)
    fault["new_leader"] = rec and rec["leader"]
    fault["_seen"] = seen
    if kind == "move":
        status = api(target, "POST", "/replicas/add", {"node": target.name})
        assert status == 204, f"add_member {target.name}: {status}"
        monitor.wait_for(lambda r: target.name in r.get("members", ()), 10,
                         f"{target.name} a member again after move {n}")
    elif kind == "kill":
        target.start()
    elif kind == "pause":
        left = at + fault["pause_s"] - time.monotonic()
        if left > 0:                        # the pause itself: SIGCONT comes after it
            time.sleep(left)
        target.signal(signal.SIGCONT)
    else:
        fault["exit_code"] = target.wait(15)
        target.start()
    nodes.mark(target.name, up=True)
    if not selfcheck:
        monitor.wait_for(lambda r: sorted(r.get("isr", ())) == sorted(r["members"]), 30,
                         f"the in-sync set whole again after fault {n}")
    fault["healed_s"] = round(time.monotonic() - at, 3)
    # every client back on its home node: a producer and a consumer on each node when the
    # next fault comes, so the survivors show the new leader's first confirm and delivery
    for c in clients:
        c.go_home()
    wait_until(lambda: all(c.at_home() for c in clients), 15,
               f"the clients back on their home nodes after fault {n}")
    say(f"fault {n}: {kind} {target.name} -> leader {fault['new_leader']} seen after "
        f"{fault['elected_s']} s, healed after {fault['healed_s']} s; "
        f"{len(ledger.confirmed)} confirmed, {len(ledger.deliveries)} delivered")
    return fault
