"""The scenarios with aio-pika's robust connection (connect_robust), the usual asyncio setup."""
import asyncio
import hashlib
import time

import aio_pika
import aiormq.exceptions as ax
from aio_pika import ExchangeType, Message

from . import base
from .base import main


async def connect(url, **kw):
    return await aio_pika.connect_robust(url, **kw)


async def get_all(queue) -> list[str]:
    out = []
    while True:
        m = await queue.get(no_ack=True, fail=False)
        if m is None:
            return out
        out.append(m.body.decode())


async def ready(ch, name: str) -> int:
    """Messages ready in a queue. Not ch.declare_queue(passive=True): a robust channel returns
    its cached Queue object, whose declaration_result is the one of the first declare."""
    underlay = await ch.get_underlay_channel()
    return (await underlay.queue_declare(name, passive=True)).message_count


async def next_message(it, timeout=10.0):
    return await asyncio.wait_for(it.__anext__(), timeout)


async def s_connect(ctx):
    conn = await connect(ctx.url)
    caps = conn.transport.connection.server_properties.get("capabilities", {})
    obs = {"open": not conn.is_closed, "capabilities": sorted(k for k, v in caps.items() if v)}
    await conn.close()
    for key, url in (("bad_password", ctx.bad_password_url()), ("bad_vhost", ctx.bad_vhost_url())):
        try:
            # a robust connection retries only after a first success: the error surfaces here
            c = await connect(url)
            await c.close()
            obs[key] = "connected"
        except ax.ProbableAuthenticationError:
            obs[key] = "ACCESS_REFUSED"
        except Exception as e:
            code = base.reply_code_in(e)
            obs[key] = "ACCESS_REFUSED" if code == 403 else code
    return obs


async def s_exchanges(ctx):
    conn = await connect(ctx.url)
    ch = await conn.channel(publisher_confirms=False)
    n = ctx.name
    obs = {}

    async def reset(count):
        qs = []
        for i in range(1, count + 1):
            await ch.queue_delete(n(f"q{i}"))
            qs.append(await ch.declare_queue(n(f"q{i}"), exclusive=True))
        return qs

    async def collect(qs):
        return {f"q{i}": await get_all(q) for i, q in enumerate(qs, 1)}

    qs = await reset(2)
    x = await ch.declare_exchange(n("direct"), ExchangeType.DIRECT, auto_delete=True)
    await qs[0].bind(x, "a")
    await qs[0].bind(x, "b")
    await qs[1].bind(x, "b")
    for rk in ("a", "b", "c"):
        await x.publish(Message(rk.encode()), rk)
    obs["direct"] = await collect(qs)

    qs = await reset(2)
    x = await ch.declare_exchange(n("fanout"), ExchangeType.FANOUT, auto_delete=True)
    for q in qs:
        await q.bind(x)
    for body in ("x", "y"):
        await x.publish(Message(body.encode()), "ignored")
    obs["fanout"] = await collect(qs)

    qs = await reset(3)
    x = await ch.declare_exchange(n("topic"), ExchangeType.TOPIC, auto_delete=True)
    for q, key in zip(qs, ("a.*", "a.#", "#.c")):
        await q.bind(x, key)
    for rk in ("a", "a.b", "a.b.c", "x.c", "b"):
        await x.publish(Message(rk.encode()), rk)
    obs["topic"] = await collect(qs)

    qs = await reset(2)
    x = await ch.declare_exchange(n("headers"), ExchangeType.HEADERS, auto_delete=True)
    await qs[0].bind(x, arguments={"x-match": "all", "h1": 1, "h2": 2})
    await qs[1].bind(x, arguments={"x-match": "any", "h1": 1, "h2": 2})
    for body, headers in (("h1", {"h1": 1}), ("h1h2", {"h1": 1, "h2": 2}), ("h3", {"h3": 3})):
        await x.publish(Message(body.encode(), headers=headers), "")
    obs["headers"] = await collect(qs)

    qs = await reset(1)
    src = await ch.declare_exchange(n("e2e-src"), ExchangeType.TOPIC, auto_delete=True)
    dst = await ch.declare_exchange(n("e2e-dst"), ExchangeType.FANOUT, auto_delete=True)
    await dst.bind(src, "e.*")
    await qs[0].bind(dst)
    for rk in ("e.1", "f.1", "e.1.2"):
        await src.publish(Message(rk.encode()), rk)
    obs["e2e"] = await collect(qs)
    await conn.close()
    return obs


