"""A structured fuzzer for AMQP 0-9-1 brokers, driven against a running amqpd.

- ``wire``: frames, method arguments, field tables and content headers built by hand (so any
  size or type can lie), the framing model, frame descriptions.
- ``values``, ``generate``: the inputs (pre-handshake, connection-level, on a channel) and
  their mutations.
- ``streams``: what a fuzz connection sends around each input (handshake, marker) and the
  reader for the broker's frames.
- ``judge``: what counts as a violation; tracebacks in the broker's log.
- ``engine``: many connections in parallel, the canary, RSS, confirming and shrinking new
  findings; ``replay``: one input alone, shrinking; ``canary``: the unrelated client.
- ``broker``: the CLI as a subprocess; ``probe``: replay a repro against any broker;
  ``differential``: the same inputs against amqpd and RabbitMQ.

Entry points: ``tests/test_fuzz.py`` (CI), ``bench/fuzz.py`` (the big run), and
``tests/test_fuzz_findings.py`` (one regression test per finding). See bench/README.md.
"""
