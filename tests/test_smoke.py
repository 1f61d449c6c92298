"""The README promise: pika and aio-pika connect, publish, consume and get."""
import aio_pika
import pika


def test_pika_publish_get_consume(broker):
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = conn.channel()
    ch.queue_declare("hello")
    ch.basic_publish("", "hello", b"world", pika.BasicProperties(content_type="text/plain"))
    method, props, body = ch.basic_get("hello", auto_ack=True)
    assert body == b"world" and props.content_type == "text/plain"
    assert method.message_count == 0 and not method.redelivered
    conn.close()


async def test_aio_pika_roundtrip(broker):
    conn = await aio_pika.connect(broker.url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue("", exclusive=True)
        await ch.default_exchange.publish(aio_pika.Message(b"x" * 10, headers={"k": "v"}),
                                          routing_key=q.name)
        async with q.iterator() as it:
            async for msg in it:
                async with msg.process():
                    assert msg.body == b"x" * 10 and msg.headers == {"k": "v"}
                break
