"""x-max-length and x-max-length-bytes: when a queue is full, and dropping from its head
(x-overflow drop-head; the other overflow modes refuse at admission, in queue.py)."""


class LengthLimits:
    """Part of Queue (broker/queue.py): needs ``opts``, ``message_count``, ``ready_bytes``,
    ``_pop`` and ``_remove``."""

    def _full(self, incoming: int) -> bool:
        """Would one more message of ``incoming`` bytes exceed x-max-length(-bytes)?"""
        opts = self.opts
        if opts.max_length is not None and self.message_count >= opts.max_length:
            return True
        return opts.max_bytes is not None and self.ready_bytes + incoming > opts.max_bytes

    def _trim_head(self) -> None:
        """x-overflow drop-head: the oldest ready messages go (dead-lettered as maxlen)."""
        opts = self.opts
        while self.message_count and (
                (opts.max_length is not None and self.message_count > opts.max_length)
                or (opts.max_bytes is not None and self.ready_bytes > opts.max_bytes)):
            entry = self._pop()
            if entry is None:
                break
            self.ready_bytes -= len(entry.message.body)
            if self.pager is not None:
                self.window_bytes -= len(entry.message.body)
            self._remove(entry, "maxlen")
