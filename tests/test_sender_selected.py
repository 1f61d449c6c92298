"""Sender-selected distribution: CC and BCC headers route a message with their keys too, BCC is
never delivered (RabbitMQ 3.10.8's behaviour, probed with raw frames)."""
import pika
import pytest
from pika.exceptions import UnroutableError

from .helpers import refused


def props(**headers) -> pika.BasicProperties:
    return pika.BasicProperties(headers=headers)


def got(ch, queue):
    """(body, headers, routing key) of the one message in ``queue``, or None."""
    method, p, body = ch.basic_get(queue, auto_ack=True)
    if method is None:
        return None
    assert ch.basic_get(queue, auto_ack=True)[0] is None, f"{queue} got two copies"
    return body, p.headers, method.routing_key


@pytest.fixture
def abc(ch):
    """Queues a, b, c bound to ``x`` with keys ka, kb, kc (for each exchange type)."""
    def make(kind: str = "direct"):
        ch.exchange_declare("x", kind, auto_delete=False)
        for q in "abc":
            ch.queue_declare(q)
            ch.queue_purge(q)
            ch.queue_bind(q, "x", f"k{q}" if kind != "fanout" else "")
        return ch
    yield make
    for q in "abc":
        ch.queue_delete(q)
    ch.exchange_delete("x")


@pytest.mark.parametrize("kind", ["direct", "topic"])
def test_cc_and_bcc_route_with_their_keys_and_bcc_is_removed(abc, kind):
    ch = abc(kind)
    ch.basic_publish("x", "ka", b"m", props(CC=["kb"], BCC=["kc"]))
    for q in "abc":
        body, headers, rk = got(ch, q)
        assert (body, headers, rk) == (b"m", {"CC": ["kb"]}, "ka")


def test_default_exchange_routes_to_cc_queues(abc):
    ch = abc()
    ch.basic_publish("", "a", b"m", props(CC=["b"], BCC=["c"]))
    assert [got(ch, q)[1] for q in "abc"] == [{"CC": ["b"]}] * 3


def test_fanout_ignores_keys_but_bcc_is_still_removed(abc):
    ch = abc("fanout")
    ch.basic_publish("x", "", b"m", props(CC=["kb"], BCC=["kc"], other=1))
    assert [got(ch, q)[1] for q in "abc"] == [{"CC": ["kb"], "other": 1}] * 3


def test_one_copy_per_queue_however_many_keys_match(abc):
    ch = abc()
    ch.basic_publish("x", "ka", b"m", props(CC=["ka", "kb"], BCC=["kb"]))
    assert got(ch, "a") is not None and got(ch, "b") is not None and got(ch, "c") is None


def test_names_are_case_sensitive_and_non_strings_ignored(abc):
    ch = abc()
    ch.basic_publish("x", "ka", b"m", props(cc=["kb"]))
    assert got(ch, "b") is None and got(ch, "a")[1] == {"cc": ["kb"]}
    ch.basic_publish("x", "ka", b"m", props(CC=[5, "kb", True, {"x": 1}]))
    assert got(ch, "a") is not None
    assert got(ch, "b")[1] == {"CC": [5, "kb", True, {"x": 1}]}


@pytest.mark.parametrize("name,value,kind", [("CC", "kb", "longstr"), ("BCC", "kb", "longstr"),
                                             ("CC", 5, "signedint"), ("CC", {"k": 1}, "table")])
def test_cc_or_bcc_that_is_not_an_array_is_406(connect, name, value, kind):
    ch = connect().channel()
    ch.queue_declare("cc-q")
    ch.basic_publish("", "cc-q", b"m", props(**{name: value}))
    e = refused(ch.queue_declare, "cc-q", passive=True)
    assert (e.reply_code, e.reply_text) == (
        406, f'PRECONDITION_FAILED - invalid message: {{unacceptable_type_in_header,"{name}",'
             f'{kind}}}')
    ch = connect().channel()
    assert ch.queue_declare("cc-q", passive=True).method.message_count == 0
    ch.queue_delete("cc-q")


