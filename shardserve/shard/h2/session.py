"""What needs the h2 library to begin an HTTP/2 connection: h2's connection object
with our settings, its first frames, and looks into it.  Imported with the first
HTTP/2 connection a shard takes, not before (``support.py`` stays light): a shard
that never speaks HTTP/2 never loads h2, hpack and hyperframe (about 1.6 MB each).
"""

from __future__ import annotations

import http
import struct
from typing import TYPE_CHECKING

import h2.connection
import h2.settings
from h2.config import H2Configuration
from h2.connection import ConnectionInputs
from h2.settings import SettingCodes
from h2.stream import StreamInputs

from .codec import LeanDecoder, LeanEncoder

if TYPE_CHECKING:
    from ..state import ShardState
    from .connection import H2Connection
    from .support import Http2

# h2's default connection window (RFC 9113 6.9.2): ours is raised from it at once.
DEFAULT_WINDOW = 65535
# h2 checks nothing we check ourselves (request.py), and nothing outbound.
H2_CONFIG = H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    split_outbound_cookies=False,
)


# A frame's 9-byte head (RFC 9113 4.1): length (24 bits), type, flags, stream id.
FRAME_HEAD = struct.Struct(">HBBBL")
DATA, HEADERS, CONTINUATION = 0x0, 0x1, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4
SEND_HEADERS, SEND_DATA, SEND_END_STREAM = (
    StreamInputs.SEND_HEADERS,
    StreamInputs.SEND_DATA,
    StreamInputs.SEND_END_STREAM,
)


class _ServerConnection(h2.connection.H2Connection):
    """h2's connection, with a server's two frequent sends made lean, and without its
    own concurrent-stream check: h2 fails the whole connection for one stream too
    many; H2Connection refuses that stream alone (REFUSED_STREAM), from the reset
    budget.

    ``send_response`` and ``send_body`` do what h2's send_headers and send_data do for
    a server's final response, trailers and body (the same state machines, windows and
    errors), without h2's per-call header normalising, frame objects and logging: about
    a third of an h2 request's time.  They use h2's stream table, state machines and
    output buffer, which is why the dependency is pinned below h2 5.
    """

    prune_at = 16

    @property
    def open_inbound_streams(self) -> int:
        # h2 forgets closed streams only while counting them: counted here once the
        # table has doubled since the last count, not for every new stream.
        if len(self.streams) > self.prune_at:
            self._open_streams(0)
            self.prune_at = 2 * len(self.streams) + 16
        return 0

    def send_response(self, stream_id: int, headers: list, end_stream: bool) -> None:
        if headers[0][0] == b":status" and headers[0][1][:1] == b"1":
            self.send_headers(stream_id, headers, end_stream=end_stream)  # (informational)
            return
        self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        machine = self._get_stream_by_id(stream_id).state_machine
        machine.process_input(SEND_HEADERS)
        if end_stream:
            machine.process_input(SEND_END_STREAM)
        block = self.encoder.encode(headers)
        limit = self.max_outbound_frame_size
        if len(block) <= limit:
            flags = END_HEADERS | END_STREAM if end_stream else END_HEADERS
            self._write_frame(HEADERS, flags, stream_id, block)
            return
        for start in range(0, len(block), limit):  # HEADERS, then CONTINUATIONs
            flags = END_STREAM if end_stream and not start else 0
            if start + limit >= len(block):
                flags |= END_HEADERS
            kind = CONTINUATION if start else HEADERS
            self._write_frame(kind, flags, stream_id, block[start : start + limit])

    def send_body(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """DATA the caller has fitted to the windows and the frame size (output.py)."""
        self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        stream = self._get_stream_by_id(stream_id)
        machine = stream.state_machine
        machine.process_input(SEND_DATA)
        if end_stream:
            machine.process_input(SEND_END_STREAM)
        stream.outbound_flow_control_window -= len(data)
        self.outbound_flow_control_window -= len(data)
        self._write_frame(DATA, END_STREAM if end_stream else 0, stream_id, data)

    def _write_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        size = len(payload)
        self._data_to_send += FRAME_HEAD.pack(size >> 8, size & 0xFF, kind, flags, stream_id)
        self._data_to_send += payload


def new_h2(settings: Http2) -> h2.connection.H2Connection:
    conn = _ServerConnection(config=H2_CONFIG)
    conn.encoder = LeanEncoder()
    conn.decoder = LeanDecoder()
    conn.local_settings = h2.settings.Settings(
        client=False,
        initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
            SettingCodes.MAX_FRAME_SIZE: settings.max_inbound_frame_size,
            SettingCodes.INITIAL_WINDOW_SIZE: settings.stream_window,
            SettingCodes.ENABLE_PUSH: 0,
        },
    )
    conn.max_inbound_frame_size = settings.max_inbound_frame_size
    conn.decoder.max_header_list_size = settings.max_header_list_size
    return conn


def initiate(conn: h2.connection.H2Connection, settings: Http2) -> None:
    conn.initiate_connection()
    if settings.connection_window > DEFAULT_WINDOW:
        conn.increment_flow_control_window(settings.connection_window - DEFAULT_WINDOW)


def header_block_pending(connection: H2Connection) -> bool:
    """Whether a header block is still arriving (HEADERS without END_HEADERS, and its
    CONTINUATIONs); past ``header_block_bytes`` the connection is calmed.  (h2 keeps
    the frames in its frame buffer's ``_headers_buffer``: read, not changed.)"""
    frames = getattr(connection.h2.incoming_buffer, "_headers_buffer", None)
    if not frames:
        return False
    if sum(len(frame.data) for frame in frames) > connection.settings.header_block_bytes:
        connection.calm("header block bytes (CONTINUATION flood)")
    return True


def canned(state: ShardState, status: int) -> tuple[list, bytes]:
    """(headers, body) of the server's own plain-text answer."""
    body = http.HTTPStatus(status).phrase.encode("ascii")
    headers = [
        (b":status", b"%d" % status),
        *state.h2_default_headers,
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
    ]
    return headers, body
