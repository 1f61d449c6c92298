"""Statistics of a real amqpd driven by pika over sockets: each object's message_stats, the
node-wide totals and churn after publish / confirm / return / get / consume / ack /
nack-requeue, checked against the figures RabbitMQ 3.10.8 showed for the same sequence."""
import pika
import pytest

from .brokerthread import BrokerThread
from .helpers import pump


def counts(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if not k.endswith("_details")}


def read(broker, fn):
    """Evaluate fn(amqpd Broker, now) on the broker's loop."""
    b = broker.broker
    return broker.call(lambda: fn(b, b.clock()))


def test_the_recorded_rabbitmq_sequence(broker, connect):
    conn = connect()
    ch = conn.channel()
    ch.exchange_declare("x", "direct")
    ch.exchange_declare("f", "fanout")
    ch.queue_declare("q")
    ch.queue_bind("q", "x", "k")
    ch.queue_declare("q2")
    ch.queue_bind("q", "f")
    ch.queue_bind("q2", "f")
    ch.confirm_delivery()
    for body in (b"1", b"2", b"3"):
        ch.basic_publish("x", "k", body)
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish("x", "nope", b"u", mandatory=True)
    ch.basic_publish("x", "nope", b"d")
    ch.basic_publish("f", "", b"fan")
    ch2 = conn.channel()
    m = ch2.basic_get("q")
    ch2.basic_ack(m[0].delivery_tag)
    m = ch2.basic_get("q")
    ch2.basic_nack(m[0].delivery_tag, requeue=True)
    m = ch2.basic_get("q", auto_ack=True)
    assert m[0].redelivered
    ch2.basic_get("q2", auto_ack=True)
    assert ch2.basic_get("q2") == (None, None, None)
    got = []

    def on_message(chx, method, props, body):
        got.append(body)
        chx.basic_ack(method.delivery_tag)

    ch2.basic_consume("q", on_message)
    pump(conn, lambda: len(got) == 2, what="two deliveries")
    # the acks were sent; a round trip makes sure they were handled
    ch2.queue_declare("q", passive=True)

    def snapshot(b, now):
        vhost = b.vhosts["/"]
        return {"x": counts(vhost.exchanges["x"].stats.message_stats(now)),
                "f": counts(vhost.exchanges["f"].stats.message_stats(now)),
                "q": counts(vhost.queues["q"].stats.message_stats(now)),
                "q2": counts(vhost.queues["q2"].stats.message_stats(now)),
                "channels": sorted((c.number, counts(c.stats.message_stats(now)))
                                   for conn in b.connections for c in conn.channels.values()),
                "io": [c.stats.io() for c in b.connections],
                "totals": b.stats.totals(), "churn": b.stats.churn(),
                "overview": counts(b.stats.message_stats(now))}

    s = read(broker, snapshot)
    assert s["x"] == {"publish_in": 5, "publish_out": 3}
    assert s["f"] == {"publish_in": 1, "publish_out": 2}
    assert s["q"] == {"publish": 4, "ack": 3, "deliver": 2, "deliver_no_ack": 0, "get": 2,
                      "get_no_ack": 1, "get_empty": 0, "deliver_get": 5, "redeliver": 1}
    assert s["q2"] == {"publish": 1, "ack": 0, "deliver": 0, "deliver_no_ack": 0, "get": 0,
                       "get_no_ack": 1, "get_empty": 1, "deliver_get": 1, "redeliver": 0}
    assert s["channels"] == [
        (1, {"publish": 6, "confirm": 6, "return_unroutable": 1, "drop_unroutable": 1}),
        (2, {"ack": 3, "deliver": 2, "deliver_no_ack": 0, "get": 2, "get_no_ack": 2,
             "get_empty": 1, "deliver_get": 6, "redeliver": 1})]
    assert s["totals"] == {
        "messages_received": 6, "messages_received_confirm": 6, "messages_confirmed": 6,
        "messages_routed": 4, "messages_unroutable_dropped": 1,
        "messages_unroutable_returned": 1, "messages_delivered": 6,
        "messages_delivered_consume_auto_ack": 0, "messages_delivered_consume_manual_ack": 2,
        "messages_delivered_get_auto_ack": 2, "messages_delivered_get_manual_ack": 2,
        "messages_get_empty": 1, "messages_redelivered": 1, "messages_acknowledged": 3}
    assert s["churn"] == {"connections_opened": 1, "connections_closed": 0,
                          "channels_opened": 2, "channels_closed": 0, "queues_declared": 2,
                          "queues_created": 2, "queues_deleted": 0}
    assert s["overview"] == {"publish": 6, "confirm": 6, "return_unroutable": 1,
                             "drop_unroutable": 1, "deliver": 2, "deliver_no_ack": 0, "get": 2,
                             "get_no_ack": 2, "get_empty": 1, "deliver_get": 6, "redeliver": 1,
                             "ack": 3}
    [io] = s["io"]
    assert io["recv_oct"] > 0 and io["send_oct"] > 0 and io["recv_cnt"] > 0 \
        and io["send_cnt"] > 0

    conn.close()
    broker.wait_for(lambda: not broker.broker.connections, what="the connection to close")
    after = read(broker, lambda b, now: (b.stats.totals(), b.stats.churn()))
    assert after[0] == s["totals"]            # closed channels keep their part of the totals
    assert after[1]["connections_closed"] == 1 and after[1]["channels_closed"] == 2


