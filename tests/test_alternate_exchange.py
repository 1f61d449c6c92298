"""Alternate exchanges (the ``alternate-exchange`` exchange argument) over real sockets: where
unroutable messages go, chains and loops of alternates, a missing alternate, validation of the
argument (406 with RabbitMQ 3.10's texts) and publisher confirms. Expected behaviour and texts
were checked against RabbitMQ 3.10."""

import aio_pika
import pika
import pytest
from pamqp import commands as C
from pika.exceptions import UnroutableError

from tests.rawclient import RawClient
from .helpers import drain, new_queue, refused


# -- helpers ----------------------------------------------------------------------------------
class Returns:
    """A channel whose basic.return frames are collected."""

    def __init__(self, conn, ch):
        self.conn = conn
        self.ch = ch
        self.items: list = []
        ch.add_on_return_callback(
            lambda _ch, method, _props, body: self.items.append(
                (method.reply_code, method.reply_text, method.exchange, method.routing_key,
                 body)))

    def settled(self) -> list:
        """The returns of every publish so far: after a synchronous round trip on the
        channel they have all arrived (the broker answers in order)."""
        fence(self.ch)
        self.conn.process_data_events(time_limit=0)
        return self.items


def returning(conn) -> Returns:
    return Returns(conn, conn.channel())


def fence(ch) -> None:
    """A synchronous round trip on the channel: every earlier publish has been routed and any
    basic.return for it has arrived (the broker answers in order)."""
    ch.basic_qos(prefetch_count=0)


# -- routing ----------------------------------------------------------------------------------
def test_unroutable_goes_to_alternate_and_is_not_returned(conn):
    r = returning(conn)
    ch = r.ch
    ch.exchange_declare("ae", "fanout")
    ch.exchange_declare("main", "direct", arguments={"alternate-exchange": "ae"})
    q_main, q_ae = new_queue(ch, "main", "k"), new_queue(ch, "ae")
    ch.basic_publish("main", "k", b"routed", mandatory=True)
    ch.basic_publish("main", "nope", b"to-ae-1", mandatory=True)
    ch.basic_publish("main", "other", b"to-ae-2", mandatory=False)
    fence(ch)
    assert drain(ch, q_main) == [b"routed"]            # routed messages never reach the AE
    assert drain(ch, q_ae) == [b"to-ae-1", b"to-ae-2"]
    conn.process_data_events(time_limit=0)
    assert r.items == []


def test_alternate_keeps_exchange_and_routing_key_of_the_publish(conn):
    """The AE routes with the original routing key, and the delivery names the exchange the
    message was published to."""
    ch = conn.channel()
    ch.exchange_declare("ae-d", "direct")
    ch.exchange_declare("main", "direct", arguments={"alternate-exchange": "ae-d"})
    q_k = new_queue(ch, "ae-d", "k2")
    q_other = new_queue(ch, "ae-d", "zzz")
    ch.basic_publish("main", "k2", b"m")
    method, _props, body = ch.basic_get(q_k, auto_ack=True)
    assert (method.exchange, method.routing_key, body) == ("main", "k2", b"m")
    assert drain(ch, q_other) == []


async def test_alternate_exchange_aio_pika(broker):
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch = await conn.channel()
        returned = []
        ch.return_callbacks.add(lambda _ch, msg: returned.append(msg.body))
        ae = await ch.declare_exchange("ae", aio_pika.ExchangeType.FANOUT)
        main = await ch.declare_exchange("main", aio_pika.ExchangeType.TOPIC,
                                         arguments={"alternate-exchange": "ae"})
        q_main = await ch.declare_queue("", exclusive=True)
        q_ae = await ch.declare_queue("", exclusive=True)
        await q_main.bind(main, "a.*")
        await q_ae.bind(ae, "")
        for key in ("a.b", "x.y", "a.b.c"):
            await main.publish(aio_pika.Message(key.encode()), routing_key=key, mandatory=True)

        async def bodies(q):
            out = []
            while (m := await q.get(no_ack=True, fail=False)) is not None:
                out.append(m.body)
            return out

        assert await bodies(q_main) == [b"a.b"]
        assert await bodies(q_ae) == [b"x.y", b"a.b.c"]
        assert returned == []


