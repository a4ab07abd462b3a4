"""Logging set-up: uvicorn-style defaults, or the user's --log-config."""

from __future__ import annotations

import json
import logging
import logging.config
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


class LevelPrefixFormatter(logging.Formatter):
    """'INFO:     message', as uvicorn users are used to reading."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        record.__dict__["levelprefix"] = (record.levelname + ":").ljust(9)
        return super().formatMessage(record)


class DirectStreamHandler(logging.StreamHandler):
    """The default access-log handler: the access log writes its lines to this
    handler's stream itself (see shard/access_log.py) and flushes it once per tick."""

    prefix = "INFO:     "

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)


DEFAULT_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "default": {"()": LevelPrefixFormatter, "fmt": "%(levelprefix)s %(message)s"},
        "access": {"()": LevelPrefixFormatter, "fmt": "%(levelprefix)s %(message)s"},
    },
    "handlers": {
        "default": {
            "formatter": "default",
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
        },
        "access": {
            "formatter": "access",
            "()": DirectStreamHandler,
            "stream": "ext://sys.stdout",
        },
    },
    "loggers": {
        "shardserve": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "shardserve.error": {"level": "INFO"},
        "shardserve.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}


def configure_logging(config: Config) -> None:
    if config.log_config:
        _load_log_config(config.log_config)
    else:
        logging.config.dictConfig(DEFAULT_LOGGING)
    if config.log_level:
        level = LEVELS[config.log_level]
        for name in ("shardserve", "shardserve.error", "shardserve.access"):
            logging.getLogger(name).setLevel(level)
    if not config.access_log:
        logging.getLogger("shardserve.access").handlers = []
        logging.getLogger("shardserve.access").propagate = False


def _load_log_config(path: str) -> None:
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


def flush_logs() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
