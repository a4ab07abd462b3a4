"""Load the ASGI app named by 'module:attribute', with errors a user can act on."""

from __future__ import annotations

import importlib
import sys
from typing import Any

from .errors import AppImportError


def import_from_string(target: str) -> Any:
    module_name, sep, attrs = target.partition(":")
    if not sep or not module_name or not attrs:
        raise AppImportError(f'Import string "{target}" must be in format "<module>:<attribute>".')
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppImportError(f'Could not import module "{module_name}".') from None
        raise AppImportError(f'Error importing "{module_name}": {_describe(exc)}') from None
    except BaseException as exc:  # noqa: BLE001 - anything an app module raises on import
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise AppImportError(f'Error importing "{module_name}": {_describe(exc)}') from None
    obj: Any = module
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise AppImportError(
                f'Attribute "{attrs}" not found in module "{module_name}".'
            ) from None
    return obj


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    location = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        location = f" ({tb.tb_frame.f_code.co_filename}, line {tb.tb_lineno})"
    return f"{type(exc).__name__}: {exc}{location}"


def load_app(app: Any, *, factory: bool = False, app_dir: str = "") -> Any:
    if app_dir:
        sys.path.insert(0, app_dir)
    elif "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, ".")
    loaded = import_from_string(app) if isinstance(app, str) else app
    if factory:
        try:
            loaded = loaded()
        except Exception as exc:
            raise AppImportError(f"Error calling the app factory: {_describe(exc)}") from None
    if not callable(loaded):
        raise AppImportError(f"The app {app!r} is not callable (expected an ASGI application).")
    return loaded
