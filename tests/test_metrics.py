"""The coordinator's view of all shards: --metrics HOST:PORT (Prometheus, health).

Real servers, real requests; /metrics is read with prometheus_client's own parser.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

APP = "apps.echo:hello"


def metrics_port(server) -> int:
    """The port the coordinator bound for ``--metrics 127.0.0.1:0`` (no free-port race)."""
    return int(server.wait_for(r"Metrics and health on http://127\.0\.0\.1:(\d+)/metrics", 1)[1])


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, parsed by prometheus_client."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def wait_total(port: int, name: str, at_least: float, timeout: float = 6.0) -> dict:
    """Stats reach the coordinator once a second: poll until the total is there."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if samples.get((name, ()), 0) >= at_least or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def per_shard(samples: dict, name: str) -> dict[str, float]:
    return {dict(labels)["shard"]: value for (n, labels), value in samples.items() if n == name}


def hit(server, count: int) -> None:
    for _ in range(count):
        with httpx.Client() as client:  # a new connection each: both shards take some
            assert client.get(server.url + "/", timeout=5).status_code == 200


def test_metrics_count_requests_per_shard_and_in_total(serve):
    server = serve(APP, "--shards", "2", "--metrics", "127.0.0.1:0")
    port = metrics_port(server)
    hit(server, 40)
    samples = wait_total(port, "shardserve_requests_total", 40)
    shards = per_shard(samples, "shardserve_shard_requests_total")
    assert set(shards) == {"0", "1"}
    assert sum(shards.values()) == samples[("shardserve_requests_total", ())] == 40
    assert samples[("shardserve_connections_total", ())] == 40
    assert samples[("shardserve_shards", ())] == 2
    assert samples[("shardserve_reloads_total", ())] == 0


def test_counters_stay_monotonic_across_a_shard_restart(serve):
    server = serve(APP, "--shards", "2", "--metrics", "127.0.0.1:0")
    port = metrics_port(server)
    started = re.finditer(r"Started shard (\d) \[(\d+)\]", server.output)
    pids = {int(m[1]): int(m[2]) for m in started}
    hit(server, 30)
    before = wait_total(port, "shardserve_requests_total", 30)
    assert before[("shardserve_requests_total", ())] == 30
    shard0_before = per_shard(before, "shardserve_shard_requests_total")["0"]
    os.kill(pids[0], signal.SIGKILL)
    server.wait_for(r"shard 0 \[\d+\] exited unexpectedly", 5)
    server.wait_for(rf"Started shard 0 \[(?!{pids[0]}\])\d+\]", 5)
    time.sleep(0.5)
    after_restart = scrape(port)
    # The killed generation's last report is kept: nothing goes back.
    assert after_restart[("shardserve_requests_total", ())] >= 30
    assert per_shard(after_restart, "shardserve_shard_requests_total")["0"] >= shard0_before
    assert after_restart[("shardserve_shard_restarts_total", (("cause", "signal"),))] == 1
    hit(server, 20)
    after = wait_total(port, "shardserve_requests_total", 50)
    assert after[("shardserve_requests_total", ())] == 50


def test_reloads_are_counted(serve):
    server = serve(APP, "--shards", "2", "--metrics", "127.0.0.1:0")
    port = metrics_port(server)
    hit(server, 10)
    server.signal(signal.SIGHUP)
    server.wait_for(r"Rolling restart complete\.", 15)
    hit(server, 10)
    samples = wait_total(port, "shardserve_requests_total", 20)
    assert samples[("shardserve_reloads_total", ())] == 1
    assert samples[("shardserve_requests_total", ())] == 20  # replaced shards' counts kept
    assert not [k for k in samples if k[0] == "shardserve_shard_restarts_total"]


def test_health_endpoints(serve):
    server = serve(APP, "--metrics", "127.0.0.1:0")  # one shard: still supervised
    port = metrics_port(server)
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(base + "/healthz", timeout=5).status_code == 200
    assert httpx.get(base + "/readyz", timeout=5).status_code == 200
    assert httpx.get(base + "/nope", timeout=5).status_code == 404
    assert httpx.post(base + "/metrics", timeout=5).status_code == 405
    assert httpx.get(server.url + "/", timeout=5).text == "Hello, world!"


