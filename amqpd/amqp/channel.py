"""One AMQP channel's state: content assembly of publishes, consumers and deliveries, the
unacked ledger, publisher confirms and transactions. Its method handlers are in handlers.py,
direct reply-to in reply_to.py. Sans-IO: it writes frames into its connection's output."""
import logging
from collections import deque

from pamqp import commands as C

from ..broker.arguments import check_expiration
from ..broker import sender_selected
from ..broker.consumer import Consumer
from ..broker.message import Message
from ..broker.publish import REJECTED, STORED, UNROUTABLE, Ticket
from ..broker.stats import ChannelStats, Counts, PublishRun, retire_channel, retire_consumer
from ..wire import fastpath, properties
from ..wire.tables import text
from .. import errors
from . import reply_to

Basic, Channel_, Exchange, Queue, Confirm, Tx = (C.Basic, C.Channel, C.Exchange, C.Queue,
                                                 C.Confirm, C.Tx)

log = logging.getLogger("amqpd.channel")

OPEN, CLOSING = "open", "closing"
DISCARD = "discard"          # a publish whose content is checked, then dropped
# A message whose flags name only fixed-size properties (delivery_mode, priority, timestamp)
# and whose header has exactly their length needs no look: one lookup by the flag word and a
# length comparison. Everything else (any string or table property, among them expiration,
# reply_to, user_id and headers) takes one walk over the raw bytes in _check_properties.
FIXED_SIZE = properties.FIXED_SIZE


