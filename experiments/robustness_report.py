"""The robustness experiment's table and plot, from its results folder alone.

    python experiments/robustness_report.py results/robustness docs/img/robustness.png

Prints the final central accuracy as a markdown table (a row per strategy, a column per
share of malicious clients) and draws accuracy by round, a panel per share, a line per
strategy: the experiment's own accuracy_vs_round.png puts all twelve runs on one panel.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

from fedsim.front.summary import ROUNDS_CSV, summarize


def table(summary: pd.DataFrame) -> str:
    accuracy = summary.pivot(
        index="strategy", columns="byzantine_fraction", values="final_accuracy"
    )
    lines = [
        "| strategy | " + " | ".join(f"{f:.0%} malicious" for f in accuracy.columns) + " |",
        "|---|" + "---:|" * len(accuracy.columns),
    ]
    for strategy, row in accuracy.iterrows():
        lines.append(f"| {strategy} | " + " | ".join(f"{v:.1%}" for v in row) + " |")
    return "\n".join(lines)


def plot(folder: Path, summary: pd.DataFrame, image: Path) -> None:
    fractions = sorted(summary["byzantine_fraction"].unique())
    figure, axes = plt.subplots(1, len(fractions), figsize=(4.5 * len(fractions), 3.8), sharey=True)
    for axis, fraction in zip(axes, fractions, strict=True):
        for _, run in summary[summary["byzantine_fraction"] == fraction].iterrows():
            rounds = pd.read_csv(folder / run["run"] / ROUNDS_CSV)
            axis.plot(rounds["round"], rounds["central_accuracy"], label=run["strategy"])
        axis.set(title=f"{fraction:.0%} sign-flipping clients", xlabel="round")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("central accuracy")
    axes[-1].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(image, dpi=110)


def main(folder: Path, image: Path) -> None:
    summary = summarize(folder)
    print(table(summary))
    plot(folder, summary, image)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
