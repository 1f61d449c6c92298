"""The scenarios with pika's BlockingConnection, the way most pika code is written."""
import hashlib
import time

import pika
import pika.exceptions as px

from . import base
from .base import main


def connect(url: str, **kw) -> pika.BlockingConnection:
    params = pika.URLParameters(url)
    for k, v in kw.items():
        setattr(params, k, v)
    return pika.BlockingConnection(params)


def get_all(ch, queue: str) -> list[str]:
    out = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body.decode())


def s_connect(ctx):
    conn = connect(ctx.url)
    caps = conn._impl.server_properties.get("capabilities", {})
    obs = {"open": conn.is_open, "capabilities": sorted(k for k, v in caps.items() if v)}
    conn.close()
    try:
        connect(ctx.bad_password_url()).close()
        obs["bad_password"] = "connected"
    except px.ProbableAuthenticationError:
        obs["bad_password"] = "ACCESS_REFUSED"
    except px.AuthenticationError:
        obs["bad_password"] = "ACCESS_REFUSED"
    except px.AMQPConnectionError as e:
        obs["bad_password"] = f"{type(e).__name__}: {e!r}"
        # pika wraps the real error: ConnectionClosedByBroker(403) inside AMQPConnectionError
        inner = e.args[0] if e.args else None
        if isinstance(inner, px.ConnectionClosedByBroker) and inner.reply_code == 403:
            obs["bad_password"] = "ACCESS_REFUSED"
        elif isinstance(inner, (px.ProbableAuthenticationError, px.AuthenticationError)):
            obs["bad_password"] = "ACCESS_REFUSED"
    try:
        connect(ctx.bad_vhost_url()).close()
        obs["bad_vhost"] = "connected"
    except px.AMQPConnectionError as e:
        # ProbableAccessDeniedError("ConnectionClosedByBroker: (530) 'NOT_ALLOWED - ...'")
        obs["bad_vhost"] = base.reply_code_in(e)
    return obs


