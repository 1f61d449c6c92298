"""Run the scenario set with every client driver, against amqpd and optionally a reference broker.

Each client driver is its own OS process (so a hung or crashing client cannot take the runner
with it); the runner reads its JSON lines, gives every scenario a deadline, and restarts the
driver on the remaining scenarios if one hangs. ``run_suite`` returns one ``Result`` per
(broker, client, scenario); ``python -m interop`` prints them, pytest asserts them.
"""
import hashlib
import json
import os
import selectors
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import scenarios as S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "interop")
NODE_DIR = os.path.join(HERE, "node")
JAVA_DIR = os.path.join(HERE, "java")
JAVA_BUILD = os.path.join(JAVA_DIR, "build")
JAVA_JARS = ["amqp-client.jar", "slf4j-api.jar", "slf4j-nop.jar"]
JAVA_JAR_DIRS = ["/usr/share/java"]

PYTHON_DRIVERS = {
    "pika": ("pika", "pika_client"),
    "aio-pika": ("aio_pika", "aio_pika_client"),
    "aiormq": ("aiormq", "aiormq_client"),
    "py-amqp": ("amqp", "py_amqp_client"),
    "kombu": ("kombu", "kombu_client"),
    "celery": ("celery", "celery_client"),
}

TIMEOUTS = {"consumer_killed": 45.0, "heartbeats": 25.0, "large_message": 40.0,
            "celery_acks_late_1000": 150.0, "celery_sigkill_redelivery": 150.0,
            "celery_eta_countdown": 60.0, "celery_retry_backoff": 60.0,
            "celery_inspect_ping": 90.0, "celery_events": 60.0}
DEFAULT_TIMEOUT = 30.0


@dataclass
class Result:
    broker: str            # "amqpd" or "reference"
    client: str
    scenario: str
    status: str            # pass, fail, error, xfail, xpass, skip
    obs: object = None
    error: str | None = None
    reason: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "xfail", "xpass", "skip")


@dataclass
class Broker:
    name: str              # "amqpd" or "reference"
    url: str
    is_amqpd: bool = True
    product: str = ""
    version: str = ""


def normalise_url(url: str) -> str:
    """Spell the default vhost as %2F: clients disagree on what a bare trailing slash means."""
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/%2F")
    return urllib.parse.urlunsplit(parts)


def probe(url: str) -> tuple[str, str]:
    import pika
    conn = pika.BlockingConnection(pika.URLParameters(url))
    props = conn._impl.server_properties
    conn.close()

    def text(v):
        return v.decode() if isinstance(v, bytes) else str(v or "")
    return text(props.get("product")), text(props.get("version"))


# -- preparing the runtimes ----------------------------------------------------------------------
_prep_lock = threading.Lock()
_prepared: dict[str, tuple[list[str] | None, str | None]] = {}


def _prepare_python(client: str):
    module, driver = PYTHON_DRIVERS[client]
    try:
        __import__(module)
    except ImportError as e:
        return None, f"python package for {client} not installed ({e}); pip install '.[interop]'"
    return [sys.executable, "-m", f"interop.clients.{driver}"], None


def _prepare_node():
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node:
        return None, "node not installed (apt-get install nodejs npm)"
    try:
        major = int(subprocess.run([node, "--version"], capture_output=True, text=True,
                                   timeout=20).stdout.strip().lstrip("v").split(".")[0])
    except (ValueError, OSError, subprocess.TimeoutExpired):
        major = 0
    if major < 18:
        return None, f"node >= 18 needed for amqplib 2 (found major {major})"
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "amqplib")):
        if not npm:
            return None, "npm not installed (apt-get install npm)"
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                              cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 or not os.path.isdir(
                os.path.join(NODE_DIR, "node_modules", "amqplib")):
            return None, f"npm ci failed in interop/node: {proc.stderr.strip()[-500:]}"
    return [node, os.path.join(NODE_DIR, "scenarios.js")], None


def java_classpath() -> tuple[list[str], str | None]:
    override = os.environ.get("AMQPD_INTEROP_JAVA_CP")
    if override:
        return override.split(":"), None
    jars = []
    for jar in JAVA_JARS:
        found = [os.path.join(d, jar) for d in JAVA_JAR_DIRS if os.path.exists(os.path.join(d, jar))]
        if not found:
            if jar == "slf4j-nop.jar":
                continue        # optional: only silences slf4j's "no binding" warning
            return [], (f"{jar} not found in {JAVA_JAR_DIRS} "
                        f"(apt-get install librabbitmq-client-java)")
        jars.append(found[0])
    return jars, None


