"""Run a real amqpd (the same Node the CLI runs) on a free port in a background thread, so
blocking clients (pika) and asyncio clients (aio-pika) in the test can talk to it."""
import asyncio
import tempfile
import threading
import time

from amqpd import config as config_mod
from amqpd.node import Node


class BrokerThread:
    def __init__(self, data_dir: str | None = None, http_port: int | None = None,
                 prometheus_port: int | None = None,
                 **overrides):
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="amqpd-test-")
            data_dir = self._tmp.name
        self.data_dir = data_dir
        # the management API only when asked for (http_port=0: a free port): RabbitMQ holds
        # 15672 on the test machines
        http = None if http_port is None else {"host": "127.0.0.1", "port": http_port}
        data = {"listeners": {"amqp": {"host": "127.0.0.1", "port": 0}, "http": http},
                "storage": {"data_dir": data_dir}}
        # the Prometheus listener: off unless asked for (RabbitMQ holds 15692 here)
        data["listeners"]["prometheus"] = (None if prometheus_port is None else
                                           {"host": "127.0.0.1", "port": prometheus_port})
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        self.config = config_mod.from_dict(data)
        self.loop = asyncio.new_event_loop()
        self.node = None
        self.server = None              # the node's edge: listeners, sockets, alarms
        self.thread = threading.Thread(target=self._run, name="amqpd", daemon=True)
        self._ready = threading.Event()
        self._error = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.node = Node(self.config)
            self.server = self.node.server
            self.loop.run_until_complete(self.node.start())
        except BaseException as exc:  # surfaced to the test by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> "BrokerThread":
        self.thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("amqpd did not start within 10 s")
        if self._error:
            raise self._error
        return self

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def management_url(self) -> str | None:
        """``http://127.0.0.1:PORT`` of the management API, or None (off)."""
        return self.node.management_url

    @property
    def metrics_url(self) -> str | None:
        """``http://127.0.0.1:PORT/metrics`` when started with ``prometheus_port``."""
        port = self.node.prometheus_port
        return None if port is None else f"http://127.0.0.1:{port}/metrics"

    @property
    def broker(self):
        return self.server.broker

    def call(self, fn, *args, timeout: float = 5):
        """Run fn(*args) on the broker's loop and return its result (for inspecting state)."""
        async def run():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def wait_for(self, predicate, timeout: float = 5, what: str = "condition") -> None:
        """Poll a predicate evaluated on the broker's loop until it holds."""
        deadline = time.monotonic() + timeout
        while not self.call(predicate):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.01)

    def connection_count(self) -> int:
        return self.call(lambda: len(self.server.protocols))

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.node.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
