"""A raw ASGI app whose requests start threads that outlive them, for ending
subinterpreter shards safely (tests/test_subinterpreter_frameworks.py).

- ``/daemon``: a daemon thread that loops (sleeping) for ever;
- ``/worker``: a non-daemon thread that loops for ever (it never ends by itself);
- ``/polite``: a non-daemon thread that ends when the app's lifespan shuts down;
- ``/stuck``: a daemon thread blocked in C for ever (an Event nobody sets): no
  exception can reach it, so its interpreter cannot be finalized;
- ``/block``: blocks the shard's event loop for ten minutes (a stuck shard);
- anything else: which interpreter answered and how many threads it runs.
"""

from __future__ import annotations

import json
import threading
import time

_stopping = threading.Event()


def _loop() -> None:
    while True:
        time.sleep(0.05)


def _until_stopping() -> None:
    while not _stopping.wait(0.05):
        pass


STARTERS = {
    "/daemon": lambda: threading.Thread(target=_loop, name="looping-daemon", daemon=True),
    "/worker": lambda: threading.Thread(target=_loop, name="looping-worker"),
    "/polite": lambda: threading.Thread(target=_until_stopping, name="polite-worker"),
    "/stuck": lambda: threading.Thread(
        target=threading.Event().wait, name="stuck-daemon", daemon=True
    ),
}


def _interpreter_id() -> int:
    try:
        from concurrent import interpreters
    except ImportError:
        from interpreters_backport import interpreters
    return int(interpreters.get_current().id)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                _stopping.set()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/block":
        time.sleep(600)
    starter = STARTERS.get(scope["path"])
    if starter is not None:
        starter().start()
    body = json.dumps(
        {"interpreter": _interpreter_id(), "threads": threading.active_count()}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
