"""FedRep's CIFAR-10 table as fedsim reproduces it, from the experiment's results folder.

    python experiments/fedrep_report.py results/fedrep_cifar10

Writes docs/results/fedrep_cifar10.csv (one row per cell: classes_per_client, algorithm
by its --strategy name, seeds, fedsim, fedsim_std, published, source) and copies each
cell's rounds.csv to docs/results/fedrep_cifar10/<classes>-<algorithm>-s<seed>/, so that
the table regenerates from the repository alone. The rounds files already committed
count too. A cell counts once every seed has run all of the grid's rounds.

fedsim's figure is the paper's measure at fedsim's last round: every client's own model
judged on its own held-out examples (`personal_accuracy`; FedAvg's is its global model
there, `eval_accuracy`), the example-weighted mean over all 100 clients, in %; the mean
over seeds, with their sample std where there are several.
"""

from __future__ import annotations

import csv
import sys
import tomllib
from pathlib import Path

import pandas as pd

from fedsim.front import reproduction

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "experiments" / "fedrep_cifar10.toml"
DOCS = ROOT / "docs" / "results"
TABLE = DOCS / "fedrep_cifar10.csv"
ROUNDS = tomllib.loads(GRID.read_text())["num-server-rounds"]
COLUMNS = (
    "classes_per_client",
    "algorithm",
    "seeds",
    "fedsim",
    "fedsim_std",
    "published",
    "source",
)
# Table 1's columns, in its order, by their --strategy names
ALGORITHMS = ("local", "fedavg", "fedavg-ft", "lg-fedavg", "fedper", "ditto", "apfl", "fedrep")
CLASSES = (2, 5)
# (classes per client, algorithm) -> (Table 1's accuracy in %, its source). Empty: the
# paper (Collins et al., ICML 2021, arXiv 2102.07078, Table 1) could not be read from
# this machine (docs/personalisation.md says what was searched).
PUBLISHED: dict[tuple[int, str], tuple[float, str]] = {}


def cell_dir(cell: tuple[int, str], seed: int | str) -> Path:
    """Where a cell's seed keeps its committed rounds.csv."""
    classes, algorithm = cell
    return DOCS / "fedrep_cifar10" / f"{classes}-{algorithm}-s{seed}"


def cell_of(config: dict) -> tuple[int, str]:
    return config["classes_per_client"], config["strategy"]


def committed() -> list[dict]:
    """The runs whose rounds.csv is already in docs/results."""

    def cell(name: str) -> tuple[int, str]:
        classes, _, algorithm = name.partition("-")
        return int(classes), algorithm

    return reproduction.committed(DOCS / "fedrep_cifar10", cell)


def accuracy(run: dict) -> float:
    """The run's figure in %: its last round's personalised accuracy over every client
    (the global model's on each client's data where the algorithm keeps nothing)."""
    last = run["rounds"].iloc[-1]
    personal = last.get("personal_accuracy")  # None: a run without the column
    return 100 * float(last["eval_accuracy"] if pd.isna(personal) else personal)


def table_rows(cells: dict[tuple, list[dict]]) -> list[dict]:
    rows = []
    for classes in CLASSES:
        for algorithm in ALGORITHMS:
            members = cells.get((classes, algorithm), [])
            figures = [accuracy(m) for m in members]
            if not figures:
                continue
            series = pd.Series(figures)
            published, source = PUBLISHED.get((classes, algorithm), ("", ""))
            rows.append(
                {
                    "classes_per_client": classes,
                    "algorithm": algorithm,
                    "seeds": " ".join(str(m["seed"]) for m in members),
                    "fedsim": round(series.mean(), 2),
                    "fedsim_std": round(series.std(), 2) if len(series) > 1 else "",
                    "published": published,
                    "source": source,
                }
            )
    return rows


def finished(cells: dict[tuple, list[dict]]) -> dict[tuple, list[dict]]:
    """The cells whose seeds have all run the grid's rounds (a cell still running is said
    and left out)."""
    done = {}
    for cell, members in cells.items():
        last = min(int(m["rounds"]["round"].iloc[-1]) for m in members)
        if last < ROUNDS:
            print(f"left out {cell}: {last} of {ROUNDS} rounds so far")
            continue
        done[cell] = members
    return done


def grid(table: Path) -> str:
    """The docs' table from the committed CSV (a test keeps the two equal): a row per
    algorithm, a column per classes-per-client; cells not run show a dash."""
    with open(table, newline="") as handle:
        ours = {(int(r["classes_per_client"]), r["algorithm"]): r for r in csv.DictReader(handle)}
    lines = [
        "| `--strategy` | " + " | ".join(f"{c} classes per client" for c in CLASSES) + " |",
        "|---|" + "---:|" * len(CLASSES),
    ]
    for algorithm in ALGORITHMS:
        cells = []
        for classes in CLASSES:
            row = ours.get((classes, algorithm))
            text = "–" if row is None else f"{float(row['fedsim']):.1f}"
            if row is not None and (seeds := len(row["seeds"].split())) > 1:
                text += f" ± {float(row['fedsim_std']):.1f} ({seeds} seeds)"
            if row is not None and row["published"]:
                text += f" ({float(row['published']):g})"
            cells.append(text)
        lines.append(f"| `{algorithm}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(folder: Path) -> None:
    found = reproduction.collect(folder, GRID, cell_of) if folder.is_dir() else []
    cells = finished(reproduction.cells_of(committed() + found))
    reproduction.copy_rounds(cells, cell_dir)
    reproduction.write_table(TABLE, COLUMNS, table_rows(cells))
    print(f"\ndocs/personalisation.md's table:\n\n{grid(TABLE)}")


if __name__ == "__main__":
    report(Path(sys.argv[1]))
