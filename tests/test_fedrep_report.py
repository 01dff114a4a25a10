"""docs/personalisation.md's FedRep table is the committed results CSV, which the committed
rounds files give (experiments/fedrep_report.py)."""

from __future__ import annotations

import csv

from experiments.fedrep_report import (
    ALGORITHMS,
    CLASSES,
    COLUMNS,
    TABLE,
    accuracy,
    cell_dir,
    committed,
    finished,
    grid,
    table_rows,
)
from fedsim.front.reproduction import cells_of
from tests.conftest import ROOT


def _saved() -> list[dict]:
    with open(TABLE, newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == COLUMNS  # the columns
        return list(reader)


def test_the_committed_csv_is_what_the_committed_rounds_files_give() -> None:
    saved = _saved()
    assert saved
    for row in saved:
        assert int(row["classes_per_client"]) in CLASSES and row["algorithm"] in ALGORITHMS
        for seed in row["seeds"].split():
            assert (cell_dir((int(row["classes_per_client"]), row["algorithm"]), seed)).is_dir()
    rows = table_rows(finished(cells_of(committed())))
    assert [{k: str(v) for k, v in row.items()} for row in rows] == saved


def test_a_cells_figure_is_its_last_rounds_personalised_accuracy() -> None:
    (fedper,) = cells_of(committed())[(2, "fedper")]
    last = fedper["rounds"].iloc[-1]
    assert last["round"] == 100
    assert accuracy(fedper) == 100 * last["personal_accuracy"] != 100 * last["eval_accuracy"]


def test_the_docs_show_the_committed_table() -> None:
    assert grid(TABLE) in (ROOT / "docs" / "personalisation.md").read_text()
