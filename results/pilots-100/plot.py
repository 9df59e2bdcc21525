"""pilots.jsonl (one line per pilot epoch, written by run.py) -> pilots.csv and curves.png."""
import json
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

here = Path(__file__).resolve().parent
rows = [json.loads(line) for line in (here / "pilots.jsonl").read_text().splitlines() if line.strip()]
df = pd.DataFrame([r for r in rows if "epoch" in r])
df.to_csv(here / "pilots.csv", index=False)
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, col in zip(axes, ("valid_acc", "test_acc")):
    for name, g in df.groupby("pilot", sort=False):
        ax.plot(g.epoch, g[col], marker="o", ms=3, label=name)
    ax.axhline(0.932, color="k", ls=":", lw=1)
    ax.text(1, 0.925, "Pyro's Table 1: 0.932", va="top", fontsize=8)
    if col == "test_acc":  # a test accuracy: the earlier long reference's baseline (results/reference/long-cpu-20ep: batch 200, 20 epochs, 5 seeds)
        ax.axhline(0.749, color="grey", ls="--", lw=1)
        ax.text(1, 0.752, "supervised-only baseline, 20-epoch long reference (test): 0.749", fontsize=8, color="grey")
    ax.set_xlabel("epoch")
    ax.set_title({"valid_acc": "validation accuracy (selects)", "test_acc": "test accuracy (reported only)"}[col])
axes[0].set_ylabel("accuracy")
fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8,
           bbox_to_anchor=(0.5, 0.04))
fig.suptitle("enum + aux at 100 labels, seed 0, batch 100: exploratory pilots (results/pilots-100/run.py)", fontsize=10)
fig.text(0.01, 0.01, sys.argv[1] if len(sys.argv) > 1 else "", fontsize=7, color="grey")
fig.tight_layout(rect=(0, 0.12, 1, 0.95))
fig.savefig(here / "curves.png", dpi=110)
print(here / "curves.png")
