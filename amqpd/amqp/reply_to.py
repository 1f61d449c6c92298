"""Direct reply-to (RabbitMQ's amq.rabbitmq.reply-to): a consumer on the pseudo-queue gets a
hidden queue of its own, and a publish whose reply_to names the pseudo-queue has it rewritten to
that queue's routable name."""
from .. import errors
from ..wire import properties

REPLY_TO = "amq.rabbitmq.reply-to"


def rewrite_reply_to(ch, msg) -> None:
    """reply_to=amq.rabbitmq.reply-to names this channel's reply consumer: rewrite it to the
    routable name of that consumer (RabbitMQ's direct reply-to). Only reply_to changes;
    every other property, the headers among them, is copied byte for byte."""
    if properties.peek(msg.header, properties.REPLY_TO) != REPLY_TO:
        return
    if ch.reply_queue is None:
        raise errors.PreconditionFailed("fast reply consumer does not exist", 60, 40)
    msg.header = properties.rewrite(msg.header, reply_to=ch.reply_queue.name)
    msg._props = None
