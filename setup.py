"""The one compiled module (optional): shardserve runs without it, on the pure-Python
reference it mirrors (shardserve/shard/http/head.py says which and why)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shardserve.shard.http._head",
            ["shardserve/shard/http/_head.c"],
            optional=True,  # no compiler, no headers: install anyway, pure Python
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
