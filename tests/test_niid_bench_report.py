"""The README's NIID-Bench table is the committed results CSV, not hand-copied numbers."""

from __future__ import annotations

import csv

from experiments.niid_bench_report import COLUMNS, PARTITIONS, STRATEGIES, TABLE, cell_dir, grid
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


def test_readme_shows_the_committed_table() -> None:
    assert grid(TABLE) in (ROOT / "README.md").read_text()
