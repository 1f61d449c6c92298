"""Content-header properties kept as raw bytes, decoded only when a feature needs them.

The header payload is ``class:u16 weight:u16 body_size:u64 flags:u16... properties``; it is
stored and re-emitted verbatim. The flag bits let us ask "is user_id set?" without decoding.
"""
from pamqp import commands, header as pamqp_header

from ..amqp import errors

CONTENT_TYPE = 1 << 15
CONTENT_ENCODING = 1 << 14
HEADERS = 1 << 13
DELIVERY_MODE = 1 << 12
PRIORITY = 1 << 11
CORRELATION_ID = 1 << 10
REPLY_TO = 1 << 9
EXPIRATION = 1 << 8
MESSAGE_ID = 1 << 7
TIMESTAMP = 1 << 6
TYPE = 1 << 5
USER_ID = 1 << 4
APP_ID = 1 << 3
CLUSTER_ID = 1 << 2


def flags(header: bytes) -> int:
    return (header[12] << 8) | header[13]


def decode(header: bytes) -> commands.Basic.Properties:
    content = pamqp_header.ContentHeader()
    try:
        content.unmarshal(header)
    except Exception as exc:  # pamqp raises struct.error, ValueError, KeyError...
        raise errors.FrameError(f"cannot decode content header properties: {exc}") from None
    return content.properties


def delivery_mode(header: bytes) -> int:
    """Cheap peek: delivery_mode is the 4th property, so only earlier ones need skipping."""
    f = flags(header)
    if not f & DELIVERY_MODE:
        return 1
    if f & (CONTENT_TYPE | CONTENT_ENCODING | HEADERS):
        return decode(header).delivery_mode or 1
    if f & 1:  # continuation flag word: rare, let pamqp handle it
        return decode(header).delivery_mode or 1
    return header[14] if len(header) > 14 else 1


def encode(body_size: int, properties: commands.Basic.Properties) -> bytes:
    return pamqp_header.ContentHeader(0, body_size, properties).marshal()
