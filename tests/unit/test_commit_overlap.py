"""Two fsync jobs in flight at once (store/commit.py): a publish is confirmed only when every
job handed out up to the one covering it has completed, whatever order the jobs end in; a job
that would write segment summaries waits for the running one; a failure nacks what the
earlier or the later job held. The test plays the edge with plain calls: a real store in a
temporary directory, a real connection core, no sockets, a clock that stands still."""
import errno
import os

from pamqp import commands as C

from amqpd.store.store import Store
from tests.unit.stubs import method, publish
from tests.unit.test_commit_path import durable_client

PERSISTENT = C.Basic.Properties(delivery_mode=2)
ROUTE, HEADER = b"\x00\x01q", b"\x00" * 14


def confirming_client(tmp_path):
    c, store = durable_client(tmp_path)
    c.send(method(1, C.Queue.Declare(queue="q", durable=True)) + method(1, C.Confirm.Select()))
    run_job(store)
    c.methods()
    return c, store


def run_job(store):
    """Write what is buffered and run one fsync job to the end."""
    commit = store.commit
    commit.write_pending()
    job = commit.begin_sync()
    if job is not None:
        commit.sync(job)
        commit.finish(job)


def publish_and_write(c, store, body: bytes):
    c.send(publish(1, body, routing_key="q", properties=PERSISTENT))
    store.commit.write_pending()


def two_jobs(c, store):
    """Publishes "one" and "two", each written and handed to its own fsync job, in order."""
    publish_and_write(c, store, b"one")
    first = store.commit.begin_sync()
    publish_and_write(c, store, b"two")
    return first, store.commit.begin_sync()


def acks(c) -> list:
    return [(f.delivery_tag, f.multiple) for _, f in c.methods() if isinstance(f, C.Basic.Ack)]


def nacks(c) -> list:
    return [(f.delivery_tag, f.multiple) for _, f in c.methods() if isinstance(f, C.Basic.Nack)]


def test_a_second_job_starts_while_the_first_runs(tmp_path):
    c, store = confirming_client(tmp_path)
    commit = store.commit
    try:
        publish_and_write(c, store, b"one")
        first = commit.begin_sync()
        publish_and_write(c, store, b"two")
        assert commit.behind
        second = commit.begin_sync()
        assert second is not None and second.gen == first.gen + 1
        assert not commit.behind and commit.begin_sync() is None    # nothing new to cover
        commit.sync(first)
        commit.finish(first)
        assert acks(c) == [(1, False)]
        commit.sync(second)
        commit.finish(second)
        assert acks(c) == [(2, False)]
        assert commit.synced_gen == commit.gen and not commit.jobs
    finally:
        store.close()


def test_a_job_that_ends_first_waits_for_the_earlier_one(tmp_path):
    c, store = confirming_client(tmp_path)
    commit = store.commit
    try:
        first, second = two_jobs(c, store)
        commit.sync(second)
        commit.finish(second)                   # the later job ends first: nothing confirmed
        assert acks(c) == []
        assert commit.synced_gen < first.gen
        commit.sync(first)
        commit.finish(first)                    # now both: one ack for both publishes
        assert acks(c) == [(2, True)]
        assert commit.synced_gen == second.gen
    finally:
        store.close()


def test_summaries_to_write_wait_for_the_running_job(tmp_path):
    """A job that carries a finished segment (its descriptor and summary) does not start beside
    a running one: that one could complete first and write the summary of a segment whose
    fsync had not completed."""
    store = Store(str(tmp_path / "data"), segment_size=4096)
    commit = store.commit
    try:
        qlog = store.queue_log("/", "q")
        qlog.append_message(1, ROUTE, HEADER, b"x")
        commit.mark_dirty(qlog)
        commit.write_pending()
        first = commit.begin_sync()
        seq = 2
        while not qlog.retired:                 # fill the segment until it rolls
            qlog.append_message(seq, ROUTE, HEADER, b"y" * 1000)
            commit.mark_dirty(qlog)
            commit.write_pending()
            seq += 1
        assert commit.behind and commit.begin_sync() is None
        commit.sync(first)
        commit.finish(first)
        second = commit.begin_sync()             # the first ended: now it runs
        assert second is not None and len(second.fds) == 2     # the retired segment's too
        commit.sync(second)
        commit.finish(second)
        assert commit.synced_gen == commit.gen
    finally:
        store.close()


def test_a_failed_first_job_nacks_what_the_second_covered_too(tmp_path):
    """The first job's fsync fails after the second's succeeded: pages the first covered may be
    lost although the second reported success (fsyncgate), so both publishes are nacked."""
    c, store = confirming_client(tmp_path)
    commit = store.commit
    try:
        first, second = two_jobs(c, store)
        commit.sync(second)
        commit.finish(second)
        for fd in first.fds:
            store.io.close(fd)
        first.fds = []
        commit.finish(first, OSError(errno.EIO, "Input/output error"))
        got = c.methods()
        assert [(type(f), f.delivery_tag) for _, f in got] == [(C.Basic.Nack, 2)]
        assert got[0][1].multiple
        publish_and_write(c, store, b"three")     # the broker carries on
        run_job(store)
        assert acks(c) == [(3, False)]
    finally:
        store.close()


def test_a_failed_second_job_does_not_hold_back_the_first(tmp_path):
    c, store = confirming_client(tmp_path)
    commit = store.commit
    try:
        first, second = two_jobs(c, store)
        commit.sync(first)
        commit.finish(first)
        assert acks(c) == [(1, False)]
        for fd in second.fds:
            store.io.close(fd)
        second.fds = []
        commit.finish(second, OSError(errno.EIO, "Input/output error"))
        assert nacks(c) == [(2, False)]
    finally:
        store.close()


def test_a_generation_with_nothing_to_make_durable_needs_no_job(tmp_path):
    """Only transient messages paged out were written (never fsynced): the generation counts
    as durable at once, without a round trip to an fsync thread."""
    store = Store(str(tmp_path / "data"))
    commit = store.commit
    try:
        scratch = store.scratch_log()
        scratch.append_message(1, ROUTE, HEADER, b"transient")
        commit.mark_dirty(scratch)
        assert commit.write_pending() is True
        assert commit.begin_sync() is None
        assert commit.synced_gen == commit.gen == 1 and not commit.behind and not commit.jobs
        assert os.path.getsize(scratch._segment_path(scratch.active)) > 0     # written
    finally:
        store.close()


def test_with_a_job_running_an_empty_generation_waits_for_it(tmp_path):
    store = Store(str(tmp_path / "data"))
    commit = store.commit
    try:
        qlog = store.queue_log("/", "q")
        qlog.append_message(1, ROUTE, HEADER, b"x")
        commit.mark_dirty(qlog)
        commit.write_pending()
        first = commit.begin_sync()
        scratch = store.scratch_log()
        scratch.append_message(1, ROUTE, HEADER, b"transient")
        commit.mark_dirty(scratch)
        commit.write_pending()
        second = commit.begin_sync()            # an empty job, in order behind the first
        assert second is not None and second.fds == [] and commit.synced_gen == 0
        commit.sync(first)
        commit.finish(first)
        commit.sync(second)
        commit.finish(second)
        assert commit.synced_gen == commit.gen == 2
    finally:
        store.close()
