"""The ``shardserve`` command, generated from the Config fields.

Flags carry uvicorn's names; every option also reads ``SHARDSERVE_<NAME>`` from the
environment (--shards, alias --workers, also uvicorn's ``WEB_CONCURRENCY``).  Every
failure before serving is reported as one line.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from typing import Any

import click
from click.core import ParameterSource

from . import __version__
from .config import Config, config_fields
from .errors import StartupError

ENV_PREFIX = "SHARDSERVE"


class ShardCount(click.ParamType):
    name = "shards"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if isinstance(value, int) or value == "auto":
            return value
        source = ""
        if ctx is not None and ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT:
            source = next((f" (from ${n})" for n in param.envvar if n in os.environ), "")
        try:
            count = int(value)
        except ValueError:
            self.fail(f"{value!r}{source} is not a number or 'auto'", param, ctx)
        if count < 1:
            self.fail(f"{count}{source} is not a number of at least 1", param, ctx)
        return count


def _click_type(python_type: Any, meta: dict[str, Any]) -> Any:
    if meta["kind"] == "shards":
        return ShardCount()
    if meta["choices"]:
        return click.Choice(meta["choices"], case_sensitive=False)
    args = [a for a in typing.get_args(python_type) if a is not type(None)]
    base = args[0] if args else python_type
    bounded = meta["minimum"] is not None or meta["maximum"] is not None
    if base is int:
        return click.IntRange(min=meta["minimum"], max=meta["maximum"]) if bounded else int
    if base is float:
        return click.FloatRange(min=meta["minimum"], max=meta["maximum"]) if bounded else float
    return str


def _options() -> list[click.Option]:
    hints = typing.get_type_hints(Config)
    options = []
    for field in config_fields():
        meta = field.metadata
        flag = "--" + (meta["flag"] or field.name).replace("_", "-")
        envvar = [f"{ENV_PREFIX}_{field.name.upper()}", *meta["env"]]
        python_type = hints[field.name]
        default = field.default if field.default is not dataclasses.MISSING else None
        if python_type in (bool, bool | None):
            decls = [f"{flag}/--no-{flag[2:]}"] if meta["negatable"] else [flag]
            options.append(
                click.Option(
                    [*decls, field.name],
                    is_flag=True,
                    default=default,
                    envvar=envvar,
                    show_default=meta["negatable"],
                    help=meta["help"],
                )
            )
        elif meta["multiple"]:
            options.append(
                click.Option(
                    [flag, field.name],
                    multiple=True,
                    envvar=envvar,
                    metavar=meta["metavar"],
                    help=meta["help"],
                )
            )
        else:
            options.append(
                click.Option(
                    [flag, *meta["aliases"], field.name],
                    type=_click_type(python_type, meta),
                    default=default,
                    envvar=envvar,
                    show_default=default is not None and default != "",
                    metavar=meta["metavar"],
                    help=meta["help"],
                )
            )
    return options


def _serve(app: str, **values: Any) -> int:
    from .api import serve

    for name, value in values.items():
        if isinstance(value, tuple):  # (a repeated option)
            values[name] = list(value)
    config = Config(app=app, **values)
    return serve(config)


command = click.Command(
    "shardserve",
    params=[click.Argument(["app"], envvar=f"{ENV_PREFIX}_APP"), *_options()],
    callback=_serve,
    help="Serve the ASGI application APP ('module:attribute') on every core.",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
click.version_option(__version__, "--version", prog_name="shardserve")(command)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("status", "reload", "stop", "upgrade"):  # an APP has a ':'
        from .control_client import main as control_main

        sys.exit(control_main(args))
    try:
        code = command.main(args=argv, prog_name="shardserve", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # pragma: no cover - click >= 8.2
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(2)
    except click.UsageError as exc:
        click.echo(f"shardserve: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(1)
    except StartupError as exc:
        click.echo(f"shardserve: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(1)
    if isinstance(code, int):
        sys.exit(code)
    sys.exit(0)


if __name__ == "__main__":
    main()
