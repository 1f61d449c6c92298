"""Publisher confirms and transactions (tx.select / commit / rollback over publishes and acks)."""
import asyncio

import aio_pika
import pika
import pytest
from pamqp import commands as C

from .rawclient import RawClient, publish_frames
from .helpers import connect, count, drain, pump, unacked


# -- helpers -------------------------------------------------------------------------------------
def frames_until(rc: RawClient, cls) -> list:
    """Frames (not heartbeats) up to and including the first of type ``cls``."""
    out = []
    while True:
        _ch, frame = rc.recv()
        if frame.name == "Heartbeat":
            continue
        out.append(frame)
        if isinstance(frame, cls):
            return out


# -- publisher confirms --------------------------------------------------------------------------
def test_10000_confirms_raw(broker):
    n = 10_000
    with RawClient(broker.port, timeout=10) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.call(1, C.Queue.Declare(queue="confirm10k"), C.Queue.DeclareOk)
        rc.call(1, C.Confirm.Select(), C.Confirm.SelectOk)
        one = publish_frames(1, b"payload", routing_key="confirm10k")
        for start in range(0, n, 1000):
            rc.send(one * 1000)
        confirmed = 0
        acks = 0
        while confirmed < n:
            _ch, frame = rc.recv()
            assert isinstance(frame, C.Basic.Ack), frame      # never a nack
            if frame.multiple:
                assert frame.delivery_tag > confirmed
            else:
                assert frame.delivery_tag == confirmed + 1
            confirmed = frame.delivery_tag
            acks += 1
        assert confirmed == n
        # Every publish confirmed exactly once; nothing more pending.
        ok = rc.call(1, C.Queue.Declare(queue="confirm10k", passive=True), C.Queue.DeclareOk)
        assert ok.message_count == n
        assert acks <= n


async def test_10000_confirms_aio_pika(broker):
    n = 10_000
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        q = await ch.declare_queue("confirm-aio")
        ex = ch.default_exchange
        for start in range(0, n, 2000):
            results = await asyncio.wait_for(asyncio.gather(*[
                ex.publish(aio_pika.Message(b"%d" % i), routing_key="confirm-aio")
                for i in range(start, start + 2000)]), 20)
            assert all(isinstance(r, C.Basic.Ack) for r in results), \
                {type(r).__name__ for r in results}
        declared = await ch.declare_queue("confirm-aio", passive=True)
        assert declared.declaration_result.message_count == n
        await q.purge()


def test_confirms_per_channel_sequences(broker):
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.open_channel(2)
        rc.call(1, C.Queue.Declare(queue="seq"), C.Queue.DeclareOk)
        rc.call(1, C.Confirm.Select(), C.Confirm.SelectOk)
        rc.call(2, C.Confirm.Select(), C.Confirm.SelectOk)
        rc.publish(1, b"a", routing_key="seq")
        ack = rc.expect(C.Basic.Ack)
        assert (ack.delivery_tag, ack.multiple) == (1, False)
        rc.publish(2, b"b", routing_key="seq")
        rc.publish(2, b"c", routing_key="seq")
        seen = {}
        while seen.get(2, 0) < 2:
            ch, frame = rc.recv()
            assert ch == 2 and isinstance(frame, C.Basic.Ack), frame
            seen[ch] = frame.delivery_tag
        rc.publish(1, b"d", routing_key="seq")
        ack = rc.expect(C.Basic.Ack)
        assert ack.delivery_tag == 2


def test_mandatory_unroutable_return_before_ack(broker):
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.call(1, C.Queue.Declare(queue="routable"), C.Queue.DeclareOk)
        rc.call(1, C.Confirm.Select(), C.Confirm.SelectOk)
        rc.send(publish_frames(1, b"lost", routing_key="nowhere", mandatory=True))
        frames = frames_until(rc, C.Basic.Ack)
        assert [f.name for f in frames] == ["Basic.Return", "ContentHeader", "ContentBody",
                                            "Basic.Ack"]
        ret, _head, body, ack = frames
        assert (ret.reply_code, ret.reply_text) == (312, "NO_ROUTE")
        assert (ret.exchange, ret.routing_key) == ("", "nowhere")
        assert body.value == b"lost"
        assert (ack.delivery_tag, ack.multiple) == (1, False)
        # Routable: just the ack. Unroutable without mandatory: dropped, just the ack.
        rc.send(publish_frames(1, b"ok", routing_key="routable", mandatory=True))
        assert [f.name for f in frames_until(rc, C.Basic.Ack)] == ["Basic.Ack"]
        rc.send(publish_frames(1, b"dropped", routing_key="nowhere"))
        frames = frames_until(rc, C.Basic.Ack)
        assert [f.name for f in frames] == ["Basic.Ack"] and frames[0].delivery_tag == 3
        # Several in one batch: each return still precedes the ack that covers it.
        rc.send(publish_frames(1, b"x1", routing_key="nowhere", mandatory=True)
                + publish_frames(1, b"x2", routing_key="routable", mandatory=True)
                + publish_frames(1, b"x3", routing_key="nowhere", mandatory=True))
        frames = frames_until(rc, C.Basic.Ack)
        names = [f.name for f in frames]
        assert names.count("Basic.Return") == 2 and names[-1] == "Basic.Ack"
        tag = frames[-1].delivery_tag
        while tag < 6:
            frame = rc.expect(C.Basic.Ack)
            tag = frame.delivery_tag
        assert tag == 6