def test_consumer_nack_requeue_and_no_ack_consumer(broker, connect):
    conn = connect()
    ch = conn.channel()
    ch.queue_declare("work")
    ch.queue_declare("fire")
    for i in range(6):
        ch.basic_publish("", "work", b"w%d" % i)
    for i in range(4):
        ch.basic_publish("", "fire", b"f")
    seen = []

    def on_work(chx, method, props, body):
        seen.append((body, method.redelivered))
        if body == b"w1" and not method.redelivered:
            chx.basic_nack(method.delivery_tag, requeue=True)
        elif body == b"w2":
            chx.basic_reject(method.delivery_tag, requeue=False)
        else:
            chx.basic_ack(method.delivery_tag)

    fired = []
    ch.basic_qos(prefetch_count=10)
    ch.basic_consume("work", on_work)
    ch.basic_consume("fire", lambda *a: fired.append(1), auto_ack=True)
    pump(conn, lambda: len(seen) == 7 and len(fired) == 4, what="deliveries")
    ch.queue_declare("work", passive=True)       # the last acks are in

    def snapshot(b, now):
        vhost = b.vhosts["/"]
        return (counts(vhost.queues["work"].stats.message_stats(now)),
                counts(vhost.queues["fire"].stats.message_stats(now)), b.stats.totals())

    work, fire, totals = read(broker, snapshot)
    assert work == {"publish": 6, "deliver": 7, "deliver_no_ack": 0, "get": 0,
                    "get_no_ack": 0, "get_empty": 0, "deliver_get": 7, "redeliver": 1, "ack": 5}
    assert fire["deliver_no_ack"] == 4 and fire["ack"] == 0 and fire["deliver_get"] == 4
    assert totals["messages_acknowledged"] == 5
    assert totals["messages_redelivered"] == 1
    assert totals["messages_delivered_consume_auto_ack"] == 4
    assert totals["messages_delivered_consume_manual_ack"] == 7


def test_persistent_confirms_and_a_restart_starts_from_zero(tmp_path):
    """Confirms of messages that waited for the disk are counted; after a restart the
    recovered messages are not counted as published again (counters live as long as the
    process, as in RabbitMQ)."""
    b = BrokerThread(data_dir=str(tmp_path)).start()
    try:
        conn = pika.BlockingConnection(pika.URLParameters(b.url))
        ch = conn.channel()
        ch.queue_declare("durable", durable=True)
        ch.confirm_delivery()
        for _ in range(5):
            ch.basic_publish("", "durable", b"p",
                             pika.BasicProperties(delivery_mode=2))
        totals = b.call(lambda: b.broker.stats.totals())
        assert totals["messages_confirmed"] == 5 and totals["messages_received_confirm"] == 5
        conn.close()
    finally:
        b.stop()
    b2 = BrokerThread(data_dir=str(tmp_path)).start()
    try:
        def snapshot():
            q = b2.broker.vhosts["/"].queues["durable"]
            return q.message_count, q.stats.message_stats(b2.broker.clock())
        assert b2.call(snapshot) == (5, {})
        conn = pika.BlockingConnection(pika.URLParameters(b2.url))
        ch = conn.channel()
        ch.basic_publish("", "durable", b"new")
        ch.basic_get("durable", auto_ack=True)
        ch.queue_declare("durable", durable=True, passive=True)
        stats = counts(b2.call(snapshot)[1])
        assert stats["publish"] == 1 and stats["get_no_ack"] == 1
        conn.close()
    finally:
        b2.stop()
        b2.cleanup()


def test_the_management_api_shows_the_statistics(make_broker):
    """What an operator sees: /api/overview, /api/queues/{vhost}/{name}, /api/exchanges and
    /api/channels carry these counters (read by the management API, amqpd/management)."""
    from .mgmt_client import API
    broker = make_broker(http_port=0)
    api = API(broker.management_url)
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        ch = conn.channel()
        ch.queue_declare("seen")
        for _ in range(3):
            ch.basic_publish("", "seen", b"m")
        ch.basic_get("seen", auto_ack=True)
        ch.queue_declare("seen", passive=True)
        q = api.request("GET", "/api/queues/%2F/seen").json()
        assert q["message_stats"]["publish"] == 3
        assert q["message_stats"]["get_no_ack"] == 1
        assert "rate" in q["message_stats"]["publish_details"]
        default = [x for x in api.request("GET", "/api/exchanges/%2F").json() if x["name"] == ""]
        assert default[0]["message_stats"]["publish_in"] == 3
        overview = api.request("GET", "/api/overview").json()
        assert overview["message_stats"]["publish"] == 3
        assert overview["message_stats"]["deliver_get"] == 1
    finally:
        conn.close()