def test_alternate_chain(conn):
    """main -> ae1 -> ae2: each alternate is tried in turn until one routes."""
    r = returning(conn)
    ch = r.ch
    ch.exchange_declare("ae2", "fanout")
    ch.exchange_declare("ae1", "direct", arguments={"alternate-exchange": "ae2"})
    ch.exchange_declare("main", "direct", arguments={"alternate-exchange": "ae1"})
    q_ae1 = new_queue(ch, "ae1", "for-ae1")
    q_ae2 = new_queue(ch, "ae2")
    ch.basic_publish("main", "for-ae1", b"stops-at-ae1", mandatory=True)
    ch.basic_publish("main", "anything", b"ends-at-ae2", mandatory=True)
    fence(ch)
    assert drain(ch, q_ae1) == [b"stops-at-ae1"]
    assert drain(ch, q_ae2) == [b"ends-at-ae2"]
    conn.process_data_events(time_limit=0)
    assert r.items == []


def test_alternate_loop_ends_and_returns_mandatory(conn):
    r = returning(conn)
    ch = r.ch
    ch.exchange_declare("loop1", "direct", arguments={"alternate-exchange": "loop2"})
    ch.exchange_declare("loop2", "direct", arguments={"alternate-exchange": "loop1"})
    ch.exchange_declare("selfie", "direct", arguments={"alternate-exchange": "selfie"})
    ch.basic_publish("loop1", "k", b"loop", mandatory=True)
    ch.basic_publish("selfie", "k", b"self", mandatory=True)
    ch.basic_publish("loop2", "k", b"silent")             # not mandatory: dropped
    assert r.settled() == [(312, "NO_ROUTE", "loop1", "k", b"loop"),
                         (312, "NO_ROUTE", "selfie", "k", b"self")]
    # The loop did not hang the broker; a member of the loop that routes still works.
    q = new_queue(ch, "loop2", "k2")
    ch.basic_publish("loop1", "k2", b"via-loop2", mandatory=True)
    fence(ch)
    assert drain(ch, q) == [b"via-loop2"]
    conn.process_data_events(time_limit=0)
    assert len(r.items) == 2


def test_missing_alternate_behaves_as_unroutable_then_resolves_by_name(conn):
    r = returning(conn)
    ch = r.ch
    ch.exchange_declare("main", "direct", arguments={"alternate-exchange": "later"})
    ch.basic_publish("main", "k", b"lost", mandatory=True)
    ch.basic_publish("main", "k", b"dropped")
    assert r.settled() == [(312, "NO_ROUTE", "main", "k", b"lost")]
    # The AE is looked up by name at publish time: declaring it later makes it work...
    ch.exchange_declare("later", "fanout")
    q = new_queue(ch, "later")
    ch.basic_publish("main", "k", b"found", mandatory=True)
    fence(ch)
    assert drain(ch, q) == [b"found"]
    # ... and deleting it makes messages unroutable again.
    ch.exchange_delete("later")
    ch.basic_publish("main", "k", b"lost-again", mandatory=True)
    assert r.settled()[1] == (312, "NO_ROUTE", "main", "k", b"lost-again")


def test_internal_alternate_exchange_receives(conn):
    """An internal exchange cannot be published to, but can be an alternate."""
    r = returning(conn)
    ch = r.ch
    ch.exchange_declare("ae-int", "fanout", internal=True)
    ch.exchange_declare("main", "direct", arguments={"alternate-exchange": "ae-int"})
    q = new_queue(ch, "ae-int")
    ch.basic_publish("main", "k", b"in", mandatory=True)
    fence(ch)
    assert drain(ch, q) == [b"in"]
    conn.process_data_events(time_limit=0)
    assert r.items == []


