"""The channel's method handlers, one function per AMQP method, in a table keyed by pamqp's
method class (``HANDLERS``): the table is the list of methods amqpd supports on a channel.
Each handler checks permissions the way RabbitMQ's permission table says, asks the broker, and
answers on the channel."""
from __future__ import annotations

import secrets
import struct
from typing import TYPE_CHECKING

from pamqp import commands as C
from pamqp import frame as pamqp_frame

from .. import errors
from ..broker.consumer import Consumer
from ..wire import fastpath, framing
from ..wire.framing import FRAME_METHOD
from ..wire.tables import text
from .reply_to import REPLY_TO

if TYPE_CHECKING:
    from .channel import Channel

Basic, Channel_, Exchange, Queue, Confirm, Tx = (C.Basic, C.Channel, C.Exchange, C.Queue,
                                                 C.Confirm, C.Tx)


def class_method(method) -> tuple[int, int]:
    return method.index >> 16, method.index & 0xFFFF


def handle(ch: Channel, method) -> None:
    """Run the handler of a decoded method on an open channel."""
    handler = HANDLERS.get(type(method))
    if handler is None:
        raise errors.CommandInvalid("unimplemented method", *class_method(method))
    handler(ch, method)


def _ok(ch: Channel, method, reply) -> None:
    if not getattr(method, "nowait", False):
        ch.send(reply)


# -- channel class --------------------------------------------------------------------------------
def channel_close(ch: Channel, m) -> None:
    ch.conn.close_channel(ch, client_initiated=True)


def channel_flow(ch: Channel, m: Channel_.Flow) -> None:
    if not m.active:
        raise errors.NotImplemented_("active=false", 20, 20)
    ch.send(Channel_.FlowOk(active=True))


def channel_open(ch: Channel, m) -> None:
    raise errors.ChannelErrorConn("second 'channel.open' seen", 20, 10)


# -- exchange class -------------------------------------------------------------------------------
def exchange_declare(ch: Channel, m: Exchange.Declare) -> None:
    if not m.passive:
        ch.conn.authorize("configure", "exchange", m.exchange)
        ae = (m.arguments or {}).get("alternate-exchange")
        if isinstance(ae, (str, bytes)) and ae:
            ch.conn.authorize("read", "exchange", m.exchange)
            ch.conn.authorize("write", "exchange", text(ae))
    ch.vhost.declare_exchange(m.exchange, m.exchange_type, m.passive, m.durable, m.auto_delete,
                              m.internal, m.arguments or {})
    _ok(ch, m, Exchange.DeclareOk())


def exchange_delete(ch: Channel, m: Exchange.Delete) -> None:
    ch.conn.authorize("configure", "exchange", m.exchange)
    ch.vhost.delete_exchange(m.exchange, m.if_unused)
    _ok(ch, m, Exchange.DeleteOk())


def exchange_bind(ch: Channel, m: Exchange.Bind) -> None:
    # RabbitMQ's order: write on the destination, the default-exchange rule, read on the
    # source, then existence.
    ch.conn.authorize("write", "exchange", m.destination)
    if not m.destination or not m.source:
        raise errors.AccessRefused("operation not permitted on the default exchange")
    ch.conn.authorize("read", "exchange", m.source)
    source = ch.vhost.exchange(m.source)
    dest = ch.vhost.exchange(m.destination)
    ch.vhost.bind(source, dest, m.routing_key, m.arguments or {})
    _ok(ch, m, Exchange.BindOk())


def exchange_unbind(ch: Channel, m: Exchange.Unbind) -> None:
    if not m.destination or not m.source:
        raise errors.AccessRefused("operation not permitted on the default exchange")
    ch.conn.authorize("write", "exchange", m.destination)
    ch.conn.authorize("read", "exchange", m.source)
    dest = ch.vhost.exchanges.get(m.destination)
    source = ch.vhost.exchanges.get(m.source)
    if dest is not None and source is not None:
        ch.vhost.unbind(source, dest, m.routing_key, m.arguments or {})
    _ok(ch, m, Exchange.UnbindOk())


