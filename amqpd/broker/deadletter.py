"""Dead-lettering as RabbitMQ does it: the message is republished to the queue's
x-dead-letter-exchange with an ``x-death`` history, the ``x-first-death-*`` and
``x-last-death-*`` headers, its expiration removed, and cycles broken. Every other header keeps
its value and wire type (a double stays a double), and every other property its bytes.
"""
import datetime
import logging

from .. import errors
from ..wire import properties, tables
from ..wire.tables import Long
from . import sender_selected
from .message import Message

log = logging.getLogger("amqpd.deadletter")


def dead_letter(queue, message: Message, reason: str) -> None:
    """Republish ``message``, which left ``queue`` for ``reason`` (rejected, expired, maxlen,
    delivery_limit), to the queue's dead-letter exchange; drop it when there is none. Never
    raises: the caller has already removed the message from its queue."""
    opts = queue.opts
    if opts.dlx is None:
        return
    vhost = queue.vhost
    exchange = vhost.exchanges.get(opts.dlx)
    if exchange is None:
        log.debug("dead-letter exchange %r of %s does not exist: message dropped", opts.dlx,
                  queue.label)
        return
    try:
        dead, deaths = _dead_copy(queue, message, reason, exchange)
    except (errors.AMQPError, tables.TableError) as exc:
        # Only a message stored before publish-time validation existed can get here.
        log.error("cannot dead-letter a message from %s (%s): dropped", queue.label, exc)
        return
    except Exception:        # a bug of ours: the message has left its queue already
        log.exception("cannot dead-letter a message from %s: dropped", queue.label)
        return
    def allow(target) -> bool:
        if reason != "rejected" and _is_cycle(target.name, deaths):
            log.debug("dead-letter cycle through %s: message dropped there", target.label)
            return False
        return True

    vhost.publish(exchange, dead, allow)     # at most once, as RabbitMQ: no confirm to wait for


def _dead_copy(queue, message: Message, reason: str, exchange):
    """The message as it is republished. Without a dead-letter routing key it keeps its routing
    key and its CC/BCC keys (RabbitMQ routes it with all of them); with one, it is routed by that
    key alone and loses its CC header."""
    props = message.properties
    headers = dict(props.headers or {})
    headers.pop("x-delivery-count", None)     # added for a delivery, not part of the message
    cc = sender_selected.cc_keys(headers)
    deaths = _record_death(headers, queue, message, reason, props.expiration, cc)
    dlrk = queue.opts.dlrk
    if dlrk is not None:
        headers.pop(sender_selected.CC, None)
    routing_key = dlrk if dlrk is not None else message.routing_key
    header = properties.rewrite(message.header, headers=headers, expiration=None)
    route = _shortstr(exchange.name) + _shortstr(routing_key)
    dead = Message(exchange.name, routing_key, route, header, message.body)
    if dlrk is None:
        dead.cc = message.cc if message.cc is not None else (tuple(cc) or None)
    return dead, deaths


def _shortstr(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise errors.SyntaxError_("short string longer than 255 bytes")
    return bytes((len(raw),)) + raw


def _record_death(headers: dict, queue, message: Message, reason: str, expiration,
                  cc: list) -> list:
    # a client may send anything as x-death; like RabbitMQ, only an array of tables counts
    deaths = headers.get("x-death")
    deaths = [d for d in deaths if isinstance(d, dict)] if isinstance(deaths, list) else []
    for i, death in enumerate(deaths):
        if _text(death.get("queue")) == queue.name and _text(death.get("reason")) == reason:
            count = death.get("count")
            count = count if isinstance(count, int) and not isinstance(count, bool) else 0
            death = dict(death, count=Long(count + 1))
            deaths = [death] + deaths[:i] + deaths[i + 1:]
            break
    else:
        death = {"count": Long(1), "reason": reason, "queue": queue.name,
                 "time": _now(queue),
                 "exchange": message.exchange, "routing-keys": [message.routing_key, *cc]}
        if expiration is not None:
            death["original-expiration"] = expiration
        deaths = [death] + deaths
    headers["x-death"] = deaths
    if "x-first-death-reason" not in headers:
        headers["x-first-death-reason"] = reason
        headers["x-first-death-queue"] = queue.name
        headers["x-first-death-exchange"] = message.exchange
    headers["x-last-death-reason"] = reason
    headers["x-last-death-queue"] = queue.name
    headers["x-last-death-exchange"] = message.exchange
    return deaths


def _now(queue) -> datetime.datetime:
    """x-death's time: the broker's wall clock, to the second, in UTC."""
    wall = int(queue.vhost.broker.wallclock())
    return datetime.datetime.fromtimestamp(wall, datetime.timezone.utc)


def _is_cycle(queue_name: str, deaths: list) -> bool:
    """RabbitMQ's rule: routing back to a queue the message already died in is a cycle unless
    a rejection happened on the way (a consumer decided, not a timer)."""
    passed = []
    for death in deaths:
        passed.append(death)
        if _text(death.get("queue")) == queue_name:
            return all(_text(d.get("reason")) != "rejected" for d in passed)
    return False


def _text(value):
    return value.decode(errors="replace") if isinstance(value, (bytes, bytearray)) else value
