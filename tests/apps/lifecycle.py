"""Apps for tests/test_supervision.py: shards that are killed, replaced, rolled, resized.

``app`` dispatches on the request path:

- ``/`` (any other path): JSON ``{"pid": ..., "value": ...}``; ``value`` is read at
  import time from the file named by ``$LIFECYCLE_VALUE_FILE`` (None without it), so
  a rolling restart that re-imports the app serves the file's new contents.
- ``/slow?seconds=S``: answers after ``await asyncio.sleep(S)``.
- ``/block?seconds=S``: blocks the shard's event loop with ``time.sleep(S)``.
- ``/control?kind=K``: writes a malformed message on the shard's own control channel
  (``garbage``: not JSON; ``wrong_type``: a heartbeat whose ``index`` is a string;
  ``huge``: a frame header announcing 0xFFFFFFFF bytes; ``other_index``: a well-formed
  heartbeat carrying another shard's index; ``stats_new_method``: Stats counting a
  method outside the fixed list; ``stats_bad_buckets``: Stats whose latency histogram
  does not have the fixed buckets).

``/slow`` and ``/block`` print a ``LIFECYCLE ...`` line (with the pid) to stdout when
they begin, so a test knows the request is in flight and which shard has it.

``crashy`` is ``app`` whose shards, 0.3 s after lifespan startup (so after they are
ready), exit with code 7 if the file named by ``$LIFECYCLE_CRASH_MARKER`` exists
(else they print ``LIFECYCLE no crash marker; staying up [PID]``): shards that
checked before the marker was created live on, those started after it die.

``startup_failed`` reports ``lifespan.startup.failed`` with the message
``LIFECYCLE-STARTUP-FAIL: cache unavailable``.

Lifespan startup (``app``, ``crashy``) takes ``$LIFECYCLE_STARTUP_DELAY`` seconds
(default 0): a slow-starting replacement.

Importing this module raises ``RuntimeError($LIFECYCLE_IMPORT_FAIL)`` when that
variable is set: an app that cannot be imported.
"""

import asyncio
import gc
import json
import os
import struct
import time
from urllib.parse import parse_qs

if os.environ.get("LIFECYCLE_IMPORT_FAIL"):
    raise RuntimeError(os.environ["LIFECYCLE_IMPORT_FAIL"])

CRASH_DELAY = 0.3
CRASH_CODE = 7
STARTUP_FAILURE = "LIFECYCLE-STARTUP-FAIL: cache unavailable"


def _read_value():
    path = os.environ.get("LIFECYCLE_VALUE_FILE")
    if not path:
        return None
    with open(path, encoding="utf-8") as file:
        return file.read().strip()


VALUE = _read_value()


def _query(scope) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return {key: values[-1] for key, values in parse_qs(raw).items()}


async def _drain(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            return


async def _json(send, data, status: int = 200) -> None:
    body = json.dumps(data).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _say(text: str) -> None:
    print(f"LIFECYCLE {text} [{os.getpid()}]", flush=True)


# The shard's control channel, found the way a misbehaving app could find it ----------------


def _live(type_name: str, module: str) -> list:
    gc.unfreeze()  # (a shard freezes what it holds once started: get_objects skips that)
    return [
        o
        for o in gc.get_objects()
        if type(o).__name__ == type_name and type(o).__module__ == module
    ]


def _closure_value(func, name: str):
    code = getattr(func, "__code__", None)
    if code is None or name not in code.co_freevars or func.__closure__ is None:
        return None
    return func.__closure__[code.co_freevars.index(name)].cell_contents


def _frame(data) -> bytes:
    payload = data if isinstance(data, bytes) else json.dumps(data).encode()
    return struct.pack(">I", len(payload)) + payload


async def _control(scope, send) -> None:
    kind = _query(scope).get("kind", "")
    channels = [c for c in _live("Channel", "shardserve.control") if not c.closed]
    shards = _live("Shard", "shardserve.shard.server")
    if len(channels) != 1 or len(shards) != 1:
        await _json(send, {"error": f"{len(channels)} channels, {len(shards)} shards"}, 500)
        return
    channel, shard = channels[0], shards[0]
    index = shard.index
    generation = _closure_value(shard.on_second, "generation")
    if not isinstance(generation, int):
        generation = 1
    if kind == "garbage":
        raw = _frame(b"\x00{this is not: JSON at all,,")
    elif kind == "wrong_type":
        raw = _frame({"type": "heartbeat", "index": str(index), "generation": generation})
    elif kind == "huge":
        raw = struct.pack(">I", 0xFFFFFFFF) + b"x" * 32
    elif kind == "stats_new_method":  # well-formed, but would mint a new series
        stats = {"type": "stats", "index": index, "generation": generation}
        raw = _frame({**stats, "responses": {"BREW": [1] * 10}, "latency": [0] * 17})
    elif kind == "stats_bad_buckets":
        raw = _frame({"type": "stats", "index": index, "generation": generation, "latency": [1]})
    elif kind == "other_index":
        other = (index + 1) % max(shard.config.shards or 2, 2)
        raw = _frame({"type": "heartbeat", "index": other, "generation": generation})
    else:
        await _json(send, {"error": f"unknown kind {kind!r}"}, 400)
        return
    channel.sock.sendall(raw)
    await _json(send, {"pid": os.getpid(), "index": index, "generation": generation, "kind": kind})


# Apps --------------------------------------------------------------------------------------


async def _lifespan(receive, send, on_startup=None) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            delay = float(os.environ.get("LIFECYCLE_STARTUP_DELAY") or 0)
            if delay:
                await asyncio.sleep(delay)
            if on_startup is not None:
                on_startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    await _drain(receive)
    path = scope["path"]
    query = _query(scope)
    if path == "/slow":
        seconds = float(query.get("seconds", "1.5"))
        _say(f"slow request started, {seconds} s")
        await asyncio.sleep(seconds)
        await _json(send, {"pid": os.getpid(), "slept": seconds})
    elif path == "/block":
        seconds = float(query.get("seconds", "8"))
        _say(f"blocking the event loop for {seconds} s")
        time.sleep(seconds)
        await _json(send, {"pid": os.getpid(), "blocked": seconds})
    elif path == "/control":
        await _control(scope, send)
    else:
        await _json(send, {"pid": os.getpid(), "value": VALUE})


def _crash_if_marked() -> None:
    marker = os.environ.get("LIFECYCLE_CRASH_MARKER")
    if marker and os.path.exists(marker):
        _say("crash marker found; exiting")
        os._exit(CRASH_CODE)
    _say("no crash marker; staying up")


def _arm_crash() -> None:
    asyncio.get_running_loop().call_later(CRASH_DELAY, _crash_if_marked)


async def crashy(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, on_startup=_arm_crash)
        return
    await app(scope, receive, send)


async def startup_failed(scope, receive, send):
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed", "message": STARTUP_FAILURE})
        return
    await app(scope, receive, send)
