"""--reload: watch the source, and roll the shards onto new code that imports.

The coordinator never imports the app (a shard does, each time it starts), so a
reload is the rolling restart SIGHUP does: successors start on the same listeners
and the old shards drain, and no connection is refused.  Before rolling, the app is
imported once in a throwaway interpreter: code that does not import (a syntax
error, a bad import) is reported once, with its file and line, and the running
shards keep serving the code they have until the next save.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..config import Config

logger = logging.getLogger("shardserve.error")

DEFAULT_INCLUDES = ("*.py",)
DEFAULT_EXCLUDES = (".*", ".py[cod]", ".sw.*", "~*")
# Never worth a reload, and often huge: not even looked at.
IGNORED_DIRS = frozenset(
    {".git", ".hg", ".svn", ".venv", "venv", "__pycache__", "node_modules", ".tox", ".nox",
     ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", ".idea"}
)  # fmt: skip
CHECK_TIMEOUT = 60.0

# Run in a fresh interpreter with the shards' path and environment: does the app import?
_CHECK = """\
import sys
from shardserve.errors import AppImportError
from shardserve.importer import import_from_string
if sys.argv[2]:
    sys.path.insert(0, sys.argv[2])
elif "" not in sys.path:
    sys.path.insert(0, "")
try:
    import_from_string(sys.argv[1])
except AppImportError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


class SourceFilter:
    """Which changed paths reload: uvicorn's --reload-include/--reload-exclude rules.

    A path reloads when its name (or its tail) matches an include glob and no exclude
    matches it; an exclude may also be a directory (everything below it) or a bare
    directory name (any directory so named).  A glob given to one list is taken out
    of the other's defaults, and a file named exactly is watched whatever the excludes
    say, so ``--reload-include .env`` works.
    """

    def __init__(self, includes: list[str], excludes: list[str]) -> None:
        self.includes = sorted((set(DEFAULT_INCLUDES) - set(excludes)) | set(includes))
        self.exclude_dirs = [Path(e).resolve() for e in excludes if _is_dir(e)]
        self.excludes = sorted(
            (set(DEFAULT_EXCLUDES) - set(includes)) | {e for e in excludes if not _is_dir(e)}
        )
        self.exclude_names = {e for e in excludes if not any(c in e for c in "*?[/")}

    def __call__(self, path: str | Path) -> bool:
        path = Path(path)
        parents = set(path.parent.parts)
        if parents & IGNORED_DIRS or parents & self.exclude_names:
            return False
        if not any(path.match(pattern) for pattern in self.includes):
            return False
        if path.name in self.includes:
            return True  # named exactly: no exclude glob overrides that
        if any(path.match(pattern) for pattern in self.excludes):
            return False
        return not any(d == path or d in path.parents for d in self.exclude_dirs)

    def watches(self, _change: object, path: str) -> bool:
        """The watchfiles filter: (change, path) -> bool."""
        return self(path)


def _is_dir(value: str) -> bool:
    try:
        return os.path.isdir(value)
    except (OSError, ValueError):
        return False


async def check_app_imports(config: Config) -> str | None:
    """None if the app imports in a fresh interpreter, else the error (file, line)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-B", "-c", _CHECK, str(config.app), config.app_dir,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), CHECK_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"importing the app took more than {CHECK_TIMEOUT:g} s"
    if proc.returncode == 0:
        return None
    lines = err.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"the import check exited with {proc.returncode}"


class Reloader:
    """Watches ``--reload-dir``s; after a change that imports, awaits ``roll()``."""

    def __init__(self, config: Config, roll: Callable[[], Awaitable[None]]) -> None:
        self.config = config
        self.roll = roll
        self.dirs = [Path(d).resolve() for d in config.reload_dirs] or [Path.cwd()]
        self.filter = SourceFilter(config.reload_includes, config.reload_excludes)
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        shown = ", ".join(f"'{d}'" for d in self.dirs)
        logger.info("Will watch for changes in these directories: [%s]", shown)
        self.task = asyncio.ensure_future(self._watch_logging_errors())

    async def close(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
                pass

    async def _watch_logging_errors(self) -> None:
        try:
            await self._watch()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - serving goes on without reloading
            logger.error("Reloading stopped: %s: %s", type(exc).__name__, exc)

    async def _watch(self) -> None:
        from watchfiles import awatch

        async for changes in awatch(
            *self.dirs, watch_filter=self.filter.watches, stop_event=self.stop_event, step=50
        ):
            names = sorted({self._shown(path) for _, path in changes})
            logger.warning(
                "WatchFiles detected changes in %s. Reloading...", ", ".join(map(repr, names))
            )
            try:
                error = await check_app_imports(self.config)
            except OSError as exc:
                error = f"could not run the import check: {exc}"
            if error is not None:
                logger.error(
                    "Not reloading: %s. The shards keep serving the code they have; "
                    "save a fix to try again.",
                    error.rstrip("."),
                )
                continue
            await self.roll()
            if self.config.reload_delay:
                await asyncio.sleep(self.config.reload_delay)

    def _shown(self, path: str) -> str:
        for directory in self.dirs:
            with_dir = Path(path)
            if directory in with_dir.parents:
                return str(with_dir.relative_to(directory))
        return path
