"""The asyncio edge: sockets, listeners, timers, the fsync worker. The only layer (besides
the command line) that imports asyncio; everything below it is sans-IO."""
