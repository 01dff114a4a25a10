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
                    "published": 71.32,
                    "source": "flower-baseline",
                }
            )
    text = grid(table)
    assert "| 50.12, 2 seeds after 1 round (" in text
    assert "| 50.12, 2 seeds after 12 rounds (" in text
