"""Exchanges and their routing indexes. Destinations are queues or (exchange-to-exchange)
other exchanges; a binding is identified by (destination, routing key, arguments)."""
from .. import errors
from . import headers as headers_match
from ..wire.tables import type_name
from .arguments import name_text
from .queue import describe, same_value
from .stats import ExchangeStats
from .topic import TopicTrie


EQUIVALENCE_ARGS = ("alternate-exchange",)

# RabbitMQ looks an exchange type up as an existing Erlang atom before it looks for a module
# (rabbit_exchange:check_type): a name that happens to be an atom somewhere in the node is
# "invalid", any other unknown name "unknown". The node's atoms depend on what it has loaded;
# these common words were probed to be atoms in a RabbitMQ 3.10.8 node.
ERLANG_ATOMS = frozenset((
    "a", "all", "amqp", "any", "array", "b", "bar", "basic", "binary", "broadcast", "classic",
    "command", "consistent", "data", "debug", "default", "delay", "erlang", "error", "event",
    "events", "exchange", "false", "federation", "foo", "hash", "http", "info", "integer",
    "internal", "job", "json", "key", "list", "lists", "local", "log", "map", "match",
    "message", "multicast", "name", "node", "none", "notify", "ok", "order", "orders", "plain",
    "priority", "queue", "quorum", "rabbit", "random", "reply", "request", "response", "rpc",
    "simple", "stream", "string", "system", "table", "test", "text", "true", "type",
    "undefined", "user", "users", "value", "warning", "work", "worker", "x", "xml", "y"))


def check_type(kind: str, types: dict):
    """The exchange class for a declared type, or RabbitMQ's 503 for an unknown one."""
    cls = types.get(kind)
    if cls is None:
        word = "invalid" if kind in ERLANG_ATOMS else "unknown"
        raise errors.CommandInvalid(f"{word} exchange type '{kind}'")
    return cls


def freeze(value):
    """A hashable, order-independent form of binding arguments (keys that are not UTF-8 are
    bytes, so they are ordered by their bytes)."""
    if isinstance(value, dict):
        return tuple(sorted(((k, freeze(v)) for k, v in value.items()), key=_key_order))
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    if isinstance(value, bytearray):
        return bytes(value)
    return value


def _key_order(item) -> bytes:
    key = item[0]
    return key.encode("utf-8", "surrogateescape") if isinstance(key, str) else bytes(key)


class Exchange:
    kind = ""
    # Set by broker/queue_policy.py when a policy matches (class defaults until then).
    policy = operator_policy = None
    policy_name = operator_policy_name = None
    effective_policy_definition: dict = {}
    stats = property(ExchangeStats)  # the statistics read model (broker/stats.py)

    def __init__(self, vhost, name: str, durable: bool = True, auto_delete: bool = False,
                 internal: bool = False, arguments: dict | None = None):
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = arguments or {}
        self.bindings: dict = {}       # (dest, key, frozen args) -> args
        self.by_dest: dict = {}        # dest -> set of binding ids, for fast removal
        self.exchange_dests = 0        # bindings to exchanges: routing must follow them
        self.sources: set = set()      # exchanges with an e2e binding to this one
        ae = self.arguments.get("alternate-exchange")
        self.alternate = name_text(ae) or None
        # statistics (broker/stats.py): the publish runs of open channels and what closed
        # ones counted, publishes that found no queue, and queues beyond the first for
        # messages routed to several (publish_in and publish_out are derived)
        self.runs: set = set()
        self.published_in_closed = self.unroutable = self.extra_routes = 0
        self.samples = None

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}>"

    @property
    def label(self) -> str:
        return f"exchange '{self.name}' in vhost '{self.vhost.name}'"

    def add_binding(self, dest, key: str, args: dict | None) -> bool:
        bid = (dest, key, freeze(args or {}))
        if bid in self.bindings:
            return False
        self.bindings[bid] = args or {}
        self.by_dest.setdefault(dest, set()).add(bid)
        if isinstance(dest, Exchange):
            self.exchange_dests += 1
        dest.sources.add(self)
        self._index(dest, key, args or {})
        return True

    def has_binding(self, dest, key: str, args: dict | None) -> bool:
        return (dest, key, freeze(args or {})) in self.bindings

    def remove_binding(self, dest, key: str, args: dict | None) -> bool:
        bid = (dest, key, freeze(args or {}))
        if bid not in self.bindings:
            return False
        self._drop(bid)
        return True

    def remove_dest(self, dest) -> None:
        for bid in list(self.by_dest.get(dest, ())):
            self._drop(bid)

    def _drop(self, bid) -> None:
        dest, key, _ = bid
        args = self.bindings.pop(bid)
        ids = self.by_dest[dest]
        ids.discard(bid)
        if not ids:
            del self.by_dest[dest]
            dest.sources.discard(self)
        if isinstance(dest, Exchange):
            self.exchange_dests -= 1
        self._unindex(dest, key, args)

    def check_equivalent(self, kind: str, durable: bool, auto_delete: bool, internal: bool,
                         arguments: dict | None) -> None:
        for arg, new, old in (("type", kind, self.kind), ("durable", durable, self.durable),
                              ("auto_delete", auto_delete, self.auto_delete),
                              ("internal", internal, self.internal)):
            if new != old:
                raise errors.PreconditionFailed(
                    f"inequivalent arg '{arg}' for {self.label}: received {_show(new)} but "
                    f"current is {_show(old)}")
        # RabbitMQ compares only the arguments it knows for exchanges.
        arguments = arguments or {}
        for key in EQUIVALENCE_ARGS:
            new, old = arguments.get(key), self.arguments.get(key)
            if not same_value(new, old):
                raise errors.PreconditionFailed(
                    f"inequivalent arg '{key}' for {self.label}: received "
                    f"{describe(new, old)} but current is {describe(old, new)}")

    def validate_binding(self, key: str, args: dict | None) -> None:
        """Hook for exchange types with argument rules (headers)."""

    @classmethod
    def validate_arguments(cls, label: str, arguments: dict, types=None) -> None:
        """Declare-time checks of the exchange's arguments (406 as RabbitMQ and its plugins)."""
        ae = arguments.get("alternate-exchange")
        if "alternate-exchange" in arguments and not isinstance(ae, (str, bytes)):
            raise errors.PreconditionFailed(
                f"invalid type '{type_name(ae)}' for arg 'alternate-exchange' in {label}")

    delays_messages = False    # a delayed exchange takes messages aside (take_aside) first

    # Subclasses maintain an index and answer route() from it.
    def _index(self, dest, key, args): ...
    def _unindex(self, dest, key, args): ...

    def route(self, message):
        raise NotImplementedError