def s_exchanges(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    n = ctx.name
    obs = {}
    qs = {k: n(f"{k}") for k in ("q1", "q2", "q3")}

    def fresh_queues(count):
        for i in range(1, count + 1):
            ch.queue_declare(n(f"q{i}"), exclusive=True)
            ch.queue_purge(n(f"q{i}"))

    def collect(count):
        return {f"q{i}": get_all(ch, n(f"q{i}")) for i in range(1, count + 1)}

    def reset(count):
        for i in range(1, count + 1):
            ch.queue_delete(n(f"q{i}"))
        fresh_queues(count)

    reset(2)
    ch.exchange_declare(n("direct"), "direct", auto_delete=True)
    ch.queue_bind(qs["q1"], n("direct"), "a")
    ch.queue_bind(qs["q1"], n("direct"), "b")
    ch.queue_bind(qs["q2"], n("direct"), "b")
    for rk in ("a", "b", "c"):
        ch.basic_publish(n("direct"), rk, rk.encode())
    obs["direct"] = collect(2)

    reset(2)
    ch.exchange_declare(n("fanout"), "fanout", auto_delete=True)
    ch.queue_bind(qs["q1"], n("fanout"))
    ch.queue_bind(qs["q2"], n("fanout"))
    for body in ("x", "y"):
        ch.basic_publish(n("fanout"), "ignored", body.encode())
    obs["fanout"] = collect(2)

    reset(3)
    ch.exchange_declare(n("topic"), "topic", auto_delete=True)
    ch.queue_bind(qs["q1"], n("topic"), "a.*")
    ch.queue_bind(qs["q2"], n("topic"), "a.#")
    ch.queue_bind(qs["q3"], n("topic"), "#.c")
    for rk in ("a", "a.b", "a.b.c", "x.c", "b"):
        ch.basic_publish(n("topic"), rk, rk.encode())
    obs["topic"] = collect(3)

    reset(2)
    ch.exchange_declare(n("headers"), "headers", auto_delete=True)
    ch.queue_bind(qs["q1"], n("headers"), arguments={"x-match": "all", "h1": 1, "h2": 2})
    ch.queue_bind(qs["q2"], n("headers"), arguments={"x-match": "any", "h1": 1, "h2": 2})
    for body, headers in (("h1", {"h1": 1}), ("h1h2", {"h1": 1, "h2": 2}), ("h3", {"h3": 3})):
        ch.basic_publish(n("headers"), "", body.encode(),
                         pika.BasicProperties(headers=headers))
    obs["headers"] = collect(2)

    reset(1)
    ch.exchange_declare(n("e2e-src"), "topic", auto_delete=True)
    ch.exchange_declare(n("e2e-dst"), "fanout", auto_delete=True)
    ch.exchange_bind(n("e2e-dst"), n("e2e-src"), "e.*")
    ch.queue_bind(qs["q1"], n("e2e-dst"))
    for rk in ("e.1", "f.1", "e.1.2"):
        ch.basic_publish(n("e2e-src"), rk, rk.encode())
    obs["e2e"] = collect(1)
    conn.close()
    return obs


def s_publish_consume_ack(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    q = ctx.name("pca")
    ch.queue_declare(q, exclusive=True)
    for i in range(100):
        ch.basic_publish("", q, f"{i}".encode(), pika.BasicProperties(
            content_type="text/plain", correlation_id=f"c-{i}", message_id=f"m-{i}",
            app_id="interop", type="t", delivery_mode=2,
            headers={**base.PROPS_HEADERS, "i": i}))
    ch.basic_qos(prefetch_count=10)
    got, redelivered, first = [], False, None
    for method, props, body in ch.consume(q, inactivity_timeout=10):
        if method is None:
            break
        if first is None:
            first = {"content_type": props.content_type, "correlation_id": props.correlation_id,
                     "message_id": props.message_id, "app_id": props.app_id, "type": props.type,
                     "delivery_mode": props.delivery_mode, "headers": props.headers}
        got.append(int(body))
        redelivered |= method.redelivered
        ch.basic_ack(method.delivery_tag)
        if len(got) == 100:
            break
    ch.cancel()
    left = ch.queue_declare(q, passive=True).method.message_count
    conn.close()
    return {"count": len(got), "in_order": got == list(range(100)),
            "any_redelivered": redelivered, "props": first, "left": left}


def s_nack_requeue(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    q = ctx.name("nack")
    ch.queue_declare(q, exclusive=True)
    for i in range(1, 6):
        ch.basic_publish("", q, f"m{i}".encode())
    ch.basic_qos(prefetch_count=5)
    deliveries, tags = [], {}
    stream = ch.consume(q, inactivity_timeout=10)

    def take(count):
        for _ in range(count):
            method, _props, body = next(stream)
            if method is None:
                raise TimeoutError("no delivery within 10 s")
            deliveries.append([body.decode(), method.redelivered])
            tags[body.decode()] = method.delivery_tag

    take(5)
    ch.basic_ack(tags["m1"])
    ch.basic_nack(tags["m2"], requeue=True)
    ch.basic_ack(tags["m3"])
    ch.basic_reject(tags["m4"], requeue=True)
    ch.basic_ack(tags["m5"])
    take(2)
    ch.basic_nack(tags["m4"], multiple=True, requeue=True)
    take(2)
    ch.basic_ack(tags["m4"], multiple=True)
    ch.cancel()
    left = ch.queue_declare(q, passive=True).method.message_count
    conn.close()
    return {"deliveries": deliveries, "left": left}


def dead_info(method, props, body):
    h = props.headers or {}
    xd = []
    for e in h.get("x-death", []):
        xd.append({"count": e.get("count"), "reason": e.get("reason"), "queue": e.get("queue"),
                   "exchange": e.get("exchange"), "routing-keys": e.get("routing-keys"),
                   "time": "time" in e,
                   **({"original-expiration": e["original-expiration"]}
                      if "original-expiration" in e else {})})
    return {"body": body.decode(), "exchange": method.exchange,
            "routing_key": method.routing_key, "redelivered": method.redelivered,
            "expiration": props.expiration, "x-death": xd,
            "x-first-death-reason": h.get("x-first-death-reason"),
            "x-first-death-queue": h.get("x-first-death-queue"),
            "x-first-death-exchange": h.get("x-first-death-exchange")}


def wait_get(ch, queue, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        method, props, body = ch.basic_get(queue)
        if method is not None:
            return method, props, body
        ch.connection.sleep(0.05)
    raise TimeoutError(f"nothing arrived in {queue} within {timeout} s")


def s_dead_letter(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    work, dlx, dlq = ctx.name("work"), ctx.name("dlx"), ctx.name("dlq")
    ch.exchange_declare(dlx, "direct", auto_delete=False)
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_bind(dlq, dlx, "dead")
    ch.queue_declare(work, exclusive=True, arguments={
        "x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead"})
    try:
        ch.basic_publish("", work, b"r1")
        ch.basic_publish("", work, b"n1")
        m, _, _ = wait_get(ch, work)
        ch.basic_reject(m.delivery_tag, requeue=False)
        m, _, _ = wait_get(ch, work)
        ch.basic_nack(m.delivery_tag, requeue=False)
        dead = []
        for _ in range(2):
            m, p, b = wait_get(ch, dlq)
            dead.append(dead_info(m, p, b))
            ch.basic_ack(m.delivery_tag)
            if b == b"r1":
                ch.basic_publish("", work, b, pika.BasicProperties(headers=p.headers))
        m, _, _ = wait_get(ch, work)
        ch.basic_reject(m.delivery_tag, requeue=False)
        m, p, b = wait_get(ch, dlq)
        dead.append(dead_info(m, p, b))
        ch.basic_ack(m.delivery_tag)
        # reason maxlen: the head of a full x-max-length=1 queue; reason expired: a message
        # with a 50 ms expiration property
        dl = {"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead"}
        ch.queue_declare(ctx.name("maxlen"), exclusive=True, arguments={**dl, "x-max-length": 1})
        ch.queue_declare(ctx.name("ttl"), exclusive=True, arguments=dl)
        ch.basic_publish("", ctx.name("maxlen"), b"l1")
        ch.basic_publish("", ctx.name("maxlen"), b"l2")
        m, p, b = wait_get(ch, dlq)
        dead.append(dead_info(m, p, b))
        ch.basic_ack(m.delivery_tag)
        ch.basic_publish("", ctx.name("ttl"), b"e1", pika.BasicProperties(expiration="50"))
        m, p, b = wait_get(ch, dlq)
        dead.append(dead_info(m, p, b))
        ch.basic_ack(m.delivery_tag)
        left = ch.queue_declare(work, passive=True).method.message_count
    finally:
        if ch.is_open:
            ch.exchange_delete(dlx)
        conn.close()
    return {"dead": dead, "work_left": left}


def s_confirms(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    q = ctx.name("confirms")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    acked = nacked = 0
    for i in range(50):
        try:
            ch.basic_publish("", q, f"{i}".encode(), pika.BasicProperties(delivery_mode=2))
            acked += 1
        except px.NackError:
            nacked += 1
    unroutable = {"returned": False, "reply_code": None, "confirmed": False}
    try:
        ch.basic_publish("", ctx.name("nowhere"), b"u", mandatory=True)
        unroutable["confirmed"] = True
    except px.UnroutableError as e:
        # pika raises UnroutableError only after the broker's ack for the returned message
        unroutable.update(returned=True, confirmed=True,
                          reply_code=e.messages[0].method.reply_code)
    try:
        ch.basic_publish(ctx.name("no-such-exchange"), "k", b"x")
        missing = "published"
    except px.ChannelClosedByBroker as e:
        missing = e.reply_code
    conn.close()
    return {"acked": acked, "nacked": nacked, "unroutable_mandatory": unroutable,
            "missing_exchange": missing}


def s_mandatory(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    x, q = ctx.name("x"), ctx.name("routed")
    ch.exchange_declare(x, "direct", auto_delete=True)
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, x, "here")
    returns = []
    ch.add_on_return_callback(lambda _ch, method, _props, body: returns.append({
        "reply_code": method.reply_code, "reply_text": method.reply_text,
        "exchange": method.exchange, "routing_key": method.routing_key,
        "body": body.decode()}))
    ch.basic_publish(x, "nowhere", b"m1", mandatory=True)
    ch.basic_publish(x, "here", b"m2", mandatory=True)
    ch.basic_publish(x, "nowhere", b"m3", mandatory=False)
    ch.queue_declare(q, passive=True)       # a round trip: the returns came before its reply
    conn.process_data_events(0.2)
    routed = get_all(ch, q)
    conn.close()
    return {"returns": returns, "routed": routed}


def s_basic_get(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    q = ctx.name("get")
    ch.queue_declare(q, exclusive=True)
    gets = []

    def get():
        method, _props, body = ch.basic_get(q)
        if method is None:
            gets.append(None)
            return None
        gets.append([body.decode(), method.redelivered, method.message_count])
        return method

    get()
    for i in (1, 2, 3):
        ch.basic_publish("", q, f"m{i}".encode())
    ch.basic_ack(get().delivery_tag)
    ch.basic_reject(get().delivery_tag, requeue=True)
    ch.basic_ack(get().delivery_tag)
    ch.basic_ack(get().delivery_tag)
    get()
    conn.close()
    return {"gets": gets}


def rpc(ctx, direct: bool):
    server_conn = connect(ctx.url)
    sch = server_conn.channel()
    rq = ctx.name("rpc-direct" if direct else "rpc")
    sch.queue_declare(rq, exclusive=True)
    seen = []

    def on_request(ch, method, props, body):
        seen.append(props.reply_to)
        ch.basic_publish("", props.reply_to, body.upper(),
                         pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)

    sch.basic_consume(rq, on_request)
    conn = connect(ctx.url)
    ch = conn.channel()
    if direct:
        reply_to = "amq.rabbitmq.reply-to"
    else:
        reply_to = ch.queue_declare("", exclusive=True).method.queue
    replies = {}
    ch.basic_consume(reply_to, lambda _c, _m, p, b: replies.__setitem__(p.correlation_id,
                                                                         b.decode()),
                     auto_ack=True)
    for i in range(3):
        ch.basic_publish("", rq, f"req{i}".encode(),
                         pika.BasicProperties(reply_to=reply_to, correlation_id=f"c{i}"))
    deadline = time.monotonic() + 10
    while len(replies) < 3 and time.monotonic() < deadline:
        server_conn.process_data_events(0.01)
        conn.process_data_events(0.01)
    conn.close()
    server_conn.close()
    return base.rpc_observation(replies, direct, seen, reply_to)


def s_rpc(ctx):
    return rpc(ctx, direct=False)


def s_direct_reply_to(ctx):
    return rpc(ctx, direct=True)


def s_large_message(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    q = ctx.name("large")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, base.large_body())
    ch.basic_publish("", q, b"")
    m, _, big = ch.basic_get(q, auto_ack=True)
    m2, _, empty = ch.basic_get(q, auto_ack=True)
    conn.close()
    return {"size": len(big), "sha256": hashlib.sha256(big).hexdigest(), "empty": len(empty)}


def s_many_channels(ctx):
    conn = connect(ctx.url)
    q = ctx.name("many")
    first = conn.channel()
    first.queue_declare(q, exclusive=True)
    chans = [first] + [conn.channel() for _ in range(199)]
    for i, ch in enumerate(chans):
        ch.basic_publish("", q, f"{i}".encode())
    error = None
    try:
        chans[5].queue_declare(ctx.name("missing"), passive=True)
    except px.ChannelClosedByBroker as e:
        error = e.reply_code
    others_ok = True
    for i, ch in enumerate(chans):
        if i == 5:
            continue
        others_ok &= ch.is_open
    chans[6].queue_declare(q, passive=True)
    got = get_all(chans[7], q)
    for i, ch in enumerate(chans):
        if ch.is_open:
            ch.close()
    conn.close()
    return {"opened": len(chans), "received": len(got), "distinct": len(set(got)),
            "error_code": error, "others_ok": others_ok}


def s_heartbeats(ctx):
    conn = connect(ctx.url, heartbeat=2)
    negotiated = conn._impl.params.heartbeat
    conn.sleep(5)      # pika sends and checks heartbeats while it sleeps
    ch = conn.channel()
    ch.queue_declare(ctx.name("hb"), exclusive=True)
    alive = conn.is_open
    conn.close()
    return {"negotiated": negotiated, "alive": alive}


def s_consumer_killed(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    q = ctx.name("killed")
    ch.queue_declare(q, auto_delete=False)
    try:
        for i in range(1, base.KILLED_MESSAGES + 1):
            ch.basic_publish("", q, f"m{i}".encode())
        obs = base.run_worker_and_kill(ctx.worker_cmd(q))
        # wait until the broker has seen the TCP close and requeued the 10 unacked messages
        deadline = time.monotonic() + 10
        while (ch.queue_declare(q, passive=True).method.message_count < 25
               and time.monotonic() < deadline):
            conn.sleep(0.05)
        after = []
        while True:
            method, _p, body = ch.basic_get(q, auto_ack=True)
            if method is None:
                break
            after.append([body.decode(), method.redelivered])
        obs["after"] = after
    finally:
        ch.queue_delete(q)
        conn.close()
    return obs


def worker(url, queue):
    conn = connect(url)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=base.WORKER_PREFETCH)
    count = 0

    def on_message(ch, method, _props, body):
        nonlocal count
        count += 1
        print(f"got {body.decode()} {method.redelivered}", flush=True)
        if count <= base.WORKER_ACKS:
            ch.basic_ack(method.delivery_tag)
        if count == base.WORKER_HOLD:
            print("holding", flush=True)

    ch.basic_consume(queue, on_message)
    ch.start_consuming()


def s_reserved_names(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    name = ch.queue_declare("", exclusive=True).method.queue
    obs = {"server_named": base.named_by(name)}
    ch.queue_declare(name, passive=True)
    obs["passive_redeclare"] = "ok"
    for key, q in (("redeclare", name), ("amq_custom", "amq.custom-" + ctx.prefix)):
        try:
            conn.channel().queue_declare(q, exclusive=True)
            obs[key] = "ok"
        except px.ChannelClosedByBroker as e:
            obs[key] = e.reply_code
    conn.close()
    return obs


SCENARIOS = {name[2:]: fn for name, fn in globals().items() if name.startswith("s_")}

if __name__ == "__main__":
    main("pika_client", SCENARIOS, worker)
