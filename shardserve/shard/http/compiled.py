"""Loading the optional compiled twins (``_head.c``, ``_send.c``) of pure-Python code.

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