# -- queue class ----------------------------------------------------------------------------------
def queue_declare(ch: Channel, m: Queue.Declare) -> None:
    if m.queue == REPLY_TO or m.queue.startswith(REPLY_TO + "."):
        _reply_declare(ch, m)
        return
    if not m.passive:
        # A server-named queue is checked under its generated name by RabbitMQ; "amq.gen-*"
        # is what a permission regex can match for it.
        ch.conn.authorize("configure", "queue", m.queue or "amq.gen-")
        dlx = (m.arguments or {}).get("x-dead-letter-exchange")
        if isinstance(dlx, (str, bytes)) and dlx:
            ch.conn.authorize("read", "queue", m.queue or "amq.gen-")
            ch.conn.authorize("write", "exchange",
                              text(dlx))
    q = ch.vhost.declare_queue(m.queue, ch.conn, m.passive, m.durable, m.exclusive,
                               m.auto_delete, m.arguments or {})
    ch.last_queue = q.name
    announce = getattr(q, "announce", None)
    if announce is not None:
        # clustering: a new shared queue is declared-ok once the cluster has it, so a
        # client that goes on through another node finds it there
        del q.announce
        if not m.nowait:
            slot = ch.conn.defer()
            frame = _declare_ok_frame(ch, q.name, q.message_count, len(q.consumers))
            announce(lambda: slot.reply(frame))
            return
    if getattr(q, "forwarded", False):
        if not m.nowait:          # the counts are the leader's: asked, answered in order
            slot = ch.conn.defer()
            q.ask("counts", {}, lambda answer: _remote_answer(
                ch, slot, answer, lambda a: _declare_ok_frame(
                    ch, q.name, a["messages"], a["consumers"])))
        return
    _declare_ok(ch, m, q.name, q.message_count, len(q.consumers))


def _declare_ok(ch: Channel, m: Queue.Declare, name: str, messages: int, consumers: int) -> None:
    """Queue.Declare-Ok, encoded here: pamqp refuses to build one for a name outside its
    ASCII pattern (``tâche``, ``a*b``), and RabbitMQ accepts any UTF-8 name up to 255 bytes."""
    if not m.nowait:
        ch.conn.write(_declare_ok_frame(ch, name, messages, consumers))


def _declare_ok_frame(ch: Channel, name: str, messages: int, consumers: int) -> bytes:
    return framing.frame(FRAME_METHOD, ch.number, _DECLARE_OK + fastpath.shortstr(name)
                         + _counts(messages, consumers))


def _remote_answer(ch: Channel, slot, answer, make) -> None:
    """A queue led by another node answered (clustering): ``make(answer)`` gives the reply's
    bytes for the place ``slot`` keeps in the output; an error (an AMQPError as the answer,
    or one ``make`` raises) closes the channel there instead, as if raised by the handler."""
    if ch.state != "open":
        slot.reply(b"")
        return
    try:
        if isinstance(answer, errors.AMQPError):
            raise answer
        slot.reply(make(answer))
    except errors.AMQPError as exc:
        if exc.connection_level:
            slot.reply(b"")
            ch.conn._connection_error(exc)
            return
        ch.cleanup()
        slot.reply(pamqp_frame.marshal(Channel_.Close(
            reply_code=exc.code, reply_text=errors.shorten(exc.reply_text),
            class_id=exc.class_id or 0, method_id=exc.method_id or 0), ch.number))


_DECLARE_OK = struct.pack(">HH", 50, 11)
_counts = struct.Struct(">II").pack


def _reply_declare(ch: Channel, m: Queue.Declare) -> None:
    """Declaring the direct reply-to pseudo-queue (or a live reply name) succeeds, as in
    RabbitMQ; clients such as Spring AMQP probe for the feature this way."""
    if m.queue == REPLY_TO:
        _declare_ok(ch, m, REPLY_TO, 0, 1)
        return
    q = ch.vhost.reply_queues.get(m.queue)
    if q is None:
        raise errors.NotFound(f"no queue '{m.queue}' in vhost '{ch.vhost.name}'")
    _declare_ok(ch, m, q.name, 0, len(q.consumers))


def _queue_name(ch: Channel, name: str) -> str:
    """The queue a method names ("" is the channel's last declared queue); 404 when none."""
    name = name or ch.last_queue
    if not name:
        raise errors.NotFound("no previously declared queue")
    return name


def _queue(ch: Channel, name: str):
    """An empty name means the channel's last declared queue, as in RabbitMQ."""
    if not name:
        name = ch.last_queue
        if not name:
            raise errors.NotFound("no previously declared queue")
    return ch.vhost.queue(name, ch.conn)


