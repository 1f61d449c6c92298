"""The commit path seen from a connection: a durable declare is answered once its journal
line is fsynced, and a publish to a durable queue is confirmed once its record is. The test
plays the edge (write, fsync job, report) with plain calls; a real store in a temporary
directory, a real connection core, no sockets, a clock that stands still."""
import errno

from pamqp import commands as C

from amqpd import config as amqpd_config
from amqpd.access.control import AccessControl
from amqpd.broker.broker import Broker
from amqpd.broker.clock import ManualClock
from amqpd.store.fileio import FileIO
from amqpd.store.store import Store
from tests.unit.stubs import Client, commit_turn, handshake_bytes, method, publish


class FailingFsync(FileIO):
    fail = False

    def fsync(self, fd):
        if self.fail:
            raise OSError(errno.EIO, "Input/output error")
        return super().fsync(fd)


def durable_client(tmp_path, io=None):
    config = amqpd_config.from_dict({"storage": {"data_dir": str(tmp_path / "data")}})
    store = Store(config.storage.data_dir, io=io)
    broker = Broker(config, store, AccessControl(config), ManualClock())
    c = Client(broker=broker)
    c.send(handshake_bytes() + method(1, C.Channel.Open()))
    c.frames()
    return c, store


def test_a_durable_declare_is_answered_once_its_journal_line_is_fsynced(tmp_path):
    c, store = durable_client(tmp_path)
    try:
        c.send(method(1, C.Queue.Declare(queue="q", durable=True)))
        assert not c.conn.output_held()          # fsynced before the handler returned
        c.expect_one(C.Queue.DeclareOk, channel=1)
        assert b'"name": "q"' in open(store.journal.path, "rb").read()
    finally:
        store.close()


def test_a_failed_journal_fsync_refuses_the_declare(tmp_path):
    io = FailingFsync()
    c, store = durable_client(tmp_path, io)
    try:
        io.fail = True
        c.send(method(1, C.Queue.Declare(queue="q", durable=True)))
        close = c.expect_one(C.Connection.Close, channel=0)
        assert close.reply_code == 541
        assert "cannot write to the data directory" in close.reply_text
        assert "q" not in c.broker.vhosts["/"].queues
    finally:
        io.fail = False
        store.close()


def test_a_persistent_publish_is_confirmed_once_durable(tmp_path):
    c, store = durable_client(tmp_path)
    try:
        c.send(method(1, C.Queue.Declare(queue="q", durable=True))
               + method(1, C.Confirm.Select()))
        commit_turn(store)
        assert [type(f) for _, f in c.methods()] == [C.Queue.DeclareOk, C.Confirm.SelectOk]
        c.send(publish(1, b"m", routing_key="q",
                       properties=C.Basic.Properties(delivery_mode=2)))
        assert c.methods() == []                  # written, not yet fsynced: no ack
        commit_turn(store)
        ack = c.expect_one(C.Basic.Ack, channel=1)
        assert ack.delivery_tag == 1
    finally:
        store.close()