async def s_publish_consume_ack(ctx):
    conn = await connect(ctx.url)
    ch = await conn.channel()
    q = await ch.declare_queue(ctx.name("pca"), exclusive=True)
    for i in range(100):
        await ch.default_exchange.publish(Message(
            f"{i}".encode(), content_type="text/plain", correlation_id=f"c-{i}",
            message_id=f"m-{i}", app_id="interop", type="t",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={**base.PROPS_HEADERS, "i": i}), q.name)
    await ch.set_qos(prefetch_count=10)
    got, redelivered, first = [], False, None
    async with q.iterator() as it:
        while len(got) < 100:
            m = await next_message(it)
            if first is None:
                first = {"content_type": m.content_type, "correlation_id": m.correlation_id,
                         "message_id": m.message_id, "app_id": m.app_id, "type": m.type,
                         "delivery_mode": int(m.delivery_mode), "headers": m.headers}
            got.append(int(m.body))
            redelivered |= bool(m.redelivered)
            await m.ack()
    left = await ready(ch, q.name)
    await conn.close()
    return {"count": len(got), "in_order": got == list(range(100)),
            "any_redelivered": redelivered, "props": first, "left": left}


async def s_nack_requeue(ctx):
    conn = await connect(ctx.url)
    ch = await conn.channel()
    q = await ch.declare_queue(ctx.name("nack"), exclusive=True)
    for i in range(1, 6):
        await ch.default_exchange.publish(Message(f"m{i}".encode()), q.name)
    await ch.set_qos(prefetch_count=5)
    deliveries, msgs = [], {}
    async with q.iterator() as it:
        async def take(count):
            for _ in range(count):
                m = await next_message(it)
                deliveries.append([m.body.decode(), bool(m.redelivered)])
                msgs[m.body.decode()] = m

        await take(5)
        await msgs["m1"].ack()
        await msgs["m2"].nack(requeue=True)
        await msgs["m3"].ack()
        await msgs["m4"].reject(requeue=True)
        await msgs["m5"].ack()
        await take(2)
        await msgs["m4"].nack(multiple=True, requeue=True)
        await take(2)
        await msgs["m4"].ack(multiple=True)
    left = await ready(ch, q.name)
    await conn.close()
    return {"deliveries": deliveries, "left": left}


def dead_info(m):
    h = m.headers or {}
    xd = [{"count": e.get("count"), "reason": e.get("reason"), "queue": e.get("queue"),
           "exchange": e.get("exchange"), "routing-keys": list(e.get("routing-keys") or []),
           "time": "time" in e,
           **({"original-expiration": e["original-expiration"]}
              if "original-expiration" in e else {})} for e in h.get("x-death", [])]
    return {"body": m.body.decode(), "exchange": m.exchange, "routing_key": m.routing_key,
            "redelivered": bool(m.redelivered), "expiration": m.properties.expiration,
            "x-death": xd,
            "x-first-death-reason": h.get("x-first-death-reason"),
            "x-first-death-queue": h.get("x-first-death-queue"),
            "x-first-death-exchange": h.get("x-first-death-exchange")}


