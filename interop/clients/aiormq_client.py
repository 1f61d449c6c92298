"""The scenarios with aiormq, the low-level asyncio client under aio-pika."""
import asyncio
import hashlib
import time

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from . import base
from .base import main

P = Basic.Properties


async def get_all(ch, queue) -> list[str]:
    out = []
    while True:
        m = await ch.basic_get(queue, no_ack=True)
        if isinstance(m.delivery, Basic.GetEmpty):
            return out
        out.append(m.body.decode())


async def s_connect(ctx):
    conn = await aiormq.connect(ctx.url)
    caps = conn.server_properties.get("capabilities", {})
    obs = {"open": not conn.is_closed, "capabilities": sorted(k for k, v in caps.items() if v)}
    await conn.close()
    for key, url in (("bad_password", ctx.bad_password_url()), ("bad_vhost", ctx.bad_vhost_url())):
        try:
            c = await aiormq.connect(url)
            await c.close()
            obs[key] = "connected"
        except aiormq.exceptions.ProbableAuthenticationError:
            obs[key] = "ACCESS_REFUSED"
        except Exception as e:
            code = base.reply_code_in(e)
            obs[key] = "ACCESS_REFUSED" if code == 403 else code
    return obs


async def s_exchanges(ctx):
    conn = await aiormq.connect(ctx.url)
    ch = await conn.channel(publisher_confirms=False)
    n = ctx.name
    obs = {}

    async def reset(count):
        for i in range(1, count + 1):
            await ch.queue_delete(n(f"q{i}"))
            await ch.queue_declare(n(f"q{i}"), exclusive=True)

    async def collect(count):
        return {f"q{i}": await get_all(ch, n(f"q{i}")) for i in range(1, count + 1)}

    await reset(2)
    await ch.exchange_declare(n("direct"), exchange_type="direct", auto_delete=True)
    await ch.queue_bind(n("q1"), n("direct"), "a")
    await ch.queue_bind(n("q1"), n("direct"), "b")
    await ch.queue_bind(n("q2"), n("direct"), "b")
    for rk in ("a", "b", "c"):
        await ch.basic_publish(rk.encode(), exchange=n("direct"), routing_key=rk)
    obs["direct"] = await collect(2)

    await reset(2)
    await ch.exchange_declare(n("fanout"), exchange_type="fanout", auto_delete=True)
    await ch.queue_bind(n("q1"), n("fanout"))
    await ch.queue_bind(n("q2"), n("fanout"))
    for body in ("x", "y"):
        await ch.basic_publish(body.encode(), exchange=n("fanout"), routing_key="ignored")
    obs["fanout"] = await collect(2)

    await reset(3)
    await ch.exchange_declare(n("topic"), exchange_type="topic", auto_delete=True)
    for i, key in enumerate(("a.*", "a.#", "#.c"), 1):
        await ch.queue_bind(n(f"q{i}"), n("topic"), key)
    for rk in ("a", "a.b", "a.b.c", "x.c", "b"):
        await ch.basic_publish(rk.encode(), exchange=n("topic"), routing_key=rk)
    obs["topic"] = await collect(3)

    await reset(2)
    await ch.exchange_declare(n("headers"), exchange_type="headers", auto_delete=True)
    await ch.queue_bind(n("q1"), n("headers"), arguments={"x-match": "all", "h1": 1, "h2": 2})
    await ch.queue_bind(n("q2"), n("headers"), arguments={"x-match": "any", "h1": 1, "h2": 2})
    for body, headers in (("h1", {"h1": 1}), ("h1h2", {"h1": 1, "h2": 2}), ("h3", {"h3": 3})):
        await ch.basic_publish(body.encode(), exchange=n("headers"),
                               properties=P(headers=headers))
    obs["headers"] = await collect(2)

    await reset(1)
    await ch.exchange_declare(n("e2e-src"), exchange_type="topic", auto_delete=True)
    await ch.exchange_declare(n("e2e-dst"), exchange_type="fanout", auto_delete=True)
    await ch.exchange_bind(n("e2e-dst"), n("e2e-src"), "e.*")
    await ch.queue_bind(n("q1"), n("e2e-dst"))
    for rk in ("e.1", "f.1", "e.1.2"):
        await ch.basic_publish(rk.encode(), exchange=n("e2e-src"), routing_key=rk)
    obs["e2e"] = await collect(1)
    await conn.close()
    return obs


