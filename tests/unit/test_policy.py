"""Policies at the broker layer, with the injected ManualClock: validation texts (recorded from
RabbitMQ 3.10.8's HTTP API), matching and precedence, and what a policy set at run time does
to live queues and exchanges. No sockets, no sleeping."""
import pytest

from amqpd.broker import policy as P
from amqpd.broker.clock import ManualClock
from amqpd.broker.publish import REJECTED

from .stubs import bodies, declare_exchange, declare_queue, make_broker, message


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def broker(clock):
    return make_broker(clock)


@pytest.fixture
def vh(broker):
    return broker.vhosts["/"]


def send(vh, body: bytes, routing_key: str, exchange: str = "", **props):
    return vh.publish(vh.exchange(exchange), message(body, routing_key, exchange, **props))


def fill(vh, name: str, n: int) -> None:
    for i in range(n):
        send(vh, str(i).encode(), name)


def reason(body, operator=False) -> str:
    with pytest.raises(P.PolicyError) as info:
        P.parse("/", "p", body, operator)
    return info.value.reason


# -- validation: the reasons RabbitMQ 3.10.8 gave for the same PUT bodies -----------------------
@pytest.mark.parametrize("definition, text", [
    ({"max-length": "x"}, '<<"x">> is not a valid maximum length'),
    ({"max-length": -1}, "-1 is not a valid maximum length"),
    ({"max-length": True}, "true is not a valid maximum length"),
    ({"max-length": [1]}, "[1] is not a valid maximum length"),
    ({"max-length": {"a": 1}}, '#{<<"a">> => 1} is not a valid maximum length'),
    ({"max-length": None}, "null is not a valid maximum length"),
    ({"max-length-bytes": -5}, "-5 is not a valid maximum length in bytes"),
    ({"message-ttl": -1}, "-1 is not a valid message TTL"),
    ({"message-ttl": 1.5}, "1.5 is not a valid message TTL"),
    ({"expires": 0}, "0 is not a valid queue expiry"),
    ({"expires": "1"}, '<<"1">> is not a valid queue expiry'),
    ({"overflow": "bogus"}, '<<"bogus">> is not a valid overflow value'),
    ({"overflow": 5}, "5 is not a valid overflow value"),
    ({"dead-letter-exchange": 5}, "5 is not a valid dead letter exchange name"),
    ({"dead-letter-routing-key": 5}, "5 is not a valid dead letter routing key"),
    ({"alternate-exchange": 1}, "1 is not a valid alternate exchange name"),
    ({"queue-mode": "bogus"}, '<<"bogus">> is not a valid queue-mode value'),
    ({"queue-version": 3}, "3 is not a valid queue-version value"),
    ({"queue-version": "1"}, '<<"1">> is not a valid queue-version value'),
    ({"delivery-limit": -1}, "-1 is not a valid delivery limit"),
    ({"foo": 1}, '[{<<"foo">>,1}] are not recognised policy settings'),
    ({"max-length": 1, "foo": 2, "bar": 3},
     '[{<<"bar">>,3},{<<"foo">>,2}] are not recognised policy settings'),
    # several bad keys: the first in key order is named, unknown keys only after the known
    ({"max-length": -1, "message-ttl": -1, "expires": 0}, "0 is not a valid queue expiry"),
    ({"max-length": -1, "zz": 1}, "-1 is not a valid maximum length"),
    ({}, "no policy provided"),
])
def test_definition_errors_read_as_rabbitmq(definition, text):
    assert reason({"pattern": "^q", "definition": definition}) == f"Validation failed\n\n{text}\n"


@pytest.mark.parametrize("body, text", [
    ({"pattern": "^q", "definition": {"max-length": 1}, "priority": "x"},
     'Validation failed\n\npriority should be a number, actually was <<"x">>\n'),
    ({"pattern": "^q", "definition": {"max-length": 1}, "priority": None},
     "Validation failed\n\npriority should be a number, actually was null\n"),
    ({"pattern": "^q", "definition": {"max-length": 1}, "apply-to": "bogus"},
     "Validation failed\n\napply-to 'bogus' unrecognised; should be 'queues', 'exchanges' "
     "or 'all'\n"),
    ({"pattern": 5, "definition": {"max-length": 1}},
     "Validation failed\n\npattern should be a binary but was 5\n"),
    ({"pattern": "^q"}, "[{key_missing,definition}]"),
    ({}, "[{key_missing,pattern},{key_missing,definition}]"),
])
def test_policy_errors_read_as_rabbitmq(body, text):
    assert reason(body) == text


def test_bad_regex_is_refused():
    assert reason({"pattern": "(", "definition": {"max-length": 1}}).startswith(
        "Validation failed\n\npattern should be regular expression but is invalid: ")


