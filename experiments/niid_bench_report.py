"""The NIID-Bench reproduction's table, per-cell rounds and plot, from a results folder.

    python experiments/niid_bench_report.py results/niid_bench_cifar10

Writes docs/results/niid_bench_cifar10.csv (one row per cell and published figure),
copies each cell's rounds.csv to docs/results/niid_bench_cifar10/<partition>-<strategy>-s<seed>/,
and draws docs/img/niid_bench_cifar10.png (accuracy by round, a panel per cell, the
published figures as horizontal lines). The rounds files already committed count too, so
the folder need hold only the runs that are new. Cells not run yet are left out; a cell
that ran fewer rounds than the paper's 50 says so in `rounds`; a cell run with several
seeds (`--seed 1,2` on its command) gives their mean, once each seed has its rounds.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from fedsim.front import reproduction
from fedsim.front.reproduction import cells_of

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "experiments" / "niid_bench_cifar10.toml"
DOCS = ROOT / "docs" / "results"
TABLE = DOCS / "niid_bench_cifar10.csv"
COLUMNS = (
    "partition",
    "strategy",
    "seeds",
    "rounds",
    "fedsim_best",
    "fedsim_final",
    "fedsim_best_std",
    "published",
    "published_std",
    "source",
)
# (partition, strategy) -> [(published accuracy %, source)]. flower-baseline: the table
# of Flower's baselines/niid_bench README (adap/flower 73ec95c: best round, mean ± std
# of its runs; FedProx's runs sweep mu over 0.001, 0.01, 0.1 and 1). niid-bench: the
# NIID-Bench paper's Table 3 (mean of 3 runs, 50 rounds), the figures issue 13 cites.
_FLOWER = {  # strategy -> (iid, dirichlet-0.5, labels-1, labels-2, labels-3)
    "fedavg": (71.32, 62.47, 10.00, 51.17, 59.11),
    "scaffold": (71.66, 68.08, 10.00, 49.42, 61.00),
    "fedprox": (71.26, 65.63, 12.71, 50.44, 59.20),
    "fednova": (70.69, 63.89, 10.00, 46.9, 57.83),
}
_PAPER = {
    ("dirichlet-0.5", "fedavg"): 68.2,
    ("dirichlet-0.5", "fedprox"): 67.9,
    ("dirichlet-0.5", "scaffold"): 69.8,
    ("dirichlet-0.5", "fednova"): 66.8,
    ("labels-2", "fedavg"): 49.8,
    ("labels-2", "fedprox"): 50.7,
    ("labels-2", "scaffold"): 49.1,
    ("labels-2", "fednova"): 46.5,
}
# the ± of Flower's table, where it gives one (std over its runs)
_FLOWER_STD = {
    ("iid", "fedavg"): 0.33,
    ("dirichlet-0.5", "fedavg"): 0.43,
    ("dirichlet-0.5", "fedprox"): 0.08,
    ("dirichlet-0.5", "scaffold"): 0.96,
    ("dirichlet-0.5", "fednova"): 1.40,
    ("labels-2", "fedavg"): 1.09,
    ("labels-2", "fedprox"): 0.79,
    ("labels-2", "scaffold"): 2.18,
    ("labels-2", "fednova"): 0.66,
    ("labels-3", "fedavg"): 0.87,
}
PARTITIONS = ("iid", "dirichlet-0.5", "labels-1", "labels-2", "labels-3")
STRATEGIES = ("fedavg", "fedprox", "scaffold", "fednova")
PUBLISHED: dict[tuple[str, str], list[tuple[float, float | None, str]]] = {
    (partition, strategy): [(figures[i], _FLOWER_STD.get((partition, strategy)), "flower-baseline")]
    for strategy, figures in _FLOWER.items()
    for i, partition in enumerate(PARTITIONS)
}
for _cell, _figure in _PAPER.items():
    PUBLISHED[_cell].append((_figure, None, "niid-bench"))


def cell_dir(partition: str, strategy: str, seed: int | str) -> Path:
    """Where a cell's seed keeps its committed rounds.csv."""
    return DOCS / "niid_bench_cifar10" / f"{partition}-{strategy}-s{seed}"


def cell_name(config: dict) -> tuple[str, str]:
    """A run's cell: the issue's partition names (iid, dirichlet-0.5, labels-1,
    labels-2, labels-3) and its strategy."""
    if config["partition"] == "dirichlet":
        partition = f"dirichlet-{config['alpha']:g}"
    elif config["partition"] == "pathological":
        partition = f"labels-{config['classes_per_client']}"
    else:
        partition = config["partition"]
    return partition, config["strategy"]


def committed() -> list[dict]:
    """The runs whose rounds.csv is already in docs/results, so the table survives its
    results folder: a fresh clone regenerates it, and a new seed joins the seeds before it."""
    return reproduction.committed(
        DOCS / "niid_bench_cifar10", lambda name: tuple(name.rsplit("-", 1))
    )


