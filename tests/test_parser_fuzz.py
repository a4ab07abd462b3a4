"""A short fuzzing run of PythonParser (tests/fuzz/fuzz_parser.py), and checks that
feeding it stays linear in what it is fed.

The run is brief (about 20 seconds, seeded, so that it is repeatable): it catches what
the seed corpus and a few thousand mutations reach.  For a real campaign run the target
directly, as its docstring says.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

FUZZ_DIR = Path(__file__).parent / "fuzz"


def test_fuzz_target_runs_clean(tmp_path):
    try:
        import atheris  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"atheris cannot be imported ({exc}): no fuzzing run")
    # libFuzzer writes what it finds into the corpus directory: use a copy.
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ_DIR / "corpus", corpus)
    command = [
        sys.executable,
        str(FUZZ_DIR / "fuzz_parser.py"),
        "-max_total_time=20",
        "-rss_limit_mb=1024",
        "-runs=200000",
        "-seed=1",
        "-timeout=10",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
    ]
    result = subprocess.run(
        command,
        cwd=FUZZ_DIR.parent.parent,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=110,
    )
    # atheris prints a failing check's traceback among libFuzzer's progress lines: show
    # it, and the input's file name, rather than only the last lines of the log.
    output = result.stdout + result.stderr
    exception = output.find("=== Uncaught Python exception")
    found = output[exception : exception + 4000] if exception >= 0 else ""
    assert result.returncode == 0, found + "\n...\n" + output[-2000:]


# Linear feeding ------------------------------------------------------------------------


class _NullSink:
    def on_request(self, method, target, http_version, headers, keep_alive) -> None:
        pass

    def on_body(self, chunk) -> None:
        pass

    def on_request_end(self) -> None:
        pass

    def on_upgrade(self, rest) -> bool:
        return False


def _pieces(data: bytes, size: int | None) -> list[bytes]:
    if size is None:
        return [data]
    return [data[i : i + size] for i in range(0, len(data), size)]


GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
CHUNKED = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"

# (id, stream of about n bytes, piece size or None for one feed).  The single feeds stay
# within what a transport hands over at once (asyncio and uvloop read up to 256 KiB).
PATTERNS = [
    ("pipelined-requests-one-feed", lambda n: GET * (n // len(GET)), None),
    ("small-chunks-one-feed", lambda n: CHUNKED + b"1\r\na\r\n" * (n // 6) + b"0\r\n\r\n", None),
    ("small-chunks-bytewise", lambda n: CHUNKED + b"1\r\na\r\n" * (n // 24), 1),
    ("head-bytewise", lambda n: b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * (n // 8), 1),
    ("head-in-16-byte-pieces", lambda n: GET[:-2] + b"X: y\r\n" * (n // 8) + b"\r\n", 16),
    (
        "body-bytewise",
        lambda n: (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999\r\n\r\n" + b"a" * (n // 8)
        ),
        1,
    ),
    ("leading-empty-lines-bytewise", lambda n: b"\r\n" * (n // 16) + GET, 1),
    ("trailers-bytewise", lambda n: CHUNKED + b"0\r\n" + b"T: v\r\n" * (n // 48), 1),
]


@pytest.mark.parametrize(
    ("make", "size"), [pytest.param(make, size, id=name) for name, make, size in PATTERNS]
)
def test_feeding_is_linear(make, size):
    """Sixteen times the input may take at most 64 times as long (linear: 16, quadratic:
    256).  A single feed past 256 KiB does not happen behind a real transport, but a
    cost per byte that grows with the feed is what this looks for."""
    from shardserve.shard.http.parser import Limits, ParseError
    from shardserve.shard.http.parser_python import PythonParser

    limits = Limits(request_line=8190, fields=100_000, field_size=1 << 20)

    def seconds(n: int, repeats: int, enough: float = 0.0) -> float:
        pieces = _pieces(make(n), size)
        best = float("inf")
        for _ in range(repeats):
            parser = PythonParser(_NullSink(), limits)
            start = time.perf_counter()
            try:
                for piece in pieces:
                    parser.feed(piece)
            except ParseError:
                pass
            best = min(best, time.perf_counter() - start)
            if best < enough:
                break
        return best

    small = max(seconds(32 * 1024, 5), 1e-4)
    large = seconds(512 * 1024, 3, enough=16 * small)
    assert large < 64 * small, f"32 KiB: {small * 1e3:.1f} ms, 512 KiB: {large * 1e3:.1f} ms"
