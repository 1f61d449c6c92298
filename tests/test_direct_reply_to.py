"""Direct reply-to (the ``amq.rabbitmq.reply-to`` pseudo-queue) over real sockets: RPC with pika
and aio-pika, the rewritten reply_to, the 406s for misuse (RabbitMQ 3.10's texts), replies to a
requester that went away, and many concurrent RPC clients. Expected behaviour and texts were
checked against RabbitMQ 3.10."""
import asyncio

import aio_pika
import pika
import pytest
from pamqp import commands as C

from tests.rawclient import RawClient
from .helpers import pump, refused

REPLY_TO = "amq.rabbitmq.reply-to"


# -- helpers ----------------------------------------------------------------------------------
class EchoServer:
    """An RPC server on its own connection: consumes 'rpcq', remembers each request's
    reply_to and answers 're:<body>' to it through the default exchange."""

    def __init__(self, conn, queue: str = "rpcq"):
        self.conn = conn
        self.ch = conn.channel()
        self.queue = queue
        self.requests: list = []          # (reply_to, correlation_id, body)
        self.returns: list = []
        self.ch.add_on_return_callback(
            lambda _c, m, _p, b: self.returns.append((m.reply_code, m.reply_text, b)))
        self.ch.queue_declare(queue, exclusive=True)
        self.ch.basic_consume(queue, self.on_request, auto_ack=True)

    def on_request(self, ch, method, props, body):
        self.requests.append((props.reply_to, props.correlation_id, body))
        ch.basic_publish("", props.reply_to, b"re:" + body,
                         pika.BasicProperties(correlation_id=props.correlation_id,
                                              headers={"served": "yes"}))


# -- RPC --------------------------------------------------------------------------------------
def test_rpc_round_trip_pika(connect):
    server = EchoServer(connect())
    client_conn = connect()
    ch = client_conn.channel()
    replies = []
    ch.basic_consume(REPLY_TO, lambda _c, m, p, b: replies.append((m, p, b)), auto_ack=True)
    for i in range(3):
        ch.basic_publish("", "rpcq", f"req{i}".encode(),
                         pika.BasicProperties(reply_to=REPLY_TO, correlation_id=f"c{i}"))
    pump([server.conn, client_conn], lambda: len(replies) == 3, what="3 replies")

    # The server saw reply_to rewritten to a routable, channel-specific name.
    reply_tos = {r[0] for r in server.requests}
    assert len(reply_tos) == 1
    token = reply_tos.pop()
    assert token.startswith(REPLY_TO + ".") and len(token) > len(REPLY_TO) + 1
    # Each reply came back to the client, in order, with its properties.
    assert [(p.correlation_id, b) for _m, p, b in replies] == [
        ("c0", b"re:req0"), ("c1", b"re:req1"), ("c2", b"re:req2")]
    method, props, _ = replies[0]
    assert (method.exchange, method.routing_key, method.redelivered) == ("", token, False)
    assert props.headers == {"served": "yes"}
    assert server.returns == []


async def test_rpc_round_trip_aio_pika(broker):
    server_conn = await aio_pika.connect(broker.url)
    client_conn = await aio_pika.connect(broker.url)
    async with server_conn, client_conn:
        sch = await server_conn.channel()
        rpcq = await sch.declare_queue("rpcq", exclusive=True)
        seen = []

        async def serve(msg: aio_pika.abc.AbstractIncomingMessage):
            seen.append(msg.reply_to)
            await sch.default_exchange.publish(
                aio_pika.Message(b"re:" + msg.body, correlation_id=msg.correlation_id),
                routing_key=msg.reply_to)

        await rpcq.consume(serve, no_ack=True)

        ch = await client_conn.channel()
        reply_queue = await ch.get_queue(REPLY_TO, ensure=False)
        futures: dict = {}

        async def on_reply(msg: aio_pika.abc.AbstractIncomingMessage):
            futures[msg.correlation_id].set_result((msg.routing_key, msg.body))

        await reply_queue.consume(on_reply, no_ack=True)
        loop = asyncio.get_running_loop()
        for i in range(5):
            futures[f"c{i}"] = loop.create_future()
            await ch.default_exchange.publish(
                aio_pika.Message(f"req{i}".encode(), reply_to=REPLY_TO,
                                 correlation_id=f"c{i}"),
                routing_key="rpcq")
        results = await asyncio.wait_for(asyncio.gather(*futures.values()), 5)
        assert [body for _rk, body in results] == [f"re:req{i}".encode() for i in range(5)]
        assert len(set(seen)) == 1 and seen[0].startswith(REPLY_TO + ".")
        assert {rk for rk, _ in results} == {seen[0]}


