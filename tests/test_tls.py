"""TLS: --ssl-keyfile / --ssl-certfile / --ssl-keyfile-password, checked with real clients."""

import ssl
import subprocess

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

APP = "apps.echo:scope_json"


def one_problem_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    problems = [line for line in lines if not line.startswith("INFO:")]
    assert len(problems) == 1, output
    assert "Traceback" not in output
    return problems[0]


def test_https_with_httpx(serve, backend, certs):
    keyfile, certfile, _, context = certs
    server = serve(
        APP, "--http", backend, "--ssl-keyfile", str(keyfile), "--ssl-certfile", str(certfile)
    )
    assert server.scheme == "https"
    assert server.url.startswith("https://127.0.0.1:")
    with httpx.Client(verify=context, timeout=5) as client:
        for _ in range(2):  # two requests on one TLS connection
            response = client.get(server.url + "/tls?x=1")
            assert response.status_code == 200
            scope = response.json()
            assert scope["scheme"] == "https"
            assert scope["path"] == "/tls"
            assert scope["query_string"] == "x=1"
        response = client.post(server.url + "/body", content=b"z" * 100_000)
        assert response.json()["body_length"] == 100_000


def test_https_by_hostname(serve, backend, certs):
    keyfile, certfile, _, context = certs
    server = serve(
        APP, "--http", backend, "--ssl-keyfile", str(keyfile), "--ssl-certfile", str(certfile)
    )
    response = httpx.get(f"https://localhost:{server.port}/", verify=context, timeout=5)
    assert response.status_code == 200
    assert response.json()["scheme"] == "https"


def test_untrusted_client_rejects_certificate(serve, backend, certs):
    keyfile, certfile, _, _ = certs
    server = serve(
        APP, "--http", backend, "--ssl-keyfile", str(keyfile), "--ssl-certfile", str(certfile)
    )
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/", verify=ssl.create_default_context(), timeout=5)
    # Still serving afterwards.
    assert httpx.get(server.url + "/", verify=certs[3], timeout=5).status_code == 200


def test_plain_http_to_tls_port_fails(serve, backend, certs):
    keyfile, certfile, _, context = certs
    server = serve(
        APP, "--http", backend, "--ssl-keyfile", str(keyfile), "--ssl-certfile", str(certfile)
    )
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{server.port}/", timeout=5)
    assert httpx.get(server.url + "/", verify=context, timeout=5).status_code == 200


def test_https_with_curl(serve, backend, certs):
    keyfile, certfile, cafile, _ = certs
    server = serve(
        APP, "--http", backend, "--ssl-keyfile", str(keyfile), "--ssl-certfile", str(certfile)
    )
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "5", "--cacert", str(cafile), server.url + "/curl"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 0, result.stderr
    assert '"scheme": "https"' in result.stdout
    assert '"path": "/curl"' in result.stdout


def test_encrypted_keyfile_with_password(serve, backend, certs, tmp_path):
    keyfile, certfile, _, context = certs
    key = serialization.load_pem_private_key(keyfile.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret-pass"),
        )
    )
    assert b"ENCRYPTED" in encrypted.read_bytes()
    server = serve(
        APP,
        "--http",
        backend,
        "--ssl-keyfile",
        str(encrypted),
        "--ssl-certfile",
        str(certfile),
        "--ssl-keyfile-password",
        "s3cret-pass",
    )
    response = httpx.get(server.url + "/", verify=context, timeout=5)
    assert response.status_code == 200
    assert response.json()["scheme"] == "https"


def test_wrong_keyfile_password_is_one_line_error(serve, certs, tmp_path):
    keyfile, certfile, _, _ = certs
    key = serialization.load_pem_private_key(keyfile.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"right"),
        )
    )
    server = serve(
        APP,
        "--ssl-keyfile",
        str(encrypted),
        "--ssl-certfile",
        str(certfile),
        "--ssl-keyfile-password",
        "wrong",
        ready=False,
    )
    assert server.wait_exit(10) != 0
    one_problem_line(server.output)


def test_missing_certfile_is_one_line_error(serve, certs, tmp_path):
    keyfile = certs[0]
    missing = tmp_path / "no-such-cert.pem"
    server = serve(APP, "--ssl-keyfile", str(keyfile), "--ssl-certfile", str(missing), ready=False)
    assert server.wait_exit(10) != 0
    line = one_problem_line(server.output)
    assert str(missing) in line
    assert "shardserve running on" not in server.output


def test_missing_keyfile_is_one_line_error(serve, certs, tmp_path):
    certfile = certs[1]
    missing = tmp_path / "no-such-key.pem"
    server = serve(APP, "--ssl-keyfile", str(missing), "--ssl-certfile", str(certfile), ready=False)
    assert server.wait_exit(10) != 0
    assert str(missing) in one_problem_line(server.output)


def test_certfile_that_is_not_a_certificate(serve, certs, tmp_path):
    keyfile = certs[0]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    server = serve(APP, "--ssl-keyfile", str(keyfile), "--ssl-certfile", str(garbage), ready=False)
    assert server.wait_exit(10) != 0
    one_problem_line(server.output)


def test_client_certificate_required(serve, backend, ca, certs, tmp_path):
    """--ssl-cert-reqs 2 (CERT_REQUIRED) with --ssl-ca-certs: only clients with a cert get in."""
    keyfile, certfile, cafile, context = certs
    server = serve(
        APP,
        "--http",
        backend,
        "--ssl-keyfile",
        str(keyfile),
        "--ssl-certfile",
        str(certfile),
        "--ssl-cert-reqs",
        str(int(ssl.CERT_REQUIRED)),
        "--ssl-ca-certs",
        str(cafile),
    )
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "/", verify=context, timeout=5)

    client_cert = ca.issue_cert("client@example.org")
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client_cert.configure_cert(client_context)
    response = httpx.get(server.url + "/", verify=client_context, timeout=5)
    assert response.status_code == 200
    assert response.json()["scheme"] == "https"