class Inbox:
    """Deliveries of a consumer, awaited one by one."""

    def __init__(self):
        self.q: asyncio.Queue[DeliveredMessage] = asyncio.Queue()

    async def __call__(self, m: DeliveredMessage):
        await self.q.put(m)

    async def next(self, timeout=10.0) -> DeliveredMessage:
        return await asyncio.wait_for(self.q.get(), timeout)


async def s_publish_consume_ack(ctx):
    conn = await aiormq.connect(ctx.url)
    ch = await conn.channel()
    q = ctx.name("pca")
    await ch.queue_declare(q, exclusive=True)
    for i in range(100):
        await ch.basic_publish(f"{i}".encode(), routing_key=q, properties=P(
            content_type="text/plain", correlation_id=f"c-{i}", message_id=f"m-{i}",
            app_id="interop", message_type="t", delivery_mode=2,
            headers={**base.PROPS_HEADERS, "i": i}))
    await ch.basic_qos(prefetch_count=10)
    inbox = Inbox()
    ok = await ch.basic_consume(q, inbox)
    got, redelivered, first = [], False, None
    while len(got) < 100:
        m = await inbox.next()
        p = m.header.properties
        if first is None:
            first = {"content_type": p.content_type, "correlation_id": p.correlation_id,
                     "message_id": p.message_id, "app_id": p.app_id, "type": p.message_type,
                     "delivery_mode": p.delivery_mode, "headers": p.headers}
        got.append(int(m.body))
        redelivered |= m.delivery.redelivered
        await ch.basic_ack(m.delivery.delivery_tag)
    await ch.basic_cancel(ok.consumer_tag)
    left = (await ch.queue_declare(q, passive=True)).message_count
    await conn.close()
    return {"count": len(got), "in_order": got == list(range(100)),
            "any_redelivered": redelivered, "props": first, "left": left}


async def s_nack_requeue(ctx):
    conn = await aiormq.connect(ctx.url)
    ch = await conn.channel()
    q = ctx.name("nack")
    await ch.queue_declare(q, exclusive=True)
    for i in range(1, 6):
        await ch.basic_publish(f"m{i}".encode(), routing_key=q)
    await ch.basic_qos(prefetch_count=5)
    inbox = Inbox()
    await ch.basic_consume(q, inbox)
    deliveries, tags = [], {}

    async def take(count):
        for _ in range(count):
            m = await inbox.next()
            deliveries.append([m.body.decode(), m.delivery.redelivered])
            tags[m.body.decode()] = m.delivery.delivery_tag

    await take(5)
    await ch.basic_ack(tags["m1"])
    await ch.basic_nack(tags["m2"], requeue=True)
    await ch.basic_ack(tags["m3"])
    await ch.basic_reject(tags["m4"], requeue=True)
    await ch.basic_ack(tags["m5"])
    await take(2)
    await ch.basic_nack(tags["m4"], multiple=True, requeue=True)
    await take(2)
    await ch.basic_ack(tags["m4"], multiple=True)
    await asyncio.sleep(0.05)
    left = (await ch.queue_declare(q, passive=True)).message_count
    await conn.close()
    return {"deliveries": deliveries, "left": left}


def dead_info(m):
    h = m.header.properties.headers or {}
    xd = [{"count": e.get("count"), "reason": e.get("reason"), "queue": e.get("queue"),
           "exchange": e.get("exchange"), "routing-keys": list(e.get("routing-keys") or []),
           "time": "time" in e,
           **({"original-expiration": e["original-expiration"]}
              if "original-expiration" in e else {})} for e in h.get("x-death", [])]
    return {"body": m.body.decode(), "exchange": m.delivery.exchange,
            "routing_key": m.delivery.routing_key, "redelivered": m.delivery.redelivered,
            "expiration": m.header.properties.expiration, "x-death": xd,
            "x-first-death-reason": h.get("x-first-death-reason"),
            "x-first-death-queue": h.get("x-first-death-queue"),
            "x-first-death-exchange": h.get("x-first-death-exchange")}


