"""AMQP reply codes as exceptions.

Anything in the broker may raise one of these; exactly one place (the connection's frame
dispatcher) turns them into ``channel.close`` or ``connection.close``. The text follows RabbitMQ:
``"NOT_FOUND - no queue 'q' in vhost '/'"``, so clients that match on it keep working.
"""


class AMQPError(Exception):
    code = 541
    name = "INTERNAL_ERROR"
    connection_level = True

    def __init__(self, text: str = "", class_id: int | None = None,
                 method_id: int | None = None):
        super().__init__(text)
        self.text = text
        # None: "the method being handled", filled in by the connection; 0 is sent as given.
        self.class_id = class_id
        self.method_id = method_id

    @property
    def reply_text(self) -> str:
        return shorten(f"{self.name} - {self.text}" if self.text else self.name)


def shorten(text: str) -> str:
    """Reply texts are short strings: at most 255 bytes. RabbitMQ cuts longer ones to 252
    bytes and appends '...'."""
    raw = text.encode()
    if len(raw) <= 255:
        return text
    return raw[:252].decode(errors="ignore") + "..."


class ChannelError(AMQPError):
    """Soft error: closes the channel, the connection survives."""
    connection_level = False


class ConnectionError_(AMQPError):
    """Hard error: closes the whole connection."""
    connection_level = True


def _channel(code: int, name: str):
    return type(name.title().replace("_", ""), (ChannelError,), {"code": code, "name": name})


def _connection(code: int, name: str):
    return type(name.title().replace("_", ""), (ConnectionError_,), {"code": code, "name": name})


ContentTooLarge = _channel(311, "CONTENT_TOO_LARGE")
NoRoute = _channel(312, "NO_ROUTE")
NoConsumers = _channel(313, "NO_CONSUMERS")
AccessRefused = _channel(403, "ACCESS_REFUSED")
NotFound = _channel(404, "NOT_FOUND")
ResourceLocked = _channel(405, "RESOURCE_LOCKED")
PreconditionFailed = _channel(406, "PRECONDITION_FAILED")

ConnectionForced = _connection(320, "CONNECTION_FORCED")
InvalidPath = _connection(402, "INVALID_PATH")
ConnectionAccessRefused = _connection(403, "ACCESS_REFUSED")
FrameError = _connection(501, "FRAME_ERROR")
SyntaxError_ = _connection(502, "SYNTAX_ERROR")
CommandInvalid = _connection(503, "COMMAND_INVALID")
ChannelErrorConn = _connection(504, "CHANNEL_ERROR")
UnexpectedFrame = _connection(505, "UNEXPECTED_FRAME")
ResourceError = _connection(506, "RESOURCE_ERROR")
NotAllowed = _connection(530, "NOT_ALLOWED")
NotImplemented_ = _connection(540, "NOT_IMPLEMENTED")
InternalError = _connection(541, "INTERNAL_ERROR")
