"""Recognising and checking a WebSocket opening handshake (RFC 6455 section 4.2.1)."""

from __future__ import annotations

import base64
import binascii


def header_tokens(headers: list[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    tokens: set[bytes] = set()
    for key, value in headers:
        if key == name:
            tokens.update(t.strip().lower() for t in value.split(b","))
    return tokens


def is_websocket_upgrade(method: str, headers: list[tuple[bytes, bytes]]) -> bool:
    return (
        method == "GET"
        and b"websocket" in header_tokens(headers, b"upgrade")
        and b"upgrade" in header_tokens(headers, b"connection")
    )


def handshake_problem(headers: list[tuple[bytes, bytes]]) -> tuple[int, str] | None:
    """None for a valid handshake, else the status to refuse it with and why."""
    versions = [value.strip() for key, value in headers if key == b"sec-websocket-version"]
    if versions != [b"13"]:
        return 426, "Sec-WebSocket-Version must be 13"
    keys = [value.strip() for key, value in headers if key == b"sec-websocket-key"]
    if len(keys) != 1:
        return 400, "missing or repeated Sec-WebSocket-Key"
    try:
        if len(base64.b64decode(keys[0], validate=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        return 400, "invalid Sec-WebSocket-Key"
    return None


def requested_subprotocols(headers: list[tuple[bytes, bytes]]) -> list[str]:
    protocols: list[str] = []
    for key, value in headers:
        if key == b"sec-websocket-protocol":
            protocols += [p.strip() for p in value.decode("latin-1").split(",") if p.strip()]
    return protocols
