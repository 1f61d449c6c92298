"""The layers of amqpd point downwards only, and only the edge knows asyncio.

Every module of the package is parsed (no import runs) and each of its imports, at the top or
inside a function, is checked against the layer order in docs/architecture.md:

    cli -> node -> edge -> amqp -> broker -> store / access -> wire / config -> errors

A module may import its own layer and any layer below it, never one above it and never a
sibling of the same rank (store and access, wire and config stay independent of each other).
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "amqpd"

# The first dotted names below ``amqpd`` that decide a module's layer, and each layer's rank.
LAYERS = {
    "__init__": ("facade", 0), "__main__": ("cli", 0), "cli": ("cli", 0), "ctl": ("cli", 0),
    "embedding": ("facade", 0), "testing": ("facade", 0), "pytest_plugin": ("facade", 0),
    "pytest_rabbitmq": ("facade", 0),
    "node": ("node", 1), "definitions": ("node", 1),
    "logconfig": ("cli", 0),
    # the management plane (HTTP API, its listener, run-time admin) is part of the node: the
    # node starts it, and it uses the node's definitions import/export
    "management": ("node", 1), "admin": ("node", 1),
    # clustering (etcd membership, node-to-node links) is asyncio code the node starts
    "cluster": ("node", 1),
    "edge": ("edge", 2),
    "amqp": ("amqp", 3),
    "broker": ("broker", 4),
    "store": ("store", 5), "access": ("access", 5),
    "wire": ("wire", 6), "config": ("config", 6),
    "errors": ("errors", 7), "version": ("errors", 7),
}
ASYNCIO_ALLOWED = {"edge", "cli", "facade"}
# the cluster package is an asyncio edge of its own (etcd over aiohttp, node-to-node
# sockets); the management API's handlers are coroutines aiohttp runs, but what they wait on
# (a commit, a UDP push) is the edge's
ASYNCIO_PACKAGES = ("amqpd.cluster",)


def layer_of(module: str) -> tuple[str, int]:
    """``amqpd.broker.queue`` -> ("broker", 4)."""
    parts = module.split(".")
    if parts == ["amqpd"]:
        return LAYERS["__init__"]
    head = parts[1]
    if head not in LAYERS:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and to "
                             f"docs/architecture.md")
    return LAYERS[head]


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        yield ".".join(parts), is_package, path


def imports(module: str, is_package: bool, source: str):
    """(line, imported module) for every import statement, relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None or target == "amqpd":
                # "from . import errors": each name may be a module of its own
                for alias in node.names:
                    yield node.lineno, f"{target}.{alias.name}"
            else:
                yield node.lineno, target


def violations(module: str, is_package: bool, source: str) -> list[str]:
    name, rank = layer_of(module)
    found = []
    for line, target in imports(module, is_package, source):
        root = target.split(".")[0]
        if root == "asyncio" and name not in ASYNCIO_ALLOWED \
                and not module.startswith(ASYNCIO_PACKAGES):
            found.append(f"{module}:{line} imports asyncio outside the edge")
        if root != "amqpd" or target == "amqpd" or target.split(".")[1] not in LAYERS:
            continue
        other, other_rank = layer_of(target)
        if other == name:
            continue
        if other_rank <= rank:
            found.append(f"{module}:{line} ({name}) imports {target} ({other}): "
                         f"{'upwards' if other_rank < rank else 'sideways'}")
    return found


def test_every_import_points_down():
    found = []
    for module, is_package, path in modules():
        found += violations(module, is_package, path.read_text())
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module, source, complaint", [
    ("amqpd.broker.queue", "from ..amqp import channel\n", "upwards"),
    ("amqpd.wire.tables", "from ..store import records\n", "upwards"),
    ("amqpd.store.store", "from ..access import control\n", "sideways"),
    ("amqpd.broker.vhost", "def f():\n    from amqpd.edge import server\n", "upwards"),
    ("amqpd.amqp.connection", "import asyncio\n", "asyncio outside the edge"),
    ("amqpd.errors", "from . import node\n", "upwards"),
])
def test_an_upward_import_is_caught(module, source, complaint):
    found = violations(module, False, source)
    assert len(found) == 1 and complaint in found[0], found


@pytest.mark.parametrize("module, source", [
    ("amqpd.amqp.channel", "from ..broker import queue\nfrom .. import errors\n"),
    ("amqpd.edge.server", "import asyncio\nfrom ..amqp.connection import Connection\n"),
    ("amqpd.store.definitions", "from ..wire import tables\n"),
])
def test_a_downward_import_passes(module, source):
    assert violations(module, False, source) == []
