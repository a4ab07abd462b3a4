"""TLS context for a shard, built from the --ssl-* options inside the shard itself."""

from __future__ import annotations

import ssl

from ..config import Config


def create_ssl_context(config: Config) -> ssl.SSLContext:
    context = ssl.SSLContext(config.ssl_version)
    password = config.ssl_keyfile_password
    context.load_cert_chain(
        config.ssl_certfile,
        config.ssl_keyfile,
        password=(lambda: password) if password else None,
    )
    context.verify_mode = ssl.VerifyMode(config.ssl_cert_reqs)
    if config.ssl_ca_certs:
        context.load_verify_locations(config.ssl_ca_certs)
    if config.ssl_ciphers:
        context.set_ciphers(config.ssl_ciphers)
    # ALPN: h2 first when HTTP/2 is on (shard/h2/support.py takes those connections).
    context.set_alpn_protocols(["h2", "http/1.1"] if config.http2 else ["http/1.1"])
    return context
