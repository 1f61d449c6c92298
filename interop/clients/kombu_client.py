"""The scenarios with kombu's own API (Connection, Exchange, Queue, Producer, Consumer,
SimpleQueue) over its default py-amqp transport, as Celery and other kombu users write it."""
import hashlib
import socket
import time

import amqp.exceptions
from kombu import Connection, Consumer, Exchange, Producer, Queue, binding

from . import base
from .base import main


def connect(url, **kw) -> Connection:
    conn = Connection(url, connect_timeout=10, **kw)
    conn.connect()
    return conn


def body_text(m) -> str:
    b = m.body
    return b.decode() if isinstance(b, (bytes, bytearray)) else b


def publish(producer, body, **kw):
    producer.publish(body.encode() if isinstance(body, str) else body, serializer=None,
                     content_type="application/octet-stream", content_encoding="binary",
                     retry=False, **kw)


def get_all(queue) -> list[str]:
    out = []
    while True:
        m = queue.get(no_ack=True)
        if m is None:
            return out
        out.append(body_text(m))


def drain(conn, until, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing more arrived within {timeout} s")
        try:
            conn.drain_events(timeout=0.2)
        except socket.timeout:
            pass


def s_connect(ctx):
    conn = connect(ctx.url)
    caps = conn.connection.server_properties.get("capabilities", {})
    obs = {"open": conn.connected, "capabilities": sorted(k for k, v in caps.items() if v)}
    conn.release()
    for key, url in (("bad_password", ctx.bad_password_url()), ("bad_vhost", ctx.bad_vhost_url())):
        try:
            connect(url).release()
            obs[key] = "connected"
        except amqp.exceptions.AccessRefused:
            obs[key] = "ACCESS_REFUSED"
        except Exception as e:
            code = base.reply_code_in(e)
            obs[key] = "ACCESS_REFUSED" if code == 403 else code
    return obs


def s_exchanges(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    producer = Producer(ch)
    n = ctx.name
    obs = {}

    def queues(exchange, *bindings):
        out = []
        for i, b in enumerate(bindings, 1):
            q = Queue(n(f"q{i}"), exclusive=True, auto_delete=False, bindings=b)(ch)
            q.delete()
            q.declare()
            out.append(q)
        return out

    def collect(qs):
        return {f"q{i}": get_all(q) for i, q in enumerate(qs, 1)}

    x = Exchange(n("direct"), "direct", auto_delete=True)
    qs = queues(x, [binding(x, "a"), binding(x, "b")], [binding(x, "b")])
    for rk in ("a", "b", "c"):
        publish(producer, rk, exchange=x, routing_key=rk)
    obs["direct"] = collect(qs)

    x = Exchange(n("fanout"), "fanout", auto_delete=True)
    qs = queues(x, [binding(x)], [binding(x)])
    for body in ("x", "y"):
        publish(producer, body, exchange=x, routing_key="ignored")
    obs["fanout"] = collect(qs)

    x = Exchange(n("topic"), "topic", auto_delete=True)
    qs = queues(x, [binding(x, "a.*")], [binding(x, "a.#")], [binding(x, "#.c")])
    for rk in ("a", "a.b", "a.b.c", "x.c", "b"):
        publish(producer, rk, exchange=x, routing_key=rk)
    obs["topic"] = collect(qs)

    x = Exchange(n("headers"), "headers", auto_delete=True)
    qs = queues(x, [binding(x, arguments={"x-match": "all", "h1": 1, "h2": 2})],
                [binding(x, arguments={"x-match": "any", "h1": 1, "h2": 2})])
    for body, headers in (("h1", {"h1": 1}), ("h1h2", {"h1": 1, "h2": 2}), ("h3", {"h3": 3})):
        publish(producer, body, exchange=x, routing_key="", headers=headers)
    obs["headers"] = collect(qs)

    src = Exchange(n("e2e-src"), "topic", auto_delete=True)(ch)
    dst = Exchange(n("e2e-dst"), "fanout", auto_delete=True)(ch)
    src.declare()
    dst.declare()
    dst.bind_to(src, routing_key="e.*")
    qs = queues(dst, [binding(dst)])
    for rk in ("e.1", "f.1", "e.1.2"):
        publish(producer, rk, exchange=src, routing_key=rk)
    obs["e2e"] = collect(qs)
    conn.release()
    return obs


def s_publish_consume_ack(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    q = Queue(ctx.name("pca"), exclusive=True, auto_delete=False)(ch)
    q.declare()
    producer = Producer(ch)
    for i in range(100):
        producer.publish(f"{i}".encode(), routing_key=q.name, serializer=None,
                         content_type="text/plain", content_encoding="utf-8",
                         correlation_id=f"c-{i}", message_id=f"m-{i}", app_id="interop",
                         type="t", delivery_mode=2, headers={**base.PROPS_HEADERS, "i": i},
                         retry=False)
    got, state = [], {"redelivered": False, "first": None}

    def on_message(body, m):
        p = m.properties
        if state["first"] is None:
            state["first"] = {"content_type": m.content_type,
                              "correlation_id": p.get("correlation_id"),
                              "message_id": p.get("message_id"), "app_id": p.get("app_id"),
                              "type": p.get("type"), "delivery_mode": p.get("delivery_mode"),
                              "headers": m.headers}
        got.append(int(body_text(m)))
        state["redelivered"] |= m.delivery_info["redelivered"]
        m.ack()

    with Consumer(ch, [q], callbacks=[on_message], accept=["text/plain"], prefetch_count=10):
        drain(conn, lambda: len(got) >= 100)
        # kombu makes exclusive queues auto_delete: ask before the consumer goes
        left = q.queue_declare(passive=True).message_count
    conn.release()
    return {"count": len(got), "in_order": got == list(range(100)),
            "any_redelivered": state["redelivered"], "props": state["first"], "left": left}


def s_nack_requeue(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    q = Queue(ctx.name("nack"), exclusive=True, auto_delete=False)(ch)
    q.declare()
    producer = Producer(ch)
    for i in range(1, 6):
        publish(producer, f"m{i}", routing_key=q.name)
    deliveries, msgs = [], {}

    def on_message(body, m):
        deliveries.append([body_text(m), m.delivery_info["redelivered"]])
        msgs[body_text(m)] = m

    with Consumer(ch, [q], callbacks=[on_message], accept=["application/octet-stream"],
                  prefetch_count=5):
        drain(conn, lambda: len(deliveries) >= 5)
        msgs["m1"].ack()
        msgs["m2"].requeue()               # kombu's Message has reject and requeue, no nack
        msgs["m3"].ack()
        msgs["m4"].reject(requeue=True)
        msgs["m5"].ack()
        drain(conn, lambda: len(deliveries) >= 7)
        msgs["m2"].requeue()
        msgs["m4"].requeue()
        drain(conn, lambda: len(deliveries) >= 9)
        msgs["m2"].ack()
        msgs["m4"].ack()
        left = q.queue_declare(passive=True).message_count
    conn.release()
    return {"deliveries": deliveries, "left": left}


def dead_info(m):
    h = m.headers or {}
    xd = [{"count": e.get("count"), "reason": e.get("reason"), "queue": e.get("queue"),
           "exchange": e.get("exchange"), "routing-keys": list(e.get("routing-keys") or []),
           "time": "time" in e,
           **({"original-expiration": e["original-expiration"]}
              if "original-expiration" in e else {})} for e in h.get("x-death", [])]
    return {"body": body_text(m), "exchange": m.delivery_info["exchange"],
            "routing_key": m.delivery_info["routing_key"],
            "redelivered": m.delivery_info["redelivered"],
            "expiration": m.properties.get("expiration"), "x-death": xd,
            "x-first-death-reason": h.get("x-first-death-reason"),
            "x-first-death-queue": h.get("x-first-death-queue"),
            "x-first-death-exchange": h.get("x-first-death-exchange")}


def wait_get(queue, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = queue.get()
        if m is not None:
            return m
        time.sleep(0.05)
    raise TimeoutError(f"nothing arrived in {queue.name} within {timeout} s")


def s_dead_letter(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    dlx = Exchange(ctx.name("dlx"), "direct")(ch)
    dlx.declare()
    try:
        dlq = Queue(ctx.name("dlq"), dlx, "dead", exclusive=True, auto_delete=False)(ch)
        dlq.declare()
        work = Queue(ctx.name("work"), exclusive=True, auto_delete=False, queue_arguments={
            "x-dead-letter-exchange": dlx.name, "x-dead-letter-routing-key": "dead"})(ch)
        work.declare()
        producer = Producer(ch)
        publish(producer, "r1", routing_key=work.name)
        publish(producer, "n1", routing_key=work.name)
        wait_get(work).reject()
        wait_get(work).reject()
        dead = []
        for _ in range(2):
            m = wait_get(dlq)
            dead.append(dead_info(m))
            m.ack()
            if body_text(m) == "r1":
                publish(producer, m.body, routing_key=work.name, headers=m.headers)
        wait_get(work).reject()
        m = wait_get(dlq)
        dead.append(dead_info(m))
        m.ack()
        dl = {"x-dead-letter-exchange": dlx.name, "x-dead-letter-routing-key": "dead"}
        maxlen = Queue(ctx.name("maxlen"), exclusive=True, auto_delete=False, max_length=1,
                       queue_arguments=dl)(ch)
        maxlen.declare()
        ttl = Queue(ctx.name("ttl"), exclusive=True, auto_delete=False, queue_arguments=dl)(ch)
        ttl.declare()
        publish(producer, "l1", routing_key=maxlen.name)
        publish(producer, "l2", routing_key=maxlen.name)
        m = wait_get(dlq)
        dead.append(dead_info(m))
        m.ack()
        publish(producer, "e1", routing_key=ttl.name, expiration=0.05)
        m = wait_get(dlq)
        dead.append(dead_info(m))
        m.ack()
        left = work.queue_declare(passive=True).message_count
    finally:
        dlx.delete()
        conn.release()
    return {"dead": dead, "work_left": left}


def s_confirms(ctx):
    conn = connect(ctx.url, transport_options={"confirm_publish": True})
    ch = conn.channel()
    q = Queue(ctx.name("confirms"), exclusive=True, auto_delete=False)(ch)
    q.declare()
    returns = []
    producer = Producer(ch, on_return=lambda exc, exchange, rk, msg: returns.append(
        exc.reply_code))
    acked = nacked = 0
    for i in range(50):
        try:
            publish(producer, f"{i}", routing_key=q.name, delivery_mode=2)
            acked += 1
        except amqp.exceptions.MessageNacked:
            nacked += 1
    publish(producer, "u", routing_key=ctx.name("nowhere"), mandatory=True)
    unroutable = {"returned": bool(returns), "reply_code": returns[0] if returns else None,
                  "confirmed": True}
    try:
        publish(producer, "x", exchange=ctx.name("no-such-exchange"), routing_key="k")
        missing = "published"
    except amqp.exceptions.AMQPError as e:
        missing = base.reply_code_in(e)
    conn.release()
    return {"acked": acked, "nacked": nacked, "unroutable_mandatory": unroutable,
            "missing_exchange": missing}


def s_mandatory(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    x = Exchange(ctx.name("x"), "direct", auto_delete=True)
    q = Queue(ctx.name("routed"), x, "here", exclusive=True, auto_delete=False)(ch)
    q.declare()
    returns = []
    producer = Producer(ch, on_return=lambda exc, exchange, rk, msg: returns.append({
        "reply_code": exc.reply_code, "reply_text": exc.reply_text, "exchange": exchange,
        "routing_key": rk, "body": body_text(msg)}))
    publish(producer, "m1", exchange=x, routing_key="nowhere", mandatory=True)
    publish(producer, "m2", exchange=x, routing_key="here", mandatory=True)
    publish(producer, "m3", exchange=x, routing_key="nowhere", mandatory=False)
    q.queue_declare(passive=True)         # a round trip: the return is handled on the way
    routed = get_all(q)
    conn.release()
    return {"returns": returns, "routed": routed}


def s_basic_get(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    q = Queue(ctx.name("get"), exclusive=True, auto_delete=False)(ch)
    q.declare()
    gets = []

    def get():
        m = q.get()
        if m is None:
            gets.append(None)
            return None
        gets.append([body_text(m), m.delivery_info["redelivered"],
                     m.delivery_info["message_count"]])
        return m

    get()
    producer = Producer(ch)
    for i in (1, 2, 3):
        publish(producer, f"m{i}", routing_key=q.name)
    get().ack()
    get().requeue()
    get().ack()
    get().ack()
    get()
    conn.release()
    return {"gets": gets}


def rpc(ctx, direct):
    server = connect(ctx.url)
    sch = server.channel()
    rq = Queue(ctx.name("rpc-direct" if direct else "rpc"), exclusive=True, auto_delete=False)
    sproducer = Producer(sch)
    seen = []

    def on_request(body, m):
        reply_to = m.properties["reply_to"]
        seen.append(reply_to)
        publish(sproducer, body_text(m).upper(), routing_key=reply_to,
                correlation_id=m.properties["correlation_id"])
        m.ack()

    sconsumer = Consumer(sch, [rq], callbacks=[on_request], accept=["application/octet-stream"])
    sconsumer.consume()
    conn = connect(ctx.url)
    ch = conn.channel()
    replies = {}
    if direct:
        reply_q = Queue("amq.rabbitmq.reply-to", no_declare=True, no_ack=True)
    else:
        # server-named: the Consumer declares it and takes the name from declare-ok. (Declaring
        # it first and then consuming would re-declare amq.gen-...: 403 on RabbitMQ.)
        reply_q = Queue("", exclusive=True, auto_delete=True, no_ack=True)
    consumer = Consumer(ch, [reply_q], no_ack=True, accept=["application/octet-stream"],
                        callbacks=[lambda body, m: replies.__setitem__(
                            m.properties["correlation_id"], body_text(m))])
    consumer.consume()
    reply_to = consumer.queues[0].name
    producer = Producer(ch)
    for i in range(3):
        publish(producer, f"req{i}", routing_key=rq.name, reply_to=reply_to,
                correlation_id=f"c{i}")
    deadline = time.monotonic() + 10
    while len(replies) < 3 and time.monotonic() < deadline:
        for c in (server, conn):
            try:
                c.drain_events(timeout=0.01)
            except socket.timeout:
                pass
    conn.release()
    server.release()
    return base.rpc_observation(replies, direct, seen, reply_to)


def s_rpc(ctx):
    return rpc(ctx, False)


def s_direct_reply_to(ctx):
    return rpc(ctx, True)


def s_large_message(ctx):
    conn = connect(ctx.url)
    name = ctx.name("large")
    sq = conn.SimpleQueue(name, serializer=None)
    try:
        sq.put(base.large_body(), serializer=None, content_type="application/octet-stream",
               content_encoding="binary")
        sq.put(b"", serializer=None, content_type="application/octet-stream",
               content_encoding="binary")
        big = sq.get(timeout=10)
        big.ack()
        empty = sq.get(timeout=10)
        empty.ack()
    finally:
        sq.close()          # cancels its consumer first: deleting a consumed queue cancels it
        ch = conn.channel()
        Queue(name, Exchange(name))(ch).delete()
        Exchange(name)(ch).delete()
        conn.release()
    return {"size": len(big.body), "sha256": hashlib.sha256(big.body).hexdigest(),
            "empty": len(empty.body)}


def s_many_channels(ctx):
    conn = connect(ctx.url)
    chans = [conn.channel() for _ in range(200)]
    q = Queue(ctx.name("many"), exclusive=True, auto_delete=False)
    q(chans[0]).declare()
    for i, ch in enumerate(chans):
        publish(Producer(ch), f"{i}", routing_key=q.name)
    error = None
    try:
        Queue(ctx.name("missing"))(chans[5]).queue_declare(passive=True)
    except amqp.exceptions.AMQPError as e:
        error = base.reply_code_in(e)
    others_ok = all(ch.is_open for i, ch in enumerate(chans) if i != 5)
    q(chans[6]).queue_declare(passive=True)
    got = get_all(q(chans[7]))
    conn.release()
    return {"opened": len(chans), "received": len(got), "distinct": len(set(got)),
            "error_code": error, "others_ok": others_ok}


def s_heartbeats(ctx):
    conn = connect(ctx.url, heartbeat=2)
    negotiated = conn.connection.heartbeat
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        conn.heartbeat_check(rate=4)     # kombu's loop calls this; here the scenario does
        try:
            conn.drain_events(timeout=0.25)
        except socket.timeout:
            pass
    Queue(ctx.name("hb"), exclusive=True)(conn.channel()).declare()
    alive = conn.connected
    conn.release()
    return {"negotiated": negotiated, "alive": alive}


def s_consumer_killed(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    q = Queue(ctx.name("killed"), auto_delete=False)(ch)
    q.declare()
    try:
        producer = Producer(ch)
        for i in range(1, base.KILLED_MESSAGES + 1):
            publish(producer, f"m{i}", routing_key=q.name)
        obs = base.run_worker_and_kill(ctx.worker_cmd(q.name))
        deadline = time.monotonic() + 10
        while (q.queue_declare(passive=True).message_count < 25
               and time.monotonic() < deadline):
            time.sleep(0.05)
        after = []
        while True:
            m = q.get(no_ack=True)
            if m is None:
                break
            after.append([body_text(m), m.delivery_info["redelivered"]])
        obs["after"] = after
    finally:
        q.delete()
        conn.release()
    return obs


def worker(url, queue):
    conn = connect(url)
    ch = conn.channel()
    count = 0

    def on_message(body, m):
        nonlocal count
        count += 1
        print(f"got {body_text(m)} {m.delivery_info['redelivered']}", flush=True)
        if count <= base.WORKER_ACKS:
            m.ack()
        if count == base.WORKER_HOLD:
            print("holding", flush=True)

    with Consumer(ch, [Queue(queue, no_declare=True)], callbacks=[on_message],
                  accept=["application/octet-stream"], prefetch_count=base.WORKER_PREFETCH):
        while True:
            conn.drain_events()


def s_reserved_names(ctx):
    conn = connect(ctx.url)
    q = Queue("", exclusive=True)(conn.channel())
    q.declare()                         # server-named: kombu stores the name it got back
    obs = {"server_named": base.named_by(q.name)}
    q.queue_declare(passive=True)
    obs["passive_redeclare"] = "ok"
    # what a kombu Consumer does with a Queue that already holds a server-made name
    for key, name in (("redeclare", q.name), ("amq_custom", "amq.custom-" + ctx.prefix)):
        try:
            Queue(name, exclusive=True)(conn.channel()).declare()
            obs[key] = "ok"
        except amqp.exceptions.AMQPError as e:
            obs[key] = base.reply_code_in(e)
    conn.release()
    return obs


SCENARIOS = {name[2:]: fn for name, fn in globals().items() if name.startswith("s_")}

if __name__ == "__main__":
    main("kombu_client", SCENARIOS, worker)
