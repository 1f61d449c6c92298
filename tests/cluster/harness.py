"""Real processes for the cluster tests: a single-member etcd (Debian's ``etcd-server``) and
amqpd nodes (``python -m amqpd -c node.yaml``), on free loopback ports, everything under the
test's tmp_path. Each process is tracked by its pid and killed (then waited for) at teardown.

Waiting is on what a process says (its log lines) or on the API's answer, with deadlines:
polling another process's HTTP API is the only way to see its state from outside.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ETCD = shutil.which("etcd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout: float, what: str, interval: float = 0.05):
    """pred() until it is truthy (returned), or AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Process:
    """A subprocess whose stderr lines are collected (and matched) by a reader thread."""

    def __init__(self, args, cwd=None, env=None):
        self.args = args
        self.cwd = cwd
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self._cond = threading.Condition()

    def start(self) -> "Process":
        self.lines = []
        self.proc = subprocess.Popen(self.args, cwd=self.cwd, env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        proc = self.proc
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()
        return self

    def _read(self, proc) -> None:
        for line in proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip())
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = 15.0) -> re.Match:
        """The first log line matching ``pattern`` (a regex); AssertionError (with the log)
        when the process exits or the deadline passes first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    m = regex.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and seen == len(self.lines)):
                    raise AssertionError(f"no line matching {pattern!r} (exit code "
                                         f"{self.proc.poll()}):\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.2))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)      # a paused process dies too
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)


class EtcdServer(Process):
    """One etcd member listening on free loopback ports, data under ``directory``; alone,
    or one of ``peers`` ({name: peer URL}, this one's included) of a multi-member etcd."""

    def __init__(self, directory: str, name: str = "etcd0", peer_port: int | None = None,
                 peers: dict | None = None):
        self.client_port, self.peer_port = free_port(), peer_port or free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        initial = ",".join(f"{n}={u}" for n, u in (peers or {name: peer}).items())
        super().__init__([ETCD, "--name", name, "--data-dir", os.path.join(directory, name),
                          "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                          "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                          "--initial-cluster", initial, "--log-level", "error"])

    def start(self, wait: bool = True) -> "EtcdServer":
        super().start()
        if wait:
            wait_until(self._ready, 15, "etcd to accept requests")
        return self

    def call(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.load(resp)

    def _ready(self) -> bool:
        if not self.running():
            raise AssertionError("etcd exited:\n" + "\n".join(self.lines))
        try:
            self.call("/v3/kv/range", {"key": "eA=="})
            return True
        except OSError:
            return False

    def keys(self, prefix: str) -> dict[str, dict]:
        """Every key under the prefix and its JSON value (for checks from outside)."""
        end = bytearray(prefix.encode())
        end[-1] += 1
        answer = self.call("/v3/kv/range", {"key": base64.b64encode(prefix.encode()).decode(),
                                            "range_end": base64.b64encode(end).decode()})
        return {base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"]))
                for kv in answer.get("kvs", ())}


def etcd_members(directory: str, count: int = 3) -> list[EtcdServer]:
    """A ``count``-member etcd, started (members wait for each other to form it)."""
    ports = {f"etcd{i}": free_port() for i in range(count)}
    peers = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    members = [EtcdServer(directory, name, port, peers) for name, port in ports.items()]
    try:
        for member in members:
            member.start(wait=False)
        for member in members:
            wait_until(member._ready, 30, f"etcd member {member.args[2]} to accept requests")
    except BaseException:
        for member in members:          # none is left behind when the etcd cannot form
            if member.proc is not None:
                member.kill()
        raise
    return members


class Node(Process):
    """One amqpd node of a cluster: its YAML configuration under ``directory``, its data
    directory beside it; the AMQP, management and node-to-node ports are free ones the node
    picks and logs (read back from its log at start)."""

    def __init__(self, directory: str, name: str, cluster: str, etcd_urls, lease_ttl: int = 2,
                 extra: dict | None = None):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.name = name
        self.config_path = os.path.join(directory, "amqpd.yaml")
        self.config = {
            "listeners": {"amqp": {"host": "127.0.0.1", "port": 0},
                          "http": {"host": "127.0.0.1", "port": 0}, "prometheus": None},
            "storage": {"data_dir": os.path.join(directory, "data")},
            "cluster": {"name": cluster, "node": name, "etcd": list(etcd_urls),
                        "listen": {"host": "127.0.0.1", "port": 0}, "lease_ttl": lease_ttl},
            **(extra or {}),
        }
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        super().__init__([sys.executable, "-m", "amqpd", "-c", self.config_path], cwd=ROOT,
                         env=env)
        self.port = self.http_port = self.cluster_port = None

    def start(self, wait: bool = True) -> "Node":
        self.previous_lines = getattr(self, "previous_lines", []) + self.lines
        with open(self.config_path, "w") as f:
            yaml.safe_dump(self.config, f)
        super().start()
        if wait:
            self.wait_started()
        return self

    def wait_started(self, timeout: float = 20.0) -> "Node":
        self.cluster_port = int(self.wait_for_line(r"node-to-node traffic on [\d.]+:(\d+)",
                                                   timeout).group(1))
        self.port = int(self.wait_for_line(r"listening on amqp://[\d.]+:(\d+)",
                                           timeout).group(1))
        self.http_port = int(self.wait_for_line(r"management API and web UI on "
                                                r"http://[\d.]+:(\d+)/", timeout).group(1))
        self.wait_for_line(rf"node {re.escape(self.name)} is running", timeout)
        return self

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def api(self, path: str):
        req = urllib.request.Request(self.management_url + path)
        req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)

    def running_nodes(self) -> dict[str, bool]:
        """/api/nodes as {name: running}."""
        return {n["name"]: n["running"] for n in self.api("/api/nodes")}

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, as an operator stops it; the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)


class Cluster:
    """An etcd and the amqpd nodes started on it; ``teardown`` kills whatever still runs."""

    def __init__(self, tmp_path, name: str = "test", lease_ttl: int = 2):
        self.tmp_path = tmp_path
        self.name = name
        self.lease_ttl = lease_ttl
        self.etcd = EtcdServer(str(tmp_path / "etcd"))
        self.nodes: list[Node] = []

    def start(self, count: int = 3) -> "Cluster":
        self.etcd.start()
        for i in range(1, count + 1):
            self.add(f"node{i}", wait=False)
        for node in self.nodes:
            node.wait_started()
        self.wait_known()
        return self

    def add(self, name: str, wait: bool = True, **kw) -> Node:
        node = Node(str(self.tmp_path / name), name, self.name, [self.etcd.url],
                    kw.pop("lease_ttl", self.lease_ttl), **kw)
        self.nodes.append(node)
        node.start(wait=wait)
        if wait:
            self.wait_known()
        return node

    def wait_known(self, timeout: float = 15.0) -> None:
        """Until every running node lists every running node as running. A node learns of
        the others through its etcd watch, a moment after they start: a quorum queue
        declared before then gets fewer members than there are nodes (as RabbitMQ's does
        when a node has not joined yet), which a test that counts on three must not see."""
        names = {node.name for node in self.nodes if node.running()}
        for node in self.nodes:
            if node.running():
                wait_until(lambda: names <= {n for n, up in node.running_nodes().items()
                                             if up}, timeout, f"{node.name} to see {names}")

    def __getitem__(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def teardown(self) -> None:
        for node in self.nodes:
            node.kill()
        self.etcd.kill()