def _show(value) -> str:
    if isinstance(value, bool):
        return "'true'" if value else "'false'"
    if value is None:
        return "none"
    return f"'{value}'"


class _Counted:
    """dest -> number of bindings, so a dest bound twice is routed to once."""

    @staticmethod
    def inc(table: dict, dest) -> None:
        table[dest] = table.get(dest, 0) + 1

    @staticmethod
    def dec(table: dict, dest) -> None:
        n = table[dest] - 1
        if n:
            table[dest] = n
        else:
            del table[dest]


class DirectExchange(Exchange):
    kind = "direct"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.table: dict = {}     # routing key -> {dest: count}

    def _index(self, dest, key, args):
        _Counted.inc(self.table.setdefault(key, {}), dest)

    def _unindex(self, dest, key, args):
        dests = self.table[key]
        _Counted.dec(dests, dest)
        if not dests:
            del self.table[key]

    def route(self, message):
        return self.table.get(message.routing_key, ())


class FanoutExchange(Exchange):
    kind = "fanout"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.dests: dict = {}

    def _index(self, dest, key, args):
        _Counted.inc(self.dests, dest)

    def _unindex(self, dest, key, args):
        _Counted.dec(self.dests, dest)

    def route(self, message):
        return self.dests


class TopicExchange(Exchange):
    kind = "topic"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.trie = TopicTrie()

    def _index(self, dest, key, args):
        self.trie.bind(key, dest)

    def _unindex(self, dest, key, args):
        self.trie.unbind(key, dest)

    def route(self, message):
        return self.trie.match(message.routing_key)


class HeadersExchange(Exchange):
    kind = "headers"

    def validate_binding(self, key, args):
        problem = headers_match.validate_binding_args(args)
        if problem:
            raise errors.PreconditionFailed(problem)

    def route(self, message):
        if not self.bindings:
            return ()
        headers = message.headers
        matched = set()
        for (dest, _key, _frozen), args in self.bindings.items():
            if dest not in matched and headers_match.headers_match(args, headers):
                matched.add(dest)
        return matched


class DefaultExchange(DirectExchange):
    """The nameless exchange: every queue is implicitly bound by its name."""

    def route(self, message):
        queue = self.vhost.queues.get(message.routing_key)
        if queue is None and message.routing_key.startswith("amq.rabbitmq.reply-to."):
            queue = self.vhost.reply_queues.get(message.routing_key)
        return (queue,) if queue is not None else ()


