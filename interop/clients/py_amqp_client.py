"""The scenarios with py-amqp (the `amqp` package: kombu's and Celery's transport)."""
import hashlib
import socket
import time
import urllib.parse

import amqp
from amqp import Message

from . import base
from .base import main


def params(url: str) -> dict:
    u = urllib.parse.urlsplit(url)
    vhost = urllib.parse.unquote(u.path[1:]) if len(u.path) > 1 else "/"
    return {"host": f"{u.hostname}:{u.port or 5672}", "userid": urllib.parse.unquote(u.username),
            "password": urllib.parse.unquote(u.password), "virtual_host": vhost}


def connect(url: str, **kw) -> amqp.Connection:
    conn = amqp.Connection(**params(url), connect_timeout=10, **kw)
    conn.connect()
    return conn


def text(body) -> str:
    return body.decode() if isinstance(body, (bytes, bytearray)) else body


def get_all(ch, queue) -> list[str]:
    out = []
    while True:
        m = ch.basic_get(queue, no_ack=True)
        if m is None:
            return out
        out.append(text(m.body))


def drain(conn, until, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise TimeoutError("nothing more arrived within %s s" % timeout)
        try:
            conn.drain_events(timeout=0.2)
        except socket.timeout:
            pass


def s_connect(ctx):
    conn = connect(ctx.url)
    caps = conn.server_properties.get("capabilities", {})
    obs = {"open": conn.connected, "capabilities": sorted(k for k, v in caps.items() if v)}
    conn.close()
    for key, url in (("bad_password", ctx.bad_password_url()), ("bad_vhost", ctx.bad_vhost_url())):
        try:
            connect(url).close()
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
    n = ctx.name
    obs = {}

    def reset(count):
        for i in range(1, count + 1):
            ch.queue_delete(n(f"q{i}"))
            ch.queue_declare(n(f"q{i}"), exclusive=True, auto_delete=False)

    def collect(count):
        return {f"q{i}": get_all(ch, n(f"q{i}")) for i in range(1, count + 1)}

    reset(2)
    ch.exchange_declare(n("direct"), "direct", auto_delete=True)
    ch.queue_bind(n("q1"), n("direct"), "a")
    ch.queue_bind(n("q1"), n("direct"), "b")
    ch.queue_bind(n("q2"), n("direct"), "b")
    for rk in ("a", "b", "c"):
        ch.basic_publish(Message(rk), n("direct"), rk)
    obs["direct"] = collect(2)

    reset(2)
    ch.exchange_declare(n("fanout"), "fanout", auto_delete=True)
    ch.queue_bind(n("q1"), n("fanout"))
    ch.queue_bind(n("q2"), n("fanout"))
    for body in ("x", "y"):
        ch.basic_publish(Message(body), n("fanout"), "ignored")
    obs["fanout"] = collect(2)

    reset(3)
    ch.exchange_declare(n("topic"), "topic", auto_delete=True)
    for i, key in enumerate(("a.*", "a.#", "#.c"), 1):
        ch.queue_bind(n(f"q{i}"), n("topic"), key)
    for rk in ("a", "a.b", "a.b.c", "x.c", "b"):
        ch.basic_publish(Message(rk), n("topic"), rk)
    obs["topic"] = collect(3)

    reset(2)
    ch.exchange_declare(n("headers"), "headers", auto_delete=True)
    ch.queue_bind(n("q1"), n("headers"), arguments={"x-match": "all", "h1": 1, "h2": 2})
    ch.queue_bind(n("q2"), n("headers"), arguments={"x-match": "any", "h1": 1, "h2": 2})
    for body, headers in (("h1", {"h1": 1}), ("h1h2", {"h1": 1, "h2": 2}), ("h3", {"h3": 3})):
        ch.basic_publish(Message(body, application_headers=headers), n("headers"), "")
    obs["headers"] = collect(2)

    reset(1)
    ch.exchange_declare(n("e2e-src"), "topic", auto_delete=True)
    ch.exchange_declare(n("e2e-dst"), "fanout", auto_delete=True)
    ch.exchange_bind(n("e2e-dst"), n("e2e-src"), "e.*")
    ch.queue_bind(n("q1"), n("e2e-dst"))
    for rk in ("e.1", "f.1", "e.1.2"):
        ch.basic_publish(Message(rk), n("e2e-src"), rk)
    obs["e2e"] = collect(1)
    conn.close()
    return obs


def s_publish_consume_ack(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    q = ctx.name("pca")
    ch.queue_declare(q, exclusive=True, auto_delete=False)
    for i in range(100):
        ch.basic_publish(Message(
            f"{i}", content_type="text/plain", correlation_id=f"c-{i}", message_id=f"m-{i}",
            app_id="interop", type="t", delivery_mode=2,
            application_headers={**base.PROPS_HEADERS, "i": i}), "", q)
    ch.basic_qos(0, 10, False)
    got, state = [], {"redelivered": False, "first": None}

    def on_message(m):
        p = m.properties
        if state["first"] is None:
            state["first"] = {k: p.get(k) for k in ("content_type", "correlation_id",
                                                    "message_id", "app_id", "type",
                                                    "delivery_mode")}
            state["first"]["headers"] = p.get("application_headers")
        got.append(int(text(m.body)))
        state["redelivered"] |= m.delivery_info["redelivered"]
        ch.basic_ack(m.delivery_tag)

    tag = ch.basic_consume(q, callback=on_message)
    drain(conn, lambda: len(got) >= 100)
    ch.basic_cancel(tag)
    left = ch.queue_declare(q, passive=True).message_count
    conn.close()
    return {"count": len(got), "in_order": got == list(range(100)),
            "any_redelivered": state["redelivered"], "props": state["first"], "left": left}


def s_nack_requeue(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    q = ctx.name("nack")
    ch.queue_declare(q, exclusive=True, auto_delete=False)
    for i in range(1, 6):
        ch.basic_publish(Message(f"m{i}"), "", q)
    ch.basic_qos(0, 5, False)
    deliveries, tags = [], {}

    def on_message(m):
        deliveries.append([text(m.body), m.delivery_info["redelivered"]])
        tags[text(m.body)] = m.delivery_tag

    ch.basic_consume(q, callback=on_message)
    drain(conn, lambda: len(deliveries) >= 5)
    ch.basic_ack(tags["m1"])
    # py-amqp has no basic_nack: reject is its only negative acknowledgement
    ch.basic_reject(tags["m2"], requeue=True)
    ch.basic_ack(tags["m3"])
    ch.basic_reject(tags["m4"], requeue=True)
    ch.basic_ack(tags["m5"])
    drain(conn, lambda: len(deliveries) >= 7)
    ch.basic_reject(tags["m2"], requeue=True)
    ch.basic_reject(tags["m4"], requeue=True)
    drain(conn, lambda: len(deliveries) >= 9)
    ch.basic_ack(tags["m4"], multiple=True)
    left = ch.queue_declare(q, passive=True).message_count
    conn.close()
    return {"deliveries": deliveries, "left": left}


def dead_info(m):
    h = m.properties.get("application_headers") or {}
    xd = [{"count": e.get("count"), "reason": e.get("reason"), "queue": e.get("queue"),
           "exchange": e.get("exchange"), "routing-keys": list(e.get("routing-keys") or []),
           "time": "time" in e,
           **({"original-expiration": e["original-expiration"]}
              if "original-expiration" in e else {})} for e in h.get("x-death", [])]
    return {"body": text(m.body), "exchange": m.delivery_info["exchange"],
            "routing_key": m.delivery_info["routing_key"],
            "redelivered": m.delivery_info["redelivered"],
            "expiration": m.properties.get("expiration"), "x-death": xd,
            "x-first-death-reason": h.get("x-first-death-reason"),
            "x-first-death-queue": h.get("x-first-death-queue"),
            "x-first-death-exchange": h.get("x-first-death-exchange")}


def wait_get(ch, queue, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = ch.basic_get(queue)
        if m is not None:
            return m
        time.sleep(0.05)
    raise TimeoutError(f"nothing arrived in {queue} within {timeout} s")


def s_dead_letter(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    work, dlx, dlq = ctx.name("work"), ctx.name("dlx"), ctx.name("dlq")
    ch.exchange_declare(dlx, "direct", auto_delete=False)
    try:
        ch.queue_declare(dlq, exclusive=True, auto_delete=False)
        ch.queue_bind(dlq, dlx, "dead")
        ch.queue_declare(work, exclusive=True, auto_delete=False, arguments={
            "x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead"})
        ch.basic_publish(Message("r1"), "", work)
        ch.basic_publish(Message("n1"), "", work)
        ch.basic_reject(wait_get(ch, work).delivery_tag, requeue=False)
        ch.basic_reject(wait_get(ch, work).delivery_tag, requeue=False)   # no basic_nack
        dead = []
        for _ in range(2):
            m = wait_get(ch, dlq)
            dead.append(dead_info(m))
            ch.basic_ack(m.delivery_tag)
            if text(m.body) == "r1":
                ch.basic_publish(Message(m.body, application_headers=m.properties.get(
                    "application_headers")), "", work)
        ch.basic_reject(wait_get(ch, work).delivery_tag, requeue=False)
        m = wait_get(ch, dlq)
        dead.append(dead_info(m))
        ch.basic_ack(m.delivery_tag)
        dl = {"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead"}
        ch.queue_declare(ctx.name("maxlen"), exclusive=True, auto_delete=False,
                         arguments={**dl, "x-max-length": 1})
        ch.queue_declare(ctx.name("ttl"), exclusive=True, auto_delete=False, arguments=dl)
        ch.basic_publish(Message("l1"), "", ctx.name("maxlen"))
        ch.basic_publish(Message("l2"), "", ctx.name("maxlen"))
        m = wait_get(ch, dlq)
        dead.append(dead_info(m))
        ch.basic_ack(m.delivery_tag)
        ch.basic_publish(Message("e1", expiration="50"), "", ctx.name("ttl"))
        m = wait_get(ch, dlq)
        dead.append(dead_info(m))
        ch.basic_ack(m.delivery_tag)
        left = ch.queue_declare(work, passive=True).message_count
    finally:
        if ch.is_open:
            ch.exchange_delete(dlx)
        conn.close()
    return {"dead": dead, "work_left": left}


def s_confirms(ctx):
    conn = connect(ctx.url, confirm_publish=True)
    ch = conn.channel()
    q = ctx.name("confirms")
    ch.queue_declare(q, exclusive=True, auto_delete=False)
    acked = nacked = 0
    for i in range(50):
        try:
            ch.basic_publish_confirm(Message(f"{i}", delivery_mode=2), "", q)
            acked += 1
        except amqp.exceptions.MessageNacked:
            nacked += 1
    returns = []
    ch.events["basic_return"].add(lambda exc, exchange, rk, msg: returns.append(exc.reply_code))
    ch.basic_publish_confirm(Message("u"), "", ctx.name("nowhere"), mandatory=True)
    unroutable = {"returned": bool(returns), "reply_code": returns[0] if returns else None,
                  "confirmed": True}
    try:
        ch.basic_publish_confirm(Message("x"), ctx.name("no-such-exchange"), "k")
        missing = "published"
    except amqp.exceptions.AMQPError as e:
        missing = base.reply_code_in(e)
    conn.close()
    return {"acked": acked, "nacked": nacked, "unroutable_mandatory": unroutable,
            "missing_exchange": missing}


def s_mandatory(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    x, q = ctx.name("x"), ctx.name("routed")
    ch.exchange_declare(x, "direct", auto_delete=True)
    ch.queue_declare(q, exclusive=True, auto_delete=False)
    ch.queue_bind(q, x, "here")
    returns = []
    ch.events["basic_return"].add(lambda exc, exchange, rk, msg: returns.append({
        "reply_code": exc.reply_code, "reply_text": exc.reply_text, "exchange": exchange,
        "routing_key": rk, "body": text(msg.body)}))
    ch.basic_publish(Message("m1"), x, "nowhere", mandatory=True)
    ch.basic_publish(Message("m2"), x, "here", mandatory=True)
    ch.basic_publish(Message("m3"), x, "nowhere", mandatory=False)
    ch.queue_declare(q, passive=True)      # a round trip; py-amqp handles the return on the way
    routed = get_all(ch, q)
    conn.close()
    return {"returns": returns, "routed": routed}


def s_basic_get(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    q = ctx.name("get")
    ch.queue_declare(q, exclusive=True, auto_delete=False)
    gets = []

    def get():
        m = ch.basic_get(q)
        if m is None:
            gets.append(None)
            return None
        gets.append([text(m.body), m.delivery_info["redelivered"],
                     m.delivery_info["message_count"]])
        return m.delivery_tag

    get()
    for i in (1, 2, 3):
        ch.basic_publish(Message(f"m{i}"), "", q)
    ch.basic_ack(get())
    ch.basic_reject(get(), requeue=True)
    ch.basic_ack(get())
    ch.basic_ack(get())
    get()
    conn.close()
    return {"gets": gets}


def rpc(ctx, direct):
    server = connect(ctx.url)
    sch = server.channel()
    rq = ctx.name("rpc-direct" if direct else "rpc")
    sch.queue_declare(rq, exclusive=True, auto_delete=False)
    seen = []

    def on_request(m):
        reply_to = m.properties["reply_to"]
        seen.append(reply_to)
        sch.basic_publish(Message(text(m.body).upper(),
                                  correlation_id=m.properties["correlation_id"]), "", reply_to)
        sch.basic_ack(m.delivery_tag)

    sch.basic_consume(rq, callback=on_request)
    conn = connect(ctx.url)
    ch = conn.channel()
    replies = {}
    if direct:
        reply_to = "amq.rabbitmq.reply-to"
    else:
        reply_to = ch.queue_declare("", exclusive=True).queue
    ch.basic_consume(reply_to, no_ack=True, callback=lambda m: replies.__setitem__(
        m.properties["correlation_id"], text(m.body)))
    for i in range(3):
        ch.basic_publish(Message(f"req{i}", reply_to=reply_to, correlation_id=f"c{i}"), "", rq)
    deadline = time.monotonic() + 10
    while len(replies) < 3 and time.monotonic() < deadline:
        for c in (server, conn):
            try:
                c.drain_events(timeout=0.01)
            except socket.timeout:
                pass
    conn.close()
    server.close()
    return base.rpc_observation(replies, direct, seen, reply_to)


def s_rpc(ctx):
    return rpc(ctx, False)


def s_direct_reply_to(ctx):
    return rpc(ctx, True)


def s_large_message(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    q = ctx.name("large")
    ch.queue_declare(q, exclusive=True, auto_delete=False)
    ch.basic_publish(Message(base.large_body()), "", q)
    ch.basic_publish(Message(b""), "", q)
    big = ch.basic_get(q, no_ack=True).body
    empty = ch.basic_get(q, no_ack=True).body
    conn.close()
    return {"size": len(big), "sha256": hashlib.sha256(big).hexdigest(), "empty": len(empty)}


def s_many_channels(ctx):
    conn = connect(ctx.url)
    q = ctx.name("many")
    chans = [conn.channel() for _ in range(200)]
    chans[0].queue_declare(q, exclusive=True, auto_delete=False)
    for i, ch in enumerate(chans):
        ch.basic_publish(Message(f"{i}"), "", q)
    error = None
    try:
        chans[5].queue_declare(ctx.name("missing"), passive=True)
    except amqp.exceptions.AMQPError as e:
        error = base.reply_code_in(e)
    others_ok = all(ch.is_open for i, ch in enumerate(chans) if i != 5)
    chans[6].queue_declare(q, passive=True)
    got = get_all(chans[7], q)
    conn.close()
    return {"opened": len(chans), "received": len(got), "distinct": len(set(got)),
            "error_code": error, "others_ok": others_ok}


def s_heartbeats(ctx):
    conn = connect(ctx.url, heartbeat=2)
    negotiated = conn.heartbeat
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        conn.heartbeat_tick()      # py-amqp has no I/O thread: the application ticks
        try:
            conn.drain_events(timeout=0.25)
        except socket.timeout:
            pass
    ch = conn.channel()
    ch.queue_declare(ctx.name("hb"), exclusive=True)
    alive = conn.connected
    conn.close()
    return {"negotiated": negotiated, "alive": alive}


def s_consumer_killed(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    q = ctx.name("killed")
    ch.queue_declare(q, auto_delete=False)
    try:
        for i in range(1, base.KILLED_MESSAGES + 1):
            ch.basic_publish(Message(f"m{i}"), "", q)
        obs = base.run_worker_and_kill(ctx.worker_cmd(q))
        deadline = time.monotonic() + 10
        while (ch.queue_declare(q, passive=True).message_count < 25
               and time.monotonic() < deadline):
            time.sleep(0.05)
        after = []
        while True:
            m = ch.basic_get(q, no_ack=True)
            if m is None:
                break
            after.append([text(m.body), m.delivery_info["redelivered"]])
        obs["after"] = after
    finally:
        ch.queue_delete(q)
        conn.close()
    return obs


def worker(url, queue):
    conn = connect(url)
    ch = conn.channel()
    ch.basic_qos(0, base.WORKER_PREFETCH, False)
    count = 0

    def on_message(m):
        nonlocal count
        count += 1
        print(f"got {text(m.body)} {m.delivery_info['redelivered']}", flush=True)
        if count <= base.WORKER_ACKS:
            ch.basic_ack(m.delivery_tag)
        if count == base.WORKER_HOLD:
            print("holding", flush=True)

    ch.basic_consume(queue, callback=on_message)
    while True:
        conn.drain_events()


def s_reserved_names(ctx):
    conn = connect(ctx.url)
    ch = conn.channel()
    name = ch.queue_declare("", exclusive=True).queue
    obs = {"server_named": base.named_by(name)}
    ch.queue_declare(name, passive=True)
    obs["passive_redeclare"] = "ok"
    for key, q in (("redeclare", name), ("amq_custom", "amq.custom-" + ctx.prefix)):
        try:
            conn.channel().queue_declare(q, exclusive=True)
            obs[key] = "ok"
        except amqp.exceptions.AMQPError as e:
            obs[key] = base.reply_code_in(e)
    conn.close()
    return obs


SCENARIOS = {name[2:]: fn for name, fn in globals().items() if name.startswith("s_")}

if __name__ == "__main__":
    main("py_amqp_client", SCENARIOS, worker)