def queue_bind(ch: Channel, m: Queue.Bind) -> None:
    ch.conn.authorize("write", "queue", _queue_name(ch, m.queue))   # permissions first
    ch.conn.authorize("read", "exchange", m.exchange)
    ex = ch.vhost.exchange(m.exchange)
    q = _queue(ch, m.queue)
    ch.vhost.bind(ex, q, m.routing_key, m.arguments or {})
    _ok(ch, m, Queue.BindOk())


def queue_unbind(ch: Channel, m: Queue.Unbind) -> None:
    # Unbinding is an idempotent assertion in RabbitMQ: missing things are not errors.
    if not m.exchange:
        raise errors.AccessRefused("operation not permitted on the default exchange")
    ch.conn.authorize("write", "queue", m.queue or ch.last_queue)
    ch.conn.authorize("read", "exchange", m.exchange)
    q = ch.vhost.queues.get(m.queue or ch.last_queue)
    ex = ch.vhost.exchanges.get(m.exchange)
    if q is not None and ex is not None and ex.has_binding(q, m.routing_key, m.arguments):
        ch.vhost.queue(q.name, ch.conn)       # another connection's exclusive queue: 405
        ch.vhost.unbind(ex, q, m.routing_key, m.arguments or {})
    ch.send(Queue.UnbindOk())


def queue_purge(ch: Channel, m: Queue.Purge) -> None:
    ch.conn.authorize("read", "queue", _queue_name(ch, m.queue))
    q = _queue(ch, m.queue)
    if getattr(q, "forwarded", False):
        slot = None if m.nowait else ch.conn.defer()
        q.ask("purge", {}, None if slot is None else lambda answer: _remote_answer(
            ch, slot, answer, lambda a: pamqp_frame.marshal(
                Queue.PurgeOk(message_count=a["count"]), ch.number)))
        return
    _ok(ch, m, Queue.PurgeOk(message_count=q.purge()))


def queue_delete(ch: Channel, m: Queue.Delete) -> None:
    name = m.queue or ch.last_queue
    if not name:
        raise errors.NotFound("no previously declared queue")
    ch.conn.authorize("configure", "queue", name)
    q = ch.vhost.queues.get(name)
    if q is None:
        _ok(ch, m, Queue.DeleteOk(message_count=0))
        return
    ch.vhost.queue(name, ch.conn)          # exclusive check
    if getattr(q, "forwarded", False):
        _remote_delete(ch, m, q)
        return
    if m.if_unused and q.consumers:
        raise errors.PreconditionFailed(f"{q.label} in use", 50, 40)
    if m.if_empty and q.message_count:
        raise errors.PreconditionFailed(f"{q.label} not empty", 50, 40)
    # delete-ok before the consumers' basic.cancel, as RabbitMQ (deterministic when the
    # consumer is on this channel: kombu's delete() must not see the cancel first)
    _ok(ch, m, Queue.DeleteOk(message_count=q.message_count))
    ch.vhost.delete_queue(q)


def _remote_delete(ch: Channel, m: Queue.Delete, q) -> None:
    """A queue led by another node: the leader checks if-unused / if-empty, deletes it with
    its messages and says how many; this node's proxy goes once it answered (the other
    nodes' through the cluster's metadata)."""
    slot = None if m.nowait else ch.conn.defer()

    def answered(answer):
        if not isinstance(answer, errors.AMQPError) and not q.deleted:
            q.vhost.delete_queue(q)
        if slot is not None:
            _remote_answer(ch, slot, answer, lambda a: pamqp_frame.marshal(
                Queue.DeleteOk(message_count=a["count"]), ch.number))
        ch.conn.broker.run_dispatch()
    q.ask("delete", {"if_unused": bool(m.if_unused), "if_empty": bool(m.if_empty)}, answered)


# -- basic class ----------------------------------------------------------------------------------
def basic_qos(ch: Channel, m: Basic.Qos) -> None:
    if m.prefetch_size:
        raise errors.NotImplemented_(
            f"prefetch_size!=0 ({m.prefetch_size})", 60, 10)
    if m.global_:
        ch.global_prefetch = m.prefetch_count
        for c in ch.consumers.values():
            ch.conn.broker.schedule(c.queue)
    else:
        ch.prefetch = m.prefetch_count
    ch.send(Basic.QosOk())


