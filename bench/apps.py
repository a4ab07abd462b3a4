"""Apps the benchmarks serve; the same objects under every server."""

# The plaintext hello world: the README's example app, one definition.
from examples.hello import app as plaintext

__all__ = ["plaintext"]