def table_rows(cells: dict[tuple[str, str], list[dict]]) -> list[dict]:
    """The CSV's rows: a cell's mean over its seeds of the best and the last round, and
    the spread of the best (the sample std over the seeds, where there are several), once
    per published figure."""
    rows = []
    for (partition, strategy), members in sorted(cells.items()):
        accuracy = [100 * m["rounds"]["central_accuracy"] for m in members]
        best = pd.Series([a.max() for a in accuracy])
        final = pd.Series([a.iloc[-1] for a in accuracy])
        done = min(int(m["rounds"]["round"].iloc[-1]) for m in members)
        published_figures = PUBLISHED.get((partition, strategy), [(None, None, "")])
        for published, published_std, source in published_figures:
            rows.append(
                {
                    "partition": partition,
                    "strategy": strategy,
                    "seeds": " ".join(str(m["seed"]) for m in members),
                    "rounds": done,
                    "fedsim_best": round(best.mean(), 2),
                    "fedsim_final": round(final.mean(), 2),
                    "fedsim_best_std": round(best.std(), 2) if len(best) > 1 else "",
                    "published": published if published is not None else "",
                    "published_std": published_std if published_std is not None else "",
                    "source": source,
                }
            )
    return rows


def report(folder: Path) -> None:
    found = reproduction.collect(folder, GRID, cell_name) if folder.is_dir() else []
    cells = cells_of(committed() + found)
    reproduction.copy_rounds(cells, lambda cell, seed: cell_dir(*cell, seed))
    reproduction.write_table(TABLE, COLUMNS, table_rows(cells))
    _plot(cells)
    print(f"\nREADME's table:\n\n{grid(TABLE)}")


_LABELS = {
    "iid": "IID",
    "dirichlet-0.5": "Dir(0.5)",
    "labels-1": "#C=1",
    "labels-2": "#C=2",
    "labels-3": "#C=3",
    "fedavg": "FedAvg",
    "fedprox": "FedProx",
    "scaffold": "SCAFFOLD",
    "fednova": "FedNova",
}


def grid(table: Path) -> str:
    """The README's table from the committed CSV (a test keeps the two equal): a row per
    partition, a column per strategy, fedsim's best round with the published figures in
    brackets (Flower's re-run; NIID-Bench's where it has one); cells not run show those
    alone, cells short of 50 rounds say so, cells over several seeds give their mean, ±
    the seeds' std, beside Flower's ± where it gives one."""
    with open(table, newline="") as handle:
        ours = {(row["partition"], row["strategy"]): row for row in csv.DictReader(handle)}
    lines = [
        "| partition | " + " | ".join(_LABELS[s] for s in STRATEGIES) + " |",
        "|---|" + "---:|" * len(STRATEGIES),
    ]
    for partition in PARTITIONS:
        cells = []
        for strategy in STRATEGIES:
            published = "; ".join(
                f"{value:g}" + (f" ± {std:.2f}" if std is not None else "")
                for value, std, _ in PUBLISHED[(partition, strategy)]
            )
            row = ours.get((partition, strategy))
            if row is None:
                cells.append(f"– ({published})")
                continue
            text = f"{float(row['fedsim_best']):.2f}"
            if (seeds := len(row["seeds"].split())) > 1:
                text += f" ± {float(row['fedsim_best_std']):.2f}, {seeds} seeds"
            if (rounds := int(row["rounds"])) < 50:
                text += f" after {rounds} round" + ("s" if rounds > 1 else "")
            cells.append(f"{text} ({published})")
        lines.append(f"| {_LABELS[partition]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(cells: dict[tuple[str, str], list[dict]]) -> None:
    keys = sorted(cells, key=lambda k: (PARTITIONS.index(k[0]), STRATEGIES.index(k[1])))
    columns = min(3, len(keys))
    rows = -(-len(keys) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for axis, key in zip(axes.flat, keys, strict=False):
        for run in cells[key]:
            frame = run["rounds"]
            axis.plot(
                frame["round"], 100 * frame["central_accuracy"], label=f"fedsim seed {run['seed']}"
            )
        for value, _, source in PUBLISHED.get(key, []):
            style = "--" if source == "flower-baseline" else ":"
            axis.axhline(value, linestyle=style, color="black", label=f"{source} {value:g} %")
        axis.set(title=f"{key[0]}, {key[1]}", xlabel="round", ylabel="central accuracy (%)")
        axis.set_xlim(0, 50)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small", loc="lower right")
    for axis in axes.flat[len(keys) :]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(ROOT / "docs" / "img" / "niid_bench_cifar10.png", dpi=100)


if __name__ == "__main__":
    report(Path(sys.argv[1]))