@pytest.mark.parametrize(
    "raw", [b"garbage\r\n\r\n", b"GET /metrics\r\n\r\n", b"x" * 20000, b"GET /healthz HTTP/1.1\r\n"]
)
def test_bad_requests_to_the_metrics_listener_do_not_disturb_serving(serve, raw):
    server = serve(APP, "--shards", "2", "--metrics", "127.0.0.1:0")
    port = metrics_port(server)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)  # an unfinished head ends here
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:80]
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    assert httpx.get(server.url + "/", timeout=5).status_code == 200


def test_bad_metrics_address_is_one_line(serve):
    server = serve(APP, "--metrics", "nowhere", ready=False)
    assert server.wait_exit(10) != 0
    lines = [line for line in server.lines if line.strip()]
    assert len(lines) == 1 and "--metrics" in lines[0] and "HOST:PORT" in lines[0], lines


# What each shard reports -------------------------------------------------------------------

METERED = "apps.metered:app"


def wait_until(port: int, done, timeout: float = 6.0) -> dict:
    """Poll /metrics until ``done(samples)`` (stats arrive once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def exchange(server, raw: bytes) -> bytes:
    """Send ``raw`` on one connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def responses(samples: dict, name: str = "shardserve_responses_total") -> dict:
    return {
        (dict(labels)["method"], dict(labels)["status"]): value
        for (n, labels), value in samples.items()
        if n == name
    }


def test_requests_are_counted_by_method_and_status_class(serve, backend):
    server = serve(METERED, "--http", backend, "--metrics", "127.0.0.1:0")
    port = metrics_port(server)
    with httpx.Client(base_url=server.url, timeout=5) as client:
        for _ in range(3):
            assert client.get("/status?code=200").status_code == 200
        for _ in range(2):
            assert client.post("/status?code=404", content=b"x" * 100).status_code == 404
        assert client.head("/status?code=204").status_code == 204
        assert client.delete("/status?code=503").status_code == 503
        assert client.request("PURGE", "/status?code=302").status_code == 302  # "other"
        assert client.get("/fail").status_code == 500
    samples = wait_total(port, "shardserve_requests_total", 9)
    assert responses(samples) == {
        ("GET", "2xx"): 3,
        ("POST", "4xx"): 2,
        ("HEAD", "2xx"): 1,
        ("DELETE", "5xx"): 1,
        ("other", "3xx"): 1,
        ("GET", "5xx"): 1,
    }
    assert responses(samples, "shardserve_shard_responses_total") == responses(samples)
    assert samples[("shardserve_errors_total", (("kind", "app"),))] == 1
    assert samples[("shardserve_requests_total", ())] == 9


