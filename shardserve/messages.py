"""Every message between the coordinator, its shards and its template, defined once.

Messages are plain dataclasses so that any shard can build them, including one that
cannot import msgspec (a subinterpreter shard).  On the wire each is one JSON object
with a ``"type"`` tag, carried in a length-prefixed frame (see ``control.py``);
file descriptors (``Adopt``, ``Spawn``) travel beside the frame, not in it.  The
codec is swappable: ``MsgspecCodec`` validates every field against the dataclass
(the coordinator always uses it); ``JsonCodec`` needs only the standard library.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

# (What Stats break requests down by, and the latency buckets, are laid out with the
# counter table, counters.py; this schema's readers also find them here.)
from .counters import (  # noqa: F401
    LATENCY_BUCKETS,
    METHODS,
    OTHER_METHOD,
    STATUS_CLASSES,
    with_counts,
)


class MessageError(ValueError):
    """A frame that is not a valid message: the sender is not to be trusted."""


# Shard -> coordinator ------------------------------------------------------------------


@dataclass
class Ready:
    """The shard is serving (lifespan startup done, listeners open)."""

    TAG: ClassVar[str] = "ready"
    index: int
    pid: int
    generation: int


@dataclass
class Heartbeat:
    """Sent by the shard's event loop once a second: a loop that stops sending is stuck."""

    TAG: ClassVar[str] = "heartbeat"
    index: int
    generation: int


@dataclass
@with_counts
class Stats:
    """What the shard did since it started, sent once a second and when it stops.

    Besides the fields below, one field per entry of ``counters.COUNTS`` (added by
    ``with_counts``: ``requests: int = 0``, ``connections: int = 0``, ...,
    ``cpu_seconds: float = 0.0``): counters only grow within a generation, gauges
    (``open_connections``, ``active_requests``, ``ws_open``) are values now.
    ``responses`` maps a method (or "other") to counts indexed like STATUS_CLASSES;
    ``latency`` holds counts per bucket of LATENCY_BUCKETS plus the overflow bucket
    (not cumulative).
    """

    TAG: ClassVar[str] = "stats"
    index: int
    generation: int
    responses: dict[str, list[int]] = field(default_factory=dict)
    latency: list[int] = field(default_factory=list)
    pid: int = 0
    mode: str = "process"
    rss_bytes: int | None = None  # None for a subinterpreter: it shares its process
    uptime_seconds: float = 0.0


@dataclass
class Retire:
    """The shard asks to be replaced (it reached --limit-max-requests)."""

    TAG: ClassVar[str] = "retire"
    index: int
    generation: int
    reason: str


@dataclass
class Fatal:
    """The shard failed; ``starting`` is True if it never became ready."""

    TAG: ClassVar[str] = "fatal"
    index: int
    generation: int
    error: str
    starting: bool
    exit_code: int = 1


# Coordinator -> shard ------------------------------------------------------------------


@dataclass
class Configure:
    """The shard's instructions: the first message it receives."""

    TAG: ClassVar[str] = "config"
    index: int
    generation: int
    config: dict[str, Any]
    cpus: list[int] | None = None
    max_requests: int | None = None  # --limit-max-requests plus this shard's jitter
    heartbeat_seconds: float = 1.0


@dataclass
class Drain:
    """Stop accepting, finish in-flight requests (up to the grace timeout), then exit.

    ``close_idle`` closes idle keep-alive connections at once (shutdown); without it
    (a replaced shard) they get ``connection: close`` on their next response.
    """

    TAG: ClassVar[str] = "drain"
    close_idle: bool = True
    # An in-place upgrade: WebSocket sessions go on until the grace time is up (then
    # 1012), rather than being closed with 1012 at once.
    keep_websockets: bool = False


@dataclass
class Stop:
    """Exit now, abandoning in-flight requests."""

    TAG: ClassVar[str] = "stop"


@dataclass
class Adopt:
    """Also serve this listener (its file descriptor travels with the message)."""

    TAG: ClassVar[str] = "adopt"
    listener: int
    fds: list[int] = field(default_factory=list, metadata={"wire": False})

    @property
    def wanted_fds(self) -> int:
        return 1


# Coordinator <-> template process (coord/template.py) ------------------------------------