def test_alternate_of_the_exchange_bound_to_is_used_after_e2e(conn):
    """RabbitMQ applies an exchange's AE when *that exchange's own* routing finds no
    destination. main routes to x2 (an exchange-to-exchange binding), so main's AE is not
    used; x2 routes nowhere, so x2's AE is."""
    r = returning(conn)
    ch = r.ch
    ch.exchange_declare("ae-main", "fanout")
    ch.exchange_declare("ae-x2", "fanout")
    q_main_ae, q_x2_ae = new_queue(ch, "ae-main"), new_queue(ch, "ae-x2")
    ch.exchange_declare("main", "direct", arguments={"alternate-exchange": "ae-main"})
    ch.exchange_declare("x2", "direct", arguments={"alternate-exchange": "ae-x2"})
    ch.exchange_bind("x2", "main", "k")
    ch.basic_publish("main", "k", b"via-x2", mandatory=True)
    ch.basic_publish("main", "other", b"main-unroutable", mandatory=True)
    fence(ch)
    assert drain(ch, q_x2_ae) == [b"via-x2"]
    assert drain(ch, q_main_ae) == [b"main-unroutable"]
    conn.process_data_events(time_limit=0)
    assert r.items == []


def test_e2e_route_to_dead_end_does_not_use_source_alternate(conn):
    """main routes to x2 (so main's AE is not consulted); x2 has no bindings and no AE: the
    message is unroutable, as in RabbitMQ."""
    r = returning(conn)
    ch = r.ch
    ch.exchange_declare("ae-main", "fanout")
    q_ae = new_queue(ch, "ae-main")
    ch.exchange_declare("main", "direct", arguments={"alternate-exchange": "ae-main"})
    ch.exchange_declare("x2", "direct")
    ch.exchange_bind("x2", "main", "k")
    ch.basic_publish("main", "k", b"dead-end", mandatory=True)
    assert r.settled() == [(312, "NO_ROUTE", "main", "k", b"dead-end")]
    assert drain(ch, q_ae) == []


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize("value,wire_type", [(1, "signedint"), (2 ** 40, "long"),
                                             (True, "bool"), ({"a": 1}, "table"),
                                             ([1, 2], "array")])
def test_non_string_alternate_exchange_406(conn, value, wire_type):
    ch = conn.channel()
    e = refused(ch.exchange_declare, "x", "direct", arguments={"alternate-exchange": value})
    assert (e.reply_code, e.reply_text) == (
        406, f"PRECONDITION_FAILED - invalid type '{wire_type}' for arg 'alternate-exchange' "
             "in exchange 'x' in vhost '/'")
    # Nothing was declared.
    ch = conn.channel()
    assert refused(ch.exchange_declare, "x", passive=True).reply_code == 404


def test_void_alternate_exchange_406(conn):
    ch = conn.channel()
    e = refused(ch.exchange_declare, "x", "direct", arguments={"alternate-exchange": None})
    assert (e.reply_code, e.reply_text) == (
        406, "PRECONDITION_FAILED - invalid type 'void' for arg 'alternate-exchange' in "
             "exchange 'x' in vhost '/'")


# RabbitMQ names the type that was on the wire: pamqp (aio-pika, aiormq) sends 1 as a 'byte',
# 300 as a 'short' and 1.5 as a 32-bit 'float'.
@pytest.mark.parametrize("value,wire_type", [(1, "byte"), (300, "short"), (1.5, "float")])
def test_non_string_alternate_exchange_wire_type_names_raw(broker, value, wire_type):
    with RawClient(broker.port) as raw:
        raw.handshake()
        raw.open_channel()
        raw.method(1, C.Exchange.Declare(exchange="x", exchange_type="direct",
                                         arguments={"alternate-exchange": value}))
        close = raw.expect(C.Channel.Close)
        assert (close.reply_code, close.reply_text) == (
            406, f"PRECONDITION_FAILED - invalid type '{wire_type}' for arg "
                 "'alternate-exchange' in exchange 'x' in vhost '/'")