def test_operator_policies_take_only_limits():
    assert reason({"pattern": "^q", "definition": {"dead-letter-exchange": "x"}}, True) == (
        'Validation failed\n\n[{<<"dead-letter-exchange">>,<<"x">>}] are not recognised '
        'policy settings\n')
    p = P.parse("/", "o", {"pattern": "^q", "definition": {
        "expires": 1000, "message-ttl": 5, "max-length": 1, "max-length-bytes": 5,
        "delivery-limit": 3, "max-in-memory-length": 1, "max-in-memory-bytes": 1}}, True)
    assert p.operator and p.apply_to == "all" and p.priority == 0


def test_accepted_as_rabbitmq_accepts():
    # no upper bound on a policy's TTL, a routing key without an exchange, float priority
    for body in ({"pattern": "", "definition": {"message-ttl": 315360000001}},
                 {"pattern": "^q", "definition": {"dead-letter-routing-key": "k"}},
                 {"pattern": "^q", "definition": {"max-length": 1}, "priority": 1.5},
                 {"pattern": "^q", "definition": {"queue-mode": "lazy", "queue-version": 2}}):
        P.parse("/", "p", body)


# -- matching and precedence --------------------------------------------------------------------
def policy(name, pattern, definition, priority=0, apply_to="all", operator=False):
    return P.parse("/", name, {"pattern": pattern, "definition": definition,
                               "priority": priority, "apply-to": apply_to}, operator)


def test_pattern_is_searched_not_anchored():
    p = policy("p", "ord", {"max-length": 1})
    assert p.matches("queues", "orders") and p.matches("queues", "big-orders")
    assert not policy("p", "^ord$", {"max-length": 1}).matches("queues", "orders")


def test_apply_to():
    q, x = policy("q", ".", {"max-length": 1}, apply_to="queues"), \
        policy("x", ".", {"max-length": 1}, apply_to="exchanges")
    assert q.matches("queues", "a") and not q.matches("exchanges", "a")
    assert x.matches("exchanges", "a") and not x.matches("queues", "a")


def test_highest_priority_wins_and_ties_go_to_the_first_name():
    a, b, c = (policy("b", "^q", {"max-length": 1}, priority=5),
               policy("a", "^q", {"max-length": 2}, priority=5),
               policy("z", "^q", {"max-length": 3}, priority=1))
    assert P.best([a, b, c], "queues", "q1") is b
    assert P.best([c], "queues", "q1") is c
    assert P.best([a, b, c], "queues", "x") is None


def test_operator_policy_and_policy_merge_to_the_lower_limit():
    # the case recorded on RabbitMQ 3.10.8 (queue qf): policy pf and operator policy of
    pf = policy("pf", "^qf$", {"max-length": 5, "message-ttl": 100, "dead-letter-exchange": "dx"})
    of = policy("of", "^qf$", {"max-length": 3, "message-ttl": 1000, "expires": 60000},
                operator=True)
    assert P.effective(pf, of) == {"dead-letter-exchange": "dx", "expires": 60000,
                                   "max-length": 3, "message-ttl": 100}
    assert P.effective(None, None) == {}


def test_queue_arguments_combine_by_rabbitmq_rules():
    args = {"x-max-length": 4, "x-message-ttl": 300, "x-dead-letter-exchange": "arg-dlx"}
    combined = P.queue_arguments(args, {"max-length": 2, "message-ttl": 60000,
                                        "dead-letter-exchange": "pol-dlx",
                                        "dead-letter-routing-key": "k", "expires": 5000})
    assert combined == {"x-max-length": 2, "x-message-ttl": 300,
                        "x-dead-letter-exchange": "arg-dlx", "x-dead-letter-routing-key": "k",
                        "x-expires": 5000}
    assert args == {"x-max-length": 4, "x-message-ttl": 300,
                    "x-dead-letter-exchange": "arg-dlx"}


# -- live effect on queues and exchanges --------------------------------------------------------
def test_policy_set_later_trims_an_existing_queue_and_dead_letters_the_head(broker, vh):
    dead = declare_queue(vh, "dead")
    vh.bind(declare_exchange(vh, "dlx"), dead, "", {})
    q = declare_queue(vh, "qa")
    fill(vh, "qa", 5)
    assert broker.policies.set("/", "pa", {"pattern": "^qa$", "apply-to": "queues",
                                           "definition": {"max-length": 2,
                                                          "dead-letter-exchange": "dlx"}})
    assert (q.policy_name, q.operator_policy_name) == ("pa", None)
    assert q.effective_policy_definition == {"dead-letter-exchange": "dlx", "max-length": 2}
    assert bodies(q) == [b"3", b"4"]
    assert bodies(dead) == [b"0", b"1", b"2"]
    assert q.arguments == {}            # declared arguments unchanged (equivalence, listing)
    fill(vh, "qa", 3)                   # the limit holds for new messages too
    assert q.message_count == 2


