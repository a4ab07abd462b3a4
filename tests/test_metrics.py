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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    port = free_port()
    server = serve(APP, "--shards", "2", "--metrics", f"127.0.0.1:{port}")
    server.wait_for(rf"Metrics and health on http://127\.0\.0\.1:{port}/metrics", 1)
    hit(server, 40)
    samples = wait_total(port, "shardserve_requests_total", 40)
    shards = per_shard(samples, "shardserve_shard_requests_total")
    assert set(shards) == {"0", "1"}
    assert sum(shards.values()) == samples[("shardserve_requests_total", ())] == 40
    assert samples[("shardserve_connections_total", ())] == 40
    assert samples[("shardserve_shards", ())] == 2
    assert samples[("shardserve_reloads_total", ())] == 0


def test_counters_stay_monotonic_across_a_shard_restart(serve):
    port = free_port()
    server = serve(APP, "--shards", "2", "--metrics", f"127.0.0.1:{port}")
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
    port = free_port()
    server = serve(APP, "--shards", "2", "--metrics", f"127.0.0.1:{port}")
    hit(server, 10)
    server.signal(signal.SIGHUP)
    server.wait_for(r"Rolling restart complete\.", 15)
    hit(server, 10)
    samples = wait_total(port, "shardserve_requests_total", 20)
    assert samples[("shardserve_reloads_total", ())] == 1
    assert samples[("shardserve_requests_total", ())] == 20  # replaced shards' counts kept
    assert not [k for k in samples if k[0] == "shardserve_shard_restarts_total"]


def test_health_endpoints(serve):
    port = free_port()
    server = serve(APP, "--metrics", f"127.0.0.1:{port}")  # one shard: still supervised
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
    port = free_port()
    server = serve(APP, "--shards", "2", "--metrics", f"127.0.0.1:{port}")
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
