"""shardserve: a multi-core ASGI server.

A coordinator owns the listening sockets and starts shards; each shard runs its own
event loop and ASGI pipeline on its own SO_REUSEPORT listener.
"""

from .config import Config
from .coord.placement import Placement, ShardSpec

__version__ = "0.1.0"
__all__ = ["Config", "Placement", "ShardSpec", "__version__", "run"]


def run(app, placement: Placement | None = None, **options) -> int:
    """Serve ``app`` (an ASGI app or 'module:attribute') with the CLI's options."""
    from .api import run as _run

    return _run(app, placement=placement, **options)
