import pytest

from .process import AmqpdProcess


def pytest_collection_modifyitems(items):
    for item in items:
        if "interop" in str(item.fspath):
            item.add_marker(pytest.mark.interop)


@pytest.fixture
def amqpd_process():
    """Start the real CLI; yields a factory so a test can pass flags or restart."""
    procs = []

    def start(*args, **kw) -> AmqpdProcess:
        p = AmqpdProcess(*args, **kw).start()
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.cleanup()
