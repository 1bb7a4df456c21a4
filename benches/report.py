"""Draws BENCHMARKS.md's charts from the benchmarks' saved results.

`python benches/report.py [RESULTS_DIR] [CHARTS_DIR]` (defaults: target/bench-results and
benches/charts) reads each benchmark's latest `NAME.json` and writes:
- `ratios.png`: every comparison's ratio, Cloze over its peer, where above 1 means Cloze is
  faster (the line at 1 is parity);
- `vector-search-LABEL.png`: queries/s against recall@10 for Cloze and hnswlib;
- `http-load-stages.png`: the server's median time per stage of a hybrid search.
It needs matplotlib.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results = Path(sys.argv[1] if len(sys.argv) > 1 else "target/bench-results")
charts = Path(sys.argv[2] if len(sys.argv) > 2 else "benches/charts")
charts.mkdir(parents=True, exist_ok=True)


def load(name):
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


ratios = []  # (label, ratio)
for preset in ("tiny", "small"):
    found = sorted(results.glob(f"mlm-reference-{preset}-*.json"))
    if found:
        r = json.loads(found[-1].read_text())
        ratios.append((f"MLM training, {preset}", r["cloze"]["tokens_per_second_median"] / r["pytorch"]["tokens_per_second_median"]))
for path in sorted(results.glob("embed-reference-*.json")):
    r = json.loads(path.read_text())
    ratios.append((f"embedding, {r['model']}", r["ratio"]))
for path in sorted(results.glob("vector-search-*.json")):
    r = json.loads(path.read_text())
    for point in r["at_recall"]:
        if point["qps_ratio"] is not None:
            ratios.append((f"vectors {r['label']}, recall {point['recall_target']}", point["qps_ratio"]))
    ratios.append((f"vectors {r['label']}, build", r["build_seconds"]["speed_ratio"]))
for path in sorted(results.glob("keyword-*.json")):
    r = json.loads(path.read_text())
    ratios.append((f"keyword {r['collection']}, latency", r["latency_speed_ratio"]))
    ratios.append((f"keyword {r['collection']}, indexing", r["index_rate_ratio"]))

if ratios:
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(ratios) + 1.2))
    labels, values = zip(*ratios)
    colours = ["tab:green" if v >= 1 else "tab:red" for v in values]
    ax.barh(range(len(values)), values, color=colours)
    ax.set_yticks(range(len(values)), labels)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("Cloze / peer (speed; above 1 is faster)")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}", va="center")
    fig.tight_layout()
    fig.savefig(charts / "ratios.png", dpi=110)
    print(charts / "ratios.png")

for path in sorted(results.glob("vector-search-*.json")):
    r = json.loads(path.read_text())
    fig, ax = plt.subplots(figsize=(6, 4))
    for side, marker in (("cloze", "o"), ("hnswlib", "s")):
        curve = r["curve"][side]
        ax.plot([p["recall"] for p in curve], [p["qps"] for p in curve], marker=marker, label=side)
    ax.set_xlabel("recall@10")
    ax.set_ylabel("queries/s (one thread)")
    ax.set_yscale("log")
    ax.set_title(f"{r['label']}: {r['vectors']:,} vectors of {r['dimension']}")
    ax.legend()
    fig.tight_layout()
    out = charts / f"vector-search-{r['label']}.png"
    fig.savefig(out, dpi=110)
    print(out)

http = load("http-load")
if http and http["rows"].get("hybrid", {}).get("stages_ms"):
    stages = http["rows"]["hybrid"]["stages_ms"]
    fig, ax = plt.subplots(figsize=(6, 3))
    names = list(stages)
    positions = range(len(names))
    ax.barh([p - 0.2 for p in positions], [stages[n]["median"] for n in names], height=0.4, label="median")
    ax.barh([p + 0.2 for p in positions], [stages[n]["p99"] for n in names], height=0.4, label="p99")
    ax.set_yticks(list(positions), names)
    ax.legend()
    ax.invert_yaxis()
    ax.set_xlabel("ms per hybrid search (server side)")
    ax.set_title(f"hybrid _search, {http['model']}: p99 end to end {http['rows']['hybrid']['p99_ms']} ms")
    fig.tight_layout()
    fig.savefig(charts / "http-load-stages.png", dpi=110)
    print(charts / "http-load-stages.png")
