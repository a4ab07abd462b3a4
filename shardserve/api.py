"""The library entry point: ``shardserve.run(app, **options)``."""

from __future__ import annotations

from typing import Any

from .config import Config, ConfigError
from .coord.coordinator import Coordinator
from .envfile import load_env_file
from .logs import configure_logging


def run(app: Any, **options: Any) -> int:
    """Serve ``app`` until stopped; ``options`` are the Config fields (the CLI's flags)."""
    try:
        config = Config(app=app, **options)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    return serve(config)


def serve(config: Config) -> int:
    config.validate()
    if config.env_file:
        try:
            load_env_file(config.env_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--env-file: {exc}") from None
    configure_logging(config)
    return Coordinator(config).run()
