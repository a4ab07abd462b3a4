"""The library entry point: ``shardserve.run(app, **options)``."""

from __future__ import annotations

from typing import Any

from .config import Config, ConfigError, shards_from_environment
from .coord.coordinator import Coordinator
from .coord.placement import Placement
from .coord.upgrade import remember_startup
from .envfile import load_env_file
from .logs import configure_logging


def run(app: Any, placement: Placement | None = None, **options: Any) -> int:
    """Serve ``app`` until stopped; ``options`` are the Config fields (the CLI's flags).

    ``placement`` lists the shards and their CPUs (see coord/placement.py), e.g.
    ``Placement.physical_cores()``; without it, ``shards``, ``cpus`` and ``pin`` decide.
    """
    if "workers" in options:  # uvicorn's name
        if "shards" in options:
            raise ConfigError("pass shards or workers, not both")
        options["shards"] = options.pop("workers")
    if "shards" not in options:
        options.update(shards_from_environment())
    try:
        config = Config(app=app, **options)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    if placement is not None and not isinstance(app, str):
        raise ConfigError("a placement needs the app as an import string ('module:attribute')")
    return serve(config, placement)


def serve(config: Config, placement: Placement | None = None) -> int:
    remember_startup()  # (before --env-file: an in-place upgrade reads it again)
    config.validate()
    if config.env_file:
        try:
            load_env_file(config.env_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--env-file: {exc}") from None
    configure_logging(config)
    return Coordinator(config, placement).run()
