"""valgrind (memcheck) over the compiled modules' tests (the head splitter's, the
sender's, the scope twins', the eager starter's, the connection and parser twins'):
fails on any error in shardserve's own C code (_head.c, _send.c, _scope.c, _eager.c,
_conn.c).

CPython itself shows false positives under valgrind (vectorised memcmp reading past a
string's end, small-int checks), so errors elsewhere are counted, not failed on.  An
error is ours when, walking its stack outwards, one of our frames comes before any
Python bytecode (the twins call Python references, and through them any code).
Run from the repository root: python .ci/memcheck.py [python]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

python = sys.argv[1] if len(sys.argv) > 1 else ".venv/bin/python"
with tempfile.TemporaryDirectory() as tmp:
    log = os.path.join(tmp, "valgrind.log")
    env = dict(
        os.environ,
        PYTHONMALLOC="malloc",
        HEAD_SPLIT_EXAMPLES="60",
        FAST_SEND_EXAMPLES="60",
        SCOPE_TWINS_EXAMPLES="60",
        CONN_TWINS_EXAMPLES="40",
        PARSER_TWINS_EXAMPLES="40",
    )
    tests = subprocess.run(
        ["valgrind", "--leak-check=no", "--num-callers=40", f"--log-file={log}",
         python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_head_split.py", "tests/test_fast_send.py", "tests/test_scope_twins.py",
         "tests/test_eager_twin.py", "tests/test_conn_twins.py",
         "tests/test_parser_twins.py", "tests/test_attr_cache.py",
         "tests/test_fast_send_socket.py", "tests/test_lean_transport.py"],
        env=env,
    )  # fmt: skip
    with open(log, encoding="utf-8", errors="replace") as file:
        text = file.read()
# An error block: a line naming the error, then its stack, up to a blank "==pid== " line.
blocks = re.split(r"\n==\d+== \n", text)
errors = [
    b for b in blocks if re.search(r"==\d+== (Invalid|Conditional|Use of|Syscall|Mismatched)", b)
]
OURS = re.compile(
    r"_(head|send|scope|eager|conn|transport)\.c|/_(head|send|scope|eager|conn|transport)\.cpython"
)


def in_our_code(block: str) -> bool:
    """Whether the error happened in our C, or in C it called directly: walking the
    stack outwards, one of our frames comes before any Python bytecode ran.  (The
    twins call Python references, and through them any code: an error below an
    interpreter frame is that code's, such as CPython's own false positives.)"""
    for line in block.splitlines():
        if not re.search(r"==\d+==\s+(at|by) 0x", line):
            continue
        if OURS.search(line):
            return True
        if "_PyEval_EvalFrameDefault" in line:
            return False
    return False


ours = [b for b in errors if in_our_code(b)]
print(f"memcheck: {len(errors)} error reports, {len(ours)} in shardserve's C code")
for block in ours:
    print(block)
if tests.returncode != 0:
    print("memcheck: the tests failed under valgrind", file=sys.stderr)
    sys.exit(1)
sys.exit(1 if ours else 0)
