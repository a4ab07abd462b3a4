"""A Starlette app and a FastAPI app, served by shardserve in tests/test_frameworks.py."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

# Starlette ------------------------------------------------------------------------------

BACKGROUND_DONE: list[str] = []


async def text(request):
    return PlainTextResponse("hello from starlette")


async def json_endpoint(request):
    return JSONResponse(
        {
            "framework": "starlette",
            "query": dict(request.query_params),
            "path_param": request.path_params.get("name"),
        }
    )


async def stream(request):
    count = int(request.query_params.get("n", "5"))

    async def chunks():
        for index in range(count):
            yield f"chunk-{index}\n".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(chunks(), media_type="text/plain")


async def echo_body(request):
    body = await request.body()
    return JSONResponse(
        {
            "length": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "content_type": request.headers.get("content-type"),
        }
    )


async def _record(tag: str) -> None:
    await asyncio.sleep(0.05)
    BACKGROUND_DONE.append(tag)


async def background(request):
    tag = request.query_params["tag"]
    return PlainTextResponse("scheduled", background=BackgroundTask(_record, tag))


async def background_done(request):
    return JSONResponse(BACKGROUND_DONE)


async def state(request):
    return JSONResponse({"user": request.state.user, "mw_path": request.state.mw_path})


class StateMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        request.state.user = "set-by-middleware"
        request.state.mw_path = request.url.path
        response = await call_next(request)
        response.headers["x-middleware"] = "yes"
        return response


starlette_app = Starlette(
    routes=[
        Route("/text", text),
        Route("/json", json_endpoint),
        Route("/json/{name}", json_endpoint),
        Route("/stream", stream),
        Route("/echo", echo_body, methods=["POST", "PUT"]),
        Route("/background", background),
        Route("/background/done", background_done),
        Route("/state", state),
    ],
    middleware=[Middleware(StateMiddleware)],
)


# FastAPI --------------------------------------------------------------------------------


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.started = "via-app-state"
    print("FASTAPI-LIFESPAN-STARTUP", flush=True)
    yield {"greeting": "hello from lifespan"}
    print("FASTAPI-LIFESPAN-SHUTDOWN", flush=True)


fastapi_app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str = Field(min_length=1)
    price: float = Field(gt=0)
    quantity: int = 1
    tags: list[str] = []


def require_token(x_token: str = Header()) -> str:
    if x_token != "secret-token":
        raise HTTPException(status_code=401, detail="bad token")
    return x_token


def pagination(limit: int = 10, offset: int = 0) -> dict:
    return {"limit": limit, "offset": offset}


@fastapi_app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None):
    return {"item_id": item_id, "q": q}


@fastapi_app.post("/items", status_code=201)
async def create_item(item: Item):
    return {"item": item.model_dump(), "total": item.price * item.quantity}


@fastapi_app.get("/sync")
def sync_endpoint(value: int = 0):
    # A plain def: FastAPI runs it in a worker thread.
    return {
        "doubled": value * 2,
        "in_main_thread": threading.current_thread() is threading.main_thread(),
    }


@fastapi_app.get("/secure")
async def secure(
    token: Annotated[str, Depends(require_token)], page: Annotated[dict, Depends(pagination)]
):
    return {"token": token, "page": page}


@fastapi_app.get("/lifespan")
async def lifespan_state(request: Request):
    return {"greeting": request.state.greeting, "started": request.app.state.started}


@fastapi_app.get("/slow")
async def slow(delay: float = 0.2, tag: str = ""):
    await asyncio.sleep(delay)
    return {"tag": tag}
