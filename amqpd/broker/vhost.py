"""A virtual host: its own exchanges, queues and bindings, and the routing between them."""
import secrets

from .. import errors
from .exchange import DefaultExchange, Exchange, check_type
from .exchange_types import TYPES
from ..store.definitions import encode_args
from .arguments import validate as validate_arguments
from .message import with_routing_key
from .publish import (ACCEPTED, DUPLICATE, REJECTED, STORED, UNROUTABLE, PublishResult,
                      with_tickets)
from .queue import Queue
from .policy import PolicySet
from .queue_policy import refresh_exchange, refresh_queue
from .stats import retire_consumer

STANDARD_EXCHANGES = (("amq.direct", "direct"), ("amq.fanout", "fanout"),
                      ("amq.topic", "topic"), ("amq.headers", "headers"),
                      ("amq.match", "headers"), ("amq.rabbitmq.trace", "topic"))


class VHost:
    types = TYPES            # the exchange types, by the name clients declare

    def __init__(self, broker, name: str):
        self.broker = broker
        self.name = name
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        self.reply_queues: dict[str, Queue] = {}     # direct reply-to consumers' queues
        self.max_queues = None          # vhost limit set by definitions (None: the config's)
        self.policies = PolicySet()     # policies and operator policies (queue_policy.py)
        self.default = DefaultExchange(self, "", durable=True)
        self.exchanges[""] = self.default
        for xname, kind in STANDARD_EXCHANGES:
            # amq.rabbitmq.trace exists for clients that bind to it; nothing publishes there yet
            self.exchanges[xname] = TYPES[kind](self, xname, durable=True,
                                                internal=xname == "amq.rabbitmq.trace")

    # -- lookups ------------------------------------------------------------------------------
    def exchange(self, name: str) -> Exchange:
        ex = self.exchanges.get(name)
        if ex is None:
            raise errors.NotFound(f"no exchange '{name}' in vhost '{self.name}'")
        return ex

    def queue(self, name: str, owner=None) -> Queue:
        q = self.queues.get(name)
        if q is None:
            raise errors.NotFound(f"no queue '{name}' in vhost '{self.name}'")
        if owner is not None:
            check_exclusive(q, owner)
        return q

    # -- exchanges ----------------------------------------------------------------------------
    def declare_exchange(self, name: str, kind: str, passive: bool, durable: bool,
                         auto_delete: bool, internal: bool, arguments: dict) -> Exchange:
        cls = TYPES.get(kind) if passive else check_type(kind, TYPES)   # type before name
        if not name:
            raise errors.AccessRefused("operation not permitted on the default exchange")
        if passive:
            return self.exchange(name)
        existing = self.exchanges.get(name)
        if existing is not None:
            existing.check_equivalent(kind, durable, auto_delete, internal, arguments)
            return existing
        if name.startswith("amq."):
            raise errors.AccessRefused(
                f"exchange name '{name}' contains reserved prefix 'amq.*'")
        cls.validate_arguments(f"exchange '{name}' in vhost '{self.name}'", arguments or {},
                               self.types)
        ex = cls(self, name, durable, auto_delete, internal, arguments)
        refresh_exchange(ex)
        if durable:
            self._persist({"op": "exchange", "name": name, "type": kind, "durable": True,
                           "auto_delete": auto_delete, "internal": internal,
                           "args": encode_args(arguments)},
                          ex if cls.delays_messages else None)
        self.exchanges[name] = ex
        return ex

    def delete_exchange(self, name: str, if_unused: bool) -> None:
        if not name:
            raise errors.AccessRefused("operation not permitted on the default exchange")
        ex = self.exchanges.get(name)
        if ex is None:
            return
        if name.startswith("amq."):
            raise errors.AccessRefused(
                f"deletion of system exchange '{name}' in vhost '{self.name}' not allowed")
        # "In use" means it is the source of a binding (rabbit_binding:has_for_source).
        if if_unused and ex.bindings:
            raise errors.PreconditionFailed(f"exchange '{name}' in vhost '{self.name}' in use")
        self._remove_exchange(ex)

    def _remove_exchange(self, ex: Exchange) -> None:
        del self.exchanges[ex.name]
        if getattr(ex, "log", None) is not None:
            self.broker.store.delete_queue_log(self.name, self._log_key(ex))
            ex.log = None
        if ex.durable:
            self.journal({"op": "exchange.delete", "name": ex.name})
        for dest in list(ex.by_dest):
            ex.remove_dest(dest)
        for source in list(ex.sources):
            source.remove_dest(ex)
            self._maybe_auto_delete(source)

    def _maybe_auto_delete(self, ex: Exchange) -> None:
        if ex.auto_delete and not ex.bindings and self.exchanges.get(ex.name) is ex:
            self._remove_exchange(ex)

    # -- queues -------------------------------------------------------------------------------
    def declare_queue(self, name: str, owner, passive: bool, durable: bool, exclusive: bool,
                      auto_delete: bool, arguments: dict) -> Queue:
        if passive:
            if not name:
                raise errors.NotFound(f"no queue '' in vhost '{self.name}'")
            return self.queue(name, owner)
        if name:
            if name.startswith("amq."):     # checked before the lookup, as RabbitMQ does
                raise errors.AccessRefused(
                    f"queue name '{name}' contains reserved prefix 'amq.*'")
            existing = self.queues.get(name)
            if existing is not None:
                check_exclusive(existing, owner)
                if exclusive != (existing.exclusive_owner is not None):
                    raise_locked(existing)
                existing.check_equivalent(durable, auto_delete, arguments)
                if existing.opts.expires:
                    existing.touch()
                self.broker.counters.queues_declared += 1
                return existing
        else:
            name = "amq.gen-" + secrets.token_urlsafe(16)
        validate_arguments(f"queue '{name}' in vhost '{self.name}'", arguments or {}, durable,
                           exclusive, auto_delete)
        limit = self.max_queues         # from imported definitions: 0 forbids, as RabbitMQ
        if limit is None:
            limit = getattr(self.broker.config.limits, "max_queues_per_vhost", 0) or None
        if limit is not None and len(self.queues) >= limit:
            raise errors.PreconditionFailed(
                f"cannot declare queue '{name}' in vhost '{self.name}': queue limit in vhost "
                f"'{self.name}' ({limit}) is reached")
        q = self.broker.queue_factory(self, name, durable, owner if exclusive else None,
                                      auto_delete, arguments)
        refresh_queue(q)
        if exclusive:
            owner.exclusive_queues.add(q)
        elif durable:
            # a queue led by another node (clustering) keeps no log here: only its definition
            self._persist({"op": "queue", "name": name, "durable": True,
                           "auto_delete": auto_delete, "args": encode_args(arguments)},
                          None if getattr(q, "keeps_no_log", False) else q)
        self.queues[name] = q
        counters = self.broker.counters
        counters.queues_declared += 1
        counters.queues_created += 1
        q.start_paging()
        return q

    def _persist(self, entry: dict, logged=None) -> None:
        """A durable declaration reaches the disk (with the log of ``logged``, a queue or a
        delayed exchange) before the object exists: if any of it fails (a full disk), nothing
        is left behind and the client hears 541, never a declare-ok it could not rely on."""
        store = self.broker.store
        if store is None:
            return
        key = self._log_key(logged) if logged is not None else None
        try:
            if logged is not None:
                logged.log = self._open_log(store, logged, key)
                if isinstance(logged, Queue):
                    logged.start_paging()
            self.journal(entry)
        except OSError as exc:
            if logged is not None:
                logged.log = None
                store.delete_queue_log(self.name, key)
            raise errors.InternalError(f"cannot write to the data directory: "
                                       f"{exc.strerror or exc}") from None

    @staticmethod
    def _log_key(owner) -> str:
        if isinstance(owner, Queue):
            return owner.name
        return getattr(owner, "log_key", None) or "\0delayed:" + owner.name

    def _open_log(self, store, owner, key: str):
        if getattr(owner, "delays_messages", False):
            return store.delayed_log(self.name, key)       # its held messages, by due time
        return store.queue_log(self.name, key)

    def reply_queue(self, owner) -> Queue:
        """A hidden queue for a direct reply-to consumer: routable only by its name through
        the default exchange, gone with its consumer."""
        name = "amq.rabbitmq.reply-to." + secrets.token_urlsafe(24)
        q = Queue(self, name, False, owner, True, {})
        self.reply_queues[name] = q
        owner.exclusive_queues.add(q)
        return q

    def attach_log(self, owner) -> None:
        """Open the log of a recovered durable queue or delayed exchange."""
        store = self.broker.store
        if store is not None:
            owner.log = self._open_log(store, owner, self._log_key(owner))
            if isinstance(owner, Queue):
                owner.start_paging()

    def delete_queue(self, q: Queue) -> int:
        """Remove a queue, its bindings and its consumers; returns the messages dropped."""
        if q.deleted:
            return 0
        q.deleted = True
        if self.queues.get(q.name) is q:
            del self.queues[q.name]
        if self.reply_queues.pop(q.name, None) is None:
            self.broker.counters.queues_deleted += 1
        for ex in list(q.sources):
            ex.remove_dest(q)
            self._maybe_auto_delete(ex)
        for consumer in list(q.consumers):
            consumer.channel.queue_deleted(consumer)
        q.consumers.clear()
        if q.exclusive_owner is not None:
            q.exclusive_owner.exclusive_queues.discard(q)
        count = q.message_count
        q.discard()
        if q.log is not None:
            self.journal({"op": "queue.delete", "name": q.name})
            self.broker.store.delete_queue_log(self.name, q.name)
            q.log = None
        elif q.durable and getattr(q, "keeps_no_log", False):
            self.journal({"op": "queue.delete", "name": q.name})
        return count

    def replace_queue(self, old: Queue, new: Queue) -> None:
        """Put ``new`` where ``old`` was (clustering: the queue's leader moved, so the object
        that stands for it here changes kind): ``new`` gets old's bindings; old's consumers
        are told with basic.cancel (where the client asked to be told); old is marked
        deleted, so acks of what it delivered are taken and dropped (its ``settle`` decides
        what that means), never refused. Old's log, if any, is left to the caller."""
        if self.queues.get(old.name) is old:
            self.queues[new.name] = new
        for ex in list(old.sources):
            for (dest, key, _frozen), args in list(ex.bindings.items()):
                if dest is old:
                    ex.add_binding(new, key, args)
            ex.remove_dest(old)
        old.deleted = True
        refresh_queue(new)
        for consumer in list(old.consumers):
            if not self._resubscribe(consumer, new):
                consumer.channel.queue_deleted(consumer)
        old.consumers.clear()

    @staticmethod
    def _resubscribe(consumer, new) -> bool:
        """A client that cannot be told of a cancel (no ``consumer_cancel_notify`` in its
        capabilities) would wait forever on a consumer that is gone: its consumer goes on,
        with the same tag, on the queue's new object (deliveries it had are redelivered
        there; its acks of them are dropped, as for any client). Whether it was moved."""
        channel = consumer.channel
        capabilities = getattr(channel.conn, "capabilities", None)   # (None: another node's
        if capabilities is None or capabilities.get("consumer_cancel_notify") \
                or channel.consumers.get(consumer.tag) is not consumer:     # link, told)
            return False
        fresh = type(consumer)(consumer.tag, channel, new, consumer.no_ack, consumer.exclusive,
                               consumer.priority, consumer.prefetch, consumer.arguments)
        try:
            # (a proxy's ``adopt`` keeps it while the new leader's link is not up yet)
            getattr(new, "adopt", new.add_consumer)(fresh)
        except errors.AMQPError:
            return False
        retire_consumer(consumer)
        channel.consumers[consumer.tag] = fresh
        return True

    # -- bindings -----------------------------------------------------------------------------
    def bind(self, source: Exchange, dest, key: str, arguments: dict) -> None:
        if source is self.default or dest is self.default:
            raise errors.AccessRefused("operation not permitted on the default exchange")
        source.validate_binding(key, arguments)
        if source.has_binding(dest, key, arguments):
            return
        if _durable_pair(source, dest):
            try:
                self.journal(_binding("bind", source, dest, key, arguments))
            except OSError as exc:
                raise errors.InternalError(f"cannot write to the data directory: "
                                           f"{exc.strerror or exc}") from None
        source.add_binding(dest, key, arguments)

    def unbind(self, source: Exchange, dest, key: str, arguments: dict) -> None:
        if source is self.default or dest is self.default:
            raise errors.AccessRefused("operation not permitted on the default exchange")
        if source.remove_binding(dest, key, arguments):
            if _durable_pair(source, dest):
                self.journal(_binding("unbind", source, dest, key, arguments))
            self._maybe_auto_delete(source)

    def journal(self, entry: dict) -> None:
        """Record a durable definition change (written and fsynced before the client hears
        about it)."""
        store = self.broker.store
        if store is not None:
            entry["vhost"] = self.name
            store.journal.append(entry)

    # -- publishing ---------------------------------------------------------------------------
    def publish(self, ex: Exchange, message, allow=None, take_aside: bool = True) -> PublishResult:
        """The one way a message enters queues: a client's publish, a tx commit, dead-lettering
        and the delayed exchange's release all come here. Route, enqueue everywhere it routes
        (``allow(queue)`` may veto a queue: dead-letter cycles), and say what the publisher
        must hear: REJECTED wins over a Ticket (publish.with_tickets), which wins over STORED,
        which wins over ACCEPTED; DUPLICATE when every queue it reached already had it;
        UNROUTABLE when no queue took it. A delayed exchange first takes the message aside
        (``take_aside``)."""
        if take_aside and ex.delays_messages:
            held = ex.take_aside(message)
            if held is not None:
                return held
        queues = self.route(ex, message)
        if not queues:
            return UNROUTABLE
        if allow is None and len(queues) == 1:
            for q in queues:               # the common case: one queue's verdict is the result
                return q.enqueue(message)
        if allow is None:
            ex.extra_routes += len(queues) - 1     # publish_out (broker/stats.py)
        result = tickets = None
        for q in queues:
            if allow is not None:          # dead-lettering: not a publish to the queue
                if not allow(q):
                    continue
                before = q.next_seq
                verdict = q.enqueue(message)
                q.counts.not_published += q.next_seq - before
            else:
                verdict = q.enqueue(message)
            if verdict is REJECTED:
                result = REJECTED
            elif verdict is STORED:
                if result is not REJECTED:
                    result = STORED
            elif verdict is ACCEPTED:
                if result is None or result is DUPLICATE:
                    result = ACCEPTED
            elif verdict is DUPLICATE:
                if result is None:
                    result = DUPLICATE
            else:                          # a Ticket: decided on another node (clustering)
                tickets = [verdict] if tickets is None else tickets + [verdict]
        if tickets is not None:
            return with_tickets(result, tickets)
        return ACCEPTED if result is None else result

    # -- routing ------------------------------------------------------------------------------
    def route(self, ex: Exchange, message):
        """The queues a message goes to. Exchange-to-exchange bindings are followed once per
        exchange; an exchange whose own bindings match nothing hands the message to its
        alternate exchange (as RabbitMQ: per exchange, after e2e routing)."""
        if message.cc is not None:
            return self._route_all(ex, message, _route_with_cc)
        dests = ex.route(message)
        if not ex.exchange_dests and (dests or ex.alternate is None):
            return dests                       # the common case: one exchange, no detours
        return self._route_all(ex, message, _route_once, dests)

    def _route_all(self, ex: Exchange, message, route, dests=None) -> dict:
        """Routing through exchange-to-exchange bindings and alternate exchanges, each
        exchange once; ``route(exchange, message)`` gives one exchange's destinations."""
        queues: dict = {}
        seen = {ex}
        pending = [(ex, route(ex, message) if dests is None else dests)]
        while pending:
            x, found = pending.pop()
            matched = False
            for d in found:
                matched = True
                if isinstance(d, Exchange):
                    if d not in seen:
                        seen.add(d)
                        pending.append((d, route(d, message)))
                else:
                    queues[d] = None
            if not matched and x.alternate is not None:
                alt = self.exchanges.get(x.alternate)
                if alt is not None and alt not in seen:
                    seen.add(alt)
                    pending.append((alt, route(alt, message)))
        return queues


def _route_once(ex: Exchange, message):
    return ex.route(message)


def _route_with_cc(ex: Exchange, message) -> dict:
    """An exchange's destinations for the routing key and every CC/BCC key (one each)."""
    found = dict.fromkeys(ex.route(message))
    for key in message.cc:
        found.update(dict.fromkeys(ex.route(with_routing_key(message, key))))
    return found


def _durable_pair(source: Exchange, dest) -> bool:
    if isinstance(dest, Queue) and dest.exclusive_owner is not None:
        return False
    return source.durable and dest.durable


def _binding(op: str, source: Exchange, dest, key: str, arguments: dict) -> dict:
    return {"op": op, "source": source.name,
            "dest_kind": "exchange" if isinstance(dest, Exchange) else "queue",
            "dest": dest.name, "key": key, "args": encode_args(arguments)}


def check_exclusive(q: Queue, owner) -> None:
    if q.exclusive_owner is not None and q.exclusive_owner is not owner:
        raise_locked(q)


def raise_locked(q: Queue):
    raise errors.ResourceLocked(
            f"cannot obtain exclusive access to locked queue '{q.name}' in vhost "
            f"'{q.vhost.name}'. It could be originally declared on another connection or the "
            "exclusive property value does not match that of the original declaration.")