def test_non_string_alternate_exchange_raw_class_method(broker):
    with RawClient(broker.port) as raw:
        raw.handshake()
        raw.open_channel()
        raw.method(1, C.Exchange.Declare(exchange="x", exchange_type="fanout",
                                         arguments={"alternate-exchange": {"t": "v"}}))
        close = raw.expect(C.Channel.Close)
        assert (close.reply_code, close.class_id, close.method_id) == (406, 40, 10)
        assert close.reply_text == ("PRECONDITION_FAILED - invalid type 'table' for arg "
                                    "'alternate-exchange' in exchange 'x' in vhost '/'")


# -- publisher confirms -----------------------------------------------------------------------
def test_alternate_with_publisher_confirms(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("ae", "fanout", durable=True)
    ch.exchange_declare("main", "direct", durable=True, arguments={"alternate-exchange": "ae"})
    q_tr = new_queue(ch, "ae")
    q_dur = ch.queue_declare("ae-durable", durable=True).method.queue
    ch.queue_bind(q_dur, "ae")
    # Routed via the AE (to a transient and a durable queue, persistent message): acked,
    # and with mandatory it is not returned (pika would raise UnroutableError).
    ch.basic_publish("main", "nope", b"p1", pika.BasicProperties(delivery_mode=2),
                     mandatory=True)
    ch.basic_publish("main", "nope", b"p2", mandatory=False)
    assert drain(ch, q_tr) == [b"p1", b"p2"]
    assert drain(ch, q_dur) == [b"p1", b"p2"]
    ch.queue_delete(q_dur)


def test_confirm_when_alternate_chain_ends_unroutable(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("ae-empty", "fanout")
    ch.exchange_declare("main", "direct", arguments={"alternate-exchange": "ae-empty"})
    # mandatory: basic.return then ack; pika reports it as UnroutableError.
    with pytest.raises(UnroutableError):
        ch.basic_publish("main", "k", b"x", mandatory=True)
    # Not mandatory: simply acked.
    ch.basic_publish("main", "k", b"y")
    assert ch.is_open


def test_alternate_with_confirms_raw_ack_frames(broker):
    """The exact frames: an ack for the publish routed via the AE, and return + ack for the
    one that is unroutable even through the AE."""
    with RawClient(broker.port) as raw:
        raw.handshake()
        raw.open_channel()
        raw.call(1, C.Confirm.Select(), C.Confirm.SelectOk)
        raw.call(1, C.Exchange.Declare(exchange="ae", exchange_type="direct"),
                 C.Exchange.DeclareOk)
        raw.call(1, C.Exchange.Declare(exchange="main", exchange_type="direct",
                                       arguments={"alternate-exchange": "ae"}),
                 C.Exchange.DeclareOk)
        raw.call(1, C.Queue.Declare(queue="q-ae", exclusive=True), C.Queue.DeclareOk)
        raw.call(1, C.Queue.Bind(queue="q-ae", exchange="ae", routing_key="to-ae"),
                 C.Queue.BindOk)
        raw.publish(1, b"1", exchange="main", routing_key="to-ae", mandatory=True)
        ack = raw.expect(C.Basic.Ack)
        assert ack.delivery_tag == 1
        raw.publish(1, b"2", exchange="main", routing_key="nowhere", mandatory=True)
        ret = raw.expect(C.Basic.Return)
        assert (ret.reply_code, ret.exchange, ret.routing_key) == (312, "main", "nowhere")
        # the return's content header and body, then the ack
        frames = []
        while True:
            _ch, frame = raw.recv()
            frames.append(frame)
            if isinstance(frame, C.Basic.Ack):
                break
        assert frames[-1].delivery_tag == 2
        raw.call(1, C.Queue.Declare(queue="q-ae", passive=True), C.Queue.DeclareOk)
