"""Queue arguments of the message lifecycle: validation of every x-argument amqpd knows (406 with
RabbitMQ's texts, checked against RabbitMQ 3.10), the quorum queue rules, x-queue-mode accepted,
and equivalence of these arguments when a queue is declared again."""
import decimal

import pika
import pytest
from pamqp import commands as C

from .rawclient import RawClient
from .helpers import connect, queue_exists, server_queue

Q = "q"
PREFIX = f"PRECONDITION_FAILED - invalid arg '{{arg}}' for queue '{Q}' in vhost '/': "


# -- helpers -------------------------------------------------------------------------------------
def declare_error(broker, arguments: dict, durable: bool = False, exclusive: bool = False,
                  auto_delete: bool = False, name: str = Q):
    """Declare a queue; (reply code, reply text) of the channel error, or None when it worked.
    The connection must survive a declaration error (it is a channel error)."""
    conn = connect(broker)
    try:
        ch = conn.channel()
        try:
            ch.queue_declare(name, durable=durable, exclusive=exclusive,
                             auto_delete=auto_delete, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert conn.is_open
            return exc.reply_code, exc.reply_text
        return None
    finally:
        conn.close()


def invalid(arg: str, reason: str) -> str:
    return PREFIX.format(arg=arg) + reason


# -- bad values: RabbitMQ's texts ----------------------------------------------------------------
# Every (arguments, reason) pair below was checked against RabbitMQ 3.10.
BAD_VALUES = [
    ({"x-expires": "abc"}, "x-expires", '"expected integer, got longstr"'),
    ({"x-expires": True}, "x-expires", '"expected integer, got bool"'),
    ({"x-expires": -1}, "x-expires", "{value_negative,-1}"),
    ({"x-expires": 0}, "x-expires", "{value_zero,0}"),
    ({"x-message-ttl": "abc"}, "x-message-ttl", '"expected integer, got longstr"'),
    ({"x-message-ttl": -1}, "x-message-ttl", "{value_negative,-1}"),
    ({"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": 5},
     "x-dead-letter-routing-key", "{unacceptable_type,signedint}"),
    ({"x-max-length": "abc"}, "x-max-length", '"expected integer, got longstr"'),
    ({"x-max-length": -1}, "x-max-length", "{value_negative,-1}"),
    ({"x-max-length-bytes": "abc"}, "x-max-length-bytes", '"expected integer, got longstr"'),
    ({"x-max-length-bytes": -1}, "x-max-length-bytes", "{value_negative,-1}"),
    ({"x-max-priority": "abc"}, "x-max-priority", '"expected integer, got longstr"'),
    ({"x-max-priority": -1}, "x-max-priority", "{value_negative,-1}"),
    ({"x-max-priority": 256}, "x-max-priority", "{max_value_exceeded,256}"),
    ({"x-overflow": 5}, "x-overflow", "{unacceptable_type,signedint}"),
    ({"x-overflow": "drop-tail"}, "x-overflow", "invalid_overflow"),
    ({"x-single-active-consumer": "yes"}, "x-single-active-consumer",
     "{unacceptable_type,longstr}"),
    ({"x-single-active-consumer": 1}, "x-single-active-consumer",
     "{unacceptable_type,signedint}"),
    ({"x-queue-mode": 5}, "x-queue-mode", "{unacceptable_type,signedint}"),
    ({"x-queue-type": "foo"}, "x-queue-type", "\"unsupported queue type 'foo'\""),
    ({"x-queue-type": 5}, "x-queue-type", "{unacceptable_type,signedint}"),
]


@pytest.mark.parametrize("arguments,arg,reason", BAD_VALUES,
                         ids=[f"{a}={list(args.values())[-1]!r}" for args, a, _ in BAD_VALUES])
def test_bad_argument_value_is_406_with_rabbitmq_text(broker, arguments, arg, reason):
    assert declare_error(broker, arguments) == (406, invalid(arg, reason))
    assert not queue_exists(broker, Q)


# Where amqpd's text (or its accepted range) differs from RabbitMQ 3.10's.
@pytest.mark.parametrize("arg", ["x-expires", "x-message-ttl"])
def test_ttl_too_large_text(broker, arg):
    assert declare_error(broker, {arg: 2 ** 40}) == (
        406, invalid(arg, "{value_too_large,1099511627776}"))


@pytest.mark.parametrize("arg", ["x-expires", "x-message-ttl"])
def test_ttl_up_to_ten_years_accepted(broker, arg):
    assert declare_error(broker, {arg: 315360000000}) is None
    assert declare_error(broker, {arg: 315360000001}, name="q2") == (
        406, f"PRECONDITION_FAILED - invalid arg '{arg}' for queue 'q2' in vhost '/': "
             "{value_too_large,315360000001}")


def test_dead_letter_exchange_not_a_string(broker):
    assert declare_error(broker, {"x-dead-letter-exchange": 5}) == (
        406, "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' "
             f"in queue '{Q}' in vhost '/'")


def test_dead_letter_routing_key_without_exchange_is_406(broker):
    code, text = declare_error(broker, {"x-dead-letter-routing-key": "rk"})
    assert code == 406
    assert text.startswith(PREFIX.format(arg="x-dead-letter-routing-key"))
    assert not queue_exists(broker, Q)


def test_dead_letter_routing_key_without_exchange_text(broker):
    assert declare_error(broker, {"x-dead-letter-routing-key": "rk"}) == (
        406, invalid("x-dead-letter-routing-key", "routing_key_but_no_dlx_defined"))


def test_bad_queue_mode_text(broker):
    assert declare_error(broker, {"x-queue-mode": "foo"}) == (
        406, invalid("x-queue-mode", "\"unsupported queue mode 'foo'\""))


def test_bad_queue_mode_is_406(broker):
    code, text = declare_error(broker, {"x-queue-mode": "foo"})
    assert code == 406 and text.startswith(PREFIX.format(arg="x-queue-mode"))


def test_wire_types_that_pika_cannot_send(broker):
    """Decimal and float values (aio-pika/pamqp can send them) are not integers."""
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.method(1, C.Queue.Declare(queue=Q, arguments={"x-max-priority":
                                                         decimal.Decimal("1.5")}))
        close = rc.expect(C.Channel.Close)
        assert close.reply_code == 406
        assert close.reply_text == invalid("x-max-priority", '"expected integer, got decimal"')
        assert (close.class_id, close.method_id) == (50, 10)
        rc.method(1, C.Channel.CloseOk())
        rc.open_channel(2)
        rc.method(2, C.Queue.Declare(queue=Q, arguments={"x-expires": 1.5}))
        close = rc.expect(C.Channel.Close)
        assert close.reply_code == 406
        assert close.reply_text.startswith(invalid("x-expires", '"expected integer, got '))


@pytest.mark.parametrize("arguments", [{"x-message-deduplication": "yes"},
                                       {"x-message-deduplication": 1}])
def test_bad_deduplication_flag_is_406(broker, arguments):
    """The deduplication plugin is not in the reference broker: the text follows RabbitMQ's
    pattern for a flag argument."""
    code, text = declare_error(broker, arguments)
    assert code == 406
    assert text.startswith(PREFIX.format(arg="x-message-deduplication") + "{unacceptable_type,")


# -- accepted values -----------------------------------------------------------------------------
@pytest.mark.parametrize("arguments", [
    {"x-message-ttl": 0}, {"x-max-length": 0}, {"x-max-length-bytes": 0},
    {"x-max-priority": 0}, {"x-max-priority": 255}, {"x-expires": 60000},
    {"x-queue-mode": "lazy"}, {"x-queue-mode": "default"}, {"x-queue-type": "classic"},
    {"x-overflow": "drop-head"}, {"x-overflow": "reject-publish"},
    {"x-overflow": "reject-publish-dlx"}, {"x-single-active-consumer": False},
    {"x-dead-letter-exchange": "does-not-exist-yet"},
    {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "elsewhere"},
    {"x-message-deduplication": True},
    {"x-some-unknown-argument": "kept and ignored"},
], ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_valid_arguments_accepted(broker, arguments):
    assert declare_error(broker, arguments) is None
    stored = broker.call(lambda: dict(broker.broker.vhosts["/"].queues[Q].arguments))
    assert stored == arguments


def test_queue_mode_accepted_and_queue_works(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("lazy", arguments={"x-queue-mode": "lazy"})
        ch.basic_publish("", "lazy", b"one")
        method, _props, body = ch.basic_get("lazy", auto_ack=True)
        assert body == b"one"
    finally:
        conn.close()


# -- quorum queues -------------------------------------------------------------------------------
QUORUM = {"x-queue-type": "quorum"}


@pytest.mark.parametrize("flags,prop", [
    (dict(durable=False), "non-durable"),
    (dict(durable=True, exclusive=True), "exclusive-owner"),
    (dict(durable=True, auto_delete=True), "auto-delete"),
], ids=["non-durable", "exclusive", "auto-delete"])
def test_quorum_queue_must_be_durable_shared_and_kept(broker, flags, prop):
    assert declare_error(broker, dict(QUORUM), **flags) == (
        406, f"PRECONDITION_FAILED - invalid property '{prop}' for queue '{Q}' in vhost '/'")
    assert not queue_exists(broker, Q)


@pytest.mark.parametrize("arguments", [
    {}, {"x-delivery-limit": 3}, {"x-single-active-consumer": True}, {"x-max-length": 10},
    {"x-max-length-bytes": 10}, {"x-message-ttl": 1000}, {"x-expires": 100000},
    {"x-overflow": "reject-publish"}, {"x-dead-letter-exchange": "dlx"},
], ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()) or "plain")
def test_quorum_queue_accepts_what_a_rabbitmq_node_accepts(broker, arguments):
    assert declare_error(broker, {**QUORUM, **arguments}, durable=True) is None


@pytest.mark.parametrize("arg,value", [("x-max-priority", 5), ("x-queue-mode", "lazy")])
def test_quorum_queue_refuses_classic_only_arguments(broker, arg, value):
    code, text = declare_error(broker, {**QUORUM, arg: value}, durable=True)
    assert code == 406 and text == (f"PRECONDITION_FAILED - invalid arg '{arg}' for queue "
                                   f"'{Q}' in vhost '/' of queue type rabbit_quorum_queue")
    assert not queue_exists(broker, Q)


@pytest.mark.parametrize("arg,value", [("x-max-priority", 5), ("x-queue-mode", "lazy")])
def test_quorum_queue_refusal_text(broker, arg, value):
    assert declare_error(broker, {**QUORUM, arg: value}, durable=True) == (
        406, f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{Q}' in vhost '/' of queue "
             "type rabbit_quorum_queue")


def test_quorum_reject_publish_dlx_is_refused_not_downgraded(broker):
    """RabbitMQ 3.10 accepts it on a quorum queue and behaves otherwise; the issue asks for a
    clear 406 instead of a silent downgrade."""
    code, text = declare_error(broker, {**QUORUM, "x-overflow": "reject-publish-dlx"},
                               durable=True)
    assert code == 406
    assert text.startswith(PREFIX.format(arg="x-overflow")) and "reject-publish-dlx" in text


def test_quorum_bad_delivery_limit_is_406(broker):
    """RabbitMQ 3.10 does not validate it at all; amqpd refuses what it cannot act on."""
    code, text = declare_error(broker, {**QUORUM, "x-delivery-limit": "abc"}, durable=True)
    assert (code, text) == (406, invalid("x-delivery-limit", '"expected integer, got longstr"'))
    code, text = declare_error(broker, {**QUORUM, "x-delivery-limit": -1}, durable=True)
    assert (code, text) == (406, invalid("x-delivery-limit", "{value_negative,-1}"))


def test_delivery_limit_on_classic_queue_is_406(broker):
    assert declare_error(broker, {"x-delivery-limit": 3}) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-delivery-limit' for queue '{Q}' in vhost "
             "'/' of queue type rabbit_classic_queue")


@pytest.mark.parametrize("kind", ["stream", "foo"])
def test_unimplemented_queue_type_is_406(broker, kind):
    code, text = declare_error(broker, {"x-queue-type": kind}, durable=True)
    assert (code, text) == (406, invalid("x-queue-type", f"\"unsupported queue type '{kind}'\""))


# -- equivalence on redeclare --------------------------------------------------------------------
# Texts checked against RabbitMQ 3.10.
EQUIVALENCE = [
    ({"x-message-ttl": 1000}, {"x-message-ttl": 2000},
     "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '2000' but "
     "current is '1000'"),
    ({"x-message-ttl": 1000}, {},
     "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received none but current "
     "is the value '1000' of type 'signedint'"),
    ({}, {"x-message-ttl": 1000},
     "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received the value '1000' "
     "of type 'signedint' but current is none"),
    ({"x-expires": 100000}, {"x-expires": 200000},
     "inequivalent arg 'x-expires' for queue 'q' in vhost '/': received '200000' but current "
     "is '100000'"),
    ({"x-max-priority": 5}, {"x-max-priority": 10},
     "inequivalent arg 'x-max-priority' for queue 'q' in vhost '/': received '10' but current "
     "is '5'"),
    ({"x-max-priority": 5}, {},
     "inequivalent arg 'x-max-priority' for queue 'q' in vhost '/': received none but current "
     "is the value '5' of type 'signedint'"),
    ({"x-single-active-consumer": True}, {"x-single-active-consumer": False},
     "inequivalent arg 'x-single-active-consumer' for queue 'q' in vhost '/': received "
     "'false' but current is 'true'"),
    ({"x-single-active-consumer": True}, {},
     "inequivalent arg 'x-single-active-consumer' for queue 'q' in vhost '/': received none "
     "but current is the value 'true' of type 'bool'"),
    ({"x-overflow": "drop-head"}, {"x-overflow": "reject-publish"},
     "inequivalent arg 'x-overflow' for queue 'q' in vhost '/': received 'reject-publish' but "
     "current is 'drop-head'"),
    ({"x-dead-letter-exchange": "a"}, {"x-dead-letter-exchange": "b"},
     "inequivalent arg 'x-dead-letter-exchange' for queue 'q' in vhost '/': received 'b' but "
     "current is 'a'"),
    ({"x-dead-letter-exchange": "a", "x-dead-letter-routing-key": "k"},
     {"x-dead-letter-exchange": "a", "x-dead-letter-routing-key": "j"},
     "inequivalent arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': received 'j' "
     "but current is 'k'"),
    ({"x-max-length-bytes": 100}, {"x-max-length-bytes": 200},
     "inequivalent arg 'x-max-length-bytes' for queue 'q' in vhost '/': received '200' but "
     "current is '100'"),
    ({"x-queue-mode": "lazy"}, {"x-queue-mode": "default"},
     "inequivalent arg 'x-queue-mode' for queue 'q' in vhost '/': received 'default' but "
     "current is 'lazy'"),
    ({"x-queue-mode": "lazy"}, {},
     "inequivalent arg 'x-queue-mode' for queue 'q' in vhost '/': received none but current is "
     "the value 'lazy' of type 'longstr'"),
]


@pytest.mark.parametrize("first,second,text", EQUIVALENCE,
                         ids=[f"{i}" for i in range(len(EQUIVALENCE))])
def test_redeclare_with_different_lifecycle_argument(broker, first, second, text):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare(Q, arguments=first)
        ch.basic_publish("", Q, b"kept")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.queue_declare(Q, arguments=second)
        assert (err.value.reply_code, err.value.reply_text) == (406, "PRECONDITION_FAILED - " +
                                                                text)
        # The queue is untouched: same arguments, same message.
        ch = conn.channel()
        assert ch.queue_declare(Q, arguments=first).method.message_count == 1
    finally:
        conn.close()


@pytest.mark.parametrize("arguments", [
    {"x-message-ttl": 1000, "x-max-length": 10, "x-overflow": "reject-publish",
     "x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dead"},
    {"x-max-priority": 10, "x-single-active-consumer": True, "x-expires": 60000,
     "x-queue-mode": "lazy", "x-max-length-bytes": 1000},
], ids=["ttl-limits-dlx", "priority-sac-expires"])
def test_redeclare_with_same_lifecycle_arguments(broker, arguments):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare(Q, arguments=arguments)
        ch.basic_publish("", Q, b"kept")
        ok = ch.queue_declare(Q, arguments=dict(reversed(list(arguments.items())))).method
        assert (ok.queue, ok.message_count) == (Q, 1)        # the same queue, not a new one
        assert broker.call(lambda: server_queue(broker, Q).arguments) == arguments
    finally:
        conn.close()


def test_redeclare_quorum_queue(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare(Q, durable=True, arguments={**QUORUM, "x-delivery-limit": 3})
        ch.queue_declare(Q, durable=True, arguments={**QUORUM, "x-delivery-limit": 3})
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.queue_declare(Q, durable=True, arguments={**QUORUM, "x-delivery-limit": 4})
        assert err.value.reply_text == (
            "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'q' in vhost "
            "'/': received '4' but current is '3'")
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.queue_declare(Q, durable=True)
        assert err.value.reply_text == (
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': "
            "received none but current is the value 'quorum' of type 'longstr'")
    finally:
        conn.close()


@pytest.mark.parametrize("first,second", [({}, {"x-queue-type": "classic"}),
                                          ({"x-queue-type": "classic"}, {})],
                         ids=["absent-then-classic", "classic-then-absent"])
def test_redeclare_classic_type_explicit_or_default(broker, first, second):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare(Q, durable=True, arguments=first)
        ch.basic_publish("", Q, b"kept")
        ok = ch.queue_declare(Q, durable=True, arguments=second).method
        assert (ok.queue, ok.message_count) == (Q, 1)        # equivalent: the same queue
        assert broker.call(lambda: server_queue(broker, Q).arguments) == first
    finally:
        conn.close()
