"""Start and stop the real ``amqpd`` CLI as a subprocess (``python -m amqpd``)."""
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTENING = re.compile(r"listening on amqp://([\d.]+):(\d+)")


class AmqpdProcess:
    def __init__(self, *args: str, data_dir: str | None = None, port: int = 0):
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="amqpd-")
            data_dir = self._tmp.name
        self.data_dir = data_dir
        self.args = [sys.executable, "-m", "amqpd", "--port", str(port), "--data-dir", data_dir,
                     "--http-port", "0", "--prometheus-port", "0", *args]
        self.proc = None
        self.port = None
        self.log: list[str] = []
        self._reader = None

    def start(self, timeout: float = 10) -> "AmqpdProcess":
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True)
        found = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                m = LISTENING.search(line)
                if m and not found.is_set():
                    self.port = int(m.group(2))
                    self.listening_after = time.monotonic() - self.started_at
                    found.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not found.wait(timeout):
            self.kill()
            raise RuntimeError("amqpd did not log its address:\n" + "\n".join(self.log))
        return self

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def signal(self, sig=signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 10) -> int:
        rc = self.proc.wait(timeout)
        if self._reader:
            self._reader.join(2)
        return rc

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def cleanup(self) -> None:
        self.kill()
        if self._tmp is not None:
            self._tmp.cleanup()
