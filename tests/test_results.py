"""rounds.csv: exact columns, one row per round, on disk as soon as the round ends."""

from __future__ import annotations

import pandas as pd

from fedsim.results import CSV_COLUMNS, CsvRecorder, RoundRecord


def test_csv_rows_are_flushed_before_the_recorder_closes(tmp_path) -> None:
    path = tmp_path / "rounds.csv"
    recorder = CsvRecorder(path)
    recorder.on_round_end(RoundRecord(round=0, central_loss=2.3, central_accuracy=0.1), None)
    recorder.on_round_end(
        RoundRecord(
            round=1,
            train_loss=1.9,
            eval_loss=1.6,
            eval_accuracy=0.4,
            central_loss=1.5,
            central_accuracy=0.45,
            clients_sampled=2,
            clients_failed=1,
            round_seconds=3.5,
        ),
        None,
    )
    frame = pd.read_csv(path)  # read while the file is still open for writing
    assert tuple(frame.columns) == CSV_COLUMNS
    assert frame["round"].tolist() == [0, 1]
    assert pd.isna(frame.loc[0, "train_loss"]) and frame.loc[0, "central_accuracy"] == 0.1
    assert frame.loc[1, "clients_failed"] == 1 and frame.loc[1, "eval_accuracy"] == 0.4
    recorder.on_run_end(None)


def test_reopening_appends_without_a_second_header(tmp_path) -> None:
    path = tmp_path / "rounds.csv"
    first = CsvRecorder(path)
    first.on_round_end(RoundRecord(round=0), None)
    first.on_run_end(None)
    second = CsvRecorder(path)
    second.on_round_end(RoundRecord(round=1, train_loss=1.0), None)
    second.on_run_end(None)
    assert pd.read_csv(path)["round"].tolist() == [0, 1]
