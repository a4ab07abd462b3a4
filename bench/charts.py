"""Charts of a `python -m bench` run: run by the peers' Python, which has matplotlib.

    python bench/charts.py RESULTS.json OUT_DIR

Per workload: throughput against worker count, and server CPU per request against
worker count, one line per server (medians, with min-max bars).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CHARTS = (
    ("rps", "requests/s", "throughput"),
    ("cpu_us_per_request", "server CPU µs per request", "cpu"),
)


def main() -> None:
    data = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    cells = data["cells"]
    for workload in dict.fromkeys(c["workload"] for c in cells):
        for key, label, stem in CHARTS:
            figure, axes = plt.subplots(figsize=(7, 4.5))
            for server in dict.fromkeys(c["server"] for c in cells):
                points = [
                    (c["workers"], c["summary"][key])
                    for c in cells
                    if c["workload"] == workload and c["server"] == server and key in c["summary"]
                ]
                if not points:
                    continue
                points.sort()
                xs = [x for x, _ in points]
                ys = [f["median"] for _, f in points]
                low = [f["median"] - f["min"] for _, f in points]
                high = [f["max"] - f["median"] for _, f in points]
                axes.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=server)
            axes.set_xticks(sorted({c["workers"] for c in cells}))
            axes.set_xlabel("workers (shards)")
            axes.set_ylabel(label)
            axes.set_title(f"{workload}: {label}")
            axes.set_ylim(bottom=0)
            axes.grid(alpha=0.3)
            axes.legend()
            figure.tight_layout()
            figure.savefig(out / f"{workload}-{stem}.png", dpi=120)
            plt.close(figure)


if __name__ == "__main__":
    main()
