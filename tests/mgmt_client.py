"""A small HTTP client for the management API tests: urllib (a real client over a real
socket), Basic auth, JSON in and out."""
import base64
import json
import urllib.error
import urllib.request


class Response:
    def __init__(self, status, headers, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.body[:200]!r}>"


class API:
    def __init__(self, base_url: str, user: str = "guest", password: str = "guest"):
        self.base = base_url.rstrip("/")
        self.auth = None if user is None else (user, password)

    def as_user(self, user, password) -> "API":
        return API(self.base, user, password)

    def request(self, method: str, path: str, body=None, headers=None,
                raw: bytes | None = None) -> Response:
        data = raw
        hdrs = dict(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)
        if self.auth is not None:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return Response(r.status, r.headers, r.read())
        except urllib.error.HTTPError as e:
            return Response(e.code, e.headers, e.read())

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body=body, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)
