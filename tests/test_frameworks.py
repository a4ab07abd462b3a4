"""Starlette and FastAPI apps served by shardserve, through httpx (sync and async) and curl."""

import asyncio
import hashlib
import json
import signal
import subprocess
import time

import httpx

STARLETTE = "apps.frameworks:starlette_app"
FASTAPI = "apps.frameworks:fastapi_app"


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "5", *args], capture_output=True, text=True, timeout=10
    )


# Starlette ------------------------------------------------------------------------------


def test_starlette_sync_client(serve, backend):
    server = serve(STARLETTE, "--http", backend)
    with httpx.Client(base_url=server.url, timeout=5) as client:
        response = client.get("/text")
        assert response.status_code == 200
        assert response.text == "hello from starlette"
        assert response.headers["content-type"].startswith("text/plain")
        assert response.headers["x-middleware"] == "yes"

        response = client.get("/json/abc", params={"a": "1", "b": "two words"})
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {
            "framework": "starlette",
            "query": {"a": "1", "b": "two words"},
            "path_param": "abc",
        }

        assert client.get("/missing").status_code == 404
        assert client.delete("/text").status_code == 405


def test_starlette_streaming(serve, backend):
    server = serve(STARLETTE, "--http", backend)
    with (
        httpx.Client(base_url=server.url, timeout=5) as client,
        client.stream("GET", "/stream", params={"n": "20"}) as response,
    ):
        assert response.status_code == 200
        assert response.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in response.headers
        received = b"".join(response.iter_bytes())
    assert received == b"".join(f"chunk-{i}\n".encode() for i in range(20))


def test_starlette_request_body(serve, backend):
    server = serve(STARLETTE, "--http", backend)
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    with httpx.Client(base_url=server.url, timeout=10) as client:
        response = client.post(
            "/echo", content=payload, headers={"content-type": "application/octet-stream"}
        )
        assert response.json() == {
            "length": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "content_type": "application/octet-stream",
        }

        # A chunked upload (a generator body: no content-length).
        def parts():
            for index in range(50):
                yield f"part-{index};".encode()

        expected = b"".join(f"part-{index};".encode() for index in range(50))
        response = client.put("/echo", content=parts())
        assert response.json()["length"] == len(expected)
        assert response.json()["sha256"] == hashlib.sha256(expected).hexdigest()

        response = client.post("/echo", content=b"")
        assert response.json()["length"] == 0


def test_starlette_background_task(serve, backend):
    server = serve(STARLETTE, "--http", backend)
    with httpx.Client(base_url=server.url, timeout=5) as client:
        response = client.get("/background", params={"tag": f"bg-{backend}"})
        assert response.status_code == 200
        assert response.text == "scheduled"
        deadline = time.monotonic() + 5
        done = []
        while time.monotonic() < deadline:
            done = client.get("/background/done").json()
            if f"bg-{backend}" in done:
                break
            time.sleep(0.02)
        assert done == [f"bg-{backend}"]


def test_starlette_middleware_state(serve, backend):
    server = serve(STARLETTE, "--http", backend)
    response = httpx.get(server.url + "/state", timeout=5)
    assert response.json() == {"user": "set-by-middleware", "mw_path": "/state"}
    assert response.headers["x-middleware"] == "yes"


def test_starlette_async_concurrent(serve, backend):
    server = serve(STARLETTE, "--http", backend)

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            texts = client.get("/text")
            jsons = [client.get(f"/json/n{i}", params={"i": str(i)}) for i in range(20)]
            streams = [client.get("/stream", params={"n": "3"}) for _ in range(5)]
            bodies = [client.post("/echo", content=b"x" * (i * 1000)) for i in range(10)]
            return await asyncio.gather(texts, *jsons, *streams, *bodies)

    responses = asyncio.run(asyncio.wait_for(main(), 20))
    assert all(r.status_code == 200 for r in responses)
    assert responses[0].text == "hello from starlette"
    for i, response in enumerate(responses[1:21]):
        assert response.json()["path_param"] == f"n{i}"
        assert response.json()["query"] == {"i": str(i)}
    for response in responses[21:26]:
        assert response.text == "chunk-0\nchunk-1\nchunk-2\n"
    for i, response in enumerate(responses[26:]):
        assert response.json()["length"] == i * 1000


def test_starlette_curl(serve, backend):
    server = serve(STARLETTE, "--http", backend)
    result = curl(server.url + "/text")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from starlette"

    result = curl("-N", server.url + "/stream?n=4")
    assert result.stdout == "chunk-0\nchunk-1\nchunk-2\nchunk-3\n"

    result = curl("--data-binary", "hello curl", server.url + "/echo")
    assert json.loads(result.stdout)["length"] == len("hello curl")

    result = curl("-i", server.url + "/state")
    head, _, body = result.stdout.partition("\n\n")  # (text mode turned CRLF into LF)
    assert head.startswith("HTTP/1.1 200")
    assert "x-middleware: yes" in head.lower()
    assert json.loads(body)["user"] == "set-by-middleware"