@dataclass
class Spawn:
    """Fork a shard; its control socket and listeners travel with the message."""

    TAG: ClassVar[str] = "spawn"
    index: int
    generation: int
    listeners: int
    # The shard's control socket, then its listeners.
    fds: list[int] = field(default_factory=list, metadata={"wire": False})

    @property
    def wanted_fds(self) -> int:
        return 1 + self.listeners


@dataclass
class Spawned:
    TAG: ClassVar[str] = "spawned"
    index: int
    generation: int
    pid: int


MESSAGE_TYPES: dict[str, type] = {
    cls.TAG: cls
    for cls in (
        Ready,
        Heartbeat,
        Stats,
        Retire,
        Fatal,
        Configure,
        Drain,
        Stop,
        Adopt,
        Spawn,
        Spawned,
    )
}

Message = (
    Ready | Heartbeat | Stats | Retire | Fatal | Configure | Drain | Stop | Adopt | Spawn | Spawned
)


def _wire_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("wire", True)]


def as_wire_dict(message: Any) -> dict[str, Any]:
    """The message as JSON-ready data; refuses what JSON cannot carry faithfully
    (inf and NaN, which msgspec would write as null; lone surrogates)."""
    data = {"type": message.TAG}
    for f in _wire_fields(type(message)):
        value = getattr(message, f.name)
        _check_carriable(value, f.name)
        data[f.name] = value
    return data


def _check_carriable(value: Any, where: str) -> None:
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise MessageError(f"{where}: {value} cannot be sent")
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise MessageError(f"{where}: not valid Unicode (use safe_text)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_carriable(key, where)
            _check_carriable(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            _check_carriable(item, where)


def _split(raw: Any) -> tuple[type, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise MessageError("a message must be a JSON object")
    tag = raw.pop("type", None)
    cls = MESSAGE_TYPES.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise MessageError(f"unknown message type {tag!r}")
    for f in dataclasses.fields(cls):
        if not f.metadata.get("wire", True):
            raw.pop(f.name, None)  # file descriptors never come from the bytes
    return cls, raw


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def safe_text(text: str) -> str:
    """A string any codec can carry: lone surrogates (from undecodable file names)
    become escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class JsonCodec:
    """Standard library only: for shards that cannot import msgspec."""

    name = "json"

    def encode(self, message: Any) -> bytes:
        try:
            text = json.dumps(as_wire_dict(message), separators=(",", ":"), allow_nan=False)
            return text.encode()
        except (ValueError, UnicodeEncodeError) as exc:
            raise MessageError(f"cannot encode {message.TAG}: {exc}") from None

    def decode(self, payload: bytes) -> Any:
        try:
            raw = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MessageError(f"not JSON: {exc}") from None
        _check_carriable(raw, "message")  # lone surrogates, as msgspec refuses them
        cls, fields = _split(raw)
        hints = typing.get_type_hints(cls)
        values = {}
        for f in _wire_fields(cls):
            if f.name in fields:
                value = fields[f.name]
                if not _matches(value, hints[f.name]):
                    raise MessageError(f"{cls.TAG}.{f.name}: unexpected {value!r}")
                values[f.name] = value
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise MessageError(f"{cls.TAG}: missing field {f.name!r}")
        return cls(**values)


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is bool:
        return type(value) is bool
    if hint is int:
        return type(value) is int
    if hint is float:
        return type(value) in (int, float)
    if hint is str:
        return type(value) is str
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(type(k) is str for k in value)
    return False


class MsgspecCodec:
    """Validating codec (msgspec): every field is checked against its type."""

    name = "msgspec"

    def __init__(self) -> None:
        import msgspec

        self._msgspec = msgspec
        self._encoder = msgspec.json.Encoder()

    def encode(self, message: Any) -> bytes:
        try:
            return self._encoder.encode(as_wire_dict(message))
        except (UnicodeEncodeError, TypeError) as exc:
            raise MessageError(f"cannot encode {message.TAG}: {exc}") from None

    def decode(self, payload: bytes) -> Any:
        msgspec = self._msgspec
        try:
            raw = msgspec.json.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise MessageError(f"not JSON: {exc}") from None
        cls, fields = _split(raw)
        try:
            return msgspec.convert(fields, cls)
        except msgspec.ValidationError as exc:
            raise MessageError(f"{cls.TAG}: {exc}") from None


def default_codec() -> JsonCodec | MsgspecCodec:
    try:
        return MsgspecCodec()
    except ImportError:
        return JsonCodec()