def test_bytes_in_and_out_are_exact(serve, backend):
    server = serve(METERED, "--http", backend, "--metrics", "127.0.0.1:0")
    port = metrics_port(server)
    request = (
        b"POST /status?code=201 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answer = exchange(server, request)
    assert answer.count(b"HTTP/1.1 ") == 2, answer
    samples = wait_total(port, "shardserve_requests_total", 2)
    assert samples[("shardserve_bytes_received_total", ())] == len(request)
    assert samples[("shardserve_bytes_sent_total", ())] == len(answer)
    assert samples[("shardserve_connections_total", ())] == 1
    closed = wait_total(port, "shardserve_connections_closed_total", 1)
    assert closed[("shardserve_connections_closed_total", ())] == 1
    assert closed[("shardserve_open_connections", ())] == 0


def test_latency_histogram_puts_slow_requests_in_their_bucket(serve):
    server = serve(METERED, "--metrics", "127.0.0.1:0")
    port = metrics_port(server)
    with httpx.Client(base_url=server.url, timeout=5) as client:
        for _ in range(4):
            assert client.get("/sleep?ms=30").text == "slept"
    samples = wait_total(port, "shardserve_requests_total", 4)
    name = "shardserve_request_duration_seconds"
    buckets = {
        dict(labels)["le"]: value for (n, labels), value in samples.items() if n == name + "_bucket"
    }
    # Slept 30 ms each: none can be faster than 25 ms; every one is counted once.
    assert buckets["0.025"] == 0 and buckets["+Inf"] == 4, buckets
    assert list(buckets.values()) == sorted(buckets.values())  # cumulative
    assert samples[(name + "_count", ())] == 4
    assert 4 * 0.03 <= samples[(name + "_sum", ())] < 4 * 10
    shard = samples[("shardserve_shard_request_duration_seconds_count", (("shard", "0"),))]
    assert shard == 4


def test_errors_are_counted_by_kind(serve, backend):
    server = serve(
        METERED,
        "--http",
        backend,
        "--metrics",
        "127.0.0.1:0",
        "--timeout-request-header",
        "1",
        "--limit-concurrency",
        "1",
    )
    port = metrics_port(server)
    assert b" 400 " in exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert b" 408 " in exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
    assert httpx.get(server.url + "/fail", timeout=5).status_code == 500
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as held:
        held.sendall(b"GET /sleep?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)  # (the held request is in the app now)
        assert b" 503 " in exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"slept" in held.recv(4096)

    def kinds(samples):
        return {
            dict(labels)["kind"]: value
            for (n, labels), value in samples.items()
            if n == "shardserve_errors_total"
        }

    samples = wait_until(port, lambda s: kinds(s).get("overload") == 1)
    assert kinds(samples) == {
        "app": 1,
        "parse": 1,
        "timeout": 1,
        "overload": 1,
        "http2_refused": 0,
        "http2_protocol": 0,
        "http2_flood": 0,
    }


def test_websocket_connections_and_messages(serve):
    from websockets.sync.client import connect as ws_connect

    server = serve(METERED, "--metrics", "127.0.0.1:0")
    port = metrics_port(server)
    with ws_connect(f"ws://127.0.0.1:{server.port}/echo", open_timeout=5) as ws:
        for text in ("one", "two", "three"):
            ws.send(text)
            assert ws.recv(timeout=5) == text
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=5) == b"\x00\x01"
        samples = wait_total(port, "shardserve_websocket_messages_sent_total", 4)
        assert samples[("shardserve_websocket_connections_total", ())] == 1
        assert samples[("shardserve_websocket_open", ())] == 1
        assert samples[("shardserve_websocket_messages_received_total", ())] == 4
        assert samples[("shardserve_websocket_messages_sent_total", ())] == 4
    samples = wait_until(port, lambda s: s[("shardserve_websocket_open", ())] == 0)
    assert samples[("shardserve_websocket_open", ())] == 0
    assert samples[("shardserve_websocket_connections_total", ())] == 1
    assert samples[("shardserve_bytes_received_total", ())] > 0


def test_each_shard_reports_its_pid_mode_cpu_memory_and_uptime(serve):
    server = serve(METERED, "--shards", "2", "--metrics", "127.0.0.1:0")
    port = metrics_port(server)
    pids = {m[1]: m[2] for m in re.finditer(r"Started shard (\d) \[(\d+)\]", server.output)}
    hit(server, 10)

    def info(samples):
        return {
            dict(labels)["shard"]: dict(labels)
            for (n, labels), value in samples.items()
            if n == "shardserve_shard_info" and value == 1
        }

    samples = wait_until(port, lambda s: len(info(s)) == 2)
    assert {shard: labels["pid"] for shard, labels in info(samples).items()} == pids
    assert {labels["mode"] for labels in info(samples).values()} == {"process"}
    assert {labels["generation"] for labels in info(samples).values()} == {"1"}
    for shard in ("0", "1"):
        labels = (("shard", shard),)
        assert samples[("shardserve_shard_resident_memory_bytes", labels)] > 2**20
        assert samples[("shardserve_shard_uptime_seconds", labels)] > 0
        assert samples[("shardserve_shard_cpu_seconds_total", labels)] > 0


def test_metrics_address_in_use_is_one_clear_line(serve):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = serve(APP, "--metrics", f"127.0.0.1:{port}", ready=False)
        assert server.wait_exit(15) != 0
    assert "Traceback" not in server.output, server.output
    assert re.search(rf"--metrics 127\.0\.0\.1:{port}: .*in use", server.output), server.output