def test_mandatory_is_routed_by_any_key_and_returns_lose_bcc(abc):
    ch = abc()
    ch.confirm_delivery()
    ch.basic_publish("x", "nomatch", b"m", props(CC=["kb"]), mandatory=True)
    ch.basic_publish("x", "nomatch", b"m", props(BCC=["kc"]), mandatory=True)
    assert got(ch, "b") is not None and got(ch, "c") is not None
    returned = []
    ch.add_on_return_callback(lambda _c, _m, p, _b: returned.append(p.headers))
    with pytest.raises(UnroutableError):
        ch.basic_publish("x", "nomatch", b"m", props(CC=["zz"], BCC=["yy"]), mandatory=True)
    ch.connection.process_data_events(0.2)
    assert returned == [{"CC": ["zz"]}]


def test_dead_lettering_routes_with_every_key_and_records_rk_and_cc(ch):
    ch.exchange_declare("dlx", "direct")
    for key in ("src", "kb", "kc"):
        ch.queue_declare(f"dl-{key}")
        ch.queue_bind(f"dl-{key}", "dlx", key)
    ch.queue_declare("src", arguments={"x-dead-letter-exchange": "dlx", "x-message-ttl": 0})
    ch.basic_publish("", "src", b"m", props(CC=["kb"], BCC=["kc"]))
    for key in ("src", "kb", "kc"):
        method, p, _ = None, None, None
        for _ in range(100):
            method, p, _ = ch.basic_get(f"dl-{key}", auto_ack=True)
            if method is not None:
                break
            ch.connection.sleep(0.02)
        assert method is not None, key
        assert p.headers["CC"] == ["kb"] and "BCC" not in p.headers
        assert p.headers["x-death"][0]["routing-keys"] == ["src", "kb"]


def test_dead_letter_routing_key_drops_cc(ch):
    ch.exchange_declare("dlx2", "direct")
    ch.queue_declare("dl-only")
    ch.queue_bind("dl-only", "dlx2", "dlrk")
    ch.queue_declare("dl-kb")
    ch.queue_bind("dl-kb", "dlx2", "kb")
    ch.queue_declare("src2", arguments={"x-dead-letter-exchange": "dlx2",
                                        "x-dead-letter-routing-key": "dlrk"})
    ch.basic_publish("", "src2", b"m", props(CC=["kb"]))
    method, _, _ = ch.basic_get("src2")
    ch.basic_reject(method.delivery_tag, requeue=False)
    _, p, _ = ch.basic_get("dl-only", auto_ack=True)
    assert "CC" not in p.headers
    assert p.headers["x-death"][0]["routing-keys"] == ["src2", "kb"]
    assert ch.basic_get("dl-kb", auto_ack=True)[0] is None


def test_alternate_and_exchange_to_exchange_route_with_every_key(ch):
    ch.exchange_declare("ae", "direct")
    ch.exchange_declare("x-ae", "direct", arguments={"alternate-exchange": "ae"})
    ch.exchange_declare("e1", "direct")
    ch.exchange_declare("e2", "direct")
    ch.exchange_bind("e2", "e1", "kb")
    for q, ex in (("ae-zz", "ae"), ("ae-kb", "ae"), ("ae-kc", "ae"),
                  ("e2-ka", "e2"), ("e2-kb", "e2"), ("e2-kc", "e2")):
        ch.queue_declare(q)
        ch.queue_bind(q, ex, q.split("-")[1])
    ch.basic_publish("x-ae", "zz", b"m", props(CC=["kb"], BCC=["kc"]))
    assert all(ch.basic_get(q, auto_ack=True)[0] is not None for q in ("ae-zz", "ae-kb", "ae-kc"))
    ch.basic_publish("e1", "ka", b"m", props(CC=["kb"], BCC=["kc"]))
    assert all(ch.basic_get(q, auto_ack=True)[0] is not None for q in ("e2-ka", "e2-kb", "e2-kc"))


def test_one_confirm_per_publish_whatever_the_copies(abc):
    ch = abc()
    ch.confirm_delivery()
    for _ in range(10):
        ch.basic_publish("x", "ka", b"m", props(CC=["kb"], BCC=["kc"]))
    assert ch.queue_declare("c", passive=True).method.message_count == 10
