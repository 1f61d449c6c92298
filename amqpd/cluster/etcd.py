"""A small asyncio client for etcd v3's JSON gateway (``POST /v3/...``), over aiohttp.

Why the gateway and not gRPC (aetcd): aiohttp is already a dependency, the gateway is served
by every etcd from 3.4 (Debian's) on, and amqpd needs only a handful of calls: range, put,
delete, txn, the lease calls and a prefix watch. gRPC would add grpcio and protobuf (tens of
MB, a second of import) for no feature we use. LavinMQ talks to etcd the same way.

The gateway writes keys and values in base64 and 64-bit integers as strings; this module
hides both: keys are ``str``, values ``bytes``, revisions and lease ids ``int``.

Several endpoints (members of one etcd cluster) may be given: a request that cannot reach one
tries the next, and the one that answered is used first from then on.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging

import aiohttp

log = logging.getLogger("amqpd.cluster")


class EtcdError(Exception):
    """etcd answered with an error (``code`` is the gRPC status code)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class EtcdUnavailable(Exception):
    """No endpoint answered."""


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: str) -> str:
    """The range_end that makes a range or watch cover every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b64(b"\0")
    raw[-1] += 1
    return b64(bytes(raw))


class KeyValue:
    __slots__ = ("key", "value", "create_revision", "mod_revision", "lease")

    def __init__(self, kv: dict):
        self.key = unb64(kv.get("key")).decode()
        self.value = unb64(kv.get("value"))
        self.create_revision = int(kv.get("create_revision", 0))
        self.mod_revision = int(kv.get("mod_revision", 0))
        self.lease = int(kv.get("lease", 0))

    def json(self):
        return json.loads(self.value) if self.value else None


class Event:
    """One change seen by a watch: a put (``value`` set) or a delete."""
    __slots__ = ("deleted", "kv")

    def __init__(self, ev: dict):
        self.deleted = ev.get("type") == "DELETE"
        self.kv = KeyValue(ev.get("kv", {}))


class Etcd:
    def __init__(self, endpoints, timeout: float = 5.0):
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=timeout))
        self._watches: dict = {}          # open watch responses -> their endpoint

    async def close(self) -> None:
        await self.session.close()

    def _rotate(self, failed: str) -> None:
        """``failed`` did not answer: try it last from now on, and cut the watches open on
        it (a hung or cut-off member keeps a stream open without a word; their owners watch
        again, on the next endpoint)."""
        if self.endpoints and self.endpoints[0] == failed and len(self.endpoints) > 1:
            self.endpoints.append(self.endpoints.pop(0))
        for resp, endpoint in list(self._watches.items()):
            if endpoint == failed:
                resp.close()

    async def call(self, path: str, body: dict, timeout: float | None = None) -> dict:
        """POST to the first endpoint that answers; the decoded answer. etcd's own errors
        raise EtcdError, unreachable endpoints EtcdUnavailable."""
        errors = []
        for endpoint in list(self.endpoints):
            try:
                async with self.session.post(
                        endpoint + path, json=body,
                        timeout=aiohttp.ClientTimeout(total=timeout or self.timeout)) as resp:
                    answer = await resp.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
                errors.append(f"{endpoint}: {exc or type(exc).__name__}")
                self._rotate(endpoint)
                continue
            if isinstance(answer, dict) and "error" in answer and "header" not in answer:
                raise EtcdError(int(answer.get("code", 2)), answer.get("message") or
                                answer["error"])
            return answer
        raise EtcdUnavailable("; ".join(errors))

    # -- key-value -----------------------------------------------------------------------------
    async def get(self, key: str, prefix: bool = False) -> tuple[list[KeyValue], int]:
        """The keys (one, or every key under the prefix) and the store's revision."""
        body = {"key": b64(key)}
        if prefix:
            body["range_end"] = prefix_end(key)
        answer = await self.call("/v3/kv/range", body)
        return ([KeyValue(kv) for kv in answer.get("kvs", ())],
                int(answer["header"]["revision"]))

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        answer = await self.call("/v3/kv/put", body)
        return int(answer["header"]["revision"])

    async def delete(self, key: str, prefix: bool = False) -> int:
        """Delete the key (or every key under the prefix); the store's revision after."""
        body = {"key": b64(key)}
        if prefix:
            body["range_end"] = prefix_end(key)
        answer = await self.call("/v3/kv/deleterange", body)
        return int(answer["header"]["revision"])

    async def put_if_absent(self, key: str, value: bytes, lease: int = 0) \
            -> tuple[bool, KeyValue | None]:
        """Create the key unless it exists (a txn comparing its create revision with 0):
        (True, None), or (False, the key as it is)."""
        put = {"key": b64(key), "value": b64(value)}
        if lease:
            put["lease"] = str(lease)
        answer = await self.call("/v3/kv/txn", {
            "compare": [{"key": b64(key), "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": put}],
            "failure": [{"request_range": {"key": b64(key)}}]})
        if answer.get("succeeded"):
            return True, None
        kvs = answer["responses"][0]["response_range"].get("kvs", ())
        return False, KeyValue(kvs[0]) if kvs else None

    async def delete_unless(self, key: str, present: str) -> bool:
        """Delete ``key`` only while ``present`` does not exist (one txn); whether the
        comparison held (deleting a missing key counts as done)."""
        answer = await self.call("/v3/kv/txn", {
            "compare": [{"key": b64(present), "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_delete_range": {"key": b64(key)}}]})
        return bool(answer.get("succeeded"))

    # -- leases --------------------------------------------------------------------------------
    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (id, the TTL etcd granted)."""
        answer = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        return int(answer["ID"]), int(answer["TTL"])

    async def keepalive(self, lease: int, timeout: float | None = None) -> int:
        """Refresh the lease; its TTL from now, 0 when it has expired (or never existed)."""
        answer = await self.call("/v3/lease/keepalive", {"ID": str(lease)}, timeout)
        return int(answer.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        """End the lease now; the keys bound to it are deleted (and watchers told)."""
        try:
            await self.call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    # -- watch ---------------------------------------------------------------------------------
    async def watch(self, prefix: str, start_revision: int):
        """Every change under ``prefix`` from ``start_revision`` on, as (revision, [Event]).
        Ends (returns) when the stream is cut; raises EtcdError when etcd refuses the watch
        (``compacted``: the revision is gone, read the prefix again)."""
        body = {"create_request": {"key": b64(prefix), "range_end": prefix_end(prefix),
                                   "start_revision": str(start_revision)}}
        errors = []
        for endpoint in list(self.endpoints):
            try:
                resp = await self.session.post(endpoint + "/v3/watch", json=body)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                errors.append(f"{endpoint}: {exc or type(exc).__name__}")
                self._rotate(endpoint)
                continue
            self._watches[resp] = endpoint
            try:
                async for line in resp.content:
                    if not line.strip():
                        continue
                    answer = json.loads(line)
                    if "error" in answer:
                        err = answer["error"]
                        raise EtcdError(int(err.get("grpc_code", err.get("code", 2))),
                                        err.get("message", "watch failed"))
                    result = answer.get("result", {})
                    if result.get("compact_revision") not in (None, "0"):
                        raise EtcdError(11, "compacted")
                    if result.get("canceled"):
                        raise EtcdError(1, result.get("cancel_reason") or "watch canceled")
                    events = result.get("events")
                    if events:
                        yield (int(result["header"]["revision"]),
                               [Event(ev) for ev in events])
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
                return
            finally:
                self._watches.pop(resp, None)
                resp.release()
            return
        raise EtcdUnavailable("; ".join(errors))