class Channel:
    stats = property(ChannelStats)       # the statistics read model (broker/stats.py)

    def __init__(self, conn, number: int):
        self.conn = conn
        self.number = number
        self.state = OPEN
        self.vhost = conn.vhost
        self.consumers: dict[str, Consumer] = {}
        self.unacked: dict = {}          # delivery tag -> (queue, entry, consumer or None)
        self.next_tag = 0
        self.prefetch = 0                # basic.qos global=false: applies to new consumers
        self.global_prefetch = 0         # basic.qos global=true: shared by the channel
        self.confirm = False
        self.publish_seq = 0             # confirm mode: sequence of the last publish
        self.confirmed = 0               # highest sequence confirmed so far
        self.pending_sync: deque = deque()  # (publish seq, store generation) awaiting fsync
        self.nacks: deque = deque()      # publish seqs a queue refused (x-overflow)
        self.pending_tickets: deque = deque()  # (publish seq, Ticket): decided elsewhere
        self.tx = None                   # list of deferred actions while in tx mode
        self.tx_held = 0                 # unacked records held by uncommitted tx acks
        self.last_queue = ""             # "" in queue methods means the last declared queue
        self.write_checked = False       # the exchange last authorised for publishing
        self.reply_queue = None          # the hidden queue of a direct reply-to consumer
        # content assembly state
        # (exchange, rk, route, mandatory) of a publish awaiting its content; a publish that
        # will be refused once its content is in is (None, the error or DISCARD, b"", False)
        self.publishing = None
        self.header = None
        self.body_size = 0
        self.body_parts: list = []
        self.received = 0
        # statistics (broker/stats.py): publishes are counted once, in the run of the exchange
        # last authorised (shared with that exchange); the rest is derived or counted off the
        # hot path
        self.run = None
        self.runs: dict = {}             # exchange -> PublishRun
        self.counts = Counts()

    # -- frames -------------------------------------------------------------------------------
    def on_publish(self, payload: bytes) -> None:
        exchange, routing_key, route, mandatory, immediate = fastpath.decode_publish(payload)
        ex = self.vhost.exchanges.get(exchange)
        if ex is not self.write_checked or immediate:   # authorised once per exchange
            refusal = self._refusal(ex, exchange, immediate)
            if refusal is not None:
                self.publishing = (None, refusal, b"", False)
                return
        self.publishing = (ex, routing_key, route, mandatory)

    def _refusal(self, ex, exchange: str, immediate: bool):
        """Why a publish is refused, or None. RabbitMQ checks a publish once its content is
        in, so the error is kept and raised when the content completes."""
        try:
            if immediate:
                raise errors.NotImplemented_("immediate=true", 60, 40)
            if ex is None:
                raise errors.NotFound(f"no exchange '{exchange}' in vhost '{self.vhost.name}'",
                                      60, 40)
            self.conn.authorize("write", "exchange", exchange)
            if ex.internal:
                raise errors.AccessRefused(f"cannot publish to internal exchange '{exchange}' "
                                           f"in vhost '{self.vhost.name}'", 60, 40)
        except errors.AMQPError as exc:
            if exc.class_id is None:
                exc.class_id, exc.method_id = 60, 40
            return exc
        self.write_checked = ex
        self.run = self._run(ex)         # write_checked is ex => run counts ex's publishes
        return None

    def _run(self, ex) -> PublishRun:
        run = self.runs.get(ex)
        if run is None:
            run = self.runs[ex] = PublishRun(ex)
        return run

    def on_content_method(self, payload: bytes) -> None:
        """A content-bearing method only a server sends (basic.deliver, get-ok, return): like
        RabbitMQ, take its content first, then refuse it."""
        self.publishing = (None, errors.CommandInvalid("unimplemented method",
                                                       *_class_method(payload)), b"", False)

    def discard_content(self) -> None:
        """A publish on a closing channel: its content frames are checked, then dropped."""
        self.publishing = (None, DISCARD, b"", False)

    def on_header(self, payload: bytes) -> None:
        if self.publishing is None:
            raise errors.UnexpectedFrame("expected method frame, got non method frame instead")
        if self.header is not None:
            raise errors.UnexpectedFrame(
                "expected content body, got non content body frame instead", 60, 40)
        class_id, weight, body_size = fastpath.peek_content_header(payload)
        if class_id != 60:
            raise errors.UnexpectedFrame(f"expected content header for class 60, got one for "
                                         f"class {class_id} instead", 60, 40)
        if weight:
            raise errors.UnexpectedFrame("expected content header for class 60, got non "
                                         "content header frame instead", 60, 40)
        limit = self.conn.max_message_size
        if limit and body_size > limit and self.publishing[0] is not None:
            # refused once the content is in, as RabbitMQ; its body is not kept meanwhile
            self.publishing = (None, errors.PreconditionFailed(
                f"message size {body_size} is larger than configured max size {limit}", 60, 40),
                b"", False)
        self.header = payload
        self.body_size = body_size
        if body_size == 0:
            self._content_complete(b"")

    def on_body(self, payload: bytes) -> None:
        if self.header is None:
            if self.publishing is None:
                raise errors.UnexpectedFrame(
                    "expected method frame, got non method frame instead")
            raise errors.UnexpectedFrame("expected content header for class 60, got non "
                                         "content header frame instead", 60, 40)
        self.received += len(payload)
        if self.received > self.body_size:
            raise errors.FrameError(
                f"content body exceeds the declared size {self.body_size}")
        if self.received == self.body_size and not self.body_parts:
            self._content_complete(payload)
            return
        if self.publishing[0] is not None:      # a refused or discarded body is not kept
            self.body_parts.append(payload)
        if self.received == self.body_size:
            body = b"".join(self.body_parts)
            self.body_parts = []
            self._content_complete(body)

    def content_interrupted(self) -> None:
        """A method frame arrived where content frames were due."""
        if self.header is None:
            raise errors.UnexpectedFrame("expected content header for class 60, got non "
                                         "content header frame instead", 60, 40)
        raise errors.UnexpectedFrame(
            "expected content body, got non content body frame instead", 60, 40)

    def _content_complete(self, body: bytes) -> None:
        ex, routing_key, route, mandatory = self.publishing
        header = self.header
        self.publishing = self.header = None
        self.received = 0
        if ex is None:
            if routing_key is DISCARD:
                return
            raise routing_key           # a refusal kept until the content was in
        msg = Message(ex.name, routing_key, route, header, body)
        if FIXED_SIZE[header[12] << 8 | header[13]] != len(header):
            self._check_properties(msg)
        if self.tx is not None:
            self.tx.append((self._publish, (ex, msg, mandatory)))
            return
        self.run.n += 1                  # the run of ex: on_publish authorised ex last
        verdict = self.vhost.publish(ex, msg)
        if verdict is UNROUTABLE:
            self._unroutable(ex, msg, mandatory)
        if self.confirm:
            self.publish_seq += 1
            if verdict is STORED:
                self.pending_sync.append((self.publish_seq, self.conn.broker.commit.next_gen))
            elif verdict is REJECTED:
                self.nacks.append(self.publish_seq)
            elif isinstance(verdict, Ticket):
                self._await_ticket(verdict)
            self.conn.confirm_due(self)

    def _await_ticket(self, ticket: Ticket) -> None:
        """A publish whose confirm another node decides (clustering): held until its ticket
        is done, and until this node's fsync too when a local durable queue logged it."""
        seq = self.publish_seq
        if ticket.stored:
            self.pending_sync.append((seq, self.conn.broker.commit.next_gen))
        self.pending_tickets.append((seq, ticket))

    def _check_properties(self, msg: Message) -> None:
        """A property block no client could decode (a headers table with an unknown field type,
        a length past the end, bytes left over...) is refused as RabbitMQ refuses it at publish:
        connection.close 541 INTERNAL_ERROR (0, 0); pika consumers would otherwise die on it one
        after the other. Then expiration, reply_to and user_id get their look."""
        header = msg.header
        try:
            properties.check(header)
        except properties.PropertyError as exc:
            log.info("refusing a publish from %s: %s", self.conn.peer, exc)
            raise errors.InternalError("", 0, 0) from None
        f = properties.flags(header)
        if f & properties.HEADERS and sender_selected.mentioned(header):
            sender_selected.take(msg)
        if f & properties.EXPIRATION:
            check_expiration(properties.peek(header, properties.EXPIRATION))
        if f & properties.REPLY_TO:
            reply_to.rewrite_reply_to(self, msg)
        if f & properties.USER_ID:
            user_id = msg.properties.user_id
            if user_id != self.conn.user:
                raise errors.PreconditionFailed(
                    f"user_id property set to '{text(user_id)}' but authenticated user was "
                    f"'{self.conn.user}'", 60, 40)

    def _publish(self, ex, msg: Message, mandatory: bool) -> None:
        """A publish held by a transaction, at commit."""
        self._run(ex).n += 1
        if self.vhost.publish(ex, msg) is UNROUTABLE:
            self._unroutable(ex, msg, mandatory)

    def _unroutable(self, ex, msg: Message, mandatory: bool) -> None:
        ex.unroutable += 1
        if not mandatory:
            self.counts.dropped += 1
            return
        self.counts.returned += 1
        fastpath.write_return(self.conn.out, self.number, 312, "NO_ROUTE", msg.raw_route,
                              msg.header, msg.body, self.conn.frame_max)
        self.conn.wrote()

    def flush_confirms(self) -> None:
        """One ack per batch of frames, with multiple=true when it covers several publishes.
        A publish that went to disk is confirmed only once the fsync covering it is done, and
        confirms go out in order."""
        if self.state != OPEN:
            return
        upto = self.publish_seq
        pending = self.pending_sync
        if pending:
            commit = self.conn.broker.commit
            synced = commit.synced_gen
            while pending and pending[0][1] <= synced:
                pending.popleft()
            if pending:
                upto = pending[0][0] - 1
                commit.wait(self)
        if self.pending_tickets:
            upto = self._tickets_done(upto)
        if self.nacks:
            self._flush_nacks(upto)
        if upto > self.confirmed:
            multiple = upto - self.confirmed > 1
            self.confirmed = upto
            self.conn.write(fastpath.encode_ack(self.number, upto, multiple))

    def _tickets_done(self, upto: int) -> int:
        """Drop the done tickets at the head (a failed one's publish is nacked); the first
        still open holds back its publish and everything after it."""
        tickets = self.pending_tickets
        while tickets and tickets[0][1].ok is not None:
            seq, ticket = tickets.popleft()
            if not ticket.ok:
                self._add_nack(seq)
        if tickets and tickets[0][0] <= upto:
            upto = tickets[0][0] - 1
            tickets[0][1].wait(self)
        return upto

    def _add_nack(self, seq: int) -> None:
        if self.nacks and self.nacks[-1] > seq:
            self.nacks = deque(sorted([*self.nacks, seq]))
        else:
            self.nacks.append(seq)

    def _flush_nacks(self, upto: int) -> None:
        """Acks up to each refused publish, then its nack (rare: x-overflow reject-publish, a
        failed disk write); a run of consecutive refusals is one nack with multiple=true."""
        nacks = self.nacks
        while nacks and nacks[0] <= upto:
            seq = end = nacks.popleft()
            if seq - 1 > self.confirmed:
                self.conn.write(fastpath.encode_ack(self.number, seq - 1,
                                                    seq - 1 - self.confirmed > 1))
            while nacks and nacks[0] == end + 1 and nacks[0] <= upto:
                end = nacks.popleft()
            self.conn.write(fastpath.encode_ack(self.number, end, end > seq, fastpath.NACK))
            self.counts.nacked += end - seq + 1
            self.confirmed = end

    def nack_generations(self, lo: int, hi: int) -> None:
        """The store failed to write or fsync generations lo < gen <= hi: the publishes that
        waited for them are nacked instead (in order, by flush_confirms)."""
        failed = [seq for seq, gen in self.pending_sync if lo < gen <= hi]
        if not failed:
            return
        self.pending_sync = deque(p for p in self.pending_sync if not lo < p[1] <= hi)
        if self.nacks and self.nacks[-1] > failed[0]:
            self.nacks = deque(sorted([*self.nacks, *failed]))
        else:
            self.nacks.extend(failed)

    # -- delivery -----------------------------------------------------------------------------
    def can_deliver(self, consumer: Consumer) -> bool:
        if not self.conn.can_write():
            return False
        if consumer.no_ack:
            return True
        if consumer.prefetch and consumer.unacked >= consumer.prefetch:
            return False
        if self.global_prefetch and len(self.unacked) + self.tx_held >= self.global_prefetch:
            return False
        return True

    def deliver(self, consumer: Consumer, entry) -> None:
        self.next_tag = tag = self.next_tag + 1
        queue = consumer.queue
        if consumer.no_ack:
            queue.settle(entry)
        else:
            self.unacked[tag] = (queue, entry, consumer)
            consumer.unacked += 1
        consumer.delivered += 1
        redelivered = entry.redelivered
        if redelivered:
            consumer.redelivered += 1
        msg = entry.message
        conn = self.conn
        fastpath.write_deliver(conn.out, self.number, consumer.ctag, tag, redelivered,
                               msg.raw_route, msg.header, msg.body, conn.frame_max)
        conn.wrote(len(msg.body))

    def queue_deleted(self, consumer: Consumer) -> None:
        """The queue went away under a consumer: tell clients that asked to be told."""
        if self.consumers.pop(consumer.tag, None) is not None:
            retire_consumer(consumer)
        if self.state == OPEN and self.conn.capabilities.get("consumer_cancel_notify"):
            self.send(Basic.Cancel(consumer_tag=consumer.tag, nowait=True))

    # -- acknowledgements ---------------------------------------------------------------------
    def on_ack(self, payload: bytes, method_id: int) -> None:
        tag, bits = fastpath.decode_ack(payload)
        if method_id == fastpath.ACK and not bits & 1 and self.tx is None \
                and not self.global_prefetch:
            # the common case, one basic.ack per message: no lists, no loop
            record = self.unacked.pop(tag, None)
            if record is None:
                raise errors.PreconditionFailed(f"unknown delivery tag {tag}", 60, method_id)
            queue, entry, consumer = record
            if consumer is not None:
                self._consumer_settled(queue, consumer)
            queue.settle(entry)
            return
        if method_id == fastpath.ACK:
            multiple, requeue, settle = bits & 1, False, True
        elif method_id == fastpath.NACK:
            multiple, requeue, settle = bits & 1, bool(bits & 2), False
        else:
            multiple, requeue, settle = False, bool(bits & 1), False
        if self.tx is not None:
            # Keep the tags, so a rollback can put the records back.
            tags = self._tags(tag, multiple, method_id)
            records = [(t, self.unacked.pop(t)) for t in tags]
            self.tx_held += len(records)     # still count against prefetch until commit
            self.tx.append((self._settle_tagged, (records, settle, requeue)))
            return
        self._settle(self._take_unacked(tag, multiple, method_id), settle, requeue)

    def _tags(self, tag: int, multiple: bool, method_id: int) -> list:
        """The delivery tags an ack/nack/reject covers; RabbitMQ looks the tag up even with
        multiple=true (only 0 means "everything outstanding")."""
        unacked = self.unacked
        if tag not in unacked and (tag != 0 or not multiple):
            raise errors.PreconditionFailed(f"unknown delivery tag {tag}", 60, method_id)
        if not multiple:
            return [tag]
        if tag == 0:
            return list(unacked)
        tags = []
        for t in unacked:            # ordered by tag
            if t > tag:
                break
            tags.append(t)
        return tags

    def _settle_tagged(self, records: list, ack: bool, requeue: bool) -> None:
        self.tx_held -= len(records)
        self._settle([r for _t, r in records], ack, requeue)

    def restore_tx_acks(self) -> None:
        """Acks of an open transaction did not happen: their records are unacked again."""
        restored = dict(self.unacked)
        for fn, args in self.tx or ():
            if fn == self._settle_tagged:
                restored.update(args[0])
        self.unacked = dict(sorted(restored.items()))
        self.tx_held = 0

    def _take_unacked(self, tag: int, multiple: bool, method_id: int) -> list:
        if not multiple:             # the common single ack: one dict pop
            record = self.unacked.pop(tag, None)
            if record is None:
                raise errors.PreconditionFailed(f"unknown delivery tag {tag}", 60, method_id)
            return [record]
        unacked = self.unacked
        return [unacked.pop(t) for t in self._tags(tag, True, method_id)]

    def _consumer_settled(self, queue, consumer: Consumer) -> None:
        """One of ``consumer``'s deliveries was settled: it has credit again."""
        consumer.unacked -= 1
        self.conn.broker.schedule(queue)
        if queue.sac_waiting is consumer and not consumer.unacked:
            queue.sac_waiting = None      # the next single active consumer may start

    def _settle(self, records: list, ack: bool, requeue: bool) -> None:
        if not ack:
            self.counts.not_acked += len(records)     # so acks need no counting (stats.py)
        for queue, entry, consumer in records:
            if consumer is not None:
                self._consumer_settled(queue, consumer)
            if requeue and not queue.deleted:
                queue.requeue(entry)
            elif ack or queue.deleted:
                queue.settle(entry)
            else:
                queue.reject(entry)       # dead-lettered when the queue has a DLX
        if self.global_prefetch:
            schedule = self.conn.broker.schedule
            for c in self.consumers.values():
                schedule(c.queue)

    def requeue_all(self) -> None:
        records = list(self.unacked.values())
        self.unacked.clear()
        self._settle(records, False, True)

    # -- lifecycle ----------------------------------------------------------------------------
    def cleanup(self) -> None:
        """The channel is gone (closed, errored or its connection dropped)."""
        for consumer in list(self.consumers.values()):
            consumer.queue.remove_consumer(consumer)
        self.consumers.clear()
        self.reply_queue = None
        if self.tx:
            self.restore_tx_acks()
        self.requeue_all()
        self.publishing = self.header = None
        self.body_parts = []
        self.tx = None
        if self.state == OPEN:
            retire_channel(self)         # node-wide totals keep its counts
        self.state = CLOSING             # from now on nothing is sent on this channel

    def send(self, method) -> None:
        self.conn.send_method(self.number, method)


def _class_method(payload: bytes) -> tuple[int, int]:
    return (payload[0] << 8) | payload[1], (payload[2] << 8) | payload[3]
