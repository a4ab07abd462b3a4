"""Logging set-up: uvicorn-style defaults, or the user's --log-config."""

from __future__ import annotations

import json
import logging
import sys

from .config import Config, ConfigError

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}


# ANSI colours of the level names, as uvicorn colours them.
LEVEL_COLOURS = {
    "TRACE": "34",
    "DEBUG": "36",
    "INFO": "32",
    "WARNING": "33",
    "ERROR": "31",
    "CRITICAL": "91",
}


def colour(text: str, code: str) -> str:
    return f"\x1b[{code}m{text}\x1b[0m"


class LevelPrefixFormatter(logging.Formatter):
    """'INFO:     message', as uvicorn users are used to reading; the level name
    coloured when ``use_colors`` (configure_logging decides: on a terminal)."""

    def __init__(self, fmt=None, datefmt=None, style="%", use_colors: bool = False) -> None:
        super().__init__(fmt, datefmt, style)
        self.use_colors = use_colors

    def level_prefix(self, levelname: str) -> str:
        padding = " " * max(8 - len(levelname), 0)
        if self.use_colors and levelname in LEVEL_COLOURS:
            return f"{colour(levelname, LEVEL_COLOURS[levelname])}:{padding}"
        return f"{levelname}:{padding}"

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        record.__dict__["levelprefix"] = self.level_prefix(record.levelname)
        return super().formatMessage(record)


class DirectStreamHandler(logging.StreamHandler):
    """The default access-log handler: the access log writes its lines to this
    handler's stream itself (see shard/access_log.py) and flushes it once per tick."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)

    @property
    def use_colors(self) -> bool:
        return bool(getattr(self.formatter, "use_colors", False))

    @property
    def prefix(self) -> str:
        """What starts each line the access log writes itself."""
        if isinstance(self.formatter, LevelPrefixFormatter):
            return self.formatter.level_prefix("INFO") + " "
        return "INFO:     "


FORMAT = "%(levelprefix)s %(message)s"


def configure_logging(config: Config) -> None:
    if config.log_config:
        _load_log_config(config.log_config)
    else:
        _configure_default(config)
    if config.log_level:
        level = LEVELS[config.log_level]
        for name in ("shardserve", "shardserve.error", "shardserve.access"):
            logging.getLogger(name).setLevel(level)
    if not config.access_log:
        logging.getLogger("shardserve.access").handlers = []
        logging.getLogger("shardserve.access").propagate = False


def _configure_default(config: Config) -> None:
    """uvicorn's layout: "shardserve" (and "shardserve.error" under it) to stderr,
    "shardserve.access" to stdout through DirectStreamHandler, at INFO, not propagated
    to the root.  Set up by hand, not with logging.config.dictConfig: importing that
    costs every subinterpreter shard about a megabyte."""
    default = logging.StreamHandler(sys.stderr)
    default.setFormatter(
        LevelPrefixFormatter(FORMAT, use_colors=_colours(config.use_colors, sys.stderr))
    )
    access = DirectStreamHandler(sys.stdout)
    access.setFormatter(
        LevelPrefixFormatter(FORMAT, use_colors=_colours(config.use_colors, sys.stdout))
    )
    for name, handlers in (
        ("shardserve", [default]),
        ("shardserve.error", []),
        ("shardserve.access", [access]),
    ):
        logger = logging.getLogger(name)
        for old in logger.handlers[:]:
            logger.removeHandler(old)
            old.close()
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.disabled = False
        if handlers:
            logger.propagate = False


def _colours(use_colors: bool | None, stream) -> bool:
    """--use-colors / --no-use-colors, else colours on a terminal only."""
    if use_colors is not None:
        return use_colors
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _load_log_config(path: str) -> None:
    import logging.config

    try:
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as file:
                logging.config.dictConfig(json.load(file))
        elif path.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"--log-config {path}: YAML needs PyYAML installed") from None
            with open(path, encoding="utf-8") as file:
                logging.config.dictConfig(yaml.safe_load(file))
        else:
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"--log-config {path}: {exc}") from None
