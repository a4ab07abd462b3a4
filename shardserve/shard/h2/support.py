"""HTTP/2 for one shard: its settings (from Config, once) and how a connection comes
to speak it: ALPN "h2" over TLS, or the connection preface in cleartext (prior
knowledge, as h2load, envoy, gRPC clients and ``curl --http2-prior-knowledge`` do).
``Upgrade: h2c`` (deprecated by RFC 9113) is not offered: such requests are HTTP/1.1.
"""

from __future__ import annotations

import http
from typing import TYPE_CHECKING

import h2.connection
import h2.settings
from h2.config import H2Configuration
from h2.settings import SettingCodes

from .connection import H2Connection

if TYPE_CHECKING:
    from ...config import Config
    from ..http.protocol import HttpConnection
    from ..state import ShardState

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ALPN_HTTP2 = ["h2", "http/1.1"]
ALPN_HTTP1 = ["http/1.1"]
# h2's default connection window (RFC 9113 6.9.2): ours is raised from it at once.
DEFAULT_WINDOW = 65535


class _ServerConnection(h2.connection.H2Connection):
    """h2's connection, minus its own concurrent-stream check: h2 fails the whole
    connection for one stream too many; H2Connection refuses that stream alone
    (REFUSED_STREAM), from the reset budget."""

    @property
    def open_inbound_streams(self) -> int:
        self._open_streams(0)  # (h2 prunes closed streams while counting)
        return 0


class Http2:
    """One per shard, when --http2 is on."""

    def __init__(self, config: Config) -> None:
        self.max_concurrent_streams = config.h2_max_concurrent_streams
        self.max_header_list_size = config.h2_max_header_list_size
        self.max_inbound_frame_size = config.h2_max_inbound_frame_size
        self.stream_window = config.h2_initial_stream_window_size
        self.connection_window = config.h2_initial_connection_window_size
        # A header block still arriving may hold this many compressed bytes: HPACK
        # compresses at best about 5:8 per byte, so more cannot decode within the limit.
        self.header_block_bytes = 2 * self.max_header_list_size + self.max_inbound_frame_size
        # h2 checks nothing we check ourselves (request.py), and nothing outbound.
        self.h2_config = H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            split_outbound_cookies=False,
        )
        self.local_settings = {
            SettingCodes.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: self.max_header_list_size,
            SettingCodes.MAX_FRAME_SIZE: self.max_inbound_frame_size,
            SettingCodes.INITIAL_WINDOW_SIZE: self.stream_window,
            SettingCodes.ENABLE_PUSH: 0,
        }

    # Which connections speak HTTP/2 ------------------------------------------------

    @staticmethod
    def negotiated(transport) -> bool:
        """Whether TLS's ALPN chose h2."""
        ssl_object = transport.get_extra_info("ssl_object")
        return ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"

    def sniffer(self, conn: HttpConnection, parser) -> PrefaceSniffer:
        return PrefaceSniffer(conn, parser)

    def take_over(self, state: ShardState, transport, data: bytes, scheme: str) -> None:
        """Hand the transport to a new H2Connection (with what arrived so far)."""
        connection = H2Connection(state, self, scheme)
        transport.set_protocol(connection)
        connection.connection_made(transport)
        if data:
            connection.data_received(data)

    # What each connection starts with ------------------------------------------------------

    def new_connection(self) -> h2.connection.H2Connection:
        conn = _ServerConnection(config=self.h2_config)
        conn.local_settings = h2.settings.Settings(client=False, initial_values=self.local_settings)
        conn.max_inbound_frame_size = self.max_inbound_frame_size
        conn.decoder.max_header_list_size = self.max_header_list_size
        return conn

    def initiate(self, conn: h2.connection.H2Connection) -> None:
        conn.initiate_connection()
        if self.connection_window > DEFAULT_WINDOW:
            conn.increment_flow_control_window(self.connection_window - DEFAULT_WINDOW)

    def header_block_pending(self, connection: H2Connection) -> bool:
        """Whether a header block is still arriving (HEADERS without END_HEADERS, and
        its CONTINUATIONs); past ``header_block_bytes`` the connection is calmed."""
        frames = getattr(connection.h2.incoming_buffer, "_headers_buffer", None)
        if not frames:
            return False
        if sum(len(frame.data) for frame in frames) > self.header_block_bytes:
            connection.calm("header block bytes (CONTINUATION flood)")
        return True

    @staticmethod
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


class PrefaceSniffer:
    """Stands in for a cleartext HttpConnection's parser until its first bytes show
    HTTP/2's connection preface (then an H2Connection takes over) or anything else
    (then the real parser gets them).  At most 24 bytes are held."""

    __slots__ = ("conn", "parser", "seen")

    def __init__(self, conn: HttpConnection, parser) -> None:
        self.conn = conn
        self.parser = parser
        self.seen = b""

    def feed(self, data: bytes) -> None:
        seen = self.seen + data if self.seen else bytes(data)
        if len(seen) < len(PREFACE) and PREFACE.startswith(seen):
            self.seen = seen
            return
        if seen.startswith(PREFACE):
            self.conn.switch_to_http2(seen)
            return
        self.conn.parser = self.parser
        self.parser.feed(seen)