# FastAPI --------------------------------------------------------------------------------


def test_fastapi_path_and_query(serve, backend):
    server = serve(FASTAPI, "--http", backend)
    with httpx.Client(base_url=server.url, timeout=5) as client:
        assert client.get("/items/42", params={"q": "find me"}).json() == {
            "item_id": 42,
            "q": "find me",
        }
        assert client.get("/items/7").json() == {"item_id": 7, "q": None}


def test_fastapi_sync_endpoint(serve, backend):
    server = serve(FASTAPI, "--http", backend)
    response = httpx.get(server.url + "/sync", params={"value": "21"}, timeout=5)
    assert response.json() == {"doubled": 42, "in_main_thread": False}


def test_fastapi_body_model(serve, backend):
    server = serve(FASTAPI, "--http", backend)
    with httpx.Client(base_url=server.url, timeout=5) as client:
        response = client.post(
            "/items", json={"name": "widget", "price": 2.5, "quantity": 4, "tags": ["a", "b"]}
        )
        assert response.status_code == 201
        assert response.json() == {
            "item": {"name": "widget", "price": 2.5, "quantity": 4, "tags": ["a", "b"]},
            "total": 10.0,
        }


def test_fastapi_422_on_invalid_input(serve, backend):
    server = serve(FASTAPI, "--http", backend)
    with httpx.Client(base_url=server.url, timeout=5) as client:
        response = client.get("/items/not-a-number")
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["path", "item_id"]

        response = client.post("/items", json={"name": "", "price": -1})
        assert response.status_code == 422
        locations = {tuple(error["loc"]) for error in response.json()["detail"]}
        assert locations == {("body", "name"), ("body", "price")}

        response = client.post(
            "/items", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert response.status_code == 422

        # The connection is still usable after the errors.
        assert client.get("/items/1").status_code == 200


def test_fastapi_dependency(serve, backend):
    server = serve(FASTAPI, "--http", backend)
    with httpx.Client(base_url=server.url, timeout=5) as client:
        response = client.get("/secure", params={"limit": "5"}, headers={"x-token": "secret-token"})
        assert response.status_code == 200
        assert response.json() == {"token": "secret-token", "page": {"limit": 5, "offset": 0}}
        assert client.get("/secure", headers={"x-token": "wrong"}).status_code == 401
        assert client.get("/secure").status_code == 422  # missing header


def test_fastapi_lifespan_state(serve, backend):
    server = serve(FASTAPI, "--http", backend)
    assert "FASTAPI-LIFESPAN-STARTUP" in server.output
    response = httpx.get(server.url + "/lifespan", timeout=5)
    assert response.json() == {"greeting": "hello from lifespan", "started": "via-app-state"}
    server.signal(signal.SIGTERM)
    assert server.wait_exit(10) == 0
    assert "FASTAPI-LIFESPAN-SHUTDOWN" in server.output


def test_fastapi_async_concurrent(serve, backend):
    server = serve(FASTAPI, "--http", backend)

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            slow = [client.get("/slow", params={"delay": "0.3", "tag": str(i)}) for i in range(10)]
            items = [client.get(f"/items/{i}", params={"q": f"q{i}"}) for i in range(10)]
            syncs = [client.get("/sync", params={"value": str(i)}) for i in range(10)]
            posts = [
                client.post("/items", json={"name": f"n{i}", "price": i + 1}) for i in range(5)
            ]
            started = time.monotonic()
            results = await asyncio.gather(*slow, *items, *syncs, *posts)
            return results, time.monotonic() - started

    responses, elapsed = asyncio.run(asyncio.wait_for(main(), 20))
    # Ten 0.3 s sleeps run concurrently, not one after the other.
    assert elapsed < 2.5
    for i, response in enumerate(responses[:10]):
        assert response.json() == {"tag": str(i)}
    for i, response in enumerate(responses[10:20]):
        assert response.json() == {"item_id": i, "q": f"q{i}"}
    for i, response in enumerate(responses[20:30]):
        assert response.json()["doubled"] == i * 2
    for i, response in enumerate(responses[30:]):
        assert response.status_code == 201
        assert response.json()["total"] == i + 1


def test_fastapi_curl(serve, backend):
    server = serve(FASTAPI, "--http", backend)
    result = curl(server.url + "/items/5?q=curl")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"item_id": 5, "q": "curl"}

    result = curl(
        "-H",
        "content-type: application/json",
        "--data",
        '{"name": "c", "price": 3, "quantity": 2}',
        "-w",
        "\n%{http_code}",
        server.url + "/items",
    )
    body, _, status = result.stdout.rpartition("\n")
    assert status == "201"
    assert json.loads(body)["total"] == 6

    result = curl("-o", "/dev/null", "-w", "%{http_code}", server.url + "/items/x")
    assert result.stdout == "422"

    result = curl("-H", "x-token: secret-token", server.url + "/secure?offset=3")
    assert json.loads(result.stdout)["page"] == {"limit": 10, "offset": 3}