def basic_consume(ch: Channel, m: Basic.Consume) -> None:
    if m.queue == REPLY_TO:
        _reply_consume(ch, m)
        return
    ch.conn.authorize("read", "queue", _queue_name(ch, m.queue))
    q = _queue(ch, m.queue)
    tag = m.consumer_tag or "amq.ctag-" + secrets.token_urlsafe(16)
    if tag in ch.consumers:
        raise errors.NotAllowed(f"attempt to reuse consumer tag '{tag}'", 60, 20)
    args = m.arguments or {}
    priority = args.get("x-priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise errors.PreconditionFailed(
            f"invalid arg 'x-priority' for {q.label}: expected an integer", 60, 20)
    consumer = Consumer(tag, ch, q, m.no_ack, m.exclusive, priority, ch.prefetch, args)
    if getattr(q, "forwarded", False) and not m.nowait:
        _remote_consume(ch, q, consumer)
        return
    q.add_consumer(consumer)
    ch.consumers[tag] = consumer
    _ok(ch, m, Basic.ConsumeOk(consumer_tag=tag))


def _remote_consume(ch: Channel, q, consumer: Consumer) -> None:
    """A consumer of a queue led by another node: consume-ok once the leader took it; its
    refusal (403, the queue in exclusive use there) closes the channel where the consume was
    asked, as RabbitMQ answers basic.consume."""
    tag = consumer.tag

    def answered(answer) -> None:           # on a later loop turn, after defer() below
        if isinstance(answer, errors.AMQPError):
            if ch.consumers.get(tag) is consumer:
                del ch.consumers[tag]
            q.remove_consumer(consumer)
        _remote_answer(ch, slot, answer,
                       lambda _answer: pamqp_frame.marshal(Basic.ConsumeOk(consumer_tag=tag),
                                                           ch.number))
    q.add_consumer(consumer, answered)      # a 403 or 404 known here is raised at once
    ch.consumers[tag] = consumer
    slot = ch.conn.defer()


def _reply_consume(ch: Channel, m: Basic.Consume) -> None:
    """Direct reply-to: a consumer on the pseudo-queue amq.rabbitmq.reply-to gets a hidden,
    connection-exclusive queue whose name is what publishers' reply_to is rewritten to."""
    if not m.no_ack:
        raise errors.PreconditionFailed("reply consumer cannot acknowledge", 60, 20)
    if ch.reply_queue is not None:
        raise errors.PreconditionFailed("reply consumer already set", 60, 20)
    q = ch.vhost.reply_queue(ch.conn)
    tag = m.consumer_tag or "amq.ctag-" + secrets.token_urlsafe(16)
    if tag in ch.consumers:
        raise errors.NotAllowed(f"attempt to reuse consumer tag '{tag}'", 60, 20)
    consumer = Consumer(tag, ch, q, True, False, 0, 0, {})
    q.add_consumer(consumer)
    ch.consumers[tag] = consumer
    ch.reply_queue = q
    _ok(ch, m, Basic.ConsumeOk(consumer_tag=tag))


def basic_cancel(ch: Channel, m: Basic.Cancel) -> None:
    consumer = ch.consumers.pop(m.consumer_tag, None)
    if consumer is not None:
        if consumer.queue is ch.reply_queue:
            ch.reply_queue = None
        consumer.queue.remove_consumer(consumer)
    _ok(ch, m, Basic.CancelOk(consumer_tag=m.consumer_tag))


def basic_get(ch: Channel, m: Basic.Get) -> None:
    ch.conn.authorize("read", "queue", _queue_name(ch, m.queue))
    q = _queue(ch, m.queue)
    if getattr(q, "forwarded", False):
        _remote_get(ch, m, q)
        return
    entry = q.take()
    counts, qcounts = ch.counts, q.counts      # statistics (broker/stats.py)
    if entry is None:
        counts.gets_empty += 1
        qcounts.gets_empty += 1
        ch.send(Basic.GetEmpty())
        return
    if m.no_ack:
        q.settle(entry)
    tag = _got(ch, q, entry, m.no_ack)
    msg = entry.message
    conn = ch.conn
    fastpath.write_get_ok(conn.out, ch.number, tag, entry.redelivered, msg.raw_route,
                          q.message_count, msg.header, msg.body, conn.frame_max)
    conn.wrote(len(msg.body))