def _prepare_java():
    java, javac = shutil.which("java"), shutil.which("javac")
    if not java or not javac:
        return None, "java/javac not installed (apt-get install default-jdk-headless)"
    jars, why = java_classpath()
    if why:
        return None, why
    src = os.path.join(JAVA_DIR, "Scenarios.java")
    with open(src, "rb") as f:
        digest = hashlib.sha256(f.read() + ":".join(jars).encode()).hexdigest()[:16]
    out = os.path.join(JAVA_BUILD, digest)
    if not os.path.exists(os.path.join(out, "Scenarios.class")):
        tmp = out + f".tmp{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
        proc = subprocess.run([javac, "-nowarn", "-d", tmp, "-cp", ":".join(jars), src],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            return None, f"javac failed: {proc.stderr.strip()[-1500:]}"
        try:
            os.rename(tmp, out)
        except OSError:             # another runner compiled it first
            shutil.rmtree(tmp, ignore_errors=True)
    return [java, "-Xss512k", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-cp", ":".join([out, *jars]), "Scenarios"], None


def prepare(client: str) -> tuple[list[str] | None, str | None]:
    """The command that runs a client's driver, or (None, why it is skipped)."""
    with _prep_lock:
        if client not in _prepared:
            if client in PYTHON_DRIVERS:
                _prepared[client] = _prepare_python(client)
            elif client == "amqplib":
                _prepared[client] = _prepare_node()
            elif client == "java":
                _prepared[client] = _prepare_java()
            else:
                _prepared[client] = (None, f"unknown client {client}")
        return _prepared[client]


# -- running a driver ----------------------------------------------------------------------------
def run_driver(cmd: list[str], url: str, prefix: str, names: list[str],
               log=None) -> dict[str, dict]:
    """Run a driver on the scenarios; restart it after a hang. {scenario: {"obs"|"error"}}."""
    results: dict[str, dict] = {}
    todo = list(names)
    while todo:
        proc = subprocess.Popen([*cmd, "run", url, prefix, *todo], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        stderr_chunks: list[bytes] = []
        err_reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()),
                                      daemon=True)
        err_reader.start()
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        buf = b""
        current, started = None, time.monotonic()
        deadline = started + 60         # start-up (a JVM, npm) plus the first scenario
        hung = False
        while True:
            if time.monotonic() > deadline:
                hung = True
                break
            if not sel.select(timeout=0.5):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:           # EOF: the driver exited
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    if log:
                        log(f"  [{cmd[-1]}] {line.decode(errors='replace')}")
                    continue
                if "start" in msg:
                    current, started = msg["start"], time.monotonic()
                    deadline = started + TIMEOUTS.get(current, DEFAULT_TIMEOUT)
                elif "scenario" in msg:
                    msg["seconds"] = time.monotonic() - started
                    results[msg["scenario"]] = msg
                    if msg["scenario"] in todo:
                        todo.remove(msg["scenario"])
                    current = None
        sel.close()
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
        proc.wait(10)
        err_reader.join(5)
        stderr = b"".join(stderr_chunks).decode(errors="replace")
        if hung and current:
            results[current] = {"scenario": current,
                                "error": f"timed out after {TIMEOUTS.get(current, DEFAULT_TIMEOUT)} s",
                                "trace": stderr[-2000:], "seconds": time.monotonic() - started}
            todo.remove(current)
        elif todo and (current or not hung):
            # the driver exited (or crashed) without reporting these
            victim = current or todo[0]
            results[victim] = {"scenario": victim,
                               "error": f"driver exited (rc={proc.returncode}) without a result",
                               "trace": stderr[-2000:], "seconds": 0.0}
            todo.remove(victim)
        elif hung:
            for name in todo:
                results[name] = {"scenario": name, "error": "driver did not start in 60 s",
                                 "trace": stderr[-2000:], "seconds": 0.0}
            todo = []
    return results


def evaluate(broker: Broker, client: str, scenario: str, raw: dict, prefix: str) -> Result:
    seconds = raw.get("seconds", 0.0)
    known = S.known_amqpd(client, scenario) if broker.is_amqpd else None
    if "error" in raw:
        status = "xfail" if known else "error"
        return Result(broker.name, client, scenario, status, error=raw["error"],
                      reason=known or raw.get("trace"), seconds=seconds)
    obs = S.normalise(raw["obs"], prefix)
    # JSON round trip: tuples become lists, as in EXPECTED
    obs = json.loads(json.dumps(obs, default=str))
    good = obs == S.expected(client, scenario)
    if known:
        status = "xpass" if good else "xfail"
    else:
        status = "pass" if good else "fail"
    return Result(broker.name, client, scenario, status, obs=obs, reason=known, seconds=seconds)


def run_client(broker: Broker, client: str, names: list[str], log=None) -> list[Result]:
    names = [n for n in names if n in S.scenarios_for(client)]
    if not names:
        return []
    cmd, why = prepare(client)
    if cmd is None:
        # a missing runtime is a skip; a driver that does not compile is a failure
        status = "error" if why.startswith("javac failed") else "skip"
        return [Result(broker.name, client, s, status, reason=why,
                       error=why if status == "error" else None) for s in names]
    prefix = f"ix-{client}-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    raw = run_driver(cmd, broker.url, prefix, names, log=log)
    if log:
        log(f"  {client} on {broker.name}: {time.monotonic() - t0:.1f} s")
    return [evaluate(broker, client, s, raw[s], prefix) for s in names]


def run_suite(brokers: list[Broker], clients: list[str], names: list[str], jobs: int = 3,
              log=None) -> list[Result]:
    # prepare the slow runtimes (npm ci, javac) once, before the clock of any scenario starts
    for client in clients:
        prepare(client)
    tasks = [(b, c) for c in clients for b in brokers]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(run_client, b, c, names, log) for b, c in tasks]
        results = []
        for f in futures:
            results.extend(f.result())
    return results
