"""The node-to-node frame (cluster/frames.py): what goes in comes out, garbage is refused."""
import asyncio

import pytest

from amqpd.cluster import frames


def _reader(data: bytes) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    r.feed_data(data)
    r.feed_eof()
    return r


def test_frames_round_trip_in_order():
    async def go():
        r = _reader(frames.encode(3, {"q": "a", "n": 1}, b"\x00body")
                    + frames.encode(7, {}))
        assert await frames.read(r) == (3, {"q": "a", "n": 1}, b"\x00body")
        assert await frames.read(r) == (7, {}, b"")
        with pytest.raises(asyncio.IncompleteReadError):
            await frames.read(r)
    asyncio.run(go())


@pytest.mark.parametrize("data", [
    b"\xff\xff\xff\xff\x01\x00\x00\x00\x00",           # longer than any frame may be
    b"\x00\x00\x00\x07\x01\x00\x00\x00\x09xx",          # head longer than the frame
    b"\x00\x00\x00\x07\x01\x00\x00\x00\x02[]",          # head not an object
    b"\x00\x00\x00\x07\x01\x00\x00\x00\x02{x",          # head not JSON
])
def test_garbage_is_a_frame_error(data):
    async def go():
        with pytest.raises(frames.FrameError):
            await frames.read(_reader(data))
    asyncio.run(go())
