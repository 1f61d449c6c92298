"""Content-header properties (amqpd/wire/properties.py), method arguments
(amqpd/wire/methods.py) and the broker's timer pass, without sockets.

* ``check`` accepts exactly the property blocks that decode, and the channel's quick test (one
  lookup by flag word, a length) never lets an undecodable block through unchecked.
* ``decode`` gives what pamqp decodes; ``rewrite`` changes one property and copies the others
  byte for byte.
* The method decoder matches pamqp's unmarshal on every method pamqp can build, and refuses
  bytes left over after the arguments, cut-short arguments and malformed UTF-8.
* A timer callback that fails does not stop the others of the same pass.
"""
import datetime
import itertools
import logging
import struct
import warnings

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pamqp import commands as C, header as pamqp_header

from amqpd import errors
from amqpd.broker.broker import Broker
from amqpd import config as amqpd_config
from amqpd.wire import methods, properties as P, tables

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

shortstr = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
header_values = st.recursive(
    st.one_of(st.integers(-2 ** 63, 2 ** 63 - 1), st.booleans(), st.text(max_size=20),
              st.none(), st.floats(allow_nan=False, width=32)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
props_strategy = st.fixed_dictionaries({}, optional={
    "content_type": shortstr, "content_encoding": shortstr,
    "headers": st.dictionaries(st.text(max_size=10), header_values, max_size=6),
    "delivery_mode": st.sampled_from([1, 2]), "priority": st.integers(0, 9),
    "correlation_id": shortstr, "reply_to": shortstr, "expiration": st.just("60000"),
    "message_id": shortstr, "timestamp": st.datetimes(
        min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1)),
    "message_type": shortstr, "user_id": shortstr, "app_id": shortstr})


def pamqp_header_payload(props: dict, size: int = 3) -> bytes:
    return pamqp_header.ContentHeader(0, size, C.Basic.Properties(**props)).marshal()


def quick_test_skips(header: bytes) -> bool:
    """The channel's fast path: True when it would not call check()."""
    return P.FIXED_SIZE[header[12] << 8 | header[13]] == len(header)


@SETTINGS
@given(props_strategy)
def test_what_pamqp_encodes_passes_check_and_decodes_the_same(props):
    header = pamqp_header_payload(props)
    P.check(header)
    ours = P.decode(header)
    theirs = pamqp_header.ContentHeader()
    theirs.unmarshal(header)
    for name in P.Properties.__slots__:
        mine, other = getattr(ours, name), getattr(theirs.properties, name)
        if name == "cluster_id":
            other = other or None
        if name == "timestamp" and other is not None:
            assert mine == other
            continue
        assert mine == other, name


@SETTINGS
@given(props_strategy, st.data())
def test_damaged_blocks_fail_check_iff_they_do_not_decode(props, data):
    header = bytearray(pamqp_header_payload(props))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(12, len(header) - 1))
        header[i] = data.draw(st.integers(0, 255))
    header = bytes(header[:data.draw(st.integers(14, len(header)))])
    try:
        P.check(header)
        valid = True
    except P.PropertyError:
        valid = False
    if quick_test_skips(header):
        assert valid                                 # the fast path never skips a bad one
    if valid:
        P.decode(header)                            # whatever passes, decodes
        # and its exact length: nothing left over
        spans = P._spans(header)
        assert (spans[-1][3] if spans else 14) == len(header)


def test_quick_test_for_every_fixed_size_combination():
    for dm, prio, ts, unused in itertools.product((0, 1), repeat=4):
        flags = dm * P.DELIVERY_MODE | prio * P.PRIORITY | ts * P.TIMESTAMP | unused * P.UNUSED
        size = 14 + dm + prio + 8 * ts
        for extra in (-1, 0, 1) if size > 14 else (0, 1):
            header = struct.pack(">HHQH", 60, 0, 0, flags) + b"\x01" * (size - 14 + extra)
            if extra:
                assert not quick_test_skips(header)
                with pytest.raises(P.PropertyError):
                    P.check(header)
            else:
                assert quick_test_skips(header)
                P.check(header)


def test_rewrite_changes_one_property_and_copies_the_rest():
    rich = tables.encode_table({"d": 0.1, "s": tables.Short(5), "n": b"\xff",
                                "f": tables.Float(1.5)})
    header = (struct.pack(">HHQH", 60, 0, 9, P.CONTENT_TYPE | P.HEADERS | P.REPLY_TO
                          | P.MESSAGE_ID | P.UNUSED)
              + b"\x02\xff\xfe" + rich + b"\x01r" + b"\x02id")
    out = P.rewrite(header, reply_to="amq.rabbitmq.reply-to.abc")
    assert out == (header[:14] + b"\x02\xff\xfe" + rich + b"\x19amq.rabbitmq.reply-to.abc"
                   + b"\x02id")
    assert P.rewrite(header, reply_to=None)[:14] == header[:12] + struct.pack(
        ">H", P.CONTENT_TYPE | P.HEADERS | P.MESSAGE_ID | P.UNUSED)
    headers = P.decode(header).headers
    assert P.rewrite(header, headers=headers) == header


