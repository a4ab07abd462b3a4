"""The access log: one line per request, cheap enough to leave on.

With shardserve's own logging set-up the line goes into a list, written out by the
shard's ticker (at most a quarter second late) and at shutdown: no LogRecord, no
lock, no write system call per request.  Each write is whole lines of at most
PIPE_BUF bytes, so shards sharing one stdout pipe never split each other's lines.
When the user configures logging (--log-config), lines go through the
``shardserve.access`` logger as usual.
"""

from __future__ import annotations

import logging

from ..logs import DirectStreamHandler, colour

FORMAT = '%s - "%s %s HTTP/%s" %d'
# Characters per write: at most 4 bytes each in UTF-8, so within PIPE_BUF (4096).
ATOMIC_WRITE = 1024
# Status classes' ANSI colours, as uvicorn colours them.
STATUS_COLOURS = {1: "97", 2: "32", 3: "33", 4: "31", 5: "91"}


class AccessLog:
    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.stream = None
        self.prefix = ""
        self.lines: list[str] = []
        handlers = logger.handlers
        if (
            len(handlers) == 1
            and type(handlers[0]) is DirectStreamHandler
            and not logger.filters
            and not handlers[0].filters
            and not logger.propagate
        ):
            self.stream = handlers[0].stream
            self.prefix = handlers[0].prefix
            if handlers[0].use_colors:
                self.log = self._log_coloured  # (the plain path stays as lean as it was)

    def log(self, client: tuple | None, method: str, path: str, version: str, status: int) -> None:
        address = f"{client[0]}:{client[1]}" if client else "-"
        if self.stream is not None:
            line = f'{self.prefix}{address} - "{method} {path} HTTP/{version}" {status}\n'
            self.lines.append(line)
        else:
            self.logger.info(FORMAT, address, method, path, version, status)

    def _log_coloured(
        self, client: tuple | None, method: str, path: str, version: str, status: int
    ) -> None:
        """uvicorn's colours: the request line bold, the status by its class."""
        address = f"{client[0]}:{client[1]}" if client else "-"
        request = colour(f"{method} {path} HTTP/{version}", "1")
        shown = colour(str(status), STATUS_COLOURS.get(status // 100, "0"))
        self.lines.append(f'{self.prefix}{address} - "{request}" {shown}\n')

    def log_websocket(self, client: tuple | None, path: str, outcome: str) -> None:
        """'"WebSocket /path" [accepted]' (or [403], ...), as uvicorn writes it."""
        address = f"{client[0]}:{client[1]}" if client else "-"
        if self.stream is not None:
            self.lines.append(f'{self.prefix}{address} - "WebSocket {path}" [{outcome}]\n')
        else:
            self.logger.info('%s - "WebSocket %s" [%s]', address, path, outcome)

    def flush(self) -> None:
        lines = self.lines
        if not lines:
            return
        self.lines = []
        stream = self.stream
        try:
            stream.flush()  # whatever else was written to it goes first
            chunk: list[str] = []
            size = 0
            for line in lines:
                if chunk and size + len(line) > ATOMIC_WRITE:
                    stream.write("".join(chunk))
                    stream.flush()
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            stream.write("".join(chunk))
            stream.flush()
        except (OSError, ValueError):
            pass