async def wait_get(ch, queue, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = await ch.basic_get(queue)
        if isinstance(m.delivery, Basic.GetOk):
            return m
        await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing arrived in {queue} within {timeout} s")


async def s_dead_letter(ctx):
    conn = await aiormq.connect(ctx.url)
    ch = await conn.channel()
    work, dlx, dlq = ctx.name("work"), ctx.name("dlx"), ctx.name("dlq")
    await ch.exchange_declare(dlx, exchange_type="direct")
    try:
        await ch.queue_declare(dlq, exclusive=True)
        await ch.queue_bind(dlq, dlx, "dead")
        await ch.queue_declare(work, exclusive=True, arguments={
            "x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead"})
        await ch.basic_publish(b"r1", routing_key=work)
        await ch.basic_publish(b"n1", routing_key=work)
        await ch.basic_reject((await wait_get(ch, work)).delivery.delivery_tag, requeue=False)
        await ch.basic_nack((await wait_get(ch, work)).delivery.delivery_tag, requeue=False)
        dead = []
        for _ in range(2):
            m = await wait_get(ch, dlq)
            dead.append(dead_info(m))
            await ch.basic_ack(m.delivery.delivery_tag)
            if m.body == b"r1":
                await ch.basic_publish(m.body, routing_key=work,
                                       properties=P(headers=m.header.properties.headers))
        await ch.basic_reject((await wait_get(ch, work)).delivery.delivery_tag, requeue=False)
        m = await wait_get(ch, dlq)
        dead.append(dead_info(m))
        await ch.basic_ack(m.delivery.delivery_tag)
        dl = {"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead"}
        await ch.queue_declare(ctx.name("maxlen"), exclusive=True,
                               arguments={**dl, "x-max-length": 1})
        await ch.queue_declare(ctx.name("ttl"), exclusive=True, arguments=dl)
        await ch.basic_publish(b"l1", routing_key=ctx.name("maxlen"))
        await ch.basic_publish(b"l2", routing_key=ctx.name("maxlen"))
        m = await wait_get(ch, dlq)
        dead.append(dead_info(m))
        await ch.basic_ack(m.delivery.delivery_tag)
        await ch.basic_publish(b"e1", routing_key=ctx.name("ttl"), properties=P(expiration="50"))
        m = await wait_get(ch, dlq)
        dead.append(dead_info(m))
        await ch.basic_ack(m.delivery.delivery_tag)
        left = (await ch.queue_declare(work, passive=True)).message_count
    finally:
        if not ch.is_closed:
            await ch.exchange_delete(dlx)
        await conn.close()
    return {"dead": dead, "work_left": left}


async def s_confirms(ctx):
    conn = await aiormq.connect(ctx.url)
    ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
    q = ctx.name("confirms")
    await ch.queue_declare(q, exclusive=True)
    results = await asyncio.gather(*[
        ch.basic_publish(f"{i}".encode(), routing_key=q, properties=P(delivery_mode=2))
        for i in range(50)], return_exceptions=True)
    acked = sum(1 for r in results if isinstance(r, Basic.Ack))
    unroutable = {"returned": False, "reply_code": None, "confirmed": False}
    try:
        await ch.basic_publish(b"u", routing_key=ctx.name("nowhere"), mandatory=True)
        unroutable["confirmed"] = True
    except aiormq.exceptions.PublishError as e:
        unroutable.update(returned=True, confirmed=True, reply_code=e.frame.reply_code)
    try:
        await ch.basic_publish(b"x", exchange=ctx.name("no-such-exchange"), routing_key="k")
        missing = "published"
    except Exception as e:
        missing = base.reply_code_in(e)
    await conn.close()
    return {"acked": acked, "nacked": len(results) - acked, "unroutable_mandatory": unroutable,
            "missing_exchange": missing}


async def s_mandatory(ctx):
    conn = await aiormq.connect(ctx.url)
    # aiormq pairs a basic.return with its publish through the confirm (message_id): without
    # confirms a return is logged as unhandled and dropped
    ch = await conn.channel(publisher_confirms=True, on_return_raises=False)
    x, q = ctx.name("x"), ctx.name("routed")
    await ch.exchange_declare(x, exchange_type="direct", auto_delete=True)
    await ch.queue_declare(q, exclusive=True)
    await ch.queue_bind(q, x, "here")
    returns = []
    ch.on_return_callbacks.add(lambda m: returns.append({
        "reply_code": m.delivery.reply_code, "reply_text": m.delivery.reply_text,
        "exchange": m.delivery.exchange, "routing_key": m.delivery.routing_key,
        "body": m.body.decode()}))
    await ch.basic_publish(b"m1", exchange=x, routing_key="nowhere", mandatory=True)
    await ch.basic_publish(b"m2", exchange=x, routing_key="here", mandatory=True)
    await ch.basic_publish(b"m3", exchange=x, routing_key="nowhere", mandatory=False)
    await ch.queue_declare(q, passive=True)
    routed = await get_all(ch, q)
    await conn.close()
    return {"returns": returns, "routed": routed}


async def s_basic_get(ctx):
    conn = await aiormq.connect(ctx.url)
    ch = await conn.channel()
    q = ctx.name("get")
    await ch.queue_declare(q, exclusive=True)
    gets = []

    async def get():
        m = await ch.basic_get(q)
        if isinstance(m.delivery, Basic.GetEmpty):
            gets.append(None)
            return None
        gets.append([m.body.decode(), m.delivery.redelivered, m.delivery.message_count])
        return m.delivery.delivery_tag

    await get()
    for i in (1, 2, 3):
        await ch.basic_publish(f"m{i}".encode(), routing_key=q)
    await ch.basic_ack(await get())
    await ch.basic_reject(await get(), requeue=True)
    await ch.basic_ack(await get())
    await ch.basic_ack(await get())
    await get()
    await conn.close()
    return {"gets": gets}


async def rpc(ctx, direct):
    server = await aiormq.connect(ctx.url)
    sch = await server.channel()
    rq = ctx.name("rpc-direct" if direct else "rpc")
    await sch.queue_declare(rq, exclusive=True)
    seen = []

    async def on_request(m: DeliveredMessage):
        p = m.header.properties
        seen.append(p.reply_to)
        await sch.basic_publish(m.body.upper(), routing_key=p.reply_to,
                                properties=P(correlation_id=p.correlation_id))
        await sch.basic_ack(m.delivery.delivery_tag)

    await sch.basic_consume(rq, on_request)
    conn = await aiormq.connect(ctx.url)
    ch = await conn.channel()
    replies = {}
    done = asyncio.Event()

    async def on_reply(m: DeliveredMessage):
        replies[m.header.properties.correlation_id] = m.body.decode()
        if len(replies) == 3:
            done.set()

    if direct:
        reply_to = "amq.rabbitmq.reply-to"
    else:
        reply_to = (await ch.queue_declare("", exclusive=True)).queue
    await ch.basic_consume(reply_to, on_reply, no_ack=True)
    for i in range(3):
        await ch.basic_publish(f"req{i}".encode(), routing_key=rq,
                               properties=P(reply_to=reply_to, correlation_id=f"c{i}"))
    try:
        await asyncio.wait_for(done.wait(), 10)
    except asyncio.TimeoutError:
        pass
    await conn.close()
    await server.close()
    return base.rpc_observation(replies, direct, seen, reply_to)


async def s_rpc(ctx):
    return await rpc(ctx, False)


async def s_direct_reply_to(ctx):
    return await rpc(ctx, True)


async def s_large_message(ctx):
    conn = await aiormq.connect(ctx.url)
    ch = await conn.channel()
    q = ctx.name("large")
    await ch.queue_declare(q, exclusive=True)
    await ch.basic_publish(base.large_body(), routing_key=q)
    await ch.basic_publish(b"", routing_key=q)
    big = (await ch.basic_get(q, no_ack=True)).body
    empty = (await ch.basic_get(q, no_ack=True)).body
    await conn.close()
    return {"size": len(big), "sha256": hashlib.sha256(big).hexdigest(), "empty": len(empty)}


async def s_many_channels(ctx):
    conn = await aiormq.connect(ctx.url)
    q = ctx.name("many")
    chans = await asyncio.gather(*[conn.channel(publisher_confirms=False) for _ in range(200)])
    await chans[0].queue_declare(q, exclusive=True)
    await asyncio.gather(*[ch.basic_publish(f"{i}".encode(), routing_key=q)
                           for i, ch in enumerate(chans)])
    error = None
    try:
        await chans[5].queue_declare(ctx.name("missing"), passive=True)
    except Exception as e:
        error = base.reply_code_in(e)
    others_ok = all(not ch.is_closed for i, ch in enumerate(chans) if i != 5)
    await chans[6].queue_declare(q, passive=True)
    got = await get_all(chans[7], q)
    await conn.close()
    return {"opened": len(chans), "received": len(got), "distinct": len(set(got)),
            "error_code": error, "others_ok": others_ok}


async def s_heartbeats(ctx):
    sep = "&" if "?" in ctx.url else "?"
    conn = await aiormq.connect(ctx.url + f"{sep}heartbeat=2")
    negotiated = conn.connection_tune.heartbeat
    await asyncio.sleep(5)
    ch = await conn.channel()
    await ch.queue_declare(ctx.name("hb"), exclusive=True)
    alive = not conn.is_closed
    await conn.close()
    return {"negotiated": negotiated, "alive": alive}


async def s_consumer_killed(ctx):
    conn = await aiormq.connect(ctx.url)
    ch = await conn.channel()
    q = ctx.name("killed")
    await ch.queue_declare(q)
    try:
        for i in range(1, base.KILLED_MESSAGES + 1):
            await ch.basic_publish(f"m{i}".encode(), routing_key=q)
        obs = await asyncio.get_running_loop().run_in_executor(
            None, base.run_worker_and_kill, ctx.worker_cmd(q))
        deadline = time.monotonic() + 10
        while ((await ch.queue_declare(q, passive=True)).message_count < 25
               and time.monotonic() < deadline):
            await asyncio.sleep(0.05)
        after = []
        while True:
            m = await ch.basic_get(q, no_ack=True)
            if isinstance(m.delivery, Basic.GetEmpty):
                break
            after.append([m.body.decode(), m.delivery.redelivered])
        obs["after"] = after
    finally:
        await ch.queue_delete(q)
        await conn.close()
    return obs


async def worker(url, queue):
    conn = await aiormq.connect(url)
    ch = await conn.channel()
    await ch.basic_qos(prefetch_count=base.WORKER_PREFETCH)
    count = 0

    async def on_message(m: DeliveredMessage):
        nonlocal count
        count += 1
        print(f"got {m.body.decode()} {m.delivery.redelivered}", flush=True)
        if count <= base.WORKER_ACKS:
            await ch.basic_ack(m.delivery.delivery_tag)
        if count == base.WORKER_HOLD:
            print("holding", flush=True)

    await ch.basic_consume(queue, on_message)
    await asyncio.Event().wait()


async def s_reserved_names(ctx):
    conn = await aiormq.connect(ctx.url)
    ch = await conn.channel()
    name = (await ch.queue_declare("", exclusive=True)).queue
    obs = {"server_named": base.named_by(name)}
    await ch.queue_declare(name, passive=True)
    obs["passive_redeclare"] = "ok"
    for key, q in (("redeclare", name), ("amq_custom", "amq.custom-" + ctx.prefix)):
        try:
            await (await conn.channel()).queue_declare(q, exclusive=True)
            obs[key] = "ok"
        except Exception as e:
            obs[key] = base.reply_code_in(e)
    await conn.close()
    return obs


SCENARIOS = {name[2:]: fn for name, fn in globals().items() if name.startswith("s_")}

if __name__ == "__main__":
    main("aiormq_client", SCENARIOS, worker)
