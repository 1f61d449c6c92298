"""Policies at work: the broker's policy registry (``broker.policies``: set, delete, list,
journaled like durable declarations) and what a policy change does to the queues and exchanges
it matches, at once:

- a queue's behaviour follows its arguments combined with the effective definition
  (policy.queue_arguments); its declared arguments stay as they were;
- a lower max-length / max-length-bytes trims the queue from the head at once, dead-lettering
  what it drops (reason ``maxlen``), when its overflow is drop-head (RabbitMQ's
  maybe_drop_head; with reject-publish nothing already queued is dropped);
- a message TTL applies to messages enqueued from then on: a message keeps the deadline it got
  when it was enqueued, as in RabbitMQ (observed on 3.10.8: messages queued before a
  ``message-ttl`` policy never expire);
- ``expires`` re-arms the unused-queue timer from now (RabbitMQ's init_exp);
- an exchange's alternate exchange follows ``alternate-exchange`` unless it has the argument.
"""
import logging

from .arguments import QueueOptions, name_text
from .message import GONE
from .policy import EXCHANGES, QUEUES, PolicySet, alternate_exchange, effective, parse, \
    queue_arguments

log = logging.getLogger("amqpd.policy")


class Policies:
    """``broker.policies``: every vhost's policies (each vhost holds its own PolicySet as
    ``vhost.policies``)."""

    def __init__(self, broker):
        self.broker = broker

    def _vhost(self, vhost: str):
        v = self.broker.vhosts.get(vhost)
        if v is None:
            raise KeyError(vhost)
        return v

    def set(self, vhost: str, name: str, body: dict, operator: bool = False) -> bool:
        """Create or replace a policy from its JSON body (policy.parse); True when it is
        new. Raises KeyError for an unknown vhost, PolicyError for a bad policy, OSError when
        the journal cannot be written (nothing changed then)."""
        v = self._vhost(vhost)
        policy = parse(vhost, name, body, operator)
        v.journal(record(policy))
        created = v.policies.put(policy)
        refresh_vhost(v)
        return created

    def delete(self, vhost: str, name: str, operator: bool = False) -> bool:
        """False when there is no such policy (or vhost)."""
        v = self.broker.vhosts.get(vhost)
        if v is None or name not in v.policies.table(operator):
            return False
        v.journal({"op": "policy.delete", "name": name, "operator": operator})
        v.policies.remove(name, operator)
        refresh_vhost(v)
        return True

    def get(self, vhost: str, name: str, operator: bool = False):
        v = self.broker.vhosts.get(vhost)
        return None if v is None else v.policies.table(operator).get(name)

    def list(self, vhost: str | None = None, operator: bool = False) -> list:
        """Policies of one vhost (KeyError when it does not exist) or of all, lowest
        priority first (as RabbitMQ's API lists them)."""
        if vhost is not None:
            return self._vhost(vhost).policies.listed(operator)
        found = [p for v in self.broker.vhosts.values() for p in v.policies.listed(operator)]
        return sorted(found, key=lambda p: (p.priority, p.vhost, p.name))


def record(policy) -> dict:
    """The definitions journal entry of a policy (the vhost is added by VHost.journal)."""
    return {"op": "policy", "name": policy.name, "operator": policy.operator,
            "pattern": policy.pattern, "apply-to": policy.apply_to,
            "priority": policy.priority, "definition": policy.definition}


def restore(vhost, d: dict) -> None:
    """A journaled policy, at recovery (validated again: a bad one is logged and dropped)."""
    from .policy import PolicyError
    try:
        policy = parse(vhost.name, d["name"], {"pattern": d["pattern"],
                                               "apply-to": d["apply-to"],
                                               "priority": d["priority"],
                                               "definition": d["definition"]},
                       bool(d.get("operator")))
    except (PolicyError, KeyError) as exc:
        log.warning("stored policy %r in vhost %r not loaded: %s", d.get("name"), vhost.name,
                    exc)
        return
    vhost.policies.put(policy)


def clear(vhost) -> None:
    """The vhost is being deleted: its policies go with it (journaled)."""
    policies: PolicySet = vhost.policies
    for operator in (False, True):
        for name in list(policies.table(operator)):
            vhost.journal({"op": "policy.delete", "name": name, "operator": operator})
            policies.remove(name, operator)


# -- applying -----------------------------------------------------------------------------------
def refresh_vhost(vhost) -> None:
    """Re-match every queue and exchange of the vhost (after a policy change)."""
    for q in list(vhost.queues.values()):
        refresh_queue(q)
    for ex in list(vhost.exchanges.values()):
        refresh_exchange(ex)


def refresh_queue(q) -> None:
    """Give a queue the policies that match it now; changes nothing when they are the ones it
    has. Called at declaration (cheap when the vhost has no policies)."""
    policies = q.vhost.policies
    if not policies and q.policy is None and q.operator_policy is None:
        return
    policy, operator_policy = policies.match(QUEUES, q.name)
    if policy is q.policy and operator_policy is q.operator_policy:
        return
    q.policy, q.operator_policy = policy, operator_policy
    q.policy_name = policy.name if policy is not None else None
    q.operator_policy_name = operator_policy.name if operator_policy is not None else None
    q.effective_policy_definition = definition = effective(policy, operator_policy)
    reconfigure(q, QueueOptions(queue_arguments(q.arguments, definition)))


def refresh_exchange(ex) -> None:
    policies = ex.vhost.policies
    if not policies and ex.policy is None and ex.operator_policy is None:
        return
    policy, operator_policy = policies.match(EXCHANGES, ex.name)
    if policy is ex.policy and operator_policy is ex.operator_policy:
        return
    ex.policy, ex.operator_policy = policy, operator_policy
    ex.policy_name = policy.name if policy is not None else None
    ex.operator_policy_name = operator_policy.name if operator_policy is not None else None
    ex.effective_policy_definition = definition = effective(policy, operator_policy)
    if ex.name:     # RabbitMQ routes the default exchange without alternate exchanges
        ex.alternate = name_text(alternate_exchange(ex.arguments, definition)) or None


def reconfigure(q, opts: QueueOptions) -> None:
    """Switch a live queue to new options, keeping its per-message bookkeeping right."""
    old, q.opts = q.opts, opts
    limited = opts.max_length is not None or opts.max_bytes is not None
    if limited and not q.length_limited:
        # ready_bytes was not kept while the queue had no byte limit: count it now (only the
        # RAM window of a paged queue: its backlog's sizes are on disk; docs/policies.md)
        q.ready_bytes = sum(len(e.message.body) for e in q.ready if e.state != GONE)
    q.length_limited = limited
    # Entry tracking is switched on, never off: entries delivered while it was on carry
    # state (TTL heap, delivery counts) that must stay consistent until they settle.
    q.tracks_entries = q.tracks_entries or bool(
        opts.message_ttl is not None or limited or opts.delivery_limit is not None)
    if opts.expires != old.expires:
        if opts.expires:
            q.touch()                 # the unused-queue timer starts again from now
        else:
            q.last_used = None        # a pending check_unused then does nothing
    if limited and opts.overflow == "drop-head" and not q.deleted:
        q._trim_head()
