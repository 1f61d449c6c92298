"""Every client library × every scenario against the real amqpd CLI (see interop/scenarios.py).

One amqpd for the session (or AMQPD_INTEROP_URL, e.g. a RabbitMQ, to check the expectations
themselves). The client drivers run as their own processes, several at once, as soon as the
first test asks: each test then only waits for its client's results. A client whose runtime is
missing is skipped with the reason, unless AMQPD_INTEROP_REQUIRE_ALL=1 (as in CI), which makes
that a failure. AMQPD_INTEROP_CLIENTS=pika,java limits the clients.

Known gaps are xfail: "NOT YET" (amqpd work in progress, not strict) and "BUG" (strict).
"""
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from . import runner, scenarios as S
from .process import AmqpdProcess

CLIENTS = [c for c in os.environ.get("AMQPD_INTEROP_CLIENTS", ",".join(S.CLIENTS)).split(",")
           if c]
JOBS = int(os.environ.get("AMQPD_INTEROP_JOBS", "3"))


def cases():
    for client in S.CLIENTS:
        for scenario in S.scenarios_for(client):
            marks = []
            known = S.known_amqpd(client, scenario)
            if known and not os.environ.get("AMQPD_INTEROP_URL"):
                marks.append(pytest.mark.xfail(reason=known, strict=known.startswith("BUG")))
            if client not in CLIENTS:
                marks.append(pytest.mark.skip(reason="not in AMQPD_INTEROP_CLIENTS"))
            yield pytest.param(client, scenario, marks=marks, id=f"{client}-{scenario}")


@pytest.fixture(scope="session")
def interop_broker():
    url = os.environ.get("AMQPD_INTEROP_URL")
    if url:
        yield runner.Broker("amqpd", runner.normalise_url(url))
        return
    proc = AmqpdProcess().start()
    try:
        yield runner.Broker("amqpd", runner.normalise_url(proc.url))
    finally:
        proc.stop()
        proc.cleanup()


@pytest.fixture(scope="session")
def client_results(interop_broker, request):
    """client -> {scenario: Result}; at the first request every selected driver starts (only
    the scenarios selected with -k or node ids), several at a time."""
    pool = ThreadPoolExecutor(max_workers=JOBS)
    futures = {}
    lock = threading.Lock()
    wanted: dict[str, list[str]] = {}
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if getattr(item, "originalname", "") == "test_client_scenario" and "client" in params:
            wanted.setdefault(params["client"], []).append(params["scenario"])

    def get(client: str) -> dict:
        with lock:
            if not futures:
                # slow first: Celery and the JVM, so the quick ones fill the gaps
                order = sorted((c for c in CLIENTS if c in wanted),
                               key=lambda c: c not in ("celery", "java", "amqplib"))
                for c in order:
                    futures[c] = pool.submit(runner.run_client, interop_broker, c, wanted[c])
        return {r.scenario: r for r in futures[client].result()}

    yield get
    pool.shutdown(wait=True)


@pytest.mark.parametrize("client,scenario", list(cases()))
def test_client_scenario(client_results, client, scenario):
    r = client_results(client)[scenario]
    if r.status == "skip":
        if os.environ.get("AMQPD_INTEROP_REQUIRE_ALL"):
            pytest.fail(f"{client} runtime missing but required: {r.reason}")
        pytest.skip(r.reason)
    if r.error is not None:
        pytest.fail(f"{client} {scenario}: {r.error}\n{r.reason or ''}", pytrace=False)
    expected = S.expected(client, scenario)
    assert r.obs == expected, (f"{client} {scenario} observed:\n{json.dumps(r.obs, indent=1)}\n"
                               f"expected:\n{json.dumps(expected, indent=1)}")