def test_only_the_exact_pseudo_queue_name_is_rewritten(connect):
    server = EchoServer(connect())
    client_conn = connect()
    ch = client_conn.channel()
    ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    names = [REPLY_TO, REPLY_TO + ".foo", "plain", "AMQ.rabbitmq.reply-to"]
    for name in names:
        ch.basic_publish("", "rpcq", b"x", pika.BasicProperties(reply_to=name))
    pump([server.conn, client_conn], lambda: len(server.requests) == 4, what="4 requests")
    seen = [r[0] for r in server.requests]
    assert seen[0].startswith(REPLY_TO + ".") and seen[0] != REPLY_TO + ".foo"
    assert seen[1:] == names[1:]


def test_a_client_can_reply_to_itself(connect):
    """The requester's own connection may also publish to the reply name (same channel)."""
    conn = connect()
    ch = conn.channel()
    got = []
    ch.basic_consume(REPLY_TO, lambda _c, m, p, b: got.append(b), auto_ack=True)
    ch.queue_declare("self-rpc", exclusive=True)
    ch.basic_publish("", "self-rpc", b"req", pika.BasicProperties(reply_to=REPLY_TO))
    _m, props, _b = ch.basic_get("self-rpc", auto_ack=True)
    ch.basic_publish("", props.reply_to, b"answer")
    pump([conn], lambda: got == [b"answer"], what="the reply")


def test_reply_published_with_confirms_is_acked_and_delivered(connect):
    client_conn, server_conn = connect(), connect()
    ch = client_conn.channel()
    got = []
    ch.basic_consume(REPLY_TO, lambda _c, _m, p, b: got.append((p.correlation_id, b)),
                     auto_ack=True)
    ch.queue_declare("rpcq", exclusive=False, auto_delete=True)
    ch.basic_publish("", "rpcq", b"req",
                     pika.BasicProperties(reply_to=REPLY_TO, correlation_id="c1"))
    sch = server_conn.channel()
    sch.confirm_delivery()
    _m, props, body = sch.basic_get("rpcq", auto_ack=True)
    sch.basic_publish("", props.reply_to, b"re:" + body,              # raises if nacked
                      pika.BasicProperties(correlation_id=props.correlation_id))
    pump([client_conn], lambda: got, what="the reply")
    assert got == [("c1", b"re:req")]
    sch.queue_delete("rpcq")


def test_request_in_a_transaction_is_rewritten(connect):
    server = EchoServer(connect())
    client_conn = connect()
    ch = client_conn.channel()
    got = []
    ch.basic_consume(REPLY_TO, lambda _c, _m, _p, b: got.append(b), auto_ack=True)
    ch.tx_select()
    ch.basic_publish("", "rpcq", b"tx-req", pika.BasicProperties(reply_to=REPLY_TO))
    ch.tx_commit()
    pump([server.conn, client_conn], lambda: got == [b"re:tx-req"], what="the reply")
    assert server.requests[0][0].startswith(REPLY_TO + ".")


# -- misuse: RabbitMQ's 406s ------------------------------------------------------------------
def test_reply_consumer_with_acks_406(connect):
    ch = connect().channel()
    e = refused(ch.basic_consume, REPLY_TO, lambda *a: None, auto_ack=False)
    assert (e.reply_code, e.reply_text) == (
        406, "PRECONDITION_FAILED - reply consumer cannot acknowledge")


def test_publish_without_reply_consumer_406(connect):
    conn = connect()
    ch = conn.channel()
    ch.queue_declare("rpcq", exclusive=True)
    ch.basic_publish("", "rpcq", b"x", pika.BasicProperties(reply_to=REPLY_TO))
    # The close is asynchronous: the next synchronous call sees it.
    e = refused(ch.queue_declare, "", exclusive=True)
    assert (e.reply_code, e.reply_text) == (
        406, "PRECONDITION_FAILED - fast reply consumer does not exist")
    # Nothing was enqueued.
    ch2 = conn.channel()
    assert ch2.queue_declare("rpcq", passive=True).method.message_count == 0


