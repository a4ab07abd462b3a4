"""A Starlette app for subinterpreter shards (no FastAPI: pydantic_core cannot load in
one).  It says which interpreter answered, and can be made to crash its shard."""

import asyncio
import os
import threading

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute


def _interpreter_id() -> int:
    try:
        from concurrent import interpreters
    except ImportError:
        from interpreters_backport import interpreters
    return int(interpreters.get_current().id)


async def whoami(request):
    from shardserve.shard.http import head, scope
    from shardserve.shard.http.cycle import RequestCycle
    from shardserve.shard.http.protocol import HttpConnection

    return JSONResponse(
        {
            "interpreter": _interpreter_id(),
            "pid": os.getpid(),
            "thread": threading.get_native_id(),
            "head_split_compiled": head.ACCELERATED,  # (_head.c loaded in this interpreter)
            "send_compiled": type(RequestCycle.__dict__["send"]).__name__ == "FastSend",  # _send.c
            "scope_compiled": scope.account is not scope.reference_account,  # _scope.c
            "conn_compiled": type(HttpConnection.__dict__["on_request"]).__name__ == "Twin",
        }
    )


def _escape() -> None:
    raise SystemExit("crash requested")


async def crash(request):
    # A loop callback that raises SystemExit escapes the shard's event loop (an app's
    # own exception would only be a 500).
    asyncio.get_running_loop().call_soon(_escape)
    return JSONResponse({"crashing": True})


async def echo(websocket):
    await websocket.accept()
    async for text in websocket.iter_text():
        await websocket.send_text(f"{_interpreter_id()}:{text}")


app = Starlette(routes=[Route("/", whoami), Route("/crash", crash), WebSocketRoute("/ws", echo)])
