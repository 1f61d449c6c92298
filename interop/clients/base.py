"""What every Python client driver shares: the command line, JSON output, the worker protocol.

A driver is run as

    python -m interop.clients.<driver> run URL PREFIX SCENARIO...
    python -m interop.clients.<driver> worker URL QUEUE

``run`` prints, for each scenario, ``{"start": name}`` and then one of
``{"scenario": name, "obs": {...}}`` / ``{"scenario": name, "error": "..."}``.

``worker`` is the consumer of the consumer_killed scenario: it consumes QUEUE with prefetch 10,
acks its first 5 deliveries, prints ``got BODY REDELIVERED`` for each delivery and ``holding``
once it has received 15 (so 10 are unacked), then waits to be SIGKILLed. The node and Java
drivers follow the same protocol.
"""
import asyncio
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIO_TIMEOUT = 40.0
LARGE_SIZE = 5 * 1024 * 1024
PROPS_HEADERS = {"i": 0, "s": "str", "b": True, "t": {"n": 1}}
WORKER_PREFETCH = 10
WORKER_ACKS = 5
WORKER_HOLD = 15
KILLED_MESSAGES = 30


def large_body() -> bytes:
    pattern = bytes(range(251))
    return (pattern * (LARGE_SIZE // 251 + 1))[:LARGE_SIZE]


# aiormq names an exception class per reply code and keeps no code on it
CODE_BY_CLASS = {
    "ChannelAccessRefused": 403, "ChannelNotFoundEntity": 404, "ChannelLockedResource": 405,
    "ChannelPreconditionFailed": 406, "ConnectionFrameError": 501, "ConnectionSyntaxError": 502,
    "ConnectionCommandInvalid": 503, "ConnectionChannelError": 504,
    "ConnectionUnexpectedFrame": 505, "ConnectionResourceError": 506,
    "ConnectionNotAllowed": 530, "ConnectionNotImplemented": 540, "ConnectionInternalError": 541,
}


def reply_code_in(exc) -> int | str:
    """The AMQP reply code a client's exception carries (attribute or text), else its type."""
    if type(exc).__name__ in CODE_BY_CLASS:
        return CODE_BY_CLASS[type(exc).__name__]
    for attr in ("reply_code", "code"):
        v = getattr(exc, attr, None)
        if isinstance(v, int) and 300 <= v < 600:
            return v
    m = re.search(r"\b(3\d\d|4\d\d|5\d\d)\b", " ".join(map(str, [exc, *getattr(exc, "args", ())])))
    return int(m.group(1)) if m else type(exc).__name__


def named_by(queue: str) -> str:
    return "server (amq.gen-)" if queue.startswith("amq.gen-") else "client"


def rpc_observation(replies, direct: bool, seen: list, reply_to: str) -> dict:
    """What an RPC scenario reports: the replies, and either which reply_to the server saw
    (direct reply-to: the broker's rewritten amq.rabbitmq.reply-to.<token>) or who named the
    reply queue."""
    obs = {"replies": replies}
    if direct:
        obs["server_saw_prefix"] = ("amq.rabbitmq.reply-to."
                                    if seen and all(s.startswith("amq.rabbitmq.reply-to.")
                                                    for s in seen) else seen)
    else:
        obs["reply_queue"] = named_by(reply_to)
    return obs


def emit(obj) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


class Ctx:
    def __init__(self, url: str, prefix: str, module: str):
        self.url = url
        self.prefix = prefix
        self.module = module

    def name(self, suffix: str) -> str:
        return f"{self.prefix}.{suffix}"

    def bad_password_url(self) -> str:
        return self.url.replace("guest:guest@", "guest:wrong-password@", 1)

    def bad_vhost_url(self) -> str:
        base = self.url.rstrip("/")
        # amqp://u:p@host:port/vhost -> replace the vhost
        scheme, rest = base.split("://", 1)
        hostpart = rest.split("/", 1)[0]
        return f"{scheme}://{hostpart}/no-such-vhost-{self.prefix}"

    def worker_cmd(self, queue: str) -> list[str]:
        return [sys.executable, "-m", f"interop.clients.{self.module}", "worker", self.url, queue]


def run_worker_and_kill(cmd: list[str], timeout: float = 20.0) -> dict:
    """Start a consumer process, wait until it holds its unacked messages, SIGKILL it."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    received = 0
    holding = False
    deadline = time.monotonic() + timeout
    try:
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        buf = ""
        while not holding and time.monotonic() < deadline:
            if not sel.select(timeout=0.2):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536).decode()
            if not chunk:
                break
            buf += chunk
            while "\n" in buf:
                line, buf = buf.split("\n", 1)
                if line.startswith("got "):
                    received += 1
                elif line.strip() == "holding":
                    holding = True
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        err = proc.stderr.read()
    if not holding:
        raise RuntimeError(f"worker never reached holding (received {received}): {err[-2000:]}")
    return {"worker_received": received, "worker_acked": min(received, WORKER_ACKS)}


def main(module: str, scenarios: dict, worker) -> None:
    argv = sys.argv[1:]
    if argv and argv[0] == "worker":
        url, queue = argv[1], argv[2]
        res = worker(url, queue)
        if inspect.iscoroutine(res):
            asyncio.run(res)
        return
    if not argv or argv[0] != "run":
        sys.exit("usage: run URL PREFIX SCENARIO... | worker URL QUEUE")
    url, prefix, names = argv[1], argv[2], argv[3:]
    ctx = Ctx(url, prefix, module)
    for name in names:
        emit({"start": name})
        fn = scenarios.get(name)
        if fn is None:
            emit({"scenario": name, "error": "not implemented by this driver"})
            continue
        try:
            if inspect.iscoroutinefunction(fn):
                obs = asyncio.run(asyncio.wait_for(fn(ctx), SCENARIO_TIMEOUT))
            else:
                obs = fn(ctx)
            emit({"scenario": name, "obs": obs})
        except BaseException as e:      # report and go on with the next scenario
            if isinstance(e, KeyboardInterrupt):
                raise
            emit({"scenario": name, "error": f"{type(e).__name__}: {e}",
                  "trace": traceback.format_exc()[-3000:]})
    sys.stdout.flush()
    os._exit(0)     # don't wait for client threads a failed scenario may have left behind
