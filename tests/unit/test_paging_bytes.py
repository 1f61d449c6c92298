"""x-max-length-bytes on a paged queue across a restart: the byte count is rebuilt from the
body sizes kept in the segment summaries (store/segment_index.py), not by reading the
messages; a summary without sizes (an older format, or written before the limit applied)
makes the restart scan that segment instead. Real store on a temp dir, ManualClock."""
import os
import struct
import zlib

import pytest

from amqpd.store import segment_index
from tests.unit.test_paging import Node, bodies, in_ram, record_segment_reads


@pytest.mark.parametrize("how", ["restart", "crash"])
def test_the_byte_count_comes_back_from_the_summaries(tmp_path, how, monkeypatch):
    node = Node(tmp_path, window=4, segment_size=4096,
                args={"x-max-length-bytes": 100_000, "x-overflow": "reject-publish"})
    for b in bodies(300, 100):
        node.publish(b)
    node.turn()
    q = node.q
    for _ in range(5):
        q.settle(q.take())
    node.turn()
    assert q.ready_bytes == 295 * 100
    qdir = q.log.path
    segs = sorted(n for n in os.listdir(qdir) if n.endswith(".seg"))
    read = record_segment_reads(node, monkeypatch)
    getattr(node, how)()
    q = node.q
    assert read == [segs[-1]]                    # only the active segment is scanned
    assert q.message_count == 295 and in_ram(q) == 0 and q.pager.count == 295
    assert q.ready_bytes == 295 * 100
    assert [b for b, _ in node.drain()] == bodies(300, 100)[5:]
    assert node.q.ready_bytes == 0


def test_reject_publish_right_after_a_restart(tmp_path):
    node = Node(tmp_path, window=4, segment_size=4096,
                args={"x-max-length-bytes": 2000, "x-overflow": "reject-publish"})
    for b in bodies(30, 100):
        node.publish(b)
    node.turn()
    assert node.q.message_count == 20            # 2,000 bytes
    node.restart()
    q = node.q
    assert q.ready_bytes == 2000 and in_ram(q) == 0
    node.publish(b"x" * 100)
    node.turn()
    assert q.message_count == 20
    q.settle(q.take())
    node.publish(b"y" * 100)
    node.turn()
    assert q.message_count == 20 and q.ready_bytes == 2000


def test_drop_head_after_a_restart_counts_the_paged_bytes(tmp_path):
    node = Node(tmp_path, window=4, segment_size=4096, args={"x-max-length-bytes": 2000})
    for b in bodies(20, 100):
        node.publish(b)
    node.turn()
    node.restart()
    node.publish(b"z" * 300)                     # three of the oldest go
    node.turn()
    q = node.q
    assert q.message_count == 18 and q.ready_bytes == 17 * 100 + 300
    assert [b for b, _ in node.drain()] == bodies(20, 100)[3:] + [b"z" * 300]


def _as_format_1(path):
    """Rewrite a summary in the older format (no sizes or priorities fields)."""
    raw = open(path, "rb").read()
    body = raw[12:]
    meta = segment_index._meta.size
    z, y = struct.unpack_from("<II", body, meta)
    rest = body[meta + 8:]
    if y:
        rest = rest[:-y]
    if z:
        rest = rest[:-4 * z]
    body = body[:meta] + rest
    with open(path, "wb") as f:
        f.write(b"AMQPDIX1" + struct.pack("<I", zlib.crc32(body)) + body)


def test_a_summary_without_sizes_is_read_but_the_byte_count_scans(tmp_path, monkeypatch):
    node = Node(tmp_path, window=4, segment_size=4096, args={"x-max-length-bytes": 100_000})
    for b in bodies(200, 100):
        node.publish(b)
    node.turn()
    qdir = node.q.log.path
    idx = sorted(n for n in os.listdir(qdir) if n.endswith(".idx"))
    for name in idx:
        path = os.path.join(qdir, name)
        assert len(segment_index.load(path[:-4] + ".seg").sizes) > 0
        _as_format_1(path)
        loaded = segment_index.load(path[:-4] + ".seg")
        assert loaded is not None and len(loaded.sizes) == 0 and len(loaded.seqs) > 0
    node.crash()
    q = node.q
    assert q.message_count == 200 and q.ready_bytes == 200 * 100
    assert [b for b, _ in node.drain()] == bodies(200, 100)


def test_a_summary_with_sizes_only_is_still_read(tmp_path):
    """AMQPDIX2 (sizes, no priorities field) as an earlier amqpd wrote it."""
    node = Node(tmp_path, window=4, segment_size=4096, args={"x-max-length-bytes": 100_000})
    for b in bodies(100, 100):
        node.publish(b)
    node.turn()
    qdir = node.q.log.path
    name = sorted(n for n in os.listdir(qdir) if n.endswith(".idx"))[0]
    path = os.path.join(qdir, name)
    raw = open(path, "rb").read()
    body = raw[12:]
    meta = segment_index._meta.size
    z, y = struct.unpack_from("<II", body, meta)
    assert y == 0 and z > 0
    body = body[:meta] + struct.pack("<I", z) + body[meta + 8:]
    with open(path, "wb") as f:
        f.write(b"AMQPDIX2" + struct.pack("<I", zlib.crc32(body)) + body)
    loaded = segment_index.load(path[:-4] + ".seg")
    assert loaded is not None and len(loaded.sizes) == z == len(loaded.seqs)
