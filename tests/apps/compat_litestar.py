"""Litestar, one route: a row of the subinterpreter compatibility table (refused:
msgspec's C extension cannot load in a subinterpreter)."""

from litestar import Litestar, get


@get("/")
async def index() -> dict:
    return {"framework": "litestar"}


app = Litestar([index])
