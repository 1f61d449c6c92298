"""Develop the management web UI against any RabbitMQ-compatible API.

Serves amqpd/management/ui/ (read from disk on every request, so an edit shows on reload) and
proxies /api/... to a target management URL, e.g. RabbitMQ's on this machine:

    python tools/ui_dev.py --target http://127.0.0.1:15672 --port 8088

then open http://127.0.0.1:8088/. The browser's Authorization header is passed through."""
import argparse
import pathlib

import aiohttp
from aiohttp import web

UI = pathlib.Path(__file__).resolve().parent.parent / "amqpd" / "management" / "ui"
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def make_app(target: str) -> web.Application:
    target = target.rstrip("/")

    async def static(request):
        name = request.match_info.get("file") or "index.html"
        path = (UI / name).resolve()
        if path.parent != UI or not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes(), content_type=TYPES.get(path.suffix))

    async def proxy(request):
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type", "x-reason")}
        async with aiohttp.ClientSession() as session:
            async with session.request(request.method, target + request.raw_path.split("?")[0]
                                       + ("?" + request.query_string if request.query_string else ""),
                                       headers=headers, data=await request.read()) as r:
                body = await r.read()
                out = {k: v for k, v in r.headers.items()
                       if k.lower() in ("content-type", "location")}
                return web.Response(status=r.status, body=body, headers=out)

    app = web.Application()
    app.router.add_route("*", "/api/{tail:.*}", proxy)
    app.router.add_get("/", static)
    app.router.add_get("/{file}", static)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="http://127.0.0.1:15672")
    p.add_argument("--port", type=int, default=8088)
    a = p.parse_args()
    web.run_app(make_app(a.target), host="127.0.0.1", port=a.port)


if __name__ == "__main__":
    main()
