"""Listings as RabbitMQ's API pages, filters, sorts and trims them.

- ``?page=N`` turns paging on: ``{"filtered_count", "item_count", "items", "page",
  "page_count", "page_size", "total_count"}`` (what KEDA reads); ``page_size`` default 100,
  at most 500; ``name`` filters (a substring, or a regular expression with
  ``use_regex=true``) only when paging, as RabbitMQ 3.10 does;
- ``sort`` (a field, dotted for nested ones) and ``sort_reverse``;
- ``columns=name,messages,message_stats.publish`` keeps only those fields.
Without any of these the full list is returned, sorted by vhost and name."""
import json
import math
import re

from aiohttp import web

from .auth import error

MAX_PAGE_SIZE = 500


try:                    # optional (the "management" extra): 5x faster on long listings
    import orjson
except ImportError:     # pragma: no cover - the standard library does it too
    orjson = None


def dumps(value) -> bytes:
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:       # an integer beyond 64 bits in a table: json copes
            pass
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(value, status: int = 200, headers=None) -> web.Response:
    return web.Response(body=dumps(value), status=status, headers=headers,
                        content_type="application/json")


def _get(item: dict, path: list):
    for key in path:
        if not isinstance(item, dict):
            return None
        item = item.get(key)
    return item


def _sort_key(value):
    # numbers before strings before the rest, None first: never a TypeError
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, (int, float)):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, str(value))


def _columns(items: list, spec: str) -> list:
    paths = [c.split(".") for c in spec.split(",") if c]
    out = []
    for item in items:
        trimmed = {}
        for path in paths:
            value = item
            for key in path:
                if not isinstance(value, dict) or key not in value:
                    break
                value = value[key]
            else:
                target = trimmed
                for key in path[:-1]:
                    target = target.setdefault(key, {})
                target[path[-1]] = value
        out.append(trimmed)
    return out


def respond(request, items: list, sort_default: bool = True) -> web.Response:
    """The listing ``items`` (dicts) as the query asks for."""
    q = request.query
    page = q.get("page")
    sort = q.get("sort")
    if sort:
        path = sort.split(".")
        items.sort(key=lambda i: _sort_key(_get(i, path)))
    if q.get("sort_reverse", "false").lower() == "true":
        items.reverse()
    if page is None:
        columns = q.get("columns")
        return json_response(_columns(items, columns) if columns else items)
    try:
        page_n = int(page)
        size = int(q.get("page_size", "100"))
    except ValueError:
        raise error(400, "bad_request", "Pagination parameters are invalid") from None
    if page_n < 1 or size < 1 or size > MAX_PAGE_SIZE:
        raise error(400, "invalid_pagination_parameters",
                    f"Invalid pagination parameters: page number {page_n}, page size {size}")
    total = len(items)
    name = q.get("name")
    if name:
        if q.get("use_regex", "false").lower() == "true":
            try:
                pattern = re.compile(name)
            except re.error:
                raise error(400, "bad_request", f"Invalid regex: {name}") from None
            items = [i for i in items if pattern.search(str(i.get("name", "")))]
        else:
            items = [i for i in items if name in str(i.get("name", ""))]
    filtered = len(items)
    page_count = max(1, math.ceil(filtered / size))
    if page_n > page_count:
        raise error(400, "page_out_of_range",
                    f"Page out of range, page: {page_n} page size: {size}, len: {filtered}")
    chunk = items[(page_n - 1) * size:page_n * size]
    columns = q.get("columns")
    if columns:
        chunk = _columns(chunk, columns)
    return json_response({"filtered_count": filtered, "item_count": len(chunk),
                          "items": chunk, "page": page_n, "page_count": page_count,
                          "page_size": size, "total_count": total})
