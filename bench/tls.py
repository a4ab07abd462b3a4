"""A self-signed certificate for the TLS workloads of `python -m bench` (h2 over ALPN).

Made once per bench invocation by openssl, for 127.0.0.1 and localhost; the key is
written as PKCS#8 (what granian's --ssl-keyfile demands; uvicorn, hypercorn and
shardserve read it too).  h2load does not verify the server's certificate.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class CertificateError(Exception):
    """One line for the user: no certificate could be made."""


@dataclass(frozen=True)
class Certificate:
    certfile: Path
    keyfile: Path


def self_signed(directory: Path) -> Certificate:
    """An EC P-256 certificate and key in ``directory`` (valid for a week)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CertificateError("openssl is not installed (the TLS workloads need a certificate)")
    cert = Certificate(directory / "cert.pem", directory / "key.pem")
    argv = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(cert.keyfile), "-out", str(cert.certfile), "-days", "7",
            "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise CertificateError(f"openssl could not make a certificate: {last}")
    if "BEGIN PRIVATE KEY" not in cert.keyfile.read_text():  # (OpenSSL 1.x: convert)
        converted = subprocess.run(
            [openssl, "pkcs8", "-topk8", "-nocrypt", "-in", str(cert.keyfile)],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        cert.keyfile.write_text(converted)
    return cert
