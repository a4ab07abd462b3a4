"""Loading the optional compiled twins (``_head.c``, ``_conn.c``, ...) of pure-Python code.

Each is an accelerator for the common case of a reference that stays in Python: it
is used where it was built and loads (every interpreter, own-GIL subinterpreters
included), and left out where it was not (no compiler at install) or when
``SHARDSERVE_PURE_PYTHON=1`` (CI runs the HTTP tests both ways).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def load(name: str) -> ModuleType | None:
    """The compiled module ``name`` of this package, or None to use the reference."""
    if os.environ.get("SHARDSERVE_PURE_PYTHON") == "1":
        return None
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:  # (not built: no compiler at install, or another interpreter)
        return None


# The methods each class has twins of (keep_references), for reference_subclass.
_TWINNED: dict[type, tuple[str, ...]] = {}


def keep_references(cls: type, names: tuple[str, ...]) -> None:
    """Keep each method ``name`` of ``cls`` as ``reference_<name>``: the Python
    reference its twin calls for what it does not take (and tests call directly)."""
    for name in names:
        setattr(cls, "reference_" + name, cls.__dict__[name])
    _TWINNED[cls] = names


def install(cls: type, twins: object) -> None:
    """Put the twins (a ConnTwins, ParserTwins or PythonTwins of ``_conn.c``) in place
    of the methods of ``cls`` kept by keep_references."""
    for name in _TWINNED[cls]:
        setattr(cls, name, getattr(twins, name))


def reference_subclass(cls: type) -> type:
    """A subclass of ``cls`` on its references alone (twins take only the exact class;
    this names the references outright), for differential tests."""
    methods = {name: getattr(cls, "reference_" + name) for name in _TWINNED[cls]}
    return type(f"Reference{cls.__name__}", (cls,), {"__slots__": (), **methods})
