"""The broker under test: the real CLI (``python -m amqpd``) as a subprocess, at log level
warning (tracebacks are errors; per-connection info lines would cost the broker more than the
fuzzing), on a free port; its stderr kept line by line, its RSS read from /proc."""
import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrokerProcess:
    def __init__(self, *args: str, data_dir: str | None = None, log_level: str = "warning",
                 memory_limit: int = 4 << 30):
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="amqpd-fuzz-")
            data_dir = self._tmp.name
        self.data_dir = data_dir
        self.extra = list(args)
        self.log_level = log_level
        # An input that makes the broker allocate without bound must not take the machine
        # down with it: past this address-space size its allocations fail (MemoryError).
        self.memory_limit = memory_limit
        self.proc = None
        self.port = None
        self.log: list[str] = []
        self.starts = 0

    def start(self, timeout: float = 20) -> "BrokerProcess":
        self.port = free_port()
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "amqpd", "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", self.data_dir, "--log-level", self.log_level, "--http-port", "0",
             "--prometheus-port", "0", *self.extra],
            cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            errors="replace", preexec_fn=self._limits)
        self.starts += 1
        self.log_start = len(self.log)
        proc = self.proc
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("amqpd exited at start:\n" + "\n".join(self.log[self.log_start:][-200:]))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError("amqpd did not listen:\n" + "\n".join(self.log[self.log_start:][-200:]))

    def fresh_data_dir(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
        self._tmp = tempfile.TemporaryDirectory(prefix="amqpd-fuzz-", dir=os.path.dirname(
            self.data_dir))
        self.data_dir = self._tmp.name

    def _limits(self) -> None:
        """In the child, before exec: die with the fuzzer, and bound memory."""
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PDEATHSIG
        except OSError:
            pass
        if self.memory_limit:
            resource.setrlimit(resource.RLIMIT_AS, (self.memory_limit, self.memory_limit))

    def _read(self, proc) -> None:
        for line in proc.stderr:
            self.log.append(line.rstrip("\n"))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> int:
        """Resident set size in bytes (0 if gone)."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    cpu_before = 0.0                  # CPU of the processes killed before this one

    def cpu_total(self) -> float:
        """CPU seconds of every broker process this object ran (restarts included)."""
        return self.cpu_before + self.cpu_seconds()

    def cpu_seconds(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        self.cpu_before += self.cpu_seconds()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def cleanup(self) -> None:
        self.kill()
        if self._tmp is not None:
            self._tmp.cleanup()
