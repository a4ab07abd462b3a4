"""The compiled modules (optional): shardserve runs without them, on the pure-Python
reference each mirrors (shardserve/shard/http/head.py, cycle.py, scope.py, eager.py,
protocol.py and shardserve/shard/loop.py say which and why).  Each is built on its own:
one that fails to build leaves the rest."""

from setuptools import Extension, setup

COMPILE_ARGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(
    ext_modules=[
        Extension(
            f"shardserve.shard.http.{name}",
            [f"shardserve/shard/http/{name}.c"],
            depends=["shardserve/shard/http/_twins.h"],
            optional=True,  # no compiler, no headers: install anyway, pure Python
            extra_compile_args=COMPILE_ARGS,
        )
        for name in ("_head", "_send", "_scope", "_eager", "_conn", "_transport")
    ]
)
