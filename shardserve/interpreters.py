"""Own-GIL subinterpreters (PEP 684, PEP 734): one small API over what each Python has.

Python 3.14 ships ``concurrent.interpreters``; Python 3.13 needs the PyPI package
``interpreters-pep-734`` (``interpreters_backport``); older Pythons have neither.  The
two differ in how queues are made and where their exceptions live, which only this
module knows.  Imported by the coordinator and, inside a subinterpreter, by a shard.

Neither high-level ``create()`` takes a configuration: it always makes the
"isolated" kind (own GIL, own module state, extensions checked), which also forbids
daemon threads, and asgiref (so Django) starts one per request.  Both Pythons'
low-level ``_interpreters.create(config, reqrefs=True)`` takes one (3.13 and 3.14
alike; ``new_config("isolated", allow_daemon_threads=True)``); the high-level
``Interpreter(id, _ownsref=True)`` then wraps the id exactly as ``create()`` does.
"""

from __future__ import annotations

import sys
from functools import partial
from types import SimpleNamespace
from typing import Any

from .errors import ConfigError

REQUIREMENT = (
    "subinterpreter shards need Python 3.14, or Python 3.13 with the "
    "'interpreters-pep-734' package (pip install interpreters-pep-734)"
)


def unavailable_reason() -> str | None:
    """Why subinterpreter shards cannot run on this Python, or None if they can."""
    if sys.version_info < (3, 13):
        return f"{REQUIREMENT}; this is Python {sys.version_info[0]}.{sys.version_info[1]}"
    try:
        load()
    except ImportError as exc:
        return f"{REQUIREMENT} ({exc})"
    return None


def load() -> SimpleNamespace:
    """``create()`` an interpreter, ``create_queue()``, and the exception types.

    Raises ImportError where neither API exists.
    """
    try:
        from concurrent import interpreters  # Python 3.14+
    except ImportError:
        if sys.version_info < (3, 13):
            raise ImportError("no subinterpreter API before Python 3.13") from None
        from interpreters_backport import interpreters
        from interpreters_backport.interpreters import queues

        return SimpleNamespace(
            create=partial(_create, interpreters),
            create_queue=queues.create,
            ExecutionFailed=interpreters.ExecutionFailed,
            QueueEmpty=queues.QueueEmpty,
            queues_module="interpreters_backport.interpreters.queues",
        )
    return SimpleNamespace(
        create=partial(_create, interpreters),
        create_queue=interpreters.create_queue,
        ExecutionFailed=interpreters.ExecutionFailed,
        QueueEmpty=getattr(interpreters, "QueueEmpty", None)
        or getattr(interpreters, "QueueEmptyError", Exception),
        queues_module="concurrent.interpreters",
    )


def _create(module: Any) -> Any:
    """A new interpreter of the isolated kind (its own GIL and module state,
    ``check_multi_interp_extensions`` on, so extensions that cannot live there are
    still refused) that also allows daemon threads.  Its daemon threads must have
    ended before it is closed: CPython aborts the process otherwise
    (``coord/subinterpreters.py`` sees to it)."""
    import _interpreters  # (3.13: the backport has imported it; 3.14: built in)

    config = _interpreters.new_config("isolated", allow_daemon_threads=True)
    return module.Interpreter(_interpreters.create(config, reqrefs=True), _ownsref=True)


def require() -> SimpleNamespace:
    """``load()``, or the one-line configuration error a user sees."""
    reason = unavailable_reason()
    if reason is not None:
        raise ConfigError(f"--shard-mode subinterpreter: {reason}")
    return load()


def prepare_queues(interp: Any, api: SimpleNamespace, **queues: Any) -> None:
    """Hand queues to an interpreter's __main__; its queue module must be imported
    there first, or the queues arrive unusable (Python 3.13)."""
    interp.exec(f"import {api.queues_module}")
    interp.prepare_main(**queues)