async def wait_get(queue, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = await queue.get(fail=False)
        if m is not None:
            return m
        await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing arrived in {queue.name} within {timeout} s")


async def s_dead_letter(ctx):
    conn = await connect(ctx.url)
    ch = await conn.channel()
    dlx = await ch.declare_exchange(ctx.name("dlx"), ExchangeType.DIRECT)
    try:
        dlq = await ch.declare_queue(ctx.name("dlq"), exclusive=True)
        await dlq.bind(dlx, "dead")
        work = await ch.declare_queue(ctx.name("work"), exclusive=True, arguments={
            "x-dead-letter-exchange": dlx.name, "x-dead-letter-routing-key": "dead"})
        await ch.default_exchange.publish(Message(b"r1"), work.name)
        await ch.default_exchange.publish(Message(b"n1"), work.name)
        await (await wait_get(work)).reject(requeue=False)
        await (await wait_get(work)).nack(requeue=False)
        dead = []
        for _ in range(2):
            m = await wait_get(dlq)
            dead.append(dead_info(m))
            await m.ack()
            if m.body == b"r1":
                await ch.default_exchange.publish(Message(m.body, headers=m.headers), work.name)
        await (await wait_get(work)).reject(requeue=False)
        m = await wait_get(dlq)
        dead.append(dead_info(m))
        await m.ack()
        dl = {"x-dead-letter-exchange": dlx.name, "x-dead-letter-routing-key": "dead"}
        maxlen = await ch.declare_queue(ctx.name("maxlen"), exclusive=True,
                                        arguments={**dl, "x-max-length": 1})
        ttl = await ch.declare_queue(ctx.name("ttl"), exclusive=True, arguments=dl)
        await ch.default_exchange.publish(Message(b"l1"), maxlen.name)
        await ch.default_exchange.publish(Message(b"l2"), maxlen.name)
        m = await wait_get(dlq)
        dead.append(dead_info(m))
        await m.ack()
        await ch.default_exchange.publish(Message(b"e1", expiration=0.05), ttl.name)
        m = await wait_get(dlq)
        dead.append(dead_info(m))
        await m.ack()
        left = await ready(ch, work.name)
    finally:
        await dlx.delete()
        await conn.close()
    return {"dead": dead, "work_left": left}


async def s_confirms(ctx):
    conn = await connect(ctx.url)
    ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
    q = await ch.declare_queue(ctx.name("confirms"), exclusive=True)
    results = await asyncio.gather(*[
        ch.default_exchange.publish(Message(f"{i}".encode(), delivery_mode=2), q.name)
        for i in range(50)], return_exceptions=True)
    acked = sum(1 for r in results if type(r).__name__ == "Ack")
    nacked = len(results) - acked
    unroutable = {"returned": False, "reply_code": None, "confirmed": False}
    try:
        await ch.default_exchange.publish(Message(b"u"), ctx.name("nowhere"), mandatory=True)
        unroutable["confirmed"] = True
    except aio_pika.exceptions.DeliveryError as e:
        # raised when the broker's ack for the returned message arrives
        ret = e.message
        unroutable.update(returned=True, confirmed=True,
                          reply_code=getattr(e.frame, "reply_code", None) or
                          getattr(getattr(ret, "delivery", None), "reply_code", None))
    try:
        x = await ch.get_exchange(ctx.name("no-such-exchange"), ensure=False)
        await x.publish(Message(b"x"), "k")
        missing = "published"
    except Exception as e:
        missing = base.reply_code_in(e)
    await conn.close()
    return {"acked": acked, "nacked": nacked, "unroutable_mandatory": unroutable,
            "missing_exchange": missing}


async def s_mandatory(ctx):
    conn = await connect(ctx.url)
    # aiormq matches a basic.return to its publish through the confirm: without publisher
    # confirms it logs "Unhandled message ... returning" and drops it
    ch = await conn.channel(publisher_confirms=True, on_return_raises=False)
    x = await ch.declare_exchange(ctx.name("x"), ExchangeType.DIRECT, auto_delete=True)
    q = await ch.declare_queue(ctx.name("routed"), exclusive=True)
    await q.bind(x, "here")
    returns = []

    def on_return(message):
        # aio-pika's IncomingMessage drops reply_code/reply_text: read the aiormq frame
        frame = message.delivery
        returns.append({"reply_code": frame.reply_code, "reply_text": frame.reply_text,
                        "exchange": frame.exchange, "routing_key": frame.routing_key,
                        "body": message.body.decode()})

    (await ch.get_underlay_channel()).on_return_callbacks.add(on_return)
    await x.publish(Message(b"m1"), "nowhere", mandatory=True)
    await x.publish(Message(b"m2"), "here", mandatory=True)
    await x.publish(Message(b"m3"), "nowhere", mandatory=False)
    await ch.declare_queue(q.name, passive=True)     # a round trip
    await asyncio.sleep(0.2)
    routed = await get_all(q)
    await conn.close()
    return {"returns": returns, "routed": routed}


async def s_basic_get(ctx):
    conn = await connect(ctx.url)
    ch = await conn.channel()
    q = await ch.declare_queue(ctx.name("get"), exclusive=True)
    gets = []

    async def get():
        m = await q.get(fail=False)
        if m is None:
            gets.append(None)
            return None
        gets.append([m.body.decode(), bool(m.redelivered), m.message_count])
        return m

    await get()
    for i in (1, 2, 3):
        await ch.default_exchange.publish(Message(f"m{i}".encode()), q.name)
    await (await get()).ack()
    await (await get()).reject(requeue=True)
    await (await get()).ack()
    await (await get()).ack()
    await get()
    await conn.close()
    return {"gets": gets}


async def rpc(ctx, direct):
    server = await connect(ctx.url)
    sch = await server.channel()
    rq = await sch.declare_queue(ctx.name("rpc-direct" if direct else "rpc"), exclusive=True)
    seen = []

    async def on_request(m):
        async with m.process():
            seen.append(m.reply_to)
            await sch.default_exchange.publish(
                Message(m.body.upper(), correlation_id=m.correlation_id), m.reply_to)

    await rq.consume(on_request)
    conn = await connect(ctx.url)
    ch = await conn.channel()
    replies = {}
    done = asyncio.Event()

    async def on_reply(m):
        replies[m.correlation_id] = m.body.decode()
        if len(replies) == 3:
            done.set()

    if direct:
        reply_to = "amq.rabbitmq.reply-to"
        reply_q = await ch.get_queue(reply_to, ensure=False)
    else:
        reply_q = await ch.declare_queue("", exclusive=True)   # server-named
        reply_to = reply_q.name
    await reply_q.consume(on_reply, no_ack=True)
    for i in range(3):
        await ch.default_exchange.publish(
            Message(f"req{i}".encode(), reply_to=reply_to, correlation_id=f"c{i}"), rq.name)
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
    conn = await connect(ctx.url)
    ch = await conn.channel()
    q = await ch.declare_queue(ctx.name("large"), exclusive=True)
    await ch.default_exchange.publish(Message(base.large_body()), q.name)
    await ch.default_exchange.publish(Message(b""), q.name)
    big = (await q.get(no_ack=True)).body
    empty = (await q.get(no_ack=True)).body
    await conn.close()
    return {"size": len(big), "sha256": hashlib.sha256(big).hexdigest(), "empty": len(empty)}


async def s_many_channels(ctx):
    conn = await connect(ctx.url)
    first = await conn.channel(publisher_confirms=False)
    q = await first.declare_queue(ctx.name("many"), exclusive=True)
    rest = await asyncio.gather(*[conn.channel(publisher_confirms=False) for _ in range(199)])
    chans = [first, *rest]
    await asyncio.gather(*[ch.default_exchange.publish(Message(f"{i}".encode()), q.name)
                           for i, ch in enumerate(chans)])
    error = None
    try:
        await chans[5].declare_queue(ctx.name("missing"), passive=True)
    except Exception as e:
        error = base.reply_code_in(e)
    others_ok = all(not ch.is_closed for i, ch in enumerate(chans) if i != 5)
    await chans[6].declare_queue(q.name, passive=True)
    got = await get_all(await chans[7].get_queue(q.name, ensure=False))
    await conn.close()
    return {"opened": len(chans), "received": len(got), "distinct": len(set(got)),
            "error_code": error, "others_ok": others_ok}


async def s_heartbeats(ctx):
    sep = "&" if "?" in ctx.url else "?"
    conn = await connect(ctx.url + f"{sep}heartbeat=2")
    negotiated = conn.transport.connection.connection_tune.heartbeat
    await asyncio.sleep(5)
    ch = await conn.channel()
    await ch.declare_queue(ctx.name("hb"), exclusive=True)
    alive = not conn.is_closed
    await conn.close()
    return {"negotiated": negotiated, "alive": alive}


async def s_consumer_killed(ctx):
    conn = await connect(ctx.url)
    ch = await conn.channel()
    q = await ch.declare_queue(ctx.name("killed"))
    try:
        for i in range(1, base.KILLED_MESSAGES + 1):
            await ch.default_exchange.publish(Message(f"m{i}".encode()), q.name)
        obs = await asyncio.get_running_loop().run_in_executor(
            None, base.run_worker_and_kill, ctx.worker_cmd(q.name))
        deadline = time.monotonic() + 10
        while (await ready(ch, q.name)
               < 25 and time.monotonic() < deadline):
            await asyncio.sleep(0.05)
        after = []
        while True:
            m = await q.get(no_ack=True, fail=False)
            if m is None:
                break
            after.append([m.body.decode(), bool(m.redelivered)])
        obs["after"] = after
    finally:
        await q.delete(if_unused=False, if_empty=False)
        await conn.close()
    return obs


async def worker(url, queue):
    conn = await connect(url)
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=base.WORKER_PREFETCH)
    q = await ch.get_queue(queue, ensure=False)
    count = 0
    async with q.iterator() as it:
        async for m in it:
            count += 1
            print(f"got {m.body.decode()} {bool(m.redelivered)}", flush=True)
            if count <= base.WORKER_ACKS:
                await m.ack()
            if count == base.WORKER_HOLD:
                print("holding", flush=True)


async def s_reserved_names(ctx):
    # a plain (not robust) connection: a robust channel names "" queues itself
    conn = await aio_pika.connect(ctx.url)
    ch = await conn.channel()
    name = (await ch.declare_queue("", exclusive=True)).name
    obs = {"server_named": base.named_by(name)}
    await ch.declare_queue(name, passive=True)
    obs["passive_redeclare"] = "ok"
    for key, q in (("redeclare", name), ("amq_custom", "amq.custom-" + ctx.prefix)):
        try:
            await (await conn.channel()).declare_queue(q, exclusive=True)
            obs[key] = "ok"
        except Exception as e:
            obs[key] = base.reply_code_in(e)
    await conn.close()
    return obs


SCENARIOS = {name[2:]: fn for name, fn in globals().items() if name.startswith("s_")}

if __name__ == "__main__":
    main("aio_pika_client", SCENARIOS, worker)
