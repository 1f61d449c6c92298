"""A connection's lifecycle. The states are ordered: ``state >= CLOSE_SENT`` means the
connection is closing in one way or another, ``state < RUNNING`` that it is still opening."""
import enum


class State(enum.IntEnum):
    HEADER = 0       # waiting for the protocol header
    START = 1        # connection.start sent, waiting for start-ok
    SECURE = 2       # (a SASL challenge round; amqpd sends none)
    TUNE = 3         # connection.tune sent, waiting for tune-ok
    OPENING = 4      # tuned, waiting for connection.open
    RUNNING = 5      # open
    CLOSE_SENT = 6   # we sent connection.close and wait for close-ok
    ENDED = 7        # the close handshake is over (we sent close-ok); the peer hangs up
    CLOSED = 8       # the socket goes (or is gone); input is ignored


HEADER, START, SECURE, TUNE, OPENING, RUNNING, CLOSE_SENT, ENDED, CLOSED = State
