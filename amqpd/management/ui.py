"""The management web UI: static files (``ui/index.html``, ``ui/app.js``, ``ui/app.css``)
shipped inside the package and served at ``/`` by the management HTTP listener. No CDN and no
build step, so it works on a broker without internet access. The page itself talks only to the
JSON API under ``/api`` with Basic auth; serving the files needs no login (they hold no data)."""
import pathlib

from aiohttp import web

UI_DIR = pathlib.Path(__file__).resolve().parent / "ui"
FILES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
# names from clients (queues, users, client properties) are shown by the page: the page builds
# every node with textContent, and this policy forbids any script but our own file anyway
HEADERS = {
    "Cache-Control": "no-cache",            # revalidate, so an upgraded broker serves its UI
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
}


def _handler(name: str):
    body = (UI_DIR / name).read_bytes()     # read once: three small files
    content_type = FILES[name]

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8",
                            headers=HEADERS)
    return serve


def routes(ctx) -> list:
    index = _handler("index.html")
    return [web.get("/", index), web.get("/index.html", index),
            web.get("/app.js", _handler("app.js")), web.get("/app.css", _handler("app.css"))]
