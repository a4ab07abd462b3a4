"""What needs the h2 library to begin an HTTP/2 connection: h2's connection object
with our settings, its first frames, and looks into it.  Imported with the first
HTTP/2 connection a shard takes, not before (``support.py`` stays light): a shard
that never speaks HTTP/2 never loads h2, hpack and hyperframe (about 1.6 MB each).
"""

from __future__ import annotations

import http
from typing import TYPE_CHECKING

import h2.connection
import h2.settings
from h2.config import H2Configuration
from h2.settings import SettingCodes

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


class _ServerConnection(h2.connection.H2Connection):
    """h2's connection, minus its own concurrent-stream check: h2 fails the whole
    connection for one stream too many; H2Connection refuses that stream alone
    (REFUSED_STREAM), from the reset budget."""

    @property
    def open_inbound_streams(self) -> int:
        self._open_streams(0)  # (h2 prunes closed streams while counting)
        return 0


def new_h2(settings: Http2) -> h2.connection.H2Connection:
    conn = _ServerConnection(config=H2_CONFIG)
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
