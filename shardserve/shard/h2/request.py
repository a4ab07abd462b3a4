"""An HTTP/2 request's header block, checked (RFC 9113 8.3) and split for the scope.

h2's own validation is turned off (it is slow, and it fails the whole connection);
this is the one check, and what it refuses is a stream error: that stream is reset
with PROTOCOL_ERROR and the connection goes on.
"""

from __future__ import annotations

import re

from ..http.framing import token

# Headers that mean something only on an HTTP/1.1 connection (RFC 9113 8.2.2).
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
# The request pseudo-headers (RFC 9113 8.3.1; :protocol only with RFC 8441, not offered).
PSEUDO_HEADERS = frozenset((b":method", b":path", b":scheme", b":authority"))
# NUL, CR or LF anywhere in a value, or whitespace at either end (RFC 9113 8.2.1).
_bad_value = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z").search


class StreamError(Exception):
    """A malformed request: reset its stream with PROTOCOL_ERROR."""


def split_request(
    block: list[tuple[bytes, bytes]], methods: dict[bytes, str]
) -> tuple[str, bytes, list[tuple[bytes, bytes]]]:
    """(method, :path, headers): the pseudo-headers checked and taken out, and
    ``:authority`` given as a leading ``host`` header unless the block has one.
    A CONNECT comes back with an empty path (the caller refuses it: no tunnels)."""
    pseudo: dict[bytes, bytes] = {}
    headers: list[tuple[bytes, bytes]] = []
    regular = False
    host = False
    for name, value in block:
        if _bad_value(value) is not None:
            raise StreamError(f"NUL, CR, LF or surrounding whitespace in {name!r}")
        if name[:1] == b":":
            if regular:
                raise StreamError("pseudo-header after a regular header")
            if name not in PSEUDO_HEADERS:
                raise StreamError(f"unknown pseudo-header {name!r}")
            if name in pseudo:
                raise StreamError(f"duplicate {name.decode()}")
            pseudo[name] = value
            continue
        regular = True
        if name.lower() != name or token(name) is None:
            raise StreamError(f"invalid header name {name!r}")
        if name in CONNECTION_SPECIFIC:
            raise StreamError(f"connection-specific header {name!r}")
        if name == b"te" and value != b"trailers":
            raise StreamError("te other than 'trailers'")
        if name == b"host":
            host = True
        headers.append((name, value))
    method = pseudo.get(b":method")
    path = pseudo.get(b":path")
    scheme = pseudo.get(b":scheme")
    authority = pseudo.get(b":authority")
    if method is None:
        raise StreamError("no :method")
    decoded = methods.get(method)
    if decoded is None:
        if token(method) is None:
            raise StreamError("invalid :method")
        decoded = method.decode("ascii")
    if authority is not None and not host:
        headers.insert(0, (b"host", authority))
    if decoded == "CONNECT":
        if scheme is not None or path is not None or authority is None:
            raise StreamError("CONNECT with :scheme or :path, or without :authority")
        return decoded, b"", headers
    if scheme is None or path is None:
        raise StreamError("no :scheme or no :path")
    if not path:
        raise StreamError("empty :path")
    return decoded, path, headers
