"""Proxy headers: X-Forwarded-For, X-Forwarded-Proto and Forwarded (RFC 7239).

They are honoured only when the connection's peer is a trusted proxy; trust is
decided once per connection, so untrusted traffic pays nothing per request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The set given by --forwarded-allow-ips: addresses, CIDR ranges, or '*'."""

    def __init__(self, everything: bool, networks: list[_Network], names: set[str]) -> None:
        self.everything = everything
        self.networks = networks
        self.names = names  # non-IP entries such as a unix socket path

    def __contains__(self, host: str | None) -> bool:
        if self.everything:
            return True
        if not host:
            return False
        if host in self.names:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def parse_trusted(value: str | Iterable[str]) -> TrustedProxies:
    items = value.split(",") if isinstance(value, str) else list(value)
    everything = False
    networks: list[_Network] = []
    names: set[str] = set()
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if item == "*":
            everything = True
            continue
        if item.startswith(("unix:", "/")):
            names.add(item)  # a unix socket peer
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR range") from None
    return TrustedProxies(everything, networks, names)


# A proxy may name the scheme it was reached by as ws/wss: the http scope's is http/https.
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def _pick_client(hops: list[str], trusted: TrustedProxies) -> str | None:
    """The nearest hop that is not itself a trusted proxy (right to left)."""
    for hop in reversed(hops):
        if hop not in trusted:
            return hop
    return hops[0] if hops else None


def _forwarded_elements(value: str) -> list[dict[str, str]]:
    elements = []
    for element in value.split(","):
        pairs: dict[str, str] = {}
        for pair in element.split(";"):
            key, sep, val = pair.partition("=")
            if sep:
                pairs[key.strip().lower()] = val.strip().strip('"')
        elements.append(pairs)
    return elements


def _strip_port(node: str) -> tuple[str, int]:
    """'192.0.2.1:4711' -> ('192.0.2.1', 4711); '[2001:db8::1]:80' -> ('2001:db8::1', 80)."""
    if node.startswith("["):
        host, _, rest = node[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif node.count(":") == 1:
        host, _, port = node.partition(":")
    else:
        host, port = node, ""
    return host, int(port) if port.isdigit() else 0


PROXY_HEADERS = frozenset((b"x-forwarded-for", b"x-forwarded-proto", b"forwarded"))


def apply_proxy_headers(
    scope: dict, headers: list[tuple[bytes, bytes]], trusted: TrustedProxies
) -> None:
    """Rewrite an http scope's client and scheme from trusted proxy headers.  (A
    websocket scope is made from the http scope after this: see websocket_scope.)"""
    forwarded = x_for = x_proto = None
    for name, value in headers:
        if name not in PROXY_HEADERS:
            continue
        # Repeated lines of a list header mean the same as one comma-joined line.
        if name == b"x-forwarded-for":
            x_for = value if x_for is None else x_for + b"," + value
        elif name == b"x-forwarded-proto":
            x_proto = value if x_proto is None else x_proto + b"," + value
        elif name == b"forwarded":
            forwarded = value if forwarded is None else forwarded + b"," + value
    if forwarded is not None:
        elements = _forwarded_elements(forwarded.decode("latin-1"))
        hops = [e["for"] for e in elements if "for" in e]
        chosen = _pick_client([_strip_port(h)[0] for h in hops], trusted)
        # The element that names the client; without any "for", the nearest proxy's.
        element = elements[-1] if elements else {}
        if chosen is not None:
            for candidate in elements:
                if _strip_port(candidate.get("for", ""))[0] == chosen:
                    element = candidate
                    scope["client"] = _strip_port(candidate["for"])
                    break
        proto = _SCHEMES.get(element.get("proto", "").lower())
        if proto is not None:
            scope["scheme"] = proto
        return
    if x_proto is not None:
        proto = _SCHEMES.get(x_proto.decode("latin-1").split(",")[-1].strip().lower())
        if proto is not None:
            scope["scheme"] = proto
    if x_for is not None:
        hops = [h.strip() for h in x_for.decode("latin-1").split(",") if h.strip()]
        host = _pick_client(hops, trusted)
        if host is not None:
            scope["client"] = (host, 0)