def _got(ch: Channel, q, entry, no_ack: bool) -> int:
    """A basic.get took ``entry``: its delivery tag, held unacked unless ``no_ack``, and
    counted on the channel and the queue."""
    counts, qcounts = ch.counts, q.counts
    ch.next_tag = tag = ch.next_tag + 1
    if no_ack:
        counts.gets_no_ack += 1
        qcounts.gets_no_ack += 1
    else:
        ch.unacked[tag] = (q, entry, None)
        counts.gets += 1
        qcounts.gets += 1
    if entry.redelivered:
        counts.get_redelivered += 1
        qcounts.get_redelivered += 1
    return tag


def _remote_get(ch: Channel, m: Basic.Get, q) -> None:
    """basic.get from a queue led by another node: the leader takes the message (and holds
    it unacked for this node); get-ok or get-empty goes out where the get was asked."""
    slot = ch.conn.defer()
    no_ack = bool(m.no_ack)

    def answered(answer):
        if ch.state != "open" and not isinstance(answer, errors.AMQPError):
            if answer.get("entry") is not None and not no_ack:
                q.give_back(answer["entry"])      # the client never saw it
            slot.reply(b"")
            return
        _remote_answer(ch, slot, answer, got)

    def got(answer) -> bytes:
        counts, qcounts = ch.counts, q.counts
        entry = answer.get("entry")
        if entry is None:
            counts.gets_empty += 1
            qcounts.gets_empty += 1
            return pamqp_frame.marshal(Basic.GetEmpty(), ch.number)
        tag = _got(ch, q, entry, no_ack)
        msg = entry.message
        out: list = []
        fastpath.write_get_ok(out, ch.number, tag, entry.redelivered, msg.raw_route,
                              answer["count"], msg.header, msg.body, ch.conn.frame_max)
        return b"".join(out)
    q.ask("get", {"no_ack": no_ack}, answered)


def basic_recover(ch: Channel, m) -> None:
    if not m.requeue:
        raise errors.NotImplemented_("requeue=false", *class_method(m))
    ch.requeue_all()
    if isinstance(m, Basic.Recover):
        ch.send(Basic.RecoverOk())


def basic_recover_async(ch: Channel, m) -> None:
    basic_recover(ch, m)


# -- confirm and tx -------------------------------------------------------------------------------
def confirm_select(ch: Channel, m: Confirm.Select) -> None:
    if ch.tx is not None:
        raise errors.PreconditionFailed("cannot switch from tx to confirm mode", 85, 10)
    ch.confirm = True
    ch.conn.confirming = True        # its reads may be larger (edge/protocol.py)
    _ok(ch, m, Confirm.SelectOk())


def tx_select(ch: Channel, m) -> None:
    if ch.confirm:
        raise errors.PreconditionFailed("cannot switch from confirm to tx mode", 90, 10)
    if ch.tx is None:
        ch.tx = []
    ch.send(Tx.SelectOk())


def tx_commit(ch: Channel, m) -> None:
    if ch.tx is None:
        raise errors.PreconditionFailed("channel is not transactional", 90, 20)
    actions, ch.tx = ch.tx, None
    try:
        for fn, args in actions:
            fn(*args)
    finally:
        ch.tx = []
    ch.send(Tx.CommitOk())


def tx_rollback(ch: Channel, m) -> None:
    if ch.tx is None:
        raise errors.PreconditionFailed("channel is not transactional", 90, 30)
    # Rolled-back acks leave their messages unacked on the channel, as RabbitMQ does.
    ch.restore_tx_acks()
    ch.tx = []
    ch.send(Tx.RollbackOk())


HANDLERS = {
    Channel_.Close: channel_close, Channel_.Flow: channel_flow, Channel_.Open: channel_open,
    Exchange.Declare: exchange_declare, Exchange.Delete: exchange_delete,
    Exchange.Bind: exchange_bind, Exchange.Unbind: exchange_unbind,
    Queue.Declare: queue_declare, Queue.Bind: queue_bind, Queue.Unbind: queue_unbind,
    Queue.Purge: queue_purge, Queue.Delete: queue_delete,
    Basic.Qos: basic_qos, Basic.Consume: basic_consume, Basic.Cancel: basic_cancel,
    Basic.Get: basic_get, Basic.Recover: basic_recover, Basic.RecoverAsync: basic_recover_async,
    Confirm.Select: confirm_select,
    Tx.Select: tx_select, Tx.Commit: tx_commit, Tx.Rollback: tx_rollback,
}
