"""The study's figure (docs/study-100-labels.md): enum + aux at 100 labels under each tried protocol, from the
committed results only -> study.png.

Panels: Pyro's Table 1 setting through the suite (results/reference/table1-cpu: protocol pyro, aux 300, lr 3e-4,
batch 100, 100 epochs), the earlier long reference (results/reference/long-cpu-20ep: protocol bench, 20 epochs, with 100 labels; the
current long reference, results/reference/long-cpu, has 3000 labels only), and the
joint-protocol pilots (pilots.csv: seed 0, 10 epochs). Validation accuracy, which selects; each seed thin, the
mean over seeds thick; the supervised-only baseline of the same folder dashed. Usage, from the repository root:
``python results/pilots-100/study_plot.py``.
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PUBLISHED = 0.932  # Pyro's tutorial, Table 1, enum + aux, 100 labels (a test accuracy)


def _folder_panel(ax, folder: str, title: str) -> str:
    curves = pd.read_csv(ROOT / "results" / "reference" / folder / "curves.csv")
    curves = curves[curves["labels"] == 100]
    seeds = {}
    for est, colour, style in (("enum", "tab:blue", "-"), ("baseline", "dimgrey", "--")):
        part = curves[(curves["estimator"] == est) & (curves["aux"] == (est == "enum"))]
        for _, cell in part.groupby("seed"):
            ax.plot(cell["epoch"], cell["valid_acc"], color=colour, lw=0.7, alpha=0.45, ls=style)
        mean = part.groupby("epoch")["valid_acc"].mean()
        n = part["seed"].nunique()
        seeds[est] = n
        ax.plot(mean.index, mean.values, color=colour, lw=2.2, ls=style,
                label=f"{'enum + aux' if est == 'enum' else 'supervised-only baseline'} (mean of {n} seeds)")
    ax.set_title(title, fontsize=9)
    return f"{folder}: enum + aux n = {seeds.get('enum', 0)}, baseline n = {seeds.get('baseline', 0)}"


def main() -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=True)
    notes = [
        _folder_panel(axes[0], "table1-cpu", "Pyro's Table 1 setting (protocol pyro: 1 labeled batch per ~500\n"
                                             "unlabeled; aux 300, lr 3e-4, batch 100), 100 epochs"),
        _folder_panel(axes[1], "long-cpu-20ep", "earlier long reference (protocol bench: labeled batches spread over the\n"
                                           "epoch; tuned lr, aux 46, batch 200), 20 epochs"),
    ]
    pilots = pd.read_csv(HERE / "pilots.csv")
    for name, g in pilots.groupby("pilot", sort=False):
        axes[2].plot(g["epoch"], g["valid_acc"], marker="o", ms=3, lw=1.4, label=name)
    axes[2].set_title("joint protocol pilots (a labeled batch in every step, one loss),\nseed 0, 10 epochs",
                      fontsize=9)
    notes.append("pilots-100: n = 1 each")
    for ax in axes:
        ax.axhline(PUBLISHED, color="k", ls=":", lw=1)
        ax.text(ax.get_xlim()[0], PUBLISHED - 0.005, f" published (test): {PUBLISHED}", va="top", fontsize=7.5)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("validation accuracy (selects)")
    fig.suptitle("enum + aux at 100 labels under each tried protocol: none reaches the published 0.932", fontsize=11)
    fig.text(0.01, 0.01, "committed results only; " + "; ".join(notes) + "; MNIST training images rebuilt from a "
             "PNG export (../shared/data/README.md); results/pilots-100/study_plot.py", fontsize=7, color="grey")
    fig.tight_layout(rect=(0, 0.04, 1, 0.94))
    fig.savefig(HERE / "study.png", dpi=110)
    print(HERE / "study.png")


if __name__ == "__main__":
    main()
