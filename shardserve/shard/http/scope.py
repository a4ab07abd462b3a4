"""The ASGI scope of a request and what every finished exchange counts: shared by the
HTTP/1.1 connection (``protocol.py``) and the HTTP/2 streams (``../h2/``).

Hot path: ``request_scope`` runs once per request and ``account`` once per response.
Both are the references; where ``_scope.c`` is built, the names are rebound to its
twins, which do the common case in C (no --root-path, a path without '%', proxy
headers applied by the one ``apply_proxy_headers``; no access log, no
--limit-max-requests) and call these for everything else.
"""

from __future__ import annotations

from bisect import bisect_left
from time import perf_counter
from typing import TYPE_CHECKING
from urllib.parse import unquote

from ...messages import LATENCY_BUCKETS
from ..state import METHOD_SLOTS, OTHER_SLOT
from . import compiled
from .parser import ParseError
from .proxy import PROXY_HEADERS, apply_proxy_headers

if TYPE_CHECKING:
    from ..state import ShardState
    from .cycle import RequestCycle

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
FIRST_BUCKET = LATENCY_BUCKETS[0]


def scope_template(state: ShardState, transport, scheme: str, http_version: str) -> dict:
    """What every request on one connection shares: copied, then completed, per request."""
    return {
        "type": "http",
        "asgi": ASGI_VERSION,
        "http_version": http_version,
        "server": address(transport.get_extra_info("sockname")),
        "client": address(transport.get_extra_info("peername")),
        "scheme": scheme,
        "method": "GET",
        "root_path": state.root_path,
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [],
        "state": None,
    }


def is_trusted(state: ShardState, template: dict) -> bool:
    """Whether this connection's proxy headers are believed (--proxy-headers)."""
    client = template["client"]
    return state.proxy_headers and (client[0] if client else None) in state.trusted


def request_scope(
    template: dict,
    state: ShardState,
    trusted: bool,
    method: str,
    raw_path: bytes,
    query: bytes,
    http_version: str,
    headers: list[tuple[bytes, bytes]],
) -> dict:
    """One request's scope; raises ParseError(400) for a path that is not ASCII."""
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise ParseError(400, "non-ASCII request target") from None
    if "%" in path:
        path = unquote(path)
    scope = template.copy()
    scope["http_version"] = http_version
    scope["method"] = method
    scope["path"] = path
    scope["raw_path"] = raw_path
    scope["query_string"] = query
    scope["headers"] = headers
    scope["state"] = state.lifespan_state.copy()
    if state.root_path:
        scope["path"] = state.root_path + path
        scope["raw_path"] = state.root_path_bytes + raw_path
    if trusted:
        apply_proxy_headers(scope, headers, state.trusted)
    return scope


def check_declared_length(headers: list[tuple[bytes, bytes]], limit: int) -> None:
    """--limit-request-body: a declared Content-Length above it is refused (413)
    before the app runs."""
    for name, value in headers:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise ParseError(413, "request body larger than --limit-request-body")


def split_other_target(method: str, target: bytes) -> tuple[bytes, bytes]:
    """absolute-form ('http://host/p?q'), asterisk-form ('*') or authority-form (CONNECT)."""
    if target == b"*" and method == "OPTIONS":
        return b"*", b""
    if method == "CONNECT":
        # A well-formed CONNECT (the parser checked its host:port) asks for a tunnel,
        # which ASGI has no way to serve: not the client's error.
        raise ParseError(501, "CONNECT is not supported")
    scheme, sep, rest = target.partition(b"://")
    if sep and scheme.lower() in (b"http", b"https"):
        slash = rest.find(b"/")
        if slash < 0:
            query_at = rest.find(b"?")
            return b"/", rest[query_at + 1 :] if query_at >= 0 else b""
        raw_path, _, query = rest[slash:].partition(b"?")
        return raw_path, query
    raise ParseError(400, "invalid request target")


def account(state: ShardState, cycle: RequestCycle) -> None:
    """Count a finished exchange (latency, method and status class), log it, and
    count it against --limit-max-requests.  Once per exchange, however it ended."""
    counters = state.counters
    elapsed = perf_counter() - cycle.started
    # (A fast answer skips the search: most land in the first bucket.)
    counters.latency[0 if elapsed <= FIRST_BUCKET else bisect_left(LATENCY_BUCKETS, elapsed)] += 1
    counters.latency_sum += elapsed
    status = cycle.status
    counters.responses[METHOD_SLOTS.get(cycle.scope["method"], OTHER_SLOT) + status // 100] += 1
    if state.access_log and status:  # (0: the client left before any response)
        scope = cycle.scope
        query = scope["query_string"]
        path = scope["path"] + ("?" + query.decode("latin-1") if query else "")
        state.access_logger.log(
            scope["client"], scope["method"], path, scope["http_version"], status
        )
    left = state.requests_left
    if left is not None:
        state.requests_left = left = left - 1
        if left <= 0:
            state.max_requests_reached()


def address(value) -> tuple | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    if isinstance(value, str) and value:
        return (value, None)
    return None


reference_request_scope = request_scope
reference_account = account
_compiled = compiled.load("_scope")
if _compiled is not None:
    _twins = _compiled.Twins(
        request_scope,
        account,
        tuple(LATENCY_BUCKETS),
        METHOD_SLOTS,
        OTHER_SLOT,
        perf_counter,
        apply_proxy_headers,
        PROXY_HEADERS,
    )
    request_scope = _twins.request_scope
    account = _twins.account
