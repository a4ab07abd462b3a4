"""Response head serialisation and the server's own canned responses."""

from __future__ import annotations

import http

STATUS_LINES: dict[int, bytes] = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("ascii"))
    for status in http.HTTPStatus
}


def status_line(status: int) -> bytes:
    """The status line of any int status (an IntEnum such as HTTPStatus.OK too); not
    of a float or bool that happens to equal one."""
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 999:
        raise RuntimeError(f"invalid HTTP status {status!r}")
    status = int(status)
    return STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status


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


class InvalidHeader(RuntimeError):
    """A response header the app sent that cannot be written safely."""


# Rendered response header lines, by the app's (name, value) pair: apps send the same
# few headers again and again, so each is checked and rendered once.  Entries are
# (line, kind, argument): kind is 0 or one of the SPECIAL_HEADERS kinds, argument the
# parsed Content-Length, or whether Transfer-Encoding says chunked / Connection close.
_rendered: dict[tuple[bytes, bytes], tuple[bytes, int, object]] = {}
_RENDERED_MAX = 1024
_CACHEABLE_VALUE = 256


def render_header(header) -> tuple[bytes, int, object]:
    """Check and render one (name, value) response header."""
    entry = _rendered.get(header) if type(header) is tuple else None
    if entry is not None:
        return entry
    try:
        name, value = header
    except (TypeError, ValueError):
        raise InvalidHeader(f"response header {header!r} is not a (name, value) pair") from None
    if type(name) is not bytes or type(value) is not bytes:
        name, value = _as_bytes(name), _as_bytes(value)
    if b"\r" in name or b"\n" in name or b"\r" in value or b"\n" in value or b":" in name:
        raise InvalidHeader(f"invalid response header {header!r}: CR, LF or ':' in it")
    if not name:
        raise InvalidHeader("empty response header name")
    kind = SPECIAL_HEADERS.get(name.lower(), 0)
    argument: object = None
    if kind == CONTENT_LENGTH:
        argument = int(value) if value.isdigit() else -1
        if argument < 0:
            raise InvalidHeader(f"invalid Content-Length {value!r}")
    elif kind == TRANSFER_ENCODING:
        argument = b"chunked" in value.lower()
    elif kind == CONNECTION:
        argument = b"close" in value.lower()
    entry = (b"%s: %s\r\n" % (name, value), kind, argument)
    if type(header) is tuple and len(value) <= _CACHEABLE_VALUE:
        if len(_rendered) >= _RENDERED_MAX:
            _rendered.clear()
        _rendered[header] = entry
    return entry


def _as_bytes(value) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise InvalidHeader(f"response header names and values must be bytes, not {value!r}")


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
