"""The interop scenario set: names, what every client must observe, and the known gaps.

Every client driver (interop/clients/*.py, interop/node/scenarios.js, interop/java/Scenarios.java)
runs the same scenarios and prints one JSON line per scenario with what *the client* observed,
normalised to the same shape in every language. Resource names start with a per-run prefix that
the runner replaces by ``P`` before comparing, so observations from different runs, clients and
brokers compare equal when the behaviour is the same.

The expected observations below are RabbitMQ 3.10's behaviour (checked with
``python -m interop --url <rabbitmq>``); docs/compatibility.md has the side-by-side run.
"""

SCENARIOS = [
    "connect",
    "exchanges",
    "publish_consume_ack",
    "nack_requeue",
    "dead_letter",
    "confirms",
    "mandatory",
    "basic_get",
    "rpc",
    "direct_reply_to",
    "large_message",
    "many_channels",
    "heartbeats",
    "consumer_killed",
    "reserved_names",
]

DESCRIPTIONS = {
    "connect": "connect with guest/guest; a bad password is refused (403), an unknown vhost is 530",
    "exchanges": "declare direct/fanout/topic/headers exchanges, bind queues (and one "
                 "exchange-to-exchange binding), publish, read back what each queue got",
    "publish_consume_ack": "100 messages with properties, consumed with prefetch 10 and acked",
    "nack_requeue": "nack and reject with requeue; redelivered=true; multiple nack",
    "dead_letter": "dead-lettering by reject/nack requeue=false (twice: x-death count 2), "
                   "x-max-length overflow and per-message expiration; x-death contents",
    "confirms": "publisher confirms: 50 acks; unroutable mandatory returned then acked; 404",
    "mandatory": "mandatory unroutable publish comes back as basic.return 312 NO_ROUTE",
    "basic_get": "basic.get: get-empty, message_count, reject-requeue then redelivered",
    "rpc": "request/reply with a server-named exclusive reply queue and correlation ids",
    "direct_reply_to": "request/reply through amq.rabbitmq.reply-to",
    "large_message": "a 5 MiB message and an empty one, byte for byte",
    "many_channels": "200 channels on one connection; a channel error closes only its channel",
    "heartbeats": "heartbeat 2 s negotiated, connection idle 5 s stays up",
    "consumer_killed": "a consumer process SIGKILLed holding 10 unacked messages; they are "
                       "redelivered first, in order, redelivered=true, none lost",
    "reserved_names": "a server-named queue (amq.gen-) redeclared non-passively, and a new "
                      "amq.* queue, are 403 ACCESS_REFUSED; a passive redeclare is fine",
}

CELERY_SCENARIOS = [
    "celery_acks_late_1000",
    "celery_sigkill_redelivery",
    "celery_eta_countdown",
    "celery_retry_backoff",
    "celery_inspect_ping",
    "celery_events",
]

DESCRIPTIONS.update({
    "celery_acks_late_1000": "a worker (threads pool, acks_late, prefetch x4) runs 1,000 tasks, "
                             "each exactly once",
    "celery_sigkill_redelivery": "a worker SIGKILLed mid-run: its unacked tasks come back "
                                 "redelivered to a new worker and all 100 complete",
    "celery_eta_countdown": "countdown=2 and eta=now+3 tasks run on time (not early, < 1.5 s "
                            "late)",
    "celery_retry_backoff": "autoretry with retry_backoff=1: attempts 1 s then 2 s apart",
    "celery_inspect_ping": "`celery inspect ping` gets the worker's pong (pidbox remote "
                           "control)",
    "celery_events": "task-sent/received/started/succeeded and worker-heartbeat events reach "
                     "an event receiver",
})

CLIENTS = ["pika", "aio-pika", "aiormq", "py-amqp", "kombu", "amqplib", "java", "celery"]

CLIENT_DESCRIPTIONS = {
    "pika": "pika (BlockingConnection)",
    "aio-pika": "aio-pika (connect_robust)",
    "aiormq": "aiormq",
    "py-amqp": "py-amqp (the `amqp` package)",
    "kombu": "kombu (Connection/Producer/Consumer/SimpleQueue)",
    "amqplib": "Node amqplib (promise API)",
    "java": "RabbitMQ Java client (com.rabbitmq:amqp-client)",
    "celery": "Celery workers, CLI and event receiver (kombu/py-amqp underneath)",
}


