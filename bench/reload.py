"""--reload: how long from saving a file to the new code answering.

    python bench/reload.py --shards 2 --edits 10

Serves a small app from a temporary directory with --reload, saves a new version of
it --edits times (a new file renamed over the old, as editors do), and times each
save to the first response carrying the new code, polling with a new connection
every 5 ms.  Reports each delay, the median and the worst, and any failed request.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

SOURCE = """import json  # noqa
ANSWER = b"{answer}"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": ANSWER}})
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--edits", type=int, default=10)
    parser.add_argument("--shard-mode", default="process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "reloaded.py"
        source.write_text(SOURCE.format(answer="v0"))
        argv = [sys.executable, "-m", "shardserve", "reloaded:app", "--port", "0", "--reload"]
        argv += ["--shards", str(args.shards), "--shard-mode", args.shard_mode]
        argv += ["--no-access-log", "--app-dir", tmp]
        proc = subprocess.Popen(
            argv, cwd=tmp, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        try:
            port = _wait_port(proc)
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # (keep it flowing)
            delays, failures = [], 0
            for edit in range(1, args.edits + 1):
                answer = f"v{edit}"
                partial = source.with_suffix(".partial")
                partial.write_text(SOURCE.format(answer=answer))
                os.replace(partial, source)
                saved = time.monotonic()
                deadline = saved + 30
                while time.monotonic() < deadline:
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == answer:
                            break
                    except httpx.HTTPError:
                        failures += 1
                    time.sleep(0.005)
                delays.append(time.monotonic() - saved)
                print(f"edit {edit}: new code after {delays[-1] * 1000:.0f} ms", file=sys.stderr)
                time.sleep(1.5)  # let the old shards drain before the next save
        finally:
            proc.send_signal(2)
            proc.wait(20)
    print(
        f"{args.shards} {args.shard_mode} shards: save to new code median "
        f"{statistics.median(delays) * 1000:.0f} ms, worst {max(delays) * 1000:.0f} ms "
        f"over {len(delays)} edits; {failures} failed requests"
    )


def _wait_port(proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        match = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
        if match:
            return int(match[1])
        if not line and proc.poll() is not None:
            break
    raise SystemExit("bench: the server did not start")


if __name__ == "__main__":
    main()
