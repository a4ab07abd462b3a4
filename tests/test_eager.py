"""Requests start eagerly (shard/http/eager.py) yet behave as if each ran in its own task."""

import httpx
import pytest

from serving import exchange, parse_responses

LOOPS = ["uvloop", "asyncio"]


@pytest.fixture(params=LOOPS)
def loop(request) -> str:
    return request.param


def test_each_request_has_its_own_context(serve, loop):
    server = serve("apps.tasks:app", "--loop", loop)
    with httpx.Client(base_url=server.url) as client:
        # Same keep-alive connection: a context variable set by one request must not
        # be seen by the next.
        assert client.get("/ctx", params={"first": ""}).text == "unset"
        assert client.get("/ctx").text == "unset"
        assert client.get("/sleep").text == "slept"
        assert client.get("/ctx").text == "unset"


def test_current_task_is_stable_across_awaits(serve, loop):
    server = serve("apps.tasks:app", "--loop", loop)
    with httpx.Client(base_url=server.url) as client:
        for _ in range(3):
            assert client.get("/task").text == "1 1"


def test_asyncio_timeout_works(serve, loop):
    server = serve("apps.tasks:app", "--loop", loop)
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/timeout").text == "timed out"
        assert client.get("/task").text == "1 1"


def test_cancelling_a_finished_requests_task_harms_nothing(serve, loop):
    server = serve("apps.tasks:app", "--loop", loop)
    with httpx.Client(base_url=server.url) as client, httpx.Client(base_url=server.url) as other:
        assert client.get("/stash").text == "stashed"
        assert other.get("/cancel-stashed").text == "cancelled"
        # The first connection keeps serving, synchronous and suspending requests alike.
        for _ in range(3):
            assert client.get("/ctx").text == "unset"
            assert client.get("/sleep").text == "slept"
            assert client.get("/task").text == "1 1"
    assert "Traceback" not in server.output


def test_a_request_cancelling_its_own_task_sees_cancelled_error(serve, loop):
    """As in a task: cancel() on the current task raises at the next await."""
    server = serve("apps.tasks:app", "--loop", loop)
    with httpx.Client(base_url=server.url) as client:
        for _ in range(2):  # a fresh connection's first request, then a later one
            assert client.get("/self-cancel").text == "cancelled at the await"
            assert client.get("/sleep").text == "slept"


def test_pipelined_requests_after_cancelling_the_task(serve, loop):
    """Requests parsed from one packet share the connection's host task: one that
    cancels it must not take the others down."""
    server = serve("apps.tasks:app", "--loop", loop)
    raw = b"".join(
        b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path
        for path in (b"/stash", b"/cancel-stashed", b"/sleep", b"/self-cancel", b"/ctx")
    )
    raw += b"GET /sleep HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    bodies = [r.body for r in parse_responses(exchange(server, raw))]
    assert bodies == [
        b"stashed",
        b"cancelled",
        b"slept",
        b"cancelled at the await",
        b"unset",
        b"slept",
    ]
    assert "Traceback" not in server.output
