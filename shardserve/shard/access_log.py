"""The access log: one line per request, cheap enough to leave on.

With shardserve's own logging set-up the line goes straight into stdout's buffer,
flushed by the shard's ticker (at most a quarter second late) and at shutdown: no
LogRecord, no lock, no write system call per request.  When the user configures
logging (--log-config), lines go through the ``shardserve.access`` logger as usual.
"""

from __future__ import annotations

import logging

from ..logs import DirectStreamHandler

FORMAT = '%s - "%s %s HTTP/%s" %d'


class AccessLog:
    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.stream = None
        self.prefix = ""
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

    def log(self, client: tuple | None, method: str, path: str, version: str, status: int) -> None:
        address = f"{client[0]}:{client[1]}" if client else "-"
        stream = self.stream
        if stream is not None:
            stream.write(f'{self.prefix}{address} - "{method} {path} HTTP/{version}" {status}\n')
        else:
            self.logger.info(FORMAT, address, method, path, version, status)

    def flush(self) -> None:
        if self.stream is not None:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                pass
