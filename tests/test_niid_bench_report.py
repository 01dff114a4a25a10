"""The README's NIID-Bench table is the committed results CSV, not hand-copied numbers."""

from __future__ import annotations

import csv
from pathlib import Path

from experiments.niid_bench_report import (
    COLUMNS,
    PARTITIONS,
    STRATEGIES,
    TABLE,
    cell_dir,
    cells_of,
    committed,
    grid,
    table_rows,
)
from tests.conftest import ROOT


def test_the_committed_csv_has_the_issues_columns_and_a_rounds_file_per_cell() -> None:
    with open(TABLE, newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = list(reader)
    assert rows
    for row in rows:
        assert row["partition"] in PARTITIONS and row["strategy"] in STRATEGIES
        assert row["source"] in {"flower-baseline", "niid-bench"}
        for seed in row["seeds"].split():
            cell = cell_dir(row["partition"], row["strategy"], seed)
            assert (cell / "rounds.csv").is_file(), cell


def test_the_committed_csv_is_what_the_committed_rounds_files_give() -> None:
    # the table can be regenerated from the repository alone (no results folder)
    with open(TABLE, newline="") as handle:
        saved = list(csv.DictReader(handle))
    rows = table_rows(cells_of(committed()))
    assert [{k: str(v) for k, v in row.items()} for row in rows] == saved


def test_readme_shows_the_committed_table() -> None:
    assert grid(TABLE) in (ROOT / "README.md").read_text()


def test_a_partial_cell_says_how_many_rounds_it_ran(tmp_path: Path) -> None:
    table = tmp_path / "table.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        for strategy, rounds in (("fedavg", 1), ("fedprox", 12)):
            writer.writerow(
                {
                    "partition": "iid",
                    "strategy": strategy,
                    "seeds": "0 1",
                    "rounds": rounds,
                    "fedsim_best": 50.123,
                    "fedsim_final": 49,
                    "fedsim_best_std": 1.5,
                    "published": 71.32,
                    "published_std": 0.33,
                    "source": "flower-baseline",
                }
            )
    text = grid(table)
    assert "| 50.12 ± 1.50, 2 seeds after 1 round (71.32 ± 0.33" in text
    assert "| 50.12 ± 1.50, 2 seeds after 12 rounds (" in text


def test_a_cell_over_several_seeds_gives_their_mean_and_sample_std() -> None:
    # #C=3 FedAvg is committed for seeds 0, 1 and 2
    members = cells_of(committed())[("labels-3", "fedavg")]
    best = [100 * m["rounds"]["central_accuracy"].max() for m in members]
    assert len(best) == 3
    (row,) = table_rows({("labels-3", "fedavg"): members})
    mean = sum(best) / 3
    assert row["fedsim_best"] == round(mean, 2)
    assert row["fedsim_best_std"] == round((sum((b - mean) ** 2 for b in best) / 2) ** 0.5, 2)
    assert row["published_std"] == 0.87
