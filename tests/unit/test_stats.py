"""Statistics (amqpd/broker/stats.py) through the sans-IO core: client bytes in, then each
object's counters, rates (on a ManualClock) and the node-wide totals and churn. What RabbitMQ
3.10.8 shows for the same operations was recorded against the real broker (see
tests/test_stats.py for the same checks over sockets with pika)."""
from __future__ import annotations

import struct

from pamqp import commands as C

from amqpd.broker.clock import ManualClock
from tests.unit.stubs import Client, content, make_broker, method

DELIVER_KEYS = {"deliver", "deliver_no_ack", "get", "get_no_ack", "get_empty", "deliver_get",
                "redeliver", "ack"}


def counts(stats: dict) -> dict:
    """message_stats without the *_details entries."""
    return {k: v for k, v in stats.items() if not k.endswith("_details")}


def opened(broker, channels=(1,)) -> Client:
    c = Client(broker)
    c.handshake(heartbeat=0)
    for n in channels:
        c.open_channel(n)
    return c


def declare(c: Client, queue: str, channel: int = 1, **kw) -> None:
    c.send_method(channel, C.Queue.Declare(queue=queue, **kw))
    c.methods()


def ack(c: Client, tag: int, multiple: bool = False, channel: int = 1) -> None:
    c.send_method(channel, C.Basic.Ack(delivery_tag=tag, multiple=multiple))


def consume(c: Client, queue: str, no_ack: bool = False, channel: int = 1, tag: str = "c"):
    c.send_method(channel, C.Basic.Consume(queue=queue, consumer_tag=tag, no_ack=no_ack))


def test_nothing_happened_nothing_shown():
    broker = make_broker()
    c = opened(broker)
    declare(c, "q")
    vhost = broker.vhosts["/"]
    now = broker.clock()
    assert vhost.queues["q"].stats.message_stats(now) == {}
    assert vhost.exchanges[""].stats.message_stats(now) == {}
    assert c.conn.channels[1].stats.message_stats(now) == {}
    assert c.conn.stats.message_stats(now) == {}
    assert broker.stats.message_stats(now) == {}
    assert set(broker.stats.totals().values()) == {0}
    assert broker.stats.churn() == {"connections_opened": 1, "connections_closed": 0,
                                    "channels_opened": 1, "channels_closed": 0,
                                    "queues_declared": 1, "queues_created": 1,
                                    "queues_deleted": 0}


def test_publishing_counts_on_channel_exchange_and_queue():
    """The figures RabbitMQ 3.10.8 showed for the same publishes: direct exchange x with 3
    routed, 1 returned and 1 dropped (publish_in 5, publish_out 3); fanout f to two queues
    (publish_in 1, publish_out 2); channel publish 6, confirm 6, one of each unroutable."""
    broker = make_broker()
    c = opened(broker)
    for name in ("q", "q2"):
        declare(c, name)
    c.send_method(1, C.Exchange.Declare(exchange="x", exchange_type="direct"))
    c.send_method(1, C.Exchange.Declare(exchange="f", exchange_type="fanout"))
    c.send_method(1, C.Queue.Bind(queue="q", exchange="x", routing_key="k"))
    c.send_method(1, C.Queue.Bind(queue="q", exchange="f"))
    c.send_method(1, C.Queue.Bind(queue="q2", exchange="f"))
    c.send_method(1, C.Confirm.Select())
    c.methods()
    for body in (b"1", b"2", b"3"):
        c.publish(1, body, exchange="x", routing_key="k")
    c.publish(1, b"u", exchange="x", routing_key="nope", mandatory=True)
    c.publish(1, b"d", exchange="x", routing_key="nope")
    c.publish(1, b"fan", exchange="f")
    c.methods()
    vhost = broker.vhosts["/"]
    now = broker.clock()
    assert counts(vhost.exchanges["x"].stats.message_stats(now)) == {"publish_in": 5,
                                                                    "publish_out": 3}
    assert counts(vhost.exchanges["f"].stats.message_stats(now)) == {"publish_in": 1,
                                                                    "publish_out": 2}
    assert counts(c.conn.channels[1].stats.message_stats(now)) == {
        "publish": 6, "confirm": 6, "return_unroutable": 1, "drop_unroutable": 1}
    assert counts(vhost.queues["q"].stats.message_stats(now)) == {"publish": 4}
    assert counts(vhost.queues["q2"].stats.message_stats(now)) == {"publish": 1}
    totals = broker.stats.totals()
    assert totals["messages_received"] == 6
    assert totals["messages_received_confirm"] == 6
    assert totals["messages_confirmed"] == 6
    assert totals["messages_routed"] == 4
    assert totals["messages_unroutable_returned"] == 1
    assert totals["messages_unroutable_dropped"] == 1