def test_reply_consumer_on_another_channel_does_not_count(connect):
    conn = connect()
    ch1, ch2 = conn.channel(), conn.channel()
    ch1.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    ch2.basic_publish("", "anything", b"x", pika.BasicProperties(reply_to=REPLY_TO))
    e = refused(ch2.basic_qos, prefetch_count=0)
    assert (e.reply_code, e.reply_text) == (
        406, "PRECONDITION_FAILED - fast reply consumer does not exist")
    assert ch1.is_open


def test_publish_after_cancelling_reply_consumer_406(connect):
    ch = connect().channel()
    tag = ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    ch.basic_cancel(tag)
    ch.basic_publish("", "anything", b"x", pika.BasicProperties(reply_to=REPLY_TO))
    e = refused(ch.basic_qos, prefetch_count=0)
    assert (e.reply_code, e.reply_text) == (
        406, "PRECONDITION_FAILED - fast reply consumer does not exist")


def test_second_reply_consumer_on_a_channel_406(connect):
    ch = connect().channel()
    ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    e = refused(ch.basic_consume, REPLY_TO, lambda *a: None, auto_ack=True)
    assert (e.reply_code, e.reply_text) == (
        406, "PRECONDITION_FAILED - reply consumer already set")


def test_misuse_raw_class_and_method_ids(broker):
    with RawClient(broker.port) as raw:
        raw.handshake()
        raw.open_channel(1)
        raw.method(1, C.Basic.Consume(queue=REPLY_TO, no_ack=False))
        close = raw.expect(C.Channel.Close)
        assert (close.reply_code, close.class_id, close.method_id) == (406, 60, 20)
        assert close.reply_text == "PRECONDITION_FAILED - reply consumer cannot acknowledge"
        raw.method(1, C.Channel.CloseOk())
        raw.open_channel(2)
        raw.publish(2, b"x", routing_key="q", properties=C.Basic.Properties(reply_to=REPLY_TO))
        close = raw.expect(C.Channel.Close)
        assert (close.reply_code, close.class_id, close.method_id) == (406, 60, 40)
        assert close.reply_text == "PRECONDITION_FAILED - fast reply consumer does not exist"


def test_reply_pseudo_queue_cannot_be_read_with_basic_get(connect):
    ch = connect().channel()
    ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    e = refused(ch.basic_get, REPLY_TO)
    assert (e.reply_code, e.reply_text) == (
        404, "NOT_FOUND - no queue 'amq.rabbitmq.reply-to' in vhost '/'")


def _live_reply_name(connect):
    """A requester channel with a reply consumer, and the name its reply_to becomes."""
    conn = connect()
    ch = conn.channel()
    ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    ch.queue_declare("self-rpc", exclusive=True)
    ch.basic_publish("", "self-rpc", b"x", pika.BasicProperties(reply_to=REPLY_TO))
    _m, props, _b = ch.basic_get("self-rpc", auto_ack=True)
    return ch, props.reply_to


def test_passive_declare_of_a_dead_or_unknown_reply_name_404(connect):
    ch, token = _live_reply_name(connect)
    ch.close()
    for name in (token, REPLY_TO + ".bogus"):
        other = connect().channel()
        e = refused(other.queue_declare, name, passive=True)
        assert (e.reply_code, e.reply_text) == (404, f"NOT_FOUND - no queue '{name}' in vhost '/'")


@pytest.mark.parametrize("passive", [True, False])
def test_declare_of_reply_names_is_ok(connect, passive):
    ch = connect().channel()
    ok = ch.queue_declare(REPLY_TO, passive=passive).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (REPLY_TO, 0, 1)
    requester, token = _live_reply_name(connect)
    ok = ch.queue_declare(token, passive=passive).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (token, 0, 1)
    requester.close()
    e = refused(ch.queue_declare, token, passive=passive)
    assert (e.reply_code, e.reply_text) == (404, f"NOT_FOUND - no queue '{token}' in vhost '/'")


