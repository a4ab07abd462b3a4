"""shardserve: a multi-core ASGI server.

A coordinator owns the listening sockets and starts shards; each shard runs its own
event loop and ASGI pipeline on its own SO_REUSEPORT listener.
"""

from .config import Config

__version__ = "0.1.0"
__all__ = ["Config", "__version__", "run"]


def run(app, **options) -> int:
    """Serve ``app`` (an ASGI app or 'module:attribute') with the CLI's options."""
    from .api import run as _run

    return _run(app, **options)
