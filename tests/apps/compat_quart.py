"""Quart, one route and one WebSocket: a row of the subinterpreter compatibility table."""

from quart import Quart, websocket

app = Quart(__name__)


@app.route("/")
async def index():
    return "hello from quart"


@app.websocket("/ws")
async def echo():
    while True:
        await websocket.send(f"quart:{await websocket.receive()}")