# -- the requester goes away ------------------------------------------------------------------
@pytest.mark.parametrize("how", ["cancel", "channel.close", "connection.close"])
def test_replies_after_the_requester_went_away_are_unroutable(connect, how):
    server = EchoServer(connect())
    client_conn = connect()
    ch = client_conn.channel()
    got = []
    tag = ch.basic_consume(REPLY_TO, lambda _c, _m, _p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", "rpcq", b"req", pika.BasicProperties(reply_to=REPLY_TO))
    pump([server.conn, client_conn], lambda: got == [b"re:req"], what="the first reply")
    token = server.requests[0][0]
    if how == "cancel":
        ch.basic_cancel(tag)
    elif how == "channel.close":
        ch.close()
    else:
        client_conn.close()
    server.ch.basic_publish("", token, b"late", mandatory=True)
    server.ch.basic_publish("", token, b"late-silent")
    server.ch.basic_qos(prefetch_count=0)          # round trip: any return has arrived
    pump([server.conn], lambda: server.returns, what="the return")
    assert server.returns == [(312, "NO_ROUTE", b"late")]
    if client_conn.is_open:
        client_conn.process_data_events(time_limit=0)
    assert got == [b"re:req"]


def test_new_reply_consumer_gets_a_new_name(connect):
    """After a cancel, a new reply consumer on the same channel has a different name; replies
    to the old name are unroutable, replies to the new one arrive."""
    server = EchoServer(connect())
    client_conn = connect()
    ch = client_conn.channel()
    got = []
    tag = ch.basic_consume(REPLY_TO, lambda _c, _m, _p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", "rpcq", b"one", pika.BasicProperties(reply_to=REPLY_TO))
    pump([server.conn, client_conn], lambda: got == [b"re:one"], what="the first reply")
    ch.basic_cancel(tag)
    ch.basic_consume(REPLY_TO, lambda _c, _m, _p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", "rpcq", b"two", pika.BasicProperties(reply_to=REPLY_TO))
    pump([server.conn, client_conn], lambda: got == [b"re:one", b"re:two"],
         what="the second reply")
    old, new = server.requests[0][0], server.requests[1][0]
    assert old != new
    server.ch.basic_publish("", old, b"to-old", mandatory=True)
    server.ch.basic_qos(prefetch_count=0)
    pump([server.conn], lambda: server.returns, what="the return")
    assert server.returns == [(312, "NO_ROUTE", b"to-old")]


# -- many clients -----------------------------------------------------------------------------
async def test_many_concurrent_rpc_clients_get_only_their_own_replies(broker):
    n_clients, n_requests = 20, 10
    server_conn = await aio_pika.connect(broker.url)
    async with server_conn:
        sch = await server_conn.channel()
        rpcq = await sch.declare_queue("rpcq", exclusive=True)

        async def serve(msg):
            await sch.default_exchange.publish(
                aio_pika.Message(b"re:" + msg.body, correlation_id=msg.correlation_id),
                routing_key=msg.reply_to)

        await rpcq.consume(serve, no_ack=True)

        async def client(i: int, conn) -> list:
            ch = await conn.channel()
            got: list = []
            done = asyncio.get_running_loop().create_future()

            async def on_reply(msg):
                got.append((msg.correlation_id, msg.body))
                if len(got) == n_requests and not done.done():
                    done.set_result(None)

            reply_queue = await ch.get_queue(REPLY_TO, ensure=False)
            await reply_queue.consume(on_reply, no_ack=True)
            for j in range(n_requests):
                await ch.default_exchange.publish(
                    aio_pika.Message(f"{i}:{j}".encode(), reply_to=REPLY_TO,
                                     correlation_id=f"{i}:{j}"),
                    routing_key="rpcq")
            await asyncio.wait_for(done, 10)
            return got, ch

        # Several channels per connection and several connections, all at once. Every reply
        # is accounted for: a reply misrouted to another client would leave its own client
        # short (timeout) and show up as a foreign correlation id.
        conns = [await aio_pika.connect(broker.url) for _ in range(5)]
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(client(i, conns[i % len(conns)]) for i in range(n_clients))),
                20)
            for i, (got, _ch) in enumerate(results):
                expected = [(f"{i}:{j}", f"re:{i}:{j}".encode()) for j in range(n_requests)]
                assert sorted(got) == sorted(expected)
        finally:
            for c in conns:
                await c.close()