def test_gets_consumes_acks_nacks_as_rabbitmq_counts_them():
    """RabbitMQ 3.10.8 for: get+ack, get+nack(requeue), get no-ack (the redelivery), then a
    consumer acking the 2 left -> queue ack 3, deliver 2, get 2, get_no_ack 1, deliver_get 5,
    redeliver 1; and on a second queue get no-ack + get-empty."""
    broker = make_broker()
    pub = opened(broker)
    declare(pub, "q")
    declare(pub, "q2")
    for body in (b"1", b"2", b"3", b"4"):
        pub.publish(1, body, routing_key="q")
    pub.publish(1, b"x", routing_key="q2")
    c = opened(broker, channels=(2,))
    c.get(2, "q")
    ack(c, 1, channel=2)
    c.get(2, "q")
    c.send_method(2, C.Basic.Nack(delivery_tag=2, requeue=True))
    m, _, body = c.get(2, "q", no_ack=True)
    assert m.redelivered and body == b"2"
    c.get(2, "q2", no_ack=True)
    assert isinstance(c.get(2, "q2")[0], C.Basic.GetEmpty)
    consume(c, "q", channel=2)
    c.methods()
    ack(c, 5, channel=2)
    ack(c, 6, channel=2)
    now = broker.clock()
    vhost = broker.vhosts["/"]
    assert counts(vhost.queues["q"].stats.message_stats(now)) == {
        "publish": 4, "ack": 3, "deliver": 2, "deliver_no_ack": 0, "get": 2, "get_no_ack": 1,
        "get_empty": 0, "deliver_get": 5, "redeliver": 1}
    assert counts(vhost.queues["q2"].stats.message_stats(now)) == {
        "publish": 1, "ack": 0, "deliver": 0, "deliver_no_ack": 0, "get": 0, "get_no_ack": 1,
        "get_empty": 1, "deliver_get": 1, "redeliver": 0}
    ch = c.conn.channels[2]
    assert counts(ch.stats.message_stats(now)) == {
        "ack": 3, "deliver": 2, "deliver_no_ack": 0, "get": 2, "get_no_ack": 2, "get_empty": 1,
        "deliver_get": 6, "redeliver": 1}
    assert ch.stats.values()["deliver_get"] == ch.next_tag
    totals = broker.stats.totals()
    assert totals["messages_delivered"] == 6
    assert totals["messages_delivered_consume_manual_ack"] == 2
    assert totals["messages_delivered_consume_auto_ack"] == 0
    assert totals["messages_delivered_get_manual_ack"] == 2
    assert totals["messages_delivered_get_auto_ack"] == 2
    assert totals["messages_get_empty"] == 1
    assert totals["messages_redelivered"] == 1
    assert totals["messages_acknowledged"] == 3
    overview = counts(broker.stats.message_stats(now))
    assert overview["publish"] == 5 and overview["ack"] == 3 and overview["deliver_get"] == 6


