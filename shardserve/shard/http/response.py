"""Response head serialisation and the server's own canned responses."""

from __future__ import annotations

import http

STATUS_LINES: dict[int, bytes] = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("ascii"))
    for status in http.HTTPStatus
}


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        if type(status) is not int or not 100 <= status <= 999:
            raise RuntimeError(f"invalid HTTP status {status!r}")
        line = b"HTTP/1.1 %d \r\n" % status
    return line


# Header names whose presence changes what the server adds or how it frames the body.
CONTENT_LENGTH = 1
TRANSFER_ENCODING = 2
CONNECTION = 3
SERVER = 4
DATE = 5
SPECIAL_HEADERS = {
    b"content-length": CONTENT_LENGTH,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"connection": CONNECTION,
    b"server": SERVER,
    b"date": DATE,
}

# Responses that never carry a body (RFC 9110 section 6.4.1).
NO_BODY_STATUSES = frozenset({204, 304} | set(range(100, 200)))


def canned_response(status: int, body: bytes | None = None, extra: bytes = b"") -> bytes:
    """A complete, connection-closing plain-text response the server sends by itself."""
    if body is None:
        body = http.HTTPStatus(status).phrase.encode("ascii")
    return b"".join(
        (
            status_line(status),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
            extra,
            b"\r\n",
            body,
        )
    )


CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
