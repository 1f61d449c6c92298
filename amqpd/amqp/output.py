"""A connection's output: frames appended to a list of byte chunks, flushed by the edge as one
write per loop turn, and the back-pressure that holds deliveries while the socket does not
drain."""
from pamqp import frame as pamqp_frame

OUT_LIMIT = 1 << 20       # bytes buffered for one connection before deliveries to it pause


class Output:
    """Part of Connection (amqp/connection.py)."""

    _dirty = False        # the edge has been woken for what is in ``out``

    def wrote(self, size: int = 0) -> None:
        """Called after appending to ``out``: account for it and wake the I/O edge once."""
        self.out_size += size + 64
        if not self.sent:
            self.sent = True
        if len(self.out) and not self._dirty:
            self._dirty = True
            self.io.wake(self)

    def write(self, data: bytes) -> None:
        self.out.append(data)
        self.wrote(len(data))

    def send_method(self, channel: int, method) -> None:
        self.write(pamqp_frame.marshal(method, channel))

    def take_output(self) -> bytes:
        data = b"".join(self.out)
        self.send_oct += len(data)
        self.send_cnt += 1
        self.out.clear()
        self.out_size = 0
        self._dirty = False
        return data

    def can_write(self) -> bool:
        if self.writable and self.out_size < OUT_LIMIT:
            return True
        self.starved = True
        return False

    def set_writable(self, writable: bool) -> None:
        self.writable = writable
        if writable:
            self.resume_deliveries()

    def resume_deliveries(self) -> None:
        """Output drained: let queues that skipped this connection's consumers try again."""
        if self.starved and self.can_write():
            self.starved = False
            for ch in self.channels.values():
                for consumer in ch.consumers.values():
                    self.broker.schedule(consumer.queue)
            self.broker.run_dispatch()