def test_queue_argument_lower_than_policy_wins(broker, vh):
    qb = declare_queue(vh, "qb", **{"x-max-length": 1})
    qc = declare_queue(vh, "qc", **{"x-max-length": 4})
    broker.policies.set("/", "p", {"pattern": "^q", "definition": {"max-length": 2}})
    fill(vh, "qb", 5)
    fill(vh, "qc", 5)
    assert (qb.message_count, qc.message_count) == (1, 2)


def test_removing_the_policy_restores_the_arguments(broker, vh):
    q = declare_queue(vh, "q", **{"x-max-length": 4})
    broker.policies.set("/", "p", {"pattern": "^q$", "definition": {"max-length": 1}})
    assert broker.policies.delete("/", "p")
    assert not broker.policies.delete("/", "p")
    assert q.policy_name is None and q.effective_policy_definition == {}
    fill(vh, "q", 6)
    assert q.message_count == 4


def test_new_queue_gets_the_policy_at_declaration(broker, vh):
    broker.policies.set("/", "p", {"pattern": "^new", "definition": {"max-length": 1}})
    q = declare_queue(vh, "new-q")
    other = declare_queue(vh, "old-q")
    fill(vh, "new-q", 3)
    assert q.policy_name == "p" and q.message_count == 1
    assert other.policy_name is None


def test_message_ttl_applies_to_messages_enqueued_after_the_change(broker, vh, clock):
    """As observed on RabbitMQ 3.10.8: messages queued before a message-ttl policy keep
    living; those enqueued after expire."""
    q = declare_queue(vh, "qd")
    fill(vh, "qd", 2)
    broker.policies.set("/", "t", {"pattern": "^qd$", "definition": {"message-ttl": 500}})
    send(vh, b"new", "qd")
    clock.advance(0.6)
    assert bodies(q) == [b"0", b"1"]


def test_expires_deletes_an_unused_queue(broker, vh, clock):
    q = declare_queue(vh, "qk")
    clock.advance(10)
    broker.policies.set("/", "e", {"pattern": "^qk$", "definition": {"expires": 1000}})
    clock.advance(0.9)
    assert "qk" in vh.queues
    clock.advance(0.2)
    assert "qk" not in vh.queues and q.deleted


def test_expires_removed_again_keeps_the_queue(broker, vh, clock):
    declare_queue(vh, "qk")
    broker.policies.set("/", "e", {"pattern": "^qk$", "definition": {"expires": 1000}})
    broker.policies.delete("/", "e")
    clock.advance(5)
    assert "qk" in vh.queues


def test_overflow_from_policy_rejects_publishes(broker, vh):
    q = declare_queue(vh, "ql", **{"x-max-length": 2})
    broker.policies.set("/", "o", {"pattern": "^ql$", "definition": {"overflow": "reject-publish"}})
    verdicts = [send(vh, b"x", "ql") for _ in range(3)]
    assert verdicts[-1] is REJECTED and q.message_count == 2


def test_lower_limit_under_reject_publish_drops_nothing(broker, vh):
    q = declare_queue(vh, "qr", **{"x-overflow": "reject-publish"})
    fill(vh, "qr", 4)
    broker.policies.set("/", "m", {"pattern": "^qr$", "definition": {"max-length": 1}})
    assert q.message_count == 4
    assert send(vh, b"x", "qr") is REJECTED


def test_dead_letter_exchange_argument_wins_over_policy(broker, vh):
    arg_q, pol_q = declare_queue(vh, "dqa"), declare_queue(vh, "dqp")
    vh.bind(declare_exchange(vh, "dxa"), arg_q, "", {})
    vh.bind(declare_exchange(vh, "dxp"), pol_q, "", {})
    declare_queue(vh, "qm", **{"x-dead-letter-exchange": "dxa", "x-max-length": 1})
    broker.policies.set("/", "d", {"pattern": "^qm$", "definition": {"dead-letter-exchange": "dxp"}})
    fill(vh, "qm", 3)
    assert (arg_q.message_count, pol_q.message_count) == (2, 0)


def test_operator_policy_caps_a_users_policy(broker, vh):
    q = declare_queue(vh, "qf")
    broker.policies.set("/", "pf", {"pattern": "^qf$", "definition": {"max-length": 5}})
    broker.policies.set("/", "of", {"pattern": "^qf$", "definition": {"max-length": 3}},
                        operator=True)
    assert (q.policy_name, q.operator_policy_name) == ("pf", "of")
    assert q.effective_policy_definition == {"max-length": 3}
    fill(vh, "qf", 6)
    assert q.message_count == 3


