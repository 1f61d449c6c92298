"""amqpd.wire.framing.FrameReader: the same frames whatever the read boundaries, frame_max
enforced exactly at its boundary, a bad frame-end octet rejected, and incomplete tails kept
across feeds.

The boundary: the spec counts the 8 bytes of framing in frame_max, so a conforming peer never
sends a payload above frame_max - 8. RabbitMQ (rabbit_reader, ``?FRAME_SIZE_FUDGE``) only
refuses payloads above frame_max, and amqpd deliberately does the same (commit "frame_max
allows RabbitMQ's slack"): payload == frame_max is accepted, frame_max + 1 is 501."""
from __future__ import annotations

import random
import struct

import pytest

from amqpd import errors
from amqpd.wire import framing
from amqpd.wire.framing import FrameReader as _FrameReader


class FrameReader(_FrameReader):
    """Raises the framing error a feed left behind, once its good frames are returned; most
    tests here only care that the error is detected, and where."""

    def feed(self, data: bytes) -> list:
        frames = super().feed(data)
        if self.error is not None:
            raise self.error
        return frames

SEED = 0xF4A3E
TYPES = (1, 2, 3, 8)


def raw_frame(ftype: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    """Reference encoder, independent of framing.frame()."""
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + bytes([end])


def max_payload(frame_max: int) -> int:
    """The largest payload accepted: frame_max (RabbitMQ's slack), not frame_max - 8."""
    return frame_max


def random_frames(rng: random.Random, count: int, frame_max: int) -> list:
    limit = max_payload(frame_max)
    frames = []
    for _ in range(count):
        ftype = rng.choice(TYPES + (rng.randrange(256),))
        channel = rng.choice((0, 1, 65535, rng.randrange(65536)))
        kind = rng.random()
        if kind < 0.15:
            size = 0
        elif kind < 0.30:
            size = rng.choice((1, 6, 7, 8, frame_max - 9, frame_max - 8, frame_max - 7,
                               limit - 1, limit))
        elif kind < 0.40:
            size = rng.randrange(0, limit + 1)
        else:
            size = rng.randrange(0, 64)
        # payload bytes include 0xCE and fake headers on purpose
        payload = bytes(rng.choice((0xCE, 0x01, 0x00, rng.randrange(256))) for _ in range(size)) \
            if size < 64 else rng.randbytes(size)
        frames.append((ftype, channel, payload))
    return frames


def encode(frames: list) -> bytes:
    return b"".join(raw_frame(*f) for f in frames)


def feed_chunks(reader: FrameReader, data: bytes, sizes) -> list:
    got = []
    pos = 0
    for size in sizes:
        if pos >= len(data):
            break
        got.extend(reader.feed(data[pos:pos + size]))
        pos += size
    if pos < len(data):
        got.extend(reader.feed(data[pos:]))
    return got


def normalise(frames: list) -> list:
    return [(t, c, bytes(p)) for t, c, p in frames]


# -- same frames, whatever the read boundaries --------------------------------------------------
@pytest.mark.parametrize("frame_max", [4096, 131072])
def test_all_at_once(frame_max):
    rng = random.Random(SEED + frame_max)
    frames = random_frames(rng, 300, frame_max)
    reader = FrameReader(frame_max)
    assert normalise(reader.feed(encode(frames))) == frames
    assert reader.buf == b""


def test_byte_by_byte():
    rng = random.Random(SEED + 1)
    frames = random_frames(rng, 120, 4096)
    data = encode(frames)
    reader = FrameReader(4096)
    got = []
    for i in range(len(data)):
        got.extend(reader.feed(data[i:i + 1]))
    assert normalise(got) == frames
    assert reader.buf == b""


def test_byte_by_byte_large_frame_max_small_frames():
    rng = random.Random(SEED + 2)
    frames = [(t, c, p[:200]) for t, c, p in random_frames(rng, 150, 131072)]
    data = encode(frames)
    reader = FrameReader(131072)
    got = []
    for i in range(len(data)):
        got.extend(reader.feed(data[i:i + 1]))
    assert normalise(got) == frames


@pytest.mark.parametrize("frame_max", [4096, 131072])
@pytest.mark.parametrize("round_", range(4))
def test_random_chunk_sizes(frame_max, round_):
    rng = random.Random(SEED * 7 + frame_max + round_)
    # (the reader copies its tail on every feed, so tiny chunks only with the small frame_max)
    frames = random_frames(rng, 200 if frame_max == 4096 else 40, frame_max)
    data = encode(frames)
    top = (8, 100, 5000, frame_max + 100)[round_] if frame_max == 4096 else \
        (3000, 9000, 70000, frame_max + 100)[round_]
    sizes = iter(lambda: rng.randrange(1, top), None)     # endless; feed_chunks stops
    reader = FrameReader(frame_max)
    assert normalise(feed_chunks(reader, data, sizes)) == frames
    assert reader.buf == b""


def test_every_split_point_of_a_short_stream():
    """Two feeds, split at every offset: the incomplete tail of the first is kept."""
    frames = [(1, 1, b"\x00\x3c\x00\x28abc"), (2, 1, b"\xce" * 14), (3, 1, b""),
              (8, 0, b""), (3, 65535, b"body\xce")]
    data = encode(frames)
    for cut in range(len(data) + 1):
        reader = FrameReader(4096)
        got = reader.feed(data[:cut])
        assert normalise(got) == frames[:len(got)]
        got += reader.feed(data[cut:])
        assert normalise(got) == frames, cut
        assert reader.buf == b""


def test_incomplete_tail_yields_nothing_until_complete():
    frame = raw_frame(1, 3, b"x" * 100)
    reader = FrameReader(4096)
    for i in range(len(frame) - 1):
        assert reader.feed(frame[i:i + 1]) == []
    assert normalise(reader.feed(frame[-1:])) == [(1, 3, b"x" * 100)]
    # and the next frame's first bytes stay buffered after a complete one
    assert normalise(reader.feed(frame + frame[:5])) == [(1, 3, b"x" * 100)]
    assert normalise(reader.feed(frame[5:])) == [(1, 3, b"x" * 100)]


def test_empty_feed_is_harmless():
    reader = FrameReader(4096)
    assert reader.feed(b"") == []
    frame = raw_frame(8, 0, b"")
    assert reader.feed(frame[:3]) == []
    assert reader.feed(b"") == []
    assert normalise(reader.feed(frame[3:])) == [(8, 0, b"")]


def test_frame_helper_and_heartbeat_constant_match_the_reference():
    assert framing.frame(3, 9, b"abc") == raw_frame(3, 9, b"abc")
    assert framing.HEARTBEAT_FRAME == b"\x08\x00\x00\x00\x00\x00\x00\xce"
    assert framing.PROTOCOL_HEADER == b"AMQP\x00\x00\x09\x01"


# -- frame_max ----------------------------------------------------------------------------------
@pytest.mark.parametrize("frame_max", [4096, 8192, 131072])
def test_frame_of_exactly_frame_max_bytes_is_accepted(frame_max):
    """The spec's largest frame: 7 header bytes + payload + frame end == frame_max."""
    payload = b"\xab" * (frame_max - 8)
    data = raw_frame(3, 1, payload)
    assert len(data) == frame_max
    assert normalise(FrameReader(frame_max).feed(data)) == [(3, 1, payload)]


@pytest.mark.parametrize("frame_max", [4096, 8192, 131072])
@pytest.mark.parametrize("over_spec", range(1, 9))
def test_rabbitmq_slack_payload_up_to_frame_max_is_accepted(frame_max, over_spec):
    payload = b"\xab" * (frame_max - 8 + over_spec)
    assert normalise(FrameReader(frame_max).feed(raw_frame(3, 1, payload))) == [(3, 1, payload)]


@pytest.mark.parametrize("frame_max", [4096, 8192, 131072])
def test_payload_one_byte_over_the_limit_is_a_frame_error(frame_max):
    data = raw_frame(3, 1, b"\xab" * (max_payload(frame_max) + 1))
    with pytest.raises(errors.FrameError) as info:
        FrameReader(frame_max).feed(data)
    assert info.value.code == 501
    assert info.value.connection_level


@pytest.mark.parametrize("frame_max", [4096, 131072])
def test_oversize_is_detected_from_the_header_alone(frame_max):
    """No need to buffer a huge payload before refusing it."""
    header = struct.pack(">BHI", 3, 1, max_payload(frame_max) + 1)
    reader = FrameReader(frame_max)
    assert reader.feed(header[:6]) == []
    with pytest.raises(errors.FrameError):
        reader.feed(header[6:])


def test_oversize_frame_after_good_frames_in_one_feed():
    good = raw_frame(1, 1, b"ok")
    with pytest.raises(errors.FrameError):
        FrameReader(4096).feed(good * 3 + raw_frame(3, 1, b"z" * 4097))


def test_oversize_frame_byte_by_byte_fails_at_its_header():
    good = raw_frame(1, 1, b"ok")
    data = good + struct.pack(">BHI", 3, 1, 5000) + b"z" * 10
    reader = FrameReader(4096)
    got = []
    with pytest.raises(errors.FrameError):
        for i in range(len(data)):
            got.extend(reader.feed(data[i:i + 1]))
    assert normalise(got) == [(1, 1, b"ok")]
    assert i == len(good) + 6           # failed on the last byte of the 7-byte header


def test_huge_declared_size_is_a_frame_error():
    with pytest.raises(errors.FrameError):
        FrameReader(131072).feed(struct.pack(">BHI", 1, 0, 0xFFFFFFFF))


def test_frame_max_zero_means_no_limit():
    payload = b"q" * 300000
    assert normalise(FrameReader(0).feed(raw_frame(3, 1, payload))) == [(3, 1, payload)]


def test_frame_max_can_be_lowered_after_tune():
    reader = FrameReader(131072)
    big = raw_frame(3, 1, b"b" * 5000)
    assert len(reader.feed(big)) == 1
    reader.frame_max = 4096
    with pytest.raises(errors.FrameError):
        reader.feed(big)


# -- frame end ----------------------------------------------------------------------------------
@pytest.mark.parametrize("end", [0x00, 0xCD, 0xCF, 0xFF, 0xEC])
def test_bad_frame_end_is_a_frame_error(end):
    with pytest.raises(errors.FrameError) as info:
        FrameReader(4096).feed(raw_frame(1, 1, b"abc", end=end))
    assert info.value.code == 501


def test_bad_frame_end_detected_when_the_octet_arrives():
    data = raw_frame(1, 1, b"abc") + raw_frame(2, 1, b"x" * 20, end=0x00)
    reader = FrameReader(4096)
    got = []
    with pytest.raises(errors.FrameError):
        for i in range(len(data)):
            got.extend(reader.feed(data[i:i + 1]))
    assert i == len(data) - 1
    assert normalise(got) == [(1, 1, b"abc")]


def test_bad_frame_end_inside_a_stream_fed_in_chunks():
    rng = random.Random(SEED + 3)
    for _ in range(50):
        frames = random_frames(rng, 20, 4096)
        bad_at = rng.randrange(len(frames))
        data = b"".join(raw_frame(*f, end=0x00 if i == bad_at else 0xCE)
                        for i, f in enumerate(frames))
        reader = FrameReader(4096)
        got, pos = [], 0
        with pytest.raises(errors.FrameError):
            while pos < len(data):
                size = rng.randrange(1, 3000)
                got.extend(reader.feed(data[pos:pos + size]))
                pos += size
        # whatever came out before the error is a prefix of the good frames
        assert normalise(got) == frames[:len(got)]
        assert len(got) <= bad_at


def test_good_frames_before_an_error_are_returned_and_the_error_kept():
    """The connection handles what came before a bad frame, then closes (as RabbitMQ)."""
    good = raw_frame(1, 1, b"ok")
    reader = _FrameReader(4096)
    frames = reader.feed(good * 3 + raw_frame(3, 1, b"z" * 4097) + good)
    assert normalise(frames) == [(1, 1, b"ok")] * 3
    assert isinstance(reader.error, errors.FrameError) and reader.error.code == 501


def test_a_large_frame_arriving_in_small_reads_is_not_recopied_per_read():
    payload = b"p" * 100000
    data = raw_frame(3, 1, payload)
    reader = _FrameReader(131072)
    for i in range(0, len(data) - 1000, 1000):
        assert reader.feed(data[i:i + 1000]) == []
        assert len(reader.chunks) == i // 1000 + 1      # pieces kept, not joined
    assert normalise(reader.feed(data[i + 1000:])) == [(3, 1, payload)]