def test_shortstr_not_utf8_decodes_to_bytes():
    header = struct.pack(">HHQH", 60, 0, 0, P.CONTENT_TYPE) + b"\x01\xff"
    assert P.decode(header).content_type == b"\xff"
    assert P.peek(header, P.CONTENT_TYPE) == b"\xff"


# -- method arguments ------------------------------------------------------------------------------
def _sample_methods():
    """One instance of every method pamqp knows, with non-default values where it lets us."""
    values = {"shortstr": "ab.c", "longstr": "x" * 5, "octet": 7, "short": 300, "long": 70000,
              "longlong": 2 ** 40, "bit": True, "table": {"k": 1, "t": {"n": [1, "a"]}}}
    for cls in C.INDEX_MAPPING.values():
        kwargs = {name: values[cls.amqp_type(name)] for name in cls.__slots__}
        with warnings.catch_warnings():          # pamqp warns about deprecated methods
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                method = cls(**kwargs)
                method.marshal()
            except (ValueError, TypeError):
                method = cls()
        yield method


SAMPLES = list(_sample_methods())


@pytest.mark.parametrize("method", SAMPLES, ids=[m.name for m in SAMPLES])
def test_method_decoder_matches_pamqp(method):
    payload = struct.pack(">I", method.index) + method.marshal()
    ours = methods.decode_or_raise(payload, 1)
    theirs = type(method).__new__(type(method))
    theirs.unmarshal(payload[4:])
    for name in method.__slots__:
        assert getattr(ours, name) == getattr(theirs, name), name


@pytest.mark.parametrize("method", SAMPLES, ids=[m.name for m in SAMPLES])
def test_trailing_bytes_and_truncation_are_refused(method):
    payload = struct.pack(">I", method.index) + method.marshal()
    class_method = (method.index >> 16, method.index & 0xFFFF)
    for bad in [payload + b"X"] + [payload[:n] for n in range(4, len(payload))]:
        with pytest.raises(errors.FrameError) as info:
            methods.decode_or_raise(bad, 1)
        assert (info.value.class_id, info.value.method_id) == class_method
        with pytest.raises(errors.InternalError) as info:      # channel 0: RabbitMQ's 541
            methods.decode_or_raise(bad, 0)
        assert (info.value.code, info.value.class_id, info.value.method_id) == (541, 0, 0)


def test_argument_tables_keep_their_types():
    payload = (struct.pack(">HHH", 50, 10, 0) + b"\x01q\x00"
               + tables.encode_table({"x-message-ttl": tables.Short(2000), "f": tables.Float(1.5)}))
    args = methods.decode_or_raise(payload, 1).arguments
    assert type(args["x-message-ttl"]) is tables.Short and type(args["f"]) is tables.Float


def test_malformed_utf8_shortstr():
    payload = struct.pack(">HHH", 50, 10, 0) + b"\x01\xff\x00" + b"\x00\x00\x00\x00"
    with pytest.raises(errors.FrameError) as info:
        methods.decode_or_raise(payload, 1)
    assert (info.value.reply_text, info.value.class_id, info.value.method_id) == (
        "FRAME_ERROR - Malformed UTF-8 in shortstr", 0, 0)


# -- timers ----------------------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0
        self.armed = []

    def time(self):
        return self.now

    def wall(self):
        return 1_800_000_000.0 + self.now

    def call_at(self, when, fn):
        self.armed.append(when)
        return self

    def cancel(self):
        pass


def test_a_failing_timer_callback_does_not_stop_the_others(caplog):
    clock = Clock()
    broker = Broker(amqpd_config.from_dict({}), clock=clock)
    ran = []

    def bad():
        raise RuntimeError("boom")

    broker.call_at(1.0, lambda: ran.append("first"))
    broker.call_at(1.0, bad)
    broker.call_at(1.0, lambda: ran.append("after"))
    broker.call_at(5.0, lambda: ran.append("later"))
    clock.now = 2.0
    with caplog.at_level(logging.ERROR, logger="amqpd.broker"):
        broker.run_timers()
    assert ran == ["first", "after"]
    assert "timer callback" in caplog.text and "boom" in caplog.text
    assert clock.armed[-1] == 5.0            # the next deadline is armed
    clock.now = 5.0
    broker.run_timers()
    assert ran == ["first", "after", "later"]
