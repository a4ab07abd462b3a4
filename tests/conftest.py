from __future__ import annotations

import pytest

from serving import BACKENDS, ServerFactory


@pytest.fixture
def serve():
    """Start shardserve processes: ``serve("apps.x:app", "--flag", ...)``; all stopped after."""
    factory = ServerFactory()
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """The HTTP parser back-end under test: pass ``"--http", backend`` to serve()."""
    return request.param