def test_multiple_ack_reject_and_no_ack_consumer():
    broker = make_broker()
    c = opened(broker, channels=(1, 2))
    declare(c, "q")
    declare(c, "auto")
    for i in range(10):
        c.publish(1, b"m%d" % i, routing_key="q")
    for i in range(3):
        c.publish(1, b"a", routing_key="auto")
    consume(c, "q", channel=2)
    consume(c, "auto", no_ack=True, channel=1, tag="auto")
    c.methods()
    ack(c, 4, multiple=True, channel=2)                       # 4 acked by one frame
    c.send_method(2, C.Basic.Reject(delivery_tag=5, requeue=False))   # dropped, not acked
    c.send_method(2, C.Basic.Nack(delivery_tag=7, multiple=True, requeue=True))  # 6, 7 back
    c.methods()                                     # the two requeued ones come again (11, 12)
    ack(c, 0, multiple=True, channel=2)             # everything outstanding: 8, 9, 10, 11, 12
    now = broker.clock()
    q = broker.vhosts["/"].queues["q"]
    assert q.unacked == 0
    stats = counts(q.stats.message_stats(now))
    assert stats["deliver"] == 12 and stats["redeliver"] == 2 and stats["ack"] == 9
    ch2 = counts(c.conn.channels[2].stats.message_stats(now))
    assert ch2["deliver"] == 12 and ch2["ack"] == 9 and ch2["redeliver"] == 2
    ch1 = counts(c.conn.channels[1].stats.message_stats(now))
    assert ch1["publish"] == 13 and ch1["deliver_no_ack"] == 3 and ch1["ack"] == 0
    auto = counts(broker.vhosts["/"].queues["auto"].stats.message_stats(now))
    assert auto["deliver_no_ack"] == 3 and auto["deliver_get"] == 3 and auto["ack"] == 0
    assert broker.stats.totals()["messages_acknowledged"] == 9


