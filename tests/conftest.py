from __future__ import annotations

import ssl

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


@pytest.fixture(scope="session")
def ca():
    """A certificate authority for the TLS tests (trustme: imported here, so that
    the 3.13 venv, which runs only the subinterpreter tests, need not have it)."""
    import trustme

    return trustme.CA()


@pytest.fixture
def certs(ca, tmp_path):
    """(keyfile, certfile, cafile, client ssl context) for 127.0.0.1 and localhost."""
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    keyfile = tmp_path / "key.pem"
    certfile = tmp_path / "cert.pem"
    cafile = tmp_path / "ca.pem"
    server_cert.private_key_pem.write_to_path(str(keyfile))
    server_cert.cert_chain_pems[0].write_to_path(str(certfile))
    for extra in server_cert.cert_chain_pems[1:]:
        extra.write_to_path(str(certfile), append=True)
    ca.cert_pem.write_to_path(str(cafile))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return keyfile, certfile, cafile, context