def scenarios_for(client: str) -> list[str]:
    return CELERY_SCENARIOS if client == "celery" else SCENARIOS

CAPABILITIES = sorted([
    "authentication_failure_close", "basic.nack", "connection.blocked", "consumer_cancel_notify",
    "consumer_priorities", "direct_reply_to", "exchange_exchange_bindings", "per_consumer_qos",
    "publisher_confirms",
])

LARGE_SIZE = 5 * 1024 * 1024
# sha256 of bytes(i % 251 for i in range(LARGE_SIZE)); every driver builds the same body
LARGE_SHA256 = None     # computed below


def _large_sha() -> str:
    import hashlib
    pattern = bytes(range(251))
    body = (pattern * (LARGE_SIZE // 251 + 1))[:LARGE_SIZE]
    return hashlib.sha256(body).hexdigest()


LARGE_SHA256 = _large_sha()


def _dead(body, count, reason, queue, extra=None):
    """A dead-lettered message as the drivers report it (queue names after the P prefix)."""
    return {"body": body, "exchange": "P.dlx", "routing_key": "dead", "redelivered": False,
            "expiration": None,
            "x-death": [{"count": count, "reason": reason, "queue": f"P.{queue}", "exchange": "",
                         "routing-keys": [f"P.{queue}"], "time": True, **(extra or {})}],
            "x-first-death-reason": reason, "x-first-death-queue": f"P.{queue}",
            "x-first-death-exchange": ""}


def _deliveries(*items):
    return [[body, redelivered] for body, redelivered in items]


EXPECTED = {
    "connect": {
        "open": True,
        "capabilities": CAPABILITIES,
        "bad_password": "ACCESS_REFUSED",
        "bad_vhost": 530,
    },
    "exchanges": {
        # direct: q1 bound a and b, q2 bound b; published a, b, c
        "direct": {"q1": ["a", "b"], "q2": ["b"]},
        # fanout: q1, q2; published x, y
        "fanout": {"q1": ["x", "y"], "q2": ["x", "y"]},
        # topic: q1 a.*, q2 a.#, q3 #.c; published a, a.b, a.b.c, x.c, b
        "topic": {"q1": ["a.b"], "q2": ["a", "a.b", "a.b.c"], "q3": ["a.b.c", "x.c"]},
        # headers: q1 all {h1:1,h2:2}, q2 any {h1:1,h2:2}; published {h1}, {h1,h2}, {h3}
        "headers": {"q1": ["h1h2"], "q2": ["h1", "h1h2"]},
        # exchange-to-exchange: topic source -> fanout destination with key e.*; q1 on fanout
        "e2e": {"q1": ["e.1"]},
    },
    "publish_consume_ack": {
        "count": 100,
        "in_order": True,
        "any_redelivered": False,
        "props": {
            "content_type": "text/plain",
            "correlation_id": "c-0",
            "message_id": "m-0",
            "app_id": "interop",
            "type": "t",
            "delivery_mode": 2,
            "headers": {"i": 0, "s": "str", "b": True, "t": {"n": 1}},
        },
        "left": 0,
    },
    "nack_requeue": {
        "deliveries": _deliveries(("m1", False), ("m2", False), ("m3", False), ("m4", False),
                                  ("m5", False), ("m2", True), ("m4", True), ("m2", True),
                                  ("m4", True)),
        "left": 0,
    },
    "dead_letter": {
        "dead": [
            _dead("r1", 1, "rejected", "work"),
            _dead("n1", 1, "rejected", "work"),
            # r1 republished with its headers to the work queue and rejected again
            _dead("r1", 2, "rejected", "work"),
            # l1: head of a full x-max-length=1 queue when l2 came
            _dead("l1", 1, "maxlen", "maxlen"),
            # e1: published with expiration "50" (ms); the property moves into x-death
            _dead("e1", 1, "expired", "ttl", {"original-expiration": "50"}),
        ],
        "work_left": 0,
    },
    "confirms": {
        "acked": 50,
        "nacked": 0,
        "unroutable_mandatory": {"returned": True, "reply_code": 312, "confirmed": True},
        "missing_exchange": 404,
    },
    "mandatory": {
        "returns": [{"reply_code": 312, "reply_text": "NO_ROUTE", "exchange": "P.x",
                     "routing_key": "nowhere", "body": "m1"}],
        "routed": ["m2"],
    },
    "basic_get": {
        "gets": [None, ["m1", False, 2], ["m2", False, 1], ["m2", True, 1], ["m3", False, 0],
                 None],
    },
    "rpc": {
        "replies": {"c0": "REQ0", "c1": "REQ1", "c2": "REQ2"},
        "reply_queue": "server (amq.gen-)",
    },
    "direct_reply_to": {
        "replies": {"c0": "REQ0", "c1": "REQ1", "c2": "REQ2"},
        "server_saw_prefix": "amq.rabbitmq.reply-to.",
    },
    "large_message": {
        "size": LARGE_SIZE,
        "sha256": LARGE_SHA256,
        "empty": 0,
    },
    "many_channels": {
        "opened": 200,
        "received": 200,
        "distinct": 200,
        "error_code": 404,
        "others_ok": True,
    },
    "heartbeats": {
        "negotiated": 2,
        "alive": True,
    },
    "consumer_killed": {
        "worker_received": 15,
        "worker_acked": 5,
        "after": _deliveries(*[(f"m{i}", True) for i in range(6, 16)],
                             *[(f"m{i}", False) for i in range(16, 31)]),
    },
}

EXPECTED["reserved_names"] = {
    "server_named": "server (amq.gen-)",
    "passive_redeclare": "ok",
    "redeclare": 403,
    "amq_custom": 403,
}

EXPECTED.update({
    "celery_acks_late_1000": {"completed": 1000, "missing": 0, "duplicates": 0,
                              "redelivered": 0, "seconds_under_60": True},
    "celery_sigkill_redelivery": {"completed": 100, "missing": 0,
                                  "killed_worker_ran_some": True,
                                  "redelivered_after_kill": True,
                                  "redelivered_ones_completed": True},
    "celery_eta_countdown": {"now": "on time", "countdown": "on time", "eta": "on time"},
    "celery_retry_backoff": {"attempts": 3, "retries": [0, 1, 2], "gaps": ["1 s", "2 s"]},
    "celery_inspect_ping": {"rc": 0, "reply": "pong"},
    "celery_events": {"task-sent": 3, "task-received": 3, "task-started": 3,
                      "task-succeeded": 3, "worker-heartbeat": True},
})

# Observations that legitimately differ for one client: its API cannot show the field.
CLIENT_EXPECTED: dict[tuple[str, str], dict] = {
    # a robust channel names its queues itself ("amq_<hex>") so it can redeclare them after a
    # reconnect: the reply queue is never server-named
    ("aio-pika", "rpc"): {**EXPECTED["rpc"], "reply_queue": "client"},
    # aiormq reports a connection.close during the handshake as InvalidFrameError("Expected
    # Connection.OpenOk, got Connection.Close") and drops the reply code
    ("aio-pika", "connect"): {**EXPECTED["connect"], "bad_vhost": "InvalidFrameError"},
    ("aiormq", "connect"): {**EXPECTED["connect"], "bad_vhost": "InvalidFrameError"},
    # amqplib likewise: the handshake fails with this text and no code
    ("amqplib", "connect"): {**EXPECTED["connect"],
                            "bad_vhost": "Expected ConnectionOpenOk; got <ConnectionClose channel:0>"},
}

# (client or "*", scenario) -> reason. "NOT YET" is amqpd work in progress (xfail, not strict:
# when the feature lands these XPASS and the entry should go); "BUG" is a broker bug this suite
# found (strict xfail). Only used when the broker under test is amqpd.
KNOWN_AMQPD: dict[tuple[str, str], str] = {
    # dead-lettering and direct reply-to were "NOT YET" entries until they landed in amqpd;
    # reserved_names was a BUG entry (amq.gen-* re-declared non-passively), fixed in vhost.py
}


def expected(client: str, scenario: str) -> dict:
    return CLIENT_EXPECTED.get((client, scenario), EXPECTED[scenario])


def known_amqpd(client: str, scenario: str) -> str | None:
    return KNOWN_AMQPD.get((client, scenario)) or KNOWN_AMQPD.get(("*", scenario))


def normalise(obs, prefix: str):
    """Replace the run's resource-name prefix by ``P`` everywhere (keys and values)."""
    if isinstance(obs, str):
        return obs.replace(prefix, "P")
    if isinstance(obs, list):
        return [normalise(x, prefix) for x in obs]
    if isinstance(obs, dict):
        return {normalise(k, prefix): normalise(v, prefix) for k, v in obs.items()}
    return obs
