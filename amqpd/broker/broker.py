"""The broker: vhosts, users and the set of queues waiting to dispatch."""
from .vhost import VHost


class Broker:
    def __init__(self, config):
        self.config = config
        self.vhosts: dict[str, VHost] = {name: VHost(self, name) for name in config.vhosts}
        self.connections: set = set()
        self._pending: dict = {}     # queues with messages and maybe-ready consumers (ordered set)

    def schedule(self, queue) -> None:
        """Dispatch is deferred to the end of the current batch of frames, so a read holding
        many publishes or acks dispatches once."""
        self._pending[queue] = None

    def run_dispatch(self) -> None:
        while self._pending:
            queues = list(self._pending)
            self._pending.clear()
            for q in queues:
                if not q.deleted:
                    q.dispatch()
