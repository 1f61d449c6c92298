"""Policies and operator policies (``rabbitmqctl set_policy`` / ``set_operator_policy``):
what one is, how its input is validated (with RabbitMQ 3.10's texts), which policy applies to
a queue or exchange, and how a policy, an operator policy and a queue's own arguments combine
into what the queue does. No I/O and no broker state: queue_policy.py applies the result.

The rules and where they come from are in docs/policies.md ("Precedence").
"""
import re

from ..wire.erlang import float_text

QUEUES, EXCHANGES, ALL = "queues", "exchanges", "all"
APPLY_TO = (QUEUES, EXCHANGES, ALL)

OVERFLOW = ("drop-head", "reject-publish", "reject-publish-dlx")


class PolicyError(ValueError):
    """A policy RabbitMQ would refuse. ``str()`` is its validation message (what
    ``rabbitmqctl set_policy`` prints); ``reason`` the HTTP API's reason text."""

    def __init__(self, message: str, validation: bool = True):
        super().__init__(message)
        self.validation = validation

    @property
    def reason(self) -> str:
        return f"Validation failed\n\n{self}\n" if self.validation else str(self)


# -- Erlang terms of JSON values, as RabbitMQ's ~tp prints them in validation errors ----------
def term(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return float_text(value)
    if isinstance(value, str):
        return '<<"' + value.replace("\\", "\\\\").replace('"', '\\"') + '">>'
    if isinstance(value, list):
        return "[" + ",".join(term(v) for v in value) + "]"
    if isinstance(value, dict):
        return "#{" + ",".join(f"{term(k)} => {term(value[k])}" for k in sorted(value)) + "}"
    return repr(value)


# -- definition keys ----------------------------------------------------------------------------
def _integer(minimum: int):
    def check(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    return check


def _binary(value) -> bool:
    return isinstance(value, str)


def _one_of(*allowed):
    def check(value) -> bool:
        return isinstance(value, type(allowed[0])) and not isinstance(value, bool) \
            and value in allowed
    return check


# key -> (check, what an invalid value "is not"), as rabbit_policies:validate_policy0 says it
KEYS = {
    "alternate-exchange": (_binary, "a valid alternate exchange name"),
    "dead-letter-exchange": (_binary, "a valid dead letter exchange name"),
    "dead-letter-routing-key": (_binary, "a valid dead letter routing key"),
    "message-ttl": (_integer(0), "a valid message TTL"),
    "expires": (_integer(1), "a valid queue expiry"),
    "max-length": (_integer(0), "a valid maximum length"),
    "max-length-bytes": (_integer(0), "a valid maximum length in bytes"),
    "max-in-memory-length": (_integer(0), "a valid maximum memory in bytes"),
    "max-in-memory-bytes": (_integer(0), "a valid maximum memory in bytes"),
    "overflow": (_one_of(*OVERFLOW), "a valid overflow value"),
    "delivery-limit": (_integer(0), "a valid delivery limit"),
    "queue-mode": (_one_of("default", "lazy"), "a valid queue-mode value"),
    "queue-version": (_one_of(1, 2), "a valid queue-version value"),
}
# the keys an operator policy may set (rabbit_policies: operator_policy_validator)
OPERATOR_KEYS = ("expires", "message-ttl", "max-length", "max-length-bytes",
                 "max-in-memory-length", "max-in-memory-bytes", "delivery-limit")


def validate_definition(definition, operator: bool = False) -> dict:
    """The definition as stored, or PolicyError. Known keys are checked in key order, the
    first bad value named; keys nobody knows are reported after (as RabbitMQ does)."""
    if not isinstance(definition, dict):
        raise PolicyError(f"definition must be a dictionary: {term(definition)}")
    if not definition:
        raise PolicyError("no policy provided")
    allowed = OPERATOR_KEYS if operator else KEYS
    unknown = []
    for key in sorted(definition):
        if key not in allowed:
            unknown.append(key)
            continue
        check, what = KEYS[key]
        if not check(definition[key]):
            raise PolicyError(f"{term(definition[key])} is not {what}")
    if unknown:
        listed = ",".join(f"{{{term(k)},{term(definition[k])}}}" for k in unknown)
        raise PolicyError(f"[{listed}] are not recognised policy settings")
    return {k: definition[k] for k in sorted(definition)}


# -- a policy -----------------------------------------------------------------------------------
class Policy:
    __slots__ = ("vhost", "name", "pattern", "apply_to", "priority", "definition", "operator",
                 "regex")

    def __init__(self, vhost: str, name: str, pattern: str, apply_to: str, priority,
                 definition: dict, operator: bool = False):
        self.vhost = vhost
        self.name = name
        self.pattern = pattern
        self.apply_to = apply_to
        self.priority = priority
        self.definition = definition
        self.operator = operator
        self.regex = compile_pattern(pattern)

    def __repr__(self):
        kind = "operator policy" if self.operator else "policy"
        return f"<{kind} {self.name!r} in vhost {self.vhost!r}>"

    def __eq__(self, other):
        return isinstance(other, Policy) and self.to_json() == other.to_json() \
            and self.operator == other.operator

    __hash__ = object.__hash__

    def matches(self, kind: str, name: str) -> bool:
        """``kind`` is QUEUES or EXCHANGES; the pattern is searched for anywhere in the
        name (re:run without anchors), so "^" and "$" anchor it."""
        if self.apply_to != ALL and self.apply_to != kind:
            return False
        return self.regex.search(name) is not None

    def to_json(self) -> dict:
        """RabbitMQ's shape (GET /api/policies, definitions export)."""
        return {"vhost": self.vhost, "name": self.name, "pattern": self.pattern,
                "apply-to": self.apply_to, "definition": dict(self.definition),
                "priority": self.priority}


def compile_pattern(pattern: str):
    try:
        return re.compile(pattern)
    except re.error as exc:
        # the text is Python's, not PCRE's ("missing ), unterminated subpattern")
        raise PolicyError(f"pattern should be regular expression but is invalid: "
                          f'{{"{exc.msg}",{exc.pos or 0}}}') from None


def parse(vhost: str, name: str, body, operator: bool = False) -> Policy:
    """A policy from the JSON body of ``PUT /api/policies/{vhost}/{name}`` (or an entry of a
    definitions file): ``pattern`` and ``definition`` required, ``priority`` (default 0) and
    ``apply-to`` (default "all") optional. Raises PolicyError with RabbitMQ's text."""
    if not isinstance(body, dict):
        raise PolicyError("not_json", validation=False)
    missing = [k for k in ("pattern", "definition") if k not in body]
    if missing:
        raise PolicyError("[" + ",".join(f"{{key_missing,{k}}}" for k in missing) + "]",
                          validation=False)
    priority = body.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, (int, float)):
        raise PolicyError(f"priority should be a number, actually was {term(priority)}")
    pattern = body["pattern"]
    if not isinstance(pattern, str):
        raise PolicyError(f"pattern should be a binary but was {term(pattern)}")
    compile_pattern(pattern)
    apply_to = body.get("apply-to", ALL)
    if apply_to not in APPLY_TO:
        # RabbitMQ 3.10 answers 500 to a non-string apply-to; this says what is wrong
        shown = apply_to if isinstance(apply_to, str) else term(apply_to)
        raise PolicyError(f"apply-to '{shown}' unrecognised; should be 'queues', "
                          f"'exchanges' or 'all'")
    definition = validate_definition(body["definition"], operator)
    return Policy(vhost, name, pattern, apply_to, priority, definition, operator)


# -- which policy applies -----------------------------------------------------------------------
def best(policies, kind: str, name: str):
    """The policy for a queue or exchange: the matching one of highest priority. RabbitMQ
    breaks ties by the order of its runtime-parameter table (unspecified: observed neither
    name nor creation order); amqpd takes the name that sorts first, so the choice is stable
    across restarts."""
    found = None
    for p in policies:
        if p.matches(kind, name) and (found is None or p.priority > found.priority
                                      or (p.priority == found.priority and p.name < found.name)):
            found = p
    return found


class PolicySet:
    """A vhost's policies and operator policies, by name."""

    def __init__(self):
        self.policies: dict[str, Policy] = {}
        self.operator: dict[str, Policy] = {}

    def table(self, operator: bool) -> dict:
        return self.operator if operator else self.policies

    def put(self, policy: Policy) -> bool:
        """Add or replace; True when it is new."""
        table = self.table(policy.operator)
        created = policy.name not in table
        table[policy.name] = policy
        return created

    def remove(self, name: str, operator: bool = False):
        return self.table(operator).pop(name, None)

    def listed(self, operator: bool = False) -> list:
        """As RabbitMQ 3.10.8's API lists them: lowest priority first (observed; its
        sort_by_priority), then by name."""
        return sorted(self.table(operator).values(), key=lambda p: (p.priority, p.name))

    def match(self, kind: str, name: str):
        """(policy, operator policy) for a queue or exchange; either may be None."""
        return (best(self.policies.values(), kind, name) if self.policies else None,
                best(self.operator.values(), kind, name) if self.operator else None)

    def __bool__(self) -> bool:
        return bool(self.policies or self.operator)


# -- combining ----------------------------------------------------------------------------------
# rabbit_policies:merge_policy_value: an operator policy and a policy both setting these keys
# give the lower value (the operator's limit cannot be raised by a user's policy).
NUMERIC = ("message-ttl", "expires", "max-length", "max-length-bytes", "max-in-memory-length",
           "max-in-memory-bytes", "delivery-limit")


def effective(policy, operator_policy) -> dict:
    """rabbit_policy:merge_operator_definitions: the union of both definitions, with the
    lower value where both set a key."""
    if policy is None and operator_policy is None:
        return {}
    if operator_policy is None:
        return dict(policy.definition)
    if policy is None:
        return dict(operator_policy.definition)
    merged = dict(policy.definition)
    for key, value in operator_policy.definition.items():
        merged[key] = min(merged[key], value) if key in merged and key in NUMERIC else value
    return {k: merged[k] for k in sorted(merged)}


# How a queue's own x-argument and the effective policy value combine (classic queues:
# rabbit_amqqueue_process process_args_policy; quorum queues: rabbit_quorum_queue):
# "min" the lower wins, "arg" the queue's argument wins when it has one.
QUEUE_KEYS = {
    "message-ttl": "min", "expires": "min", "max-length": "min", "max-length-bytes": "min",
    "delivery-limit": "min",
    "overflow": "arg", "dead-letter-exchange": "arg", "dead-letter-routing-key": "arg",
    "queue-mode": "arg",
}


def queue_arguments(arguments: dict, definition: dict) -> dict:
    """The x-arguments a queue acts on: its own, with the effective policy definition laid
    over them by QUEUE_KEYS. The queue keeps its declared arguments for equivalence checks
    and listings; only its behaviour follows this."""
    if not definition:
        return arguments
    combined = dict(arguments)
    for key, rule in QUEUE_KEYS.items():
        if key not in definition:
            continue
        value, arg = definition[key], "x-" + key
        if arg not in combined:
            combined[arg] = value
        elif rule == "min":
            current = combined[arg]
            if isinstance(current, int) and not isinstance(current, bool) and value < current:
                combined[arg] = value
    return combined


def alternate_exchange(arguments: dict, definition: dict):
    """rabbit_policy:get_arg: the exchange's ``alternate-exchange`` argument, else the
    policy's."""
    if "alternate-exchange" in arguments:
        return arguments["alternate-exchange"]
    return definition.get("alternate-exchange")
