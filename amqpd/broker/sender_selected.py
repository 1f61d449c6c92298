"""Sender-selected distribution: the ``CC`` and ``BCC`` headers (arrays of routing keys) route a
message with those keys too, as RabbitMQ does.

At publish, a message whose headers hold either is given ``Message.cc`` (every extra key, CC then
BCC), and loses its ``BCC`` header, so no consumer, return or dead-letter queue ever sees it.
Routing (``VHost.route``) then routes with the publish's routing key and each extra key, one copy
per queue; exchange-to-exchange bindings and alternate exchanges route with all of them.
Dead-lettering without an ``x-dead-letter-routing-key`` routes with all of them too, and records
the routing key and the CC keys in ``x-death``. A message recovered after a restart has its CC
keys again (they are in its headers); its BCC keys are gone.

Checked only when the raw header holds the key names, so other messages pay one byte search.
"""
from .. import errors
from ..wire import properties, tables

CC, BCC = "CC", "BCC"
MARKERS = (b"\x02CC", b"\x03BCC")     # the keys as shortstrs in a raw headers table


def mentioned(header: bytes) -> bool:
    """Might this raw content header carry CC or BCC? (no decoding)"""
    return MARKERS[0] in header or MARKERS[1] in header


def take(message) -> None:
    """Set ``message.cc`` from its CC/BCC headers and drop BCC from its header. A CC or BCC
    that is not an array is refused, as RabbitMQ does (406, 60/40)."""
    headers = message.headers or {}
    keys = []
    for name in (CC, BCC):
        if name in headers:
            keys.extend(_keys(name, headers[name]))
    if BCC in headers:
        kept = {k: v for k, v in headers.items() if k != BCC}
        message.header = properties.rewrite(message.header, headers=kept or None)
        message._props = None
    if keys:
        message.cc = tuple(keys)


def cc_keys(headers: dict | None) -> list:
    """The routing keys a message's CC header names (BCC is never kept in headers)."""
    value = (headers or {}).get(CC)
    return _strings(value) if isinstance(value, list) else []


def _keys(name: str, value) -> list:
    if not isinstance(value, list):
        raise errors.PreconditionFailed(
            f'invalid message: {{unacceptable_type_in_header,"{name}",'
            f'{tables.type_name(value)}}}', 60, 40)
    return _strings(value)


def _strings(values: list) -> list:
    """The longstr elements, as text; other elements play no role in routing."""
    return [tables.text(v) for v in values if isinstance(v, (str, bytes))]
