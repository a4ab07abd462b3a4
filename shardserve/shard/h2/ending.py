"""How an H2Connection ends: gracefully (GOAWAY once no stream is in flight), on
its timeouts (idle, a window kept shut, a body or header block that stalls), or at
once (abuse: ENHANCE_YOUR_CALM; h2 finding the client in error).

A mixin of ``H2Connection`` (connection.py), which holds the state it uses.
"""

from __future__ import annotations

import logging

from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from .session import header_block_pending

logger = logging.getLogger("shardserve.error")

# A draining connection sends its GOAWAY (NO_ERROR, the last stream taken) when no
# stream is being answered, or after DRAIN_GOAWAY_SECONDS if it never is idle.  Not
# at once: clients built on h2 (httpx) fail every response still in flight once
# they have a GOAWAY, and RFC 9113's two-step GOAWAY (a first one naming stream
# 2^31-1, then a PING) fails them the same way.  After the GOAWAY the connection
# lingers until the client closes it, or for LINGER_SECONDS (closing at once could
# reset it before the client has read the GOAWAY); new streams are refused.
DRAIN_GOAWAY_SECONDS = 2.0
LINGER_SECONDS = 1.0
# A connection closed but not yet gone after this long is aborted.
CLOSE_SECONDS = 2.0


class ConnectionEnding:
    __slots__ = ()

    def calm(self, what: str) -> None:
        """Too much of something: GOAWAY with ENHANCE_YOUR_CALM, then close."""
        if self.closed:
            return
        logger.warning("HTTP/2 client %s sent too many %s: closing", _peer(self), what)
        self.counters.h2_floods += 1
        self.h2.close_connection(
            error_code=ErrorCodes.ENHANCE_YOUR_CALM,
            last_stream_id=self.h2.highest_inbound_stream_id,
        )
        self.flush()
        self.close()

    def _fail(self, counter: str, exc: Exception) -> None:
        """h2 found the client in error and has queued its GOAWAY: send it, close."""
        self.feeding = False
        setattr(self.counters, counter, getattr(self.counters, counter) + 1)
        logger.debug("HTTP/2 connection error: %s", exc)
        self.flush()
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.closed_at = self.state.now
            self.transport.close()

    def check_timeouts(self, now: float) -> None:
        state = self.state
        if self.closed:
            # Closed, and still not gone: uvloop's TLS transport waits up to 30 s for
            # the client's close_notify, reading nothing meanwhile (uvloop issue 471).
            if now - self.closed_at >= CLOSE_SECONDS:
                self.transport.abort()
            return
        if self.streams:
            limit = state.timeout_send
            if self.write_blocked_since is not None and now - self.write_blocked_since >= limit:
                self._timed_out("the client read nothing")
                return
            body_limit = state.timeout_request_body
            for stream in tuple(self.streams.values()):
                since = stream.blocked_since
                if since is not None and now - since >= limit:
                    self._timed_out("the client kept a window shut")
                    return
                since = stream.body_since
                if body_limit and since is not None and now - since >= body_limit:
                    self.counters.timeouts += 1
                    stream.body_since = None
                    self._reset(stream.stream_id, ErrorCodes.CANCEL)
                    self.flush()
                    stream.on_reset()  # (its app gets http.disconnect)
        elif now - self.idle_since >= state.timeout_keep_alive:
            self.drain(close_idle=True)
        if self.draining:
            if not self.refusing:
                if now - self.drain_since >= DRAIN_GOAWAY_SECONDS:
                    self._goaway()  # (never idle: the streams in flight still finish)
            elif not self.streams and now - self.drain_since >= LINGER_SECONDS:
                self.close()
        if self.closed:
            return
        if header_block_pending(self):
            since = self.header_block_since
            if since is None:
                self.header_block_since = now
            elif now - since >= state.timeout_request_header:
                self.counters.timeouts += 1
                self.close()  # (a header block that does not end: CONTINUATION trickle)
        else:
            self.header_block_since = None

    def _timed_out(self, why: str) -> None:
        logger.debug("HTTP/2 connection closed: %s for --timeout-send", why)
        self.counters.timeouts += 1
        self.transport.abort()
        self.closed = True

    def long_lived(self) -> bool:
        return False

    def drain(self, close_idle: bool) -> None:
        """End gracefully: the streams taken finish, the client opens new ones
        elsewhere.  GOAWAY goes once no stream is being answered (see
        DRAIN_GOAWAY_SECONDS); ``close_idle`` makes no difference."""
        if self.closed or self.draining:
            return
        self.draining = True
        self.drain_since = self.state.now
        if not self.streams:
            self._goaway()

    def _goaway(self) -> None:
        """Write a NO_ERROR GOAWAY naming the last stream taken, ourselves: h2's would
        end its state machine, and with it the streams still being answered."""
        if self.refusing or self.closed:
            return
        self.refusing = True
        self.drain_since = self.state.now  # (from now on: how long it lingers)
        self.flush()
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.h2.highest_inbound_stream_id or 0
        frame.error_code = ErrorCodes.NO_ERROR
        data = frame.serialize()
        self.transport.write(data)
        self.counters.bytes_out += len(data)

    def abort(self) -> None:
        for stream in tuple(self.streams.values()):
            exchange = stream.exchange
            if exchange is not None and exchange.task is not None:
                exchange.task.cancel()
        self.closed = True
        self.transport.abort()


def _peer(conn) -> str:
    client = conn.scope_template["client"] if conn.transport is not None else None
    return f"{client[0]}:{client[1]}" if client else "?"