def test_closed_channels_cancelled_consumers_and_deleted_queues_keep_their_counts():
    broker = make_broker()
    c = opened(broker, channels=(1, 2, 3))
    declare(c, "q")
    declare(c, "gone")
    for i in range(4):
        c.publish(1, b"m", routing_key="q")
    c.publish(1, b"m", routing_key="gone")
    consume(c, "q", channel=2)
    consume(c, "gone", no_ack=True, channel=3, tag="g")
    c.methods()
    ack(c, 1, channel=2)
    ack(c, 2, channel=2)
    c.send_method(2, C.Basic.Cancel(consumer_tag="c"))         # 2 still unacked
    c.send_method(1, C.Queue.Delete(queue="gone"))
    c.methods()
    q = broker.vhosts["/"].queues["q"]
    now = broker.clock()
    after_cancel = counts(q.stats.message_stats(now))
    assert after_cancel["deliver"] == 4 and after_cancel["ack"] == 2
    before = broker.stats.totals()
    assert before["messages_delivered"] == 5 and before["messages_acknowledged"] == 2
    c.send_method(2, C.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0))   # requeues 3 and 4
    c.methods()
    after = broker.stats.totals()
    assert after == before
    assert counts(q.stats.message_stats(now))["ack"] == 2
    assert q.message_count == 2
    assert broker.stats.churn()["channels_closed"] == 1
    assert broker.stats.churn()["queues_deleted"] == 1
    c.send_method(0, C.Connection.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
    c.conn.connection_lost()
    assert broker.stats.totals() == after
    churn = broker.stats.churn()
    assert churn["connections_closed"] == 1 and churn["channels_closed"] == 3


def test_transactions_count_at_commit():
    broker = make_broker()
    c = opened(broker)
    declare(c, "q")
    c.send_method(1, C.Tx.Select())
    c.publish(1, b"1", routing_key="q")
    c.publish(1, b"2", routing_key="q")
    c.methods()
    ch = c.conn.channels[1]
    assert ch.stats.values()["publish"] == 0
    c.send_method(1, C.Tx.Commit())
    c.methods()
    assert ch.stats.values()["publish"] == 2
    c.get(1, "q")
    c.get(1, "q")
    ack(c, 2, multiple=True)
    assert ch.stats.values()["ack"] == 0                 # held by the transaction
    c.send_method(1, C.Tx.Rollback())
    c.methods()
    assert ch.stats.values()["ack"] == 0
    ack(c, 1)
    c.send_method(1, C.Tx.Commit())
    c.methods()
    values = ch.stats.values()
    assert values["ack"] == 1 and values["get"] == 2
    assert counts(broker.vhosts["/"].queues["q"].stats.message_stats(broker.clock()))["ack"] == 1


def test_rates_over_the_last_samples():
    clock = ManualClock()
    broker = make_broker(clock=clock)
    c = opened(broker)
    declare(c, "q")
    q = broker.vhosts["/"].queues["q"]
    ch = c.conn.channels[1]
    c.publish(1, b"first", routing_key="q")
    first = ch.stats.message_stats(clock.time())
    assert first["publish"] == 1 and first["publish_details"] == {"rate": 0.0}
    for _ in range(10):
        c.publish(1, b"m", routing_key="q")
    clock.advance(5)
    stats = ch.stats.message_stats(clock.time())
    assert stats["publish"] == 11 and stats["publish_details"] == {"rate": 2.0}
    assert q.stats.message_stats(clock.time())["publish_details"] == {"rate": 0.0}  # first read
    for _ in range(5):
        c.publish(1, b"m", routing_key="q")
    clock.advance(1)       # within INTERVAL of the last sample: rate since the one before
    assert ch.stats.message_stats(clock.time())["publish_details"] == {"rate": 2.5}  # 15 in 6 s
    clock.advance(4)       # INTERVAL after the last sample: a new one, the rate since it
    assert ch.stats.message_stats(clock.time())["publish_details"] == {"rate": 1.0}
    clock.advance(5)       # nothing published in the last 5 s
    assert ch.stats.message_stats(clock.time())["publish_details"] == {"rate": 0.0}
    assert q.stats.message_stats(clock.time())["publish_details"] == {"rate": 0.5}  # 5 in 10 s
    overview = broker.stats.message_stats(clock.time())
    assert overview["publish"] == 16 and overview["publish_details"] == {"rate": 0.0}


def test_connection_io_counts_octets_both_ways():
    clock = ManualClock()
    broker = make_broker(clock=clock)
    c = Client(broker)
    sent = received = 0
    original_send, original_take = c.conn.data_received, c.conn.take_output

    def send(data):
        nonlocal sent
        sent += len(data)
        original_send(data)

    def take():
        nonlocal received
        data = original_take()
        received += len(data)
        return data

    c.conn.data_received, c.conn.take_output = send, take
    c.handshake(heartbeat=0)
    c.open_channel(1)
    c.publish(1, b"x" * 1000, routing_key="nowhere")
    io = c.conn.stats.io()
    assert io["recv_oct"] == sent and io["send_oct"] == received
    assert io["recv_cnt"] == 3 and io["send_cnt"] == 2
    first = c.conn.stats.io_details(clock.time())
    assert first == {"recv_oct_details": {"rate": 0.0}, "send_oct_details": {"rate": 0.0}}
    before = sent
    c.publish(1, b"x" * 1000, routing_key="nowhere")
    c.publish(1, b"x" * 1000, routing_key="nowhere")
    clock.advance(5)
    details = c.conn.stats.io_details(clock.time())
    assert details["recv_oct_details"]["rate"] == round((sent - before) / 5, 2)
    assert details["send_oct_details"]["rate"] == 0.0


def test_queue_churn_counts_declares_creations_and_deletions():
    broker = make_broker()
    c = opened(broker)
    declare(c, "a")
    declare(c, "a")                                        # redeclared: declared, not created
    declare(c, "a", passive=True)                          # passive: neither
    declare(c, "", exclusive=True)                         # server-named, exclusive
    c.send_method(1, C.Basic.Consume(queue="amq.rabbitmq.reply-to", no_ack=True))
    c.methods()                                            # direct reply-to: no queue counted
    c.send_method(1, C.Queue.Delete(queue="a"))
    c.methods()
    churn = broker.stats.churn()
    assert (churn["queues_declared"], churn["queues_created"], churn["queues_deleted"]) \
        == (3, 2, 1)
    c.conn.connection_lost()                               # the exclusive queue goes
    churn = broker.stats.churn()
    assert churn["queues_deleted"] == 2
    assert churn["connections_closed"] == 1 and churn["channels_closed"] == 1


def test_no_allocation_of_samples_without_readers():
    """Counting alone keeps no samples: rates cost only when someone reads."""
    broker = make_broker()
    c = opened(broker)
    declare(c, "q")
    for _ in range(3):
        c.publish(1, b"m", routing_key="q")
    assert c.conn.channels[1].counts.samples is None
    assert broker.vhosts["/"].queues["q"].counts.samples is None
    assert broker.counters.samples is None


def test_ack_frames_pack_many_tags():
    """A struct-built ack is what hot clients send: checks the fast ack path counts."""
    broker = make_broker()
    c = opened(broker)
    declare(c, "q")
    c.send_method(1, C.Basic.Qos(prefetch_count=100))
    consume(c, "q")
    c.methods()
    for _ in range(50):
        c.publish(1, b"m", routing_key="q")
    c.methods()
    c.send(b"".join(struct.pack(">BHIHHQB", 1, 1, 13, 60, 80, t, 0) + b"\xce"
                    for t in range(1, 51)))
    values = c.conn.channels[1].stats.values()
    assert values["deliver"] == 50 and values["ack"] == 50 and values["publish"] == 50


def test_publish_runs_add_up_per_channel_and_per_exchange():
    """One counter per publish serves both the channel and the exchange: channels switching
    exchanges, a transaction, a permission change between a publish and its content, and a
    closed channel all keep both sides right."""
    broker = make_broker()
    a = opened(broker, channels=(1, 2))
    declare(a, "q")
    for name in ("x", "y", "t"):
        a.send_method(1, C.Exchange.Declare(exchange=name, exchange_type="fanout"))
        a.send_method(1, C.Queue.Bind(queue="q", exchange=name))
    a.methods()
    for ex in ("x", "y", "x", "x", "y"):
        a.publish(1, b"m", exchange=ex)
    a.publish(2, b"m", exchange="y")
    a.send_method(2, C.Tx.Select())
    a.publish(2, b"m", exchange="t")
    a.publish(2, b"m", exchange="x")
    a.send_method(2, C.Tx.Commit())
    a.methods()
    # permissions re-read between a publish method and its content: still counted on x
    a.send(method(1, C.Basic.Publish(exchange="x", routing_key="")))
    a.conn.permissions_changed()
    a.send(content(1, b"late"))
    vhost = broker.vhosts["/"]
    now = broker.clock()

    def publish_in(name):
        return vhost.exchanges[name].stats.values()["publish_in"]

    assert (publish_in("x"), publish_in("y"), publish_in("t")) == (5, 3, 1)
    assert a.conn.channels[1].stats.values()["publish"] == 6
    assert a.conn.channels[2].stats.values()["publish"] == 3
    assert vhost.queues["q"].stats.values()["publish"] == 9
    a.send_method(2, C.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
    a.methods()
    assert (publish_in("x"), publish_in("y"), publish_in("t")) == (5, 3, 1)
    assert broker.stats.totals()["messages_received"] == 9
    assert counts(vhost.exchanges["t"].stats.message_stats(now)) == {"publish_in": 1,
                                                                    "publish_out": 1}
    assert not vhost.exchanges["t"].runs           # the closed channel's run was folded in


def test_dead_lettered_messages_are_not_publishes_of_the_target_queue():
    """RabbitMQ counts a queue's publish per channel publish; dead-lettering bypasses
    channels, so the dead-letter queue shows the message without a publish."""
    broker = make_broker()
    c = opened(broker)
    declare(c, "dlq")
    declare(c, "src", arguments={"x-dead-letter-exchange": "",
                                 "x-dead-letter-routing-key": "dlq"})
    c.publish(1, b"m", routing_key="src")
    c.get(1, "src")
    c.send_method(1, C.Basic.Reject(delivery_tag=1, requeue=False))
    vhost = broker.vhosts["/"]
    assert vhost.queues["dlq"].message_count == 1
    assert vhost.queues["dlq"].stats.message_stats(broker.clock()) == {}
    assert counts(vhost.queues["src"].stats.message_stats(broker.clock()))["publish"] == 1
    m, _, body = c.get(1, "dlq", no_ack=True)
    assert body == b"m"
    assert counts(vhost.queues["dlq"].stats.message_stats(broker.clock()))["get_no_ack"] == 1