def test_higher_priority_policy_takes_over(broker, vh):
    q = declare_queue(vh, "q")
    broker.policies.set("/", "low", {"pattern": "^q", "definition": {"max-length": 5}})
    broker.policies.set("/", "high", {"pattern": "^q$", "definition": {"max-length": 1},
                                      "priority": 10})
    assert q.policy_name == "high"
    broker.policies.set("/", "high", {"pattern": "^nothing$", "definition": {"max-length": 1},
                                      "priority": 10})
    assert q.policy_name == "low"


def test_alternate_exchange_from_policy_unless_argument(broker, vh):
    alt_q = declare_queue(vh, "alt-q")
    vh.bind(declare_exchange(vh, "alt"), alt_q, "", {})
    plain = declare_exchange(vh, "xa", "direct")
    own = declare_exchange(vh, "xb", "direct", **{"alternate-exchange": "nowhere"})
    broker.policies.set("/", "ae", {"pattern": "^x", "apply-to": "exchanges",
                                    "definition": {"alternate-exchange": "alt"}})
    assert plain.policy_name == "ae" and plain.alternate == "alt"
    assert own.alternate == "nowhere"
    send(vh, b"m", "k", "xa")
    assert alt_q.message_count == 1
    broker.policies.delete("/", "ae")
    assert plain.alternate is None and plain.policy_name is None


def test_standard_exchanges_match_but_the_default_gets_no_alternate(broker, vh):
    """RabbitMQ 3.10.8 (observed): a policy matching amq.direct and the default exchange
    shows on both; the default exchange routes without alternate exchanges."""
    alt_q = declare_queue(vh, "alt-q")
    vh.bind(declare_exchange(vh, "alt"), alt_q, "", {})
    broker.policies.set("/", "a", {"pattern": r"^amq\.direct$|^$", "apply-to": "exchanges",
                                   "definition": {"alternate-exchange": "alt"}})
    direct, default = vh.exchanges["amq.direct"], vh.exchanges[""]
    assert direct.policy_name == default.policy_name == "a"
    send(vh, b"lost", "no-such-queue")
    send(vh, b"kept", "no-binding", "amq.direct")
    assert bodies(alt_q) == [b"kept"]


def test_queues_policy_does_not_touch_exchanges(broker, vh):
    ex = declare_exchange(vh, "q-ex")
    broker.policies.set("/", "p", {"pattern": "^q", "apply-to": "queues",
                                   "definition": {"max-length": 1}})
    assert ex.policy_name is None


def test_listing_is_by_priority_and_vhosts_are_checked(broker):
    broker.policies.set("/", "a", {"pattern": ".", "definition": {"max-length": 1}})
    broker.policies.set("/", "b", {"pattern": ".", "definition": {"max-length": 1},
                                   "priority": 3})
    broker.policies.set("/", "c", {"pattern": ".", "definition": {"max-length": 1},
                                   "priority": -1})
    assert [p.name for p in broker.policies.list("/")] == ["c", "a", "b"]
    assert broker.policies.list(operator=True) == []
    with pytest.raises(KeyError):
        broker.policies.set("nope", "a", {"pattern": ".", "definition": {"max-length": 1}})
    assert broker.policies.get("/", "a").to_json() == {
        "vhost": "/", "name": "a", "pattern": ".", "apply-to": "all",
        "definition": {"max-length": 1}, "priority": 0}


def test_vhost_deletion_takes_its_policies(broker):
    broker.add_vhost("v")
    broker.policies.set("v", "a", {"pattern": ".", "definition": {"max-length": 1}})
    broker.delete_vhost("v")
    broker.add_vhost("v")
    assert broker.policies.list("v") == []


def test_journal_replays_policies_first_and_keeps_operator_ones_apart(tmp_path):
    from amqpd.store.definitions import DefinitionsJournal
    journal = DefinitionsJournal(str(tmp_path / "definitions.jsonl"), fsync=False)
    journal.rewrite([])
    policy = {"op": "policy", "vhost": "/", "pattern": ".", "apply-to": "all", "priority": 0,
              "definition": {"max-length": 1}}
    journal.append({"op": "queue", "vhost": "/", "name": "q", "durable": True,
                    "auto_delete": False, "args": ""})
    journal.append(dict(policy, name="p", operator=False))
    journal.append(dict(policy, name="p", operator=True))
    journal.append(dict(policy, name="gone", operator=False))
    journal.append({"op": "policy.delete", "vhost": "/", "name": "gone", "operator": False})
    journal.append({"op": "policy.delete", "vhost": "/", "name": "p", "operator": True})
    journal.close()
    loaded = journal.load()
    assert [(d["op"], d["name"], d.get("operator")) for d in loaded] == [
        ("policy", "p", False), ("queue", "q", None)]
