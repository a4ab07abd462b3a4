"""A small raw HTTP/2 client for frame-level tests (tests/test_h2*.py).

Built on the ``h2`` library's client state machine (``H2Connection(client_side=True,
header_encoding=None)``) over a real socket (TCP, Unix or TLS with ALPN ``h2``), plus
hand-made frames (``hyperframe``) for whatever h2 refuses to write: malformed header
blocks, header blocks that never end, PRIORITY and empty DATA floods.

Everything the server sends is also parsed frame by frame independently of h2, so
GOAWAY and RST_STREAM codes are recorded even if the server sends something that h2's
state machine rejects (then ``h2_error`` says what, and h2 is no longer fed).

All I/O is non-blocking under ``select`` with a deadline: the client never blocks
longer than the timeout it is given, and reads whatever arrives while it writes, so
neither side can deadlock the other by not reading.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
from h2.connection import AllowedStreamIDs, ConnectionInputs
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from h2.stream import StreamInputs
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
NO_ERROR = ErrorCodes.NO_ERROR
PROTOCOL_ERROR = ErrorCodes.PROTOCOL_ERROR
FLOW_CONTROL_ERROR = ErrorCodes.FLOW_CONTROL_ERROR
REFUSED_STREAM = ErrorCodes.REFUSED_STREAM
CANCEL = ErrorCodes.CANCEL
ENHANCE_YOUR_CALM = ErrorCodes.ENHANCE_YOUR_CALM

__all__ = [
    "CANCEL",
    "ENHANCE_YOUR_CALM",
    "FLOW_CONTROL_ERROR",
    "NO_ERROR",
    "PREFACE",
    "PROTOCOL_ERROR",
    "REFUSED_STREAM",
    "ContinuationFrame",
    "DataFrame",
    "GoAway",
    "H2Client",
    "PingFrame",
    "PriorityFrame",
    "Response",
    "SettingCodes",
    "SettingsFrame",
    "WindowUpdateFrame",
]


@dataclass
class GoAway:
    error_code: int
    last_stream_id: int
    debug: bytes
    at: float


@dataclass
class Response:
    """What arrived on one stream."""

    stream_id: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] | None = None
    ended: bool = False
    reset: int | None = None  # the server's RST_STREAM code
    data_frames: int = 0

    @property
    def status(self) -> int | None:
        for name, value in self.headers:
            if name == b":status":
                return int(value)
        return None

    def header(self, name: str | bytes) -> bytes | None:
        key = name.encode() if isinstance(name, str) else name
        for k, v in self.headers:
            if k == key:
                return v
        return None

    def header_all(self, name: str | bytes) -> list[bytes]:
        key = name.encode() if isinstance(name, str) else name
        return [v for k, v in self.headers if k == key]

    @property
    def body(self) -> bytes:
        return bytes(self.data)

    def __repr__(self) -> str:
        return (
            f"<Response stream={self.stream_id} status={self.status} ended={self.ended} "
            f"reset={self.reset} headers={self.headers} body={bytes(self.data[:80])!r} "
            f"({len(self.data)} bytes) trailers={self.trailers}>"
        )


class H2Client:
    """One HTTP/2 connection to a server under test.

    ``settings``: the client's SETTINGS (e.g. ``{SettingCodes.INITIAL_WINDOW_SIZE: 0}``).
    ``auto_ack``: give back flow-control window as response data arrives (off: the test
    opens windows itself with ``open_window``).  ``validate``: let h2 check the headers
    the client sends (off: any header list goes out as given, in order, unnormalised).
    """

    def __init__(
        self,
        target: tuple[str, int] | str,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str = "localhost",
        settings: dict | None = None,
        validate: bool = True,
        auto_ack: bool = True,
        timeout: float = 5.0,
        preface: bool = True,
        rcvbuf: int | None = None,
    ) -> None:
        self.timeout = timeout
        self.auto_ack = auto_ack
        if isinstance(target, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        try:
            sock.connect(target)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=server_hostname)
        except BaseException:
            sock.close()
            raise
        self.alpn = sock.selected_alpn_protocol() if tls is not None else None
        sock.setblocking(False)
        self.sock = sock
        self.tls = tls is not None

        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=validate,
            normalize_outbound_headers=validate,
            split_outbound_cookies=False,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        if settings:
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={int(k): v for k, v in settings.items()}
            )
        self.h2_error: BaseException | None = None
        self.out = bytearray()
        self.closed = False
        self.reset_by_peer = False
        self.closed_at: float | None = None
        self.sent_bytes = 0
        self.received_bytes = 0
        # Independent frame parse of everything received.
        self._inbuf = bytearray()
        self.frames: list[Frame] = []
        self.frame_counts: dict[str, int] = {}
        self.goaways: list[GoAway] = []
        self.resets: dict[int, int] = {}  # stream id -> the server's RST_STREAM code
        self.server_settings: dict[int, int] | None = None
        self.settings_acks = 0
        self.ping_acks = 0
        self.window_updates: list[tuple[int, int]] = []  # (stream id, increment)
        self.responses: dict[int, Response] = {}
        self.events: list[h2.events.Event] = []
        self.keep_frames = True
        if preface:
            self.conn.initiate_connection()

    # -- construction helpers ---------------------------------------------------------

    @classmethod
    def to(cls, server, **kwargs) -> H2Client:
        """A client for a ``serving.Server`` (TLS if it serves https: pass ``tls``)."""
        return cls((server.host, server.port), **kwargs)

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        self.closed = True

    # -- sending ------------------------------------------------------------------------

    def _take_h2_output(self) -> None:
        if self.h2_error is None:
            data = self.conn.data_to_send()
            if data:
                self.out += data
        else:
            self.conn.clear_outbound_data_buffer()

    def send_raw(self, data: bytes | Frame) -> None:
        """Queue bytes (or a hyperframe Frame) after whatever h2 has queued."""
        self._take_h2_output()
        self.out += data.serialize() if isinstance(data, Frame) else data

    def next_stream_id(self) -> int:
        return self.conn.get_next_available_stream_id()

    def request_headers(
        self,
        path: str = "/",
        method: str = "GET",
        headers: list | tuple = (),
        authority: str = "localhost",
        scheme: str | None = None,
    ) -> list[tuple[bytes, bytes]]:
        if scheme is None:
            scheme = "https" if self.tls else "http"
        base = [
            (b":method", method.encode()),
            (b":scheme", scheme.encode()),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
        ]
        return base + [(_b(k), _b(v)) for k, v in headers]

    def start(
        self,
        path: str = "/",
        method: str = "GET",
        headers: list | tuple = (),
        *,
        end_stream: bool = True,
        authority: str = "localhost",
    ) -> int:
        """Open a stream through h2 and queue its HEADERS; returns its id."""
        sid = self.conn.get_next_available_stream_id()
        self.responses[sid] = Response(sid)
        self.conn.send_headers(
            sid,
            self.request_headers(path, method, headers, authority),
            end_stream=end_stream,
        )
        return sid

    def send_headers_raw(
        self,
        headers: list,
        *,
        end_stream: bool = True,
        end_headers: bool = True,
        stream_id: int | None = None,
        frame_size: int = 16384,
    ) -> int:
        """Open a stream with a header block h2 would not write (any names, any order),
        HPACK-encoded by h2's own encoder so the server's decoder stays in step."""
        sid = stream_id or self.conn.get_next_available_stream_id()
        block = self.conn.encoder.encode([(_b(k), _b(v)) for k, v in headers])
        pieces = [block[i : i + frame_size] for i in range(0, len(block), frame_size)] or [b""]
        first = HeadersFrame(sid, data=pieces[0])
        if end_stream:
            first.flags.add("END_STREAM")
        if len(pieces) == 1 and end_headers:
            first.flags.add("END_HEADERS")
        self.send_raw(first)
        for index, piece in enumerate(pieces[1:], 2):
            frame = ContinuationFrame(sid, data=piece)
            if index == len(pieces) and end_headers:
                frame.flags.add("END_HEADERS")
            self.send_raw(frame)
        self._adopt(sid, headers, end_stream)
        self.responses.setdefault(sid, Response(sid))
        return sid

    def _adopt(self, sid: int, headers: list, end_stream: bool) -> None:
        """Tell h2's state machine about a stream opened by hand, so that it takes the
        server's answer on it (h2 has no public way: this reaches into it)."""
        if sid in self.conn.streams or sid <= self.conn.highest_outbound_stream_id:
            return
        try:
            self.conn.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
            stream = self.conn._begin_new_stream(sid, AllowedStreamIDs.ODD)
            stream.state_machine.process_input(StreamInputs.SEND_HEADERS)
            if end_stream:
                stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
            methods = [_b(v) for k, v in headers if _b(k) == b":method"]
            stream.request_method = methods[0] if methods else b"GET"
        except (h2.exceptions.H2Error, AttributeError):
            # At least keep later h2 streams above this one.
            self.conn.highest_outbound_stream_id = max(self.conn.highest_outbound_stream_id, sid)

    def send_body(
        self, sid: int, data: bytes, *, end_stream: bool = True, timeout: float | None = None
    ) -> int:
        """Send ``data`` on a stream as the server's windows allow; returns bytes sent
        (fewer than ``len(data)`` if the windows stay shut until the timeout)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        view = memoryview(data)
        sent = 0
        for _ in range(1_000_000):
            if self.h2_error is not None or self.closed:
                break
            window = self.conn.local_flow_control_window(sid)
            chunk = min(window, self.conn.max_outbound_frame_size, len(view) - sent)
            if chunk > 0:
                last = sent + chunk == len(view)
                self.conn.send_data(
                    sid, bytes(view[sent : sent + chunk]), end_stream=last and end_stream
                )
                sent += chunk
                if last:
                    break
                if len(self.out) > 262144:
                    self.flush(deadline)
                continue
            if len(view) == 0:
                if end_stream:
                    self.conn.end_stream(sid)
                break
            # Window shut: write what is queued and wait for WINDOW_UPDATE.
            before = self.conn.local_flow_control_window(sid)
            self.run(lambda b=before: self.conn.local_flow_control_window(sid) > b, deadline)
            if self.conn.local_flow_control_window(sid) <= before:
                break
        self.flush(deadline)
        return sent

    def request(
        self,
        path: str = "/",
        method: str = "GET",
        headers: list | tuple = (),
        body: bytes | None = None,
        authority: str = "localhost",
    ) -> int:
        sid = self.start(path, method, headers, end_stream=body is None, authority=authority)
        if body is not None:
            self.send_body(sid, body)
        else:
            self.flush()
        return sid

    def get(self, path: str = "/", timeout: float | None = None, **kwargs) -> Response:
        """One complete request and its response."""
        sid = self.request(path, **kwargs)
        return self.response(sid, timeout)

    def reset(self, sid: int, code: int = CANCEL) -> None:
        self.conn.reset_stream(sid, code)

    def open_window(self, increment: int, sid: int | None = None) -> None:
        """WINDOW_UPDATE by ``increment`` on a stream (and the connection if ``sid`` is
        None)."""
        self.conn.increment_flow_control_window(increment, sid)

    def ping(self, data: bytes = b"12345678") -> None:
        self.conn.ping(data)

    # -- the I/O engine -------------------------------------------------------------

    def _recv(self) -> None:
        for _ in range(64):
            try:
                data = self.sock.recv(262144)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
                self._closed(reset=True)
                return
            except ssl.SSLError:
                self._closed(reset=True)
                return
            if not data:
                self._closed()
                return
            self.received_bytes += len(data)
            self._feed(data)
            if not (self.tls and self.sock.pending()):
                return

    def _send_some(self) -> None:
        try:
            count = self.sock.send(self.out[:262144])
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, ssl.SSLError):
            self._recv()  # what the server wrote before it went (its GOAWAY) may be there
            self._closed(reset=True)
            return
        del self.out[:count]
        self.sent_bytes += count

    def _closed(self, reset: bool = False) -> None:
        if not self.closed:
            self.closed = True
            self.closed_at = time.monotonic()
        self.reset_by_peer = self.reset_by_peer or reset

    def run(self, until=None, deadline: float | None = None, *, write: bool = True) -> bool:
        """Write what is queued and read what arrives until ``until()`` is true (and
        everything queued is written), the connection closes or the deadline passes.
        Returns whether ``until()`` held (True when there is no ``until`` and all was
        written).  With ``write=False`` nothing is written: a client that only reads."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        for _ in range(10_000_000):
            if write:
                self._take_h2_output()
            done = until() if until is not None else True
            if done and (not write or not self.out):
                return True
            if self.closed:
                return bool(done)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            want_write = write and bool(self.out)
            if self.tls and self.sock.pending():
                readable = [self.sock]
                writable = []
            else:
                readable, writable, _ = select.select(
                    [self.sock], [self.sock] if want_write else [], [], min(remaining, 0.05)
                )
            if readable:
                self._recv()
            if writable and not self.closed:
                self._send_some()
        return False

    def flush(self, deadline: float | None = None) -> bool:
        """Write everything queued (reading meanwhile)."""
        return self.run(None, deadline)

    def pump(self, seconds: float) -> None:
        """Keep reading (and writing what is queued) for ``seconds``."""
        end = time.monotonic() + seconds
        self.run(lambda: False, end)

    def wait(self, until, timeout: float | None = None) -> bool:
        return self.run(until, time.monotonic() + (self.timeout if timeout is None else timeout))

    def response(self, sid: int, timeout: float | None = None) -> Response:
        """Wait for a stream to end (or be reset); AssertionError with what was seen if not."""
        response = self.responses.setdefault(sid, Response(sid))
        self.wait(lambda: response.ended or response.reset is not None, timeout)
        if not (response.ended or response.reset is not None):
            raise AssertionError(f"stream {sid} did not end: {self.describe()} {response!r}")
        return response

    def wait_goaway(self, timeout: float | None = None) -> GoAway | None:
        self.wait(lambda: bool(self.goaways), timeout)
        return self.goaways[0] if self.goaways else None

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Read until the server closes the connection (True) or the timeout passes."""
        self.wait(lambda: self.closed, timeout)
        return self.closed

    def handshake(self, timeout: float | None = None) -> dict[int, int]:
        """Wait for the server's SETTINGS; returns them."""
        self.wait(lambda: self.server_settings is not None, timeout)
        assert self.server_settings is not None, f"no SETTINGS from the server: {self.describe()}"
        return self.server_settings

    def describe(self) -> str:
        return (
            f"closed={self.closed} reset_by_peer={self.reset_by_peer} goaways={self.goaways} "
            f"resets={self.resets} h2_error={self.h2_error!r} frames={self.frame_counts} "
            f"sent={self.sent_bytes} received={self.received_bytes}"
        )

    # -- what arrives ---------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        # h2 is fed whole frames, GOAWAY excepted: on GOAWAY h2's state machine closes
        # and rejects the responses that may (RFC 9113 6.8) still follow on the streams
        # the GOAWAY lets finish.  GOAWAY is recorded by the frame parser instead.
        data = self._parse_frames(data)
        if self.h2_error is not None or not data:
            return
        try:
            events = self.conn.receive_data(data)
        except (h2.exceptions.H2Error, ValueError) as exc:
            self.h2_error = exc
            self.conn.clear_outbound_data_buffer()  # do not answer with h2's GOAWAY
            return
        for event in events:
            self._on_event(event)

    def _on_event(self, event: h2.events.Event) -> None:
        if len(self.events) < 10000:
            self.events.append(event)
        sid = getattr(event, "stream_id", None)
        response = self.responses.setdefault(sid, Response(sid)) if sid else None
        if isinstance(event, h2.events.ResponseReceived | h2.events.InformationalResponseReceived):
            if isinstance(event, h2.events.ResponseReceived):
                response.headers = list(event.headers)
        elif isinstance(event, h2.events.TrailersReceived):
            response.trailers = list(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            response.data += event.data
            response.data_frames += 1
            if self.auto_ack and event.flow_controlled_length:
                with contextlib.suppress(h2.exceptions.H2Error):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, h2.events.StreamEnded):
            response.ended = True
        elif (
            isinstance(event, h2.events.StreamReset)
            and event.remote_reset
            and response.reset is None
        ):
            response.reset = event.error_code

    def _parse_frames(self, data: bytes) -> bytes:
        """Parse and record every complete frame; returns them (GOAWAY left out) for h2."""
        self._inbuf += data
        for_h2 = bytearray()
        for _ in range(1_000_000):
            if len(self._inbuf) < 9:
                break
            try:
                frame, length = Frame.parse_frame_header(memoryview(self._inbuf[:9]))
            except Exception:  # noqa: BLE001 - an unparseable header: let h2 judge it
                for_h2 += self._inbuf
                self._inbuf.clear()
                break
            if len(self._inbuf) < 9 + length:
                break
            if not isinstance(frame, GoAwayFrame):
                for_h2 += self._inbuf[: 9 + length]
            body = bytes(self._inbuf[9 : 9 + length])
            del self._inbuf[: 9 + length]
            name = type(frame).__name__
            self.frame_counts[name] = self.frame_counts.get(name, 0) + 1
            try:
                frame.parse_body(memoryview(body))
            except Exception:  # noqa: BLE001 - recorded by name only
                continue
            if self.keep_frames and len(self.frames) < 5000:
                self.frames.append(frame)
            if isinstance(frame, GoAwayFrame):
                self.goaways.append(
                    GoAway(
                        frame.error_code,
                        frame.last_stream_id,
                        frame.additional_data,
                        time.monotonic(),
                    )
                )
            elif isinstance(frame, RstStreamFrame):
                self.resets.setdefault(frame.stream_id, frame.error_code)
                response = self.responses.get(frame.stream_id)
                if response is not None and response.reset is None:
                    response.reset = frame.error_code
            elif isinstance(frame, SettingsFrame):
                if "ACK" in frame.flags:
                    self.settings_acks += 1
                elif self.server_settings is None:
                    self.server_settings = dict(frame.settings)
            elif isinstance(frame, PingFrame):
                if "ACK" in frame.flags:
                    self.ping_acks += 1
            elif isinstance(frame, WindowUpdateFrame):
                self.window_updates.append((frame.stream_id, frame.window_increment))
        return bytes(for_h2)

    def window_update_total(self, sid: int) -> int:
        return sum(inc for s, inc in self.window_updates if s == sid)


def _b(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("latin-1")


def padding_block(size: int) -> bytes:
    """An HPACK block of literal, never-indexed headers about ``size`` bytes long
    (decodable, and changing no dynamic table)."""
    encoder = hpack.Encoder()
    one = encoder.encode([hpack.NeverIndexedHeaderTuple(b"x-pad", b"a" * 1000)], huffman=False)
    return one * max(1, size // len(one))
