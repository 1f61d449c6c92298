"""The shortcuts the message path takes per message give the answers of the general code: a
message record built in two pieces is the record the reader parses, delivery_mode read directly
from a common header is what the property walk finds, and a delivery written in one list
extension is the frames the general writer makes."""
import os

import pytest
from pamqp import commands as C
from pamqp import header as pamqp_header

from amqpd.store import records
from amqpd.wire import fastpath, properties
from amqpd.wire.framing import FrameReader


@pytest.mark.parametrize("route_len,header_len,body_len", [
    (0, 14, 0), (2, 15, 1), (30, 40, 1024), (255, 300, 70000)])
def test_a_record_built_in_two_pieces_reads_back(route_len, header_len, body_len):
    route, header, body = os.urandom(route_len), os.urandom(header_len), os.urandom(body_len)
    salt = os.urandom(8)
    seed = records.seed_of(salt)
    magic_crc, rest = records.message_parts(7, route, header, body, seed)
    assert magic_crc + rest == records.message(7, route, header, body, seed)
    segment = records.segment_header(salt) + magic_crc + rest + records.marker(
        records.DELIVERED, 7, seed) + records.marker(records.SETTLED, 7, seed)
    problems = []
    got = list(records.scan(segment, problems))
    assert problems == []
    assert [(r.kind, r.seq) for r in got] == [
        (records.MESSAGE, 7), (records.DELIVERED, 7), (records.SETTLED, 7)]
    assert (got[0].route, got[0].header, got[0].body) == (route, header, body)


def test_a_flipped_byte_in_the_body_fails_the_check():
    seed = records.seed_of(b"12345678")
    rec = bytearray(records.message(1, b"\x00\x01q", b"h" * 14, b"x" * 100, seed))
    rec[-10] ^= 1
    segment = records.segment_header(b"12345678") + bytes(rec)
    problems = []
    assert list(records.scan(segment, problems)) == []
    assert problems and problems[0][2] == "torn tail"


@pytest.mark.parametrize("props", [
    {}, {"delivery_mode": 1}, {"delivery_mode": 2}, {"delivery_mode": 2, "priority": 5},
    {"content_type": "text/plain", "delivery_mode": 2}, {"headers": {"a": 1}, "delivery_mode": 2},
    {"content_encoding": "gzip"}, {"delivery_mode": 2, "expiration": "60000", "app_id": "x"}])
def test_delivery_mode_read_directly_agrees_with_the_property_walk(props):
    header = pamqp_header.ContentHeader(0, 10, C.Basic.Properties(**props)).marshal()
    assert properties.delivery_mode(header) == (properties.peek(
        header, properties.DELIVERY_MODE) or 1) == props.get("delivery_mode", 1)


@pytest.mark.parametrize("body_len", [0, 1, 1024, 4088, 4089, 10000])
def test_a_delivery_is_the_frames_of_the_general_writer(body_len):
    body = os.urandom(body_len)
    route, header, ctag = b"\x02ex\x03key", b"\x00\x3c\x00\x00" + bytes(8) + b"\x10\x00\x02", b"\x01c"
    out = []
    fastpath.write_deliver(out, 5, ctag, 99, True, route, header, body, 4096)
    frames = FrameReader(0).feed(b"".join(out) + b"\x08\x00\x00\x00\x00\x00\x00\xce")
    method = fastpath.pack_method_head(1, 5, 13 + len(ctag) + len(route), 60, 60)[7:]
    assert frames[0] == (1, 5, method + ctag + (99).to_bytes(8, "big") + b"\x01" + route)
    assert frames[1] == (2, 5, header)
    pieces = [payload for ftype, _ch, payload in frames[2:-1]]
    assert all(ftype == 3 for ftype, _ch, _p in frames[2:-1])
    assert b"".join(pieces) == body and all(len(p) <= 4096 - 8 for p in pieces)
