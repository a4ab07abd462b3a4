"""Proxy headers: X-Forwarded-For / X-Forwarded-Proto / Forwarded, trusted by peer address."""

import json

import httpx
import pytest

from serving import exchange, parse_responses

APP = "apps.echo:scope_json"


def scope_with(server, headers: dict[str, str]) -> dict:
    response = httpx.get(server.url + "/", headers=headers, timeout=5)
    assert response.status_code == 200
    return response.json()


def test_default_trusts_localhost_x_forwarded(serve, backend):
    server = serve(APP, "--http", backend)
    scope = scope_with(server, {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    assert scope["client"][0] == "203.0.113.7"
    assert scope["scheme"] == "https"
    # Without the headers, the real peer shows.
    plain = scope_with(server, {})
    assert plain["client"][0] == "127.0.0.1"
    assert plain["scheme"] == "http"


def test_x_forwarded_proto_alone(serve, backend):
    server = serve(APP, "--http", backend)
    scope = scope_with(server, {"X-Forwarded-Proto": "https"})
    assert scope["scheme"] == "https"
    assert scope["client"][0] == "127.0.0.1"


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(["--forwarded-allow-ips", "10.0.0.1"], id="untrusted-peer"),
        pytest.param(["--no-proxy-headers", "--forwarded-allow-ips", "*"], id="no-proxy-headers"),
    ],
)
def test_proxy_headers_ignored(serve, backend, flags):
    server = serve(APP, "--http", backend, *flags)
    scope = scope_with(
        server,
        {
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Proto": "https",
            "Forwarded": "for=192.0.2.60;proto=https",
        },
    )
    assert scope["client"][0] == "127.0.0.1"
    assert scope["scheme"] == "http"


def test_forwarded_allow_ips_env_default(serve, backend):
    """$FORWARDED_ALLOW_IPS is the default for --forwarded-allow-ips."""
    server = serve(APP, "--http", backend, env={"FORWARDED_ALLOW_IPS": "10.0.0.1"})
    scope = scope_with(server, {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    assert scope["client"][0] == "127.0.0.1"
    assert scope["scheme"] == "http"


@pytest.mark.parametrize("allowed", ["*", "127.0.0.0/8", "10.0.0.1, 127.0.0.1"])
def test_trusted_by_wildcard_cidr_or_list(serve, backend, allowed):
    server = serve(APP, "--http", backend, "--forwarded-allow-ips", allowed)
    scope = scope_with(server, {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    assert scope["client"][0] == "203.0.113.7"
    assert scope["scheme"] == "https"


def test_multiple_hops_pick_nearest_untrusted(serve, backend):
    server = serve(APP, "--http", backend, "--forwarded-allow-ips", "127.0.0.1,10.0.0.0/8")
    scope = scope_with(server, {"X-Forwarded-For": "198.51.100.1, 10.0.0.2"})
    assert scope["client"][0] == "198.51.100.1"
    # A spoofed left-most entry is skipped: the nearest untrusted hop wins.
    scope = scope_with(server, {"X-Forwarded-For": "1.2.3.4, 198.51.100.1, 10.0.0.2"})
    assert scope["client"][0] == "198.51.100.1"


def test_multiple_hops_default_trust_takes_rightmost(serve, backend):
    """Only 127.0.0.1 is trusted, so the right-most hop (10.0.0.2) is the client."""
    server = serve(APP, "--http", backend)
    scope = scope_with(server, {"X-Forwarded-For": "198.51.100.1, 10.0.0.2"})
    assert scope["client"][0] == "10.0.0.2"


def test_forwarded_rfc7239(serve, backend):
    server = serve(APP, "--http", backend)
    scope = scope_with(server, {"Forwarded": "for=192.0.2.60;proto=https"})
    assert scope["client"][0] == "192.0.2.60"
    assert scope["scheme"] == "https"


def test_forwarded_rfc7239_ipv6_with_port(serve, backend):
    server = serve(APP, "--http", backend)
    scope = scope_with(server, {"Forwarded": 'for="[2001:db8::1]:4711";proto=https'})
    assert scope["client"] == ["2001:db8::1", 4711]
    assert scope["scheme"] == "https"


def test_forwarded_rfc7239_case_and_multiple_hops(serve, backend):
    server = serve(APP, "--http", backend, "--forwarded-allow-ips", "127.0.0.1,10.0.0.0/8")
    scope = scope_with(
        server, {"Forwarded": "For=198.51.100.1;Proto=HTTPS, for=10.0.0.2;proto=http"}
    )
    assert scope["client"][0] == "198.51.100.1"
    assert scope["scheme"] == "https"


def test_forwarded_trusted_by_cidr(serve, backend):
    server = serve(APP, "--http", backend, "--forwarded-allow-ips", "127.0.0.0/8")
    scope = scope_with(server, {"Forwarded": "for=192.0.2.60;proto=https"})
    assert scope["client"][0] == "192.0.2.60"
    assert scope["scheme"] == "https"


def test_proxy_headers_on_keep_alive_connection(serve, backend):
    """Each request on one connection is rewritten from its own headers only."""
    server = serve(APP, "--http", backend)
    raw = (
        b"GET /1 HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\n"
        b"X-Forwarded-Proto: https\r\n\r\n"
        b"GET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    first, second = parse_responses(exchange(server, raw))
    one, two = json.loads(first.body), json.loads(second.body)
    assert (one["client"][0], one["scheme"]) == ("203.0.113.7", "https")
    assert (two["client"][0], two["scheme"]) == ("127.0.0.1", "http")


def test_repeated_x_forwarded_for_lines_are_one_list(serve, backend):
    """Two X-Forwarded-For lines mean the same as one comma-joined line (RFC 9110 5.3)."""
    server = serve(APP, "--http", backend, "--forwarded-allow-ips", "127.0.0.1,10.0.0.0/8")
    response = httpx.get(
        server.url + "/",
        headers=[("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "10.0.0.2")],
        timeout=5,
    )
    assert response.json()["client"][0] == "198.51.100.1"


def test_forwarded_proto_without_for(serve, backend):
    """A Forwarded element with proto but no for still sets the scheme."""
    server = serve(APP, "--http", backend)
    scope = scope_with(server, {"Forwarded": "proto=https;host=example.com"})
    assert scope["scheme"] == "https"
    assert scope["client"][0] == "127.0.0.1"
