"""The checks that decide a request's framing and routing, shared by every back-end.

A request that one back-end accepts and another rejects, or frames differently, is
what request smuggling exploits, so these decisions are made here, once, and each
back-end (``parser_python``, ``parser_httptools``, ``parser_h11``) calls the same
helpers where its parse already is: PythonParser in its per-head loop, the httptools
adapter in its per-field callback and once per head, the h11 adapter once per request
(``check_request``).  What each rejects, with which status: docs/http-parser.md.

- ``check_host``: a Host value must be ``uri-host [":" port]`` (RFC 9112 3.2: 400).
  Callers keep the last valid value per connection and call this only when a value
  differs from it, so keep-alive requests cost one comparison.
- ``check_transfer_encoding``: Transfer-Encoding only on HTTP/1.1, never with
  Content-Length, a list of tokens ending with one ``chunked`` (400), and nothing
  before that ``chunked`` (501: no other coding is implemented).
- ``check_connect_target``: CONNECT takes an authority-form target, ``host:port``
  (RFC 9112 3.2.3), and nothing else (400).
"""

from __future__ import annotations

import re

from .parser import ParseError

TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
token = re.compile(TOKEN).fullmatch

# Host: uri-host [ ":" port ] (RFC 9110 7.2), empty allowed; IP-literal or reg-name.
_host = re.compile(
    rb"(?:\[[0-9A-Za-z:.\-_~!$&'()*+,;=]+\]|[0-9A-Za-z\-._~%!$&'()*+,;=]*)(?::[0-9]*)?"
).fullmatch
# authority-form (CONNECT): uri-host ":" port, both present.
_authority = re.compile(
    rb"(?:\[[0-9A-Za-z:.\-_~!$&'()*+,;=]+\]|[0-9A-Za-z\-._~%!$&'()*+,;=]+):[0-9]+"
).fullmatch


def check_host(value: bytes) -> None:
    """RFC 9112 3.2: a server MUST answer 400 to a Host that is not uri-host[:port]."""
    if _host(value) is None:
        raise ParseError(400, "invalid Host header")


def check_connect_target(target: bytes) -> None:
    """RFC 9112 3.2.3: CONNECT's target is authority-form (host:port) and only that."""
    if _authority(target) is None:
        raise ParseError(400, "CONNECT needs an authority-form target (host:port)")


def check_transfer_encoding(
    http_version: str, value: bytes, content_length: bytes | None = None
) -> None:
    """Accept only a Transfer-Encoding this server frames as every back-end does.

    ``value`` is every Transfer-Encoding field of the head joined with ",".
    RFC 9112 6.1: Transfer-Encoding excludes Content-Length, and in an HTTP/1.0 request
    it is faulty framing (400).  RFC 9112 6.3: chunked must be the final coding (400),
    and applied once.  Empty list elements ("chunked,", ", chunked") are refused (400),
    although RFC 9110 5.6.1 lets a recipient ignore them: llhttp and h11 cannot frame
    them alike, and a framing field that parsers read differently is not guessed at.
    Any coding before chunked (``gzip, chunked``) is 501: none is implemented.
    """
    if content_length is not None:
        raise ParseError(400, "Content-Length together with Transfer-Encoding")
    if http_version != "1.1":
        raise ParseError(400, "Transfer-Encoding in an HTTP/1.0 request")
    codings = [c.strip(b" \t").lower() for c in value.split(b",")]
    if codings[-1] != b"chunked":
        raise ParseError(400, "Transfer-Encoding does not end with chunked")
    if len(codings) > 1:
        for coding in codings[:-1]:
            if coding == b"chunked":
                raise ParseError(400, "chunked applied more than once")
            if token(coding) is None:
                raise ParseError(400, "empty or invalid transfer coding")
        raise ParseError(501, "transfer codings other than chunked are not implemented")


def check_request(
    method: str,
    target: bytes,
    http_version: str,
    headers: list[tuple[bytes, bytes]],
    last_host: bytes,
) -> bytes:
    """Every framing and routing check, for a back-end that enforces none of them
    itself (h11): the helpers above, plus Content-Length (one field, digits only), and
    Host (exactly one on HTTP/1.1, at most one on HTTP/1.0).  ``headers`` are
    (lower-cased name, value without OWS) pairs.  Returns the Host value, to pass as
    ``last_host`` next time (only a new value is matched against the grammar).

    The order is PythonParser's, so that a request with several faults gets the same
    status from every back-end: Host and Content-Length first, Transfer-Encoding last.
    """
    content_length = None
    transfer_encoding = None
    host = None
    for name, value in headers:
        if name == b"host":
            if host is not None:
                raise ParseError(400, "more than one Host header")
            host = value
        elif name == b"content-length":
            if content_length is not None:
                raise ParseError(400, "duplicate Content-Length")
            content_length = value
        elif name == b"transfer-encoding":
            transfer_encoding = (
                value if transfer_encoding is None else transfer_encoding + b"," + value
            )
    if method == "CONNECT":
        check_connect_target(target)
    if host is None:
        if http_version == "1.1":
            raise ParseError(400, "missing Host header")
        host = last_host
    elif host != last_host:
        check_host(host)
    if transfer_encoding is not None:
        check_transfer_encoding(http_version, transfer_encoding, content_length)
    elif content_length is not None and not content_length.isdigit():
        raise ParseError(400, "invalid Content-Length")
    return host
