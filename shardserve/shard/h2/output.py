"""What an H2Connection writes: headers and body on a stream within the client's
windows (the rest held until WINDOW_UPDATE), the server's own answers, WINDOW_UPDATE
as the app consumes request body, and the flush of what h2 has queued.

A mixin of ``H2Connection`` (connection.py), which holds the state it uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from h2.exceptions import H2Error

from ..http.cycle import COMPLETE
from .session import canned

if TYPE_CHECKING:
    from .stream import H2Stream


# Body queued in h2 while a packet is being handled is written out past this much, so
# that the transport's write flow control sees it.
FLUSH_BYTES = 65536


class StreamOutput:
    __slots__ = ()

    def send_head(self, stream: H2Stream, headers: list, end: bool) -> None:
        if stream.ended:
            return
        try:
            self.h2.send_response(stream.stream_id, headers, end)
        except H2Error:  # the client reset the stream or ended the connection
            stream.on_reset()
            return
        if end:
            stream.ended = True
        if not self.feeding:
            self.flush()

    def send_data(self, stream: H2Stream, data: bytes, end: bool) -> None:
        """Send what the client's windows allow; hold the rest (the app's next send
        waits for it) until WINDOW_UPDATE lets it out."""
        if stream.ended:
            return
        try:
            sent = self._send_window(stream, data, end)
        except H2Error:  # the client reset the stream or ended the connection
            stream.on_reset()
            return
        if not sent:
            stream.blocked_since = self.state.now
            self.blocked[stream.stream_id] = stream
        if not self.feeding or self.unflushed > FLUSH_BYTES:
            self.flush()  # (so that a full transport pauses the app's next send)

    def _send_window(self, stream: H2Stream, data: bytes, end: bool) -> bool:
        """True if all of ``data`` went (and the end, if ``end``)."""
        h2 = self.h2
        stream_id = stream.stream_id
        size = len(data)
        sent = 0
        if size:
            self.sent_since_update = True
            self.unflushed += size
            frame_size = h2.max_outbound_frame_size
            while sent < size:
                window = min(h2.local_flow_control_window(stream_id), frame_size)
                if window <= 0:
                    stream.pending = data[sent:] if sent else data
                    stream.pending_end = end
                    return False
                chunk = data[sent : sent + window] if sent or window < size else data
                sent += len(chunk)
                h2.send_body(stream_id, chunk, end and sent == size)
        elif end:
            h2.send_body(stream_id, b"", True)
        stream.pending = None
        if end:
            stream.ended = True
        return True

    def _send_blocked(self) -> None:
        for stream_id, stream in tuple(self.blocked.items()):
            data, end = stream.pending, stream.pending_end
            try:
                sent = data is None or self._send_window(stream, data, end)
            except H2Error:
                stream.on_reset()
                sent = True
            if sent:
                del self.blocked[stream_id]
                stream.blocked_since = None
                stream.wake_writer()
                exchange = stream.exchange
                if stream.ended and (exchange is None or exchange.state == COMPLETE):
                    self._finish(stream)

    def send_canned(self, stream: H2Stream, status: int) -> None:
        """The server's own answer on one stream (plain text, the reason phrase)."""
        headers, body = canned(self.state, status)
        self.send_head(stream, headers, False)
        self.send_data(stream, body, True)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """``size`` bytes of body were consumed: let the client send as much again."""
        if self.closed:
            return
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except H2Error:
            return  # (the connection is ending: windows no longer matter)
        if not self.feeding:
            self.flush()

    def flush(self) -> None:
        self.unflushed = 0
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.transport.write(data)
            self.counters.bytes_out += len(data)
