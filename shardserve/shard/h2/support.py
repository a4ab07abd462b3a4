"""HTTP/2 for one shard: its settings (from Config, once) and how a connection comes
to speak it: ALPN "h2" over TLS, or the connection preface in cleartext (prior
knowledge, as h2load, envoy, gRPC clients and ``curl --http2-prior-knowledge`` do).
``Upgrade: h2c`` (deprecated by RFC 9113) is not offered: such requests are HTTP/1.1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...config import Config
    from ..http.protocol import HttpConnection
    from ..state import ShardState
    from .connection import H2Connection

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Http2:
    """One per shard, when --http2 is on: the settings, from Config, once."""

    def __init__(self, config: Config) -> None:
        self.max_concurrent_streams = config.h2_max_concurrent_streams
        self.max_header_list_size = config.h2_max_header_list_size
        self.max_inbound_frame_size = config.h2_max_inbound_frame_size
        self.stream_window = config.h2_initial_stream_window_size
        self.connection_window = config.h2_initial_connection_window_size
        # A header block still arriving may hold this many compressed bytes: HPACK
        # compresses at best about 5:8 per byte, so more cannot decode within the limit.
        self.header_block_bytes = 2 * self.max_header_list_size + self.max_inbound_frame_size

    @staticmethod
    def negotiated(transport) -> bool:
        """Whether TLS's ALPN chose h2."""
        ssl_object = transport.get_extra_info("ssl_object")
        return ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"

    def sniffer(self, conn: HttpConnection, parser) -> PrefaceSniffer:
        return PrefaceSniffer(conn, parser)

    def take_over(self, state: ShardState, transport, scheme: str) -> H2Connection:
        """Hand the transport to a new H2Connection: over TLS from ``connection_made``,
        in cleartext from ``data_received`` (the preface), as a WebSocket upgrade does."""
        from .connection import H2Connection  # (h2 loads with the first one)

        connection = H2Connection(state, self, scheme)
        transport.set_protocol(connection)
        connection.connection_made(transport)
        return connection


class PrefaceSniffer:
    """Stands in for a cleartext HttpConnection's parser until its first bytes show
    HTTP/2's connection preface (then an H2Connection takes over) or anything else
    (then the real parser gets them).  At most 24 bytes are held."""

    __slots__ = ("conn", "parser", "seen")

    def __init__(self, conn: HttpConnection, parser) -> None:
        self.conn = conn
        self.parser = parser
        self.seen = b""

    def release(self) -> None:
        release = getattr(self.parser, "release", None)
        if release is not None:
            release()

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