def test_pika_mandatory_unroutable_with_confirms(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("routable")
        ch.basic_publish("", "routable", b"ok", mandatory=True)
        with pytest.raises(pika.exceptions.UnroutableError) as err:
            ch.basic_publish("", "nowhere", b"lost", mandatory=True)
        assert [m.body for m in err.value.messages] == [b"lost"]
        ch.basic_publish("", "nowhere", b"silently dropped")
        assert count(ch, "routable") == 1
    finally:
        conn.close()


# -- transactions: publishes ---------------------------------------------------------------------
def test_tx_publish_commit_and_rollback(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("txq")
        watcher = conn.channel()
        ch.tx_select()
        for i in range(3):
            ch.basic_publish("", "txq", b"rolled-back-%d" % i)
        assert count(watcher, "txq") == 0          # not before commit
        ch.tx_rollback()
        assert count(watcher, "txq") == 0
        ch.basic_publish("", "txq", b"c0")
        ch.basic_publish("", "txq", b"c1")
        assert count(watcher, "txq") == 0
        ch.tx_commit()
        assert count(watcher, "txq") == 2
        # Still transactional after commit: the next publish waits for the next commit.
        ch.basic_publish("", "txq", b"c2")
        assert count(watcher, "txq") == 2
        ch.tx_commit()
        assert drain(watcher, "txq", flags=True) == [(b"c0", False), (b"c1", False), (b"c2", False)]
        # Uncommitted publishes vanish with the channel.
        ch.basic_publish("", "txq", b"never")
        ch.close()
        assert count(watcher, "txq") == 0
    finally:
        conn.close()


def test_tx_mandatory_return_at_commit(broker):
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.call(1, C.Tx.Select(), C.Tx.SelectOk)
        rc.send(publish_frames(1, b"lost", routing_key="nowhere", mandatory=True))
        rc.call(1, C.Basic.Qos(), C.Basic.QosOk)     # no return before the commit
        rc.method(1, C.Tx.Commit())
        names = [f.name for f in frames_until(rc, C.Tx.CommitOk)]
        assert names == ["Basic.Return", "ContentHeader", "ContentBody", "Tx.CommitOk"]


# -- transactions: acks --------------------------------------------------------------------------
def _consume(conn, ch, queue: str, n: int) -> list:
    got = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append((m.delivery_tag, b)))
    pump(conn, lambda: len(got) == n)
    return got


def test_tx_acks_commit_and_rollback(broker):
    conn = connect(broker)
    try:
        setup = conn.channel()
        setup.queue_declare("txa")
        for i in range(4):
            setup.basic_publish("", "txa", b"m%d" % i)
        ch = conn.channel()
        got = _consume(conn, ch, "txa", 4)
        assert [t for t, _ in got] == [1, 2, 3, 4]
        ch.tx_select()
        ch.basic_ack(1)
        ch.basic_ack(3, multiple=True)             # 2, 3
        ch.tx_rollback()
        assert unacked(broker, "txa") == 4         # nothing was acked
        # The rolled-back tags are live again: ack m0 and m1 for real.
        ch.basic_ack(2, multiple=True)
        assert unacked(broker, "txa") == 4         # not before commit
        ch.tx_commit()
        assert unacked(broker, "txa") == 2
        ch.close()
        # m2 and m3 (acked only in the rolled-back transaction) are redelivered.
        assert drain(setup, "txa", flags=True) == [(b"m2", True), (b"m3", True)]
    finally:
        conn.close()


def test_tx_rolled_back_acks_redelivered_to_other_consumer(broker):
    worker, other = connect(broker), connect(broker)
    try:
        setup = other.channel()
        setup.queue_declare("txr")
        for i in range(3):
            setup.basic_publish("", "txr", b"m%d" % i)
        ch = worker.channel()
        got = _consume(worker, ch, "txr", 3)
        ch.tx_select()
        ch.basic_ack(0, multiple=True)
        ch.tx_rollback()
        ch.close()
        ch2 = other.channel()
        second = []
        ch2.basic_consume("txr", lambda c, m, p, b: second.append((b, m.redelivered)),
                          auto_ack=True)
        pump(other, lambda: len(second) == 3)
        assert second == [(b"m0", True), (b"m1", True), (b"m2", True)]
        assert [b for _, b in got] == [b"m0", b"m1", b"m2"]
    finally:
        worker.close()
        other.close()


def test_tx_reject_requeue_applies_at_commit(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare("txj")
        ch.basic_publish("", "txj", b"m0")
        ch.basic_publish("", "txj", b"m1")
        ch.basic_get("txj")
        ch.basic_get("txj")
        ch.tx_select()
        ch.basic_reject(1, requeue=True)
        ch.basic_nack(2, requeue=False)
        assert count(ch, "txj") == 0
        ch.tx_commit()
        assert drain(ch, "txj", flags=True) == [(b"m0", True)]
        assert unacked(broker, "txj") == 0
    finally:
        conn.close()


def test_tx_unknown_tag_is_immediate_406(broker):
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.call(1, C.Tx.Select(), C.Tx.SelectOk)
        rc.method(1, C.Basic.Ack(delivery_tag=5))
        close = rc.expect(C.Channel.Close)
        assert close.reply_code == 406
        assert close.reply_text == "PRECONDITION_FAILED - unknown delivery tag 5"


@pytest.mark.parametrize("how", ["channel", "connection"])
def test_tx_uncommitted_acks_redelivered_on_close(broker, how):
    worker, other = connect(broker), connect(broker)
    try:
        setup = other.channel()
        setup.queue_declare("txc")
        for i in range(3):
            setup.basic_publish("", "txc", b"m%d" % i)
        ch = worker.channel()
        _consume(worker, ch, "txc", 3)
        ch.tx_select()
        ch.basic_ack(2, multiple=True)             # m0, m1 acked but never committed
        ch.queue_declare("txc", passive=True)      # the acks are in
        if how == "channel":
            ch.close()                             # returns after close-ok: cleanup is done
        else:
            worker.close()
        assert drain(setup, "txc", flags=True) == [(b"m0", True), (b"m1", True), (b"m2", True)]
    finally:
        if worker.is_open:
            worker.close()
        other.close()


@pytest.mark.parametrize("global_qos", [
    False,
    True,
], ids=["per-consumer", "global"])
def test_tx_uncommitted_ack_does_not_free_prefetch_credit(broker, global_qos):
    conn = connect(broker)
    try:
        pub = conn.channel()
        pub.queue_declare("txp")
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1, global_qos=global_qos)
        got = []
        ch.basic_consume("txp", lambda c, m, p, b: got.append(m.delivery_tag))
        pub.basic_publish("", "txp", b"m0")
        pump(conn, lambda: got == [1])
        ch.tx_select()
        ch.basic_ack(1)                            # not committed: credit still used
        ch.queue_declare("txp", passive=True)
        pub.basic_publish("", "txp", b"m1")
        assert count(pub, "txp") == 1              # m1 waits in the queue
        conn.process_data_events(time_limit=0)
        assert got == [1]
        ch.tx_commit()                             # now the credit is back
        pump(conn, lambda: got == [1, 2])
        ch.basic_ack(2)
        ch.tx_commit()
    finally:
        conn.close()


# -- mode conflicts and misuse ---------------------------------------------------------------
def test_confirm_then_tx_and_tx_then_confirm_are_406(broker):
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.open_channel(2)
        rc.call(1, C.Confirm.Select(), C.Confirm.SelectOk)
        rc.method(1, C.Tx.Select())
        close = rc.expect(C.Channel.Close)
        assert close.reply_code == 406
        assert close.reply_text == "PRECONDITION_FAILED - cannot switch from confirm to tx mode"
        assert (close.class_id, close.method_id) == (90, 10)
        rc.method(1, C.Channel.CloseOk())

        rc.call(2, C.Tx.Select(), C.Tx.SelectOk)
        rc.method(2, C.Confirm.Select())
        close = rc.expect(C.Channel.Close)
        assert close.reply_code == 406
        assert close.reply_text == "PRECONDITION_FAILED - cannot switch from tx to confirm mode"
        assert (close.class_id, close.method_id) == (85, 10)
        rc.method(2, C.Channel.CloseOk())

        # Selecting the same mode twice is fine.
        rc.open_channel(3)
        rc.call(3, C.Tx.Select(), C.Tx.SelectOk)
        rc.call(3, C.Tx.Select(), C.Tx.SelectOk)
        rc.open_channel(4)
        rc.call(4, C.Confirm.Select(), C.Confirm.SelectOk)
        rc.call(4, C.Confirm.Select(), C.Confirm.SelectOk)


def test_pika_confirm_then_tx(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
            ch.tx_select()
        assert err.value.reply_code == 406
        assert err.value.reply_text == \
            "PRECONDITION_FAILED - cannot switch from confirm to tx mode"
    finally:
        conn.close()


@pytest.mark.parametrize("method,method_id", [(C.Tx.Commit(), 20), (C.Tx.Rollback(), 30)],
                         ids=["commit", "rollback"])
def test_commit_or_rollback_without_select_is_406(broker, method, method_id):
    with RawClient(broker.port) as rc:
        rc.handshake()
        rc.open_channel(1)
        rc.method(1, method)
        close = rc.expect(C.Channel.Close)
        assert close.reply_code == 406
        assert close.reply_text == "PRECONDITION_FAILED - channel is not transactional"
        assert (close.class_id, close.method_id) == (90, method_id)
